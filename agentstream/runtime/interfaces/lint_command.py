"""The ``lint`` command: the CLI face of :mod:`agentstream.runtime.core.lint`."""

from __future__ import annotations

import argparse
from typing import Any

from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import load_app
from agentstream.runtime.core.lint import lint_app


def add_parser(subparsers: Any) -> None:
    """Register ``agentstream lint`` on the CLI's subparsers."""
    p = subparsers.add_parser("lint", help="check an app's tools and agents for what confuses a model")
    p.add_argument("--app", help="module:attribute of the App (default: AGENTSTREAM_APP, else the demo)")
    p.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    p.set_defaults(fn=cmd_lint)


async def cmd_lint(args: argparse.Namespace, settings: Settings) -> int:
    """One line per finding, then a summary, on stdout (it is the command's
    output, not a diagnostic: `agentstream lint | tail -1` works). Exit 1 on an error
    finding, or on any finding with ``--strict``; else 0."""
    app = load_app(args.app, source="--app") if args.app else load_app(settings.app)
    findings = lint_app(app)
    for f in findings:
        print(f)
    errors = sum(f.severity == "error" for f in findings)
    print(f"agentstream lint: {errors} error(s), {len(findings) - errors} warning(s)")
    if errors or (args.strict and findings):
        return 1
    return 0
