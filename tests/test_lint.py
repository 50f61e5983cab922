"""``agentstream lint``: findings on a synthetic app built to trip every check,
none on the bundled support desk; the startup warning and the CLI glue."""

from __future__ import annotations

import argparse
import logging

import pytest

from agentstream.examples.support_desk import app as support_app
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import App
from agentstream.runtime.core.lint import Finding, lint_app, nearly_same, warn_at_startup
from agentstream.runtime.core.tools import Tool, tool
from agentstream.runtime.interfaces.lint_command import add_parser, cmd_lint


def _numbered(i: int) -> Tool:
    topics = ["invoices", "payroll", "stock levels", "supplier contracts", "tax filings", "travel bookings",
              "office leases"]

    def fn(ref: str) -> str:
        return ref

    fn.__doc__ = f"""Fetch one of the company's {topics[i]} by reference.

    Args:
        ref: The reference.
    """
    return Tool(fn, name=f"fetch_{i}")


@tool
def undocumented(x: int) -> int:
    return x


@tool
def half_documented(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: The first.
    """
    return a + b


@tool(fallback="nowhere", approvers=("ops",))
def with_bad_fallback(q: str) -> str:
    """Search the archive for old tickets.

    Args:
        q: Search words.
    """
    return q


@tool(fallback="by_zip")
def by_city(city: str) -> str:
    """Weather for a city.

    Args:
        city: City name.
    """
    return city


@tool
def by_zip(zip_code: str) -> str:
    """Weather for a postal code.

    Args:
        zip_code: Postal code.
    """
    return zip_code


def synthetic() -> App:
    app = App()
    tools = [_numbered(i) for i in range(7)]
    tools += [undocumented, half_documented]  # 9 tools
    app.agent("crowded", "Do everything.", tools)
    app.agent("dupes", "Look things up.", [
        Tool(lambda order_id: order_id, name="order_status",
             description="Look up the current status of a customer order."),
        Tool(lambda order_id: order_id, name="order_state",
             description="Look up the current state of a customer order."),
        with_bad_fallback,
    ])
    # Served by tool workers only: tool-level findings, no agent's.
    app.tools.update({t.name: t for t in (by_city, by_zip)})
    return app


def test_synthetic_app_findings() -> None:
    findings = lint_app(synthetic())
    got = {(f.severity, f.agent, f.tool, f.message.split(" (")[0].split(":")[0]) for f in findings}
    assert ("warn", "crowded", "", "9 tools") in got
    assert ("error", "", "undocumented", "no description") in got
    assert any(f.tool == "undocumented" and "'x' has no description" in f.message for f in findings)
    assert any(f.tool == "half_documented" and "'b' has no description" in f.message for f in findings)
    assert not any(f.tool == "half_documented" and "'a'" in f.message for f in findings)
    dupes = [f for f in findings if "nearly the same" in f.message]
    assert [(f.agent, f.tool) for f in dupes] == [("dupes", "order_status")] and "order_state" in dupes[0].message
    assert any(f.severity == "error" and f.tool == "with_bad_fallback" and "'nowhere'" in f.message
               for f in findings)
    assert any(f.tool == "with_bad_fallback" and "approvers" in f.message for f in findings)
    (mismatch,) = [f for f in findings if f.tool == "by_city"]
    assert mismatch.severity == "warn" and "fallback 'by_zip' does not take this tool's arguments" in mismatch.message
    assert "['city']" in mismatch.message and "['zip_code']" in mismatch.message
    assert not any(f.tool == "by_zip" for f in findings)
    # The 7 fetch tools differ in one meaningful word each: not near-duplicates.
    assert not any(f.tool.startswith("fetch_") for f in findings)
    assert all(isinstance(f, Finding) and str(f).startswith(f.severity) for f in findings)


def test_support_desk_is_clean() -> None:
    assert lint_app(support_app) == []


def test_similarity_thresholds() -> None:
    assert nearly_same("Count A for a task.", "Count B for a task.")  # small edit: ratio
    assert nearly_same("refund an order for the customer now", "now refund the customer for an order")  # reorder
    assert not nearly_same("Look up an order.", "Open a ticket for a human agent.")
    assert not nearly_same("", "")


def test_warn_at_startup_logs_what_the_process_serves(caplog: pytest.LogCaptureFixture) -> None:
    app = synthetic()
    log = logging.getLogger("test.lint")
    with caplog.at_level(logging.WARNING, logger="test.lint"):
        only_dupes = warn_at_startup(app, ["dupes"], log)
    assert {f.tool for f in only_dupes} == {"order_status", "order_state", "with_bad_fallback"}
    assert len(caplog.records) == len(only_dupes)
    assert any(r.levelno == logging.ERROR for r in caplog.records)  # the unknown fallback
    assert len(warn_at_startup(app, [], log)) == len(lint_app(app))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["lint", *argv])


async def test_cli_lint(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.from_env({})
    args = _args("--app", "agentstream.examples.support_desk:app", "--strict")
    assert await args.fn(args, settings) == 0
    # No findings: only the summary, on stdout with the findings.
    assert capsys.readouterr().out == "agentstream lint: 0 error(s), 0 warning(s)\n"
    # Warnings only: 0, or 1 with --strict.
    assert await cmd_lint(_args("--app", "apps.crash_app:app"), settings) == 0
    *out, summary = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and all(line.startswith("warn") for line in out)
    assert summary == "agentstream lint: 0 error(s), 3 warning(s)"
    assert await cmd_lint(_args("--app", "apps.crash_app:app", "--strict"), settings) == 1
