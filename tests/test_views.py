"""Trace waterfall and stats: pure tests on synthetic spans, and the data access
(plus ``agentstream trace``) against a real nats-server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import re
import time
import uuid
from typing import Any

import msgspec
import nats.js.errors as jse
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskCompleted, TaskFailed, ToolCallCompleted, ToolError, Usage
from agentstream.contracts.telemetry import TELEMETRY_STREAM, TELEMETRY_SUBJECTS, SpanRecord, span_subject
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.interfaces import view_commands
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability import views

# --------------------------------------------------------------------------- synthetic data


def _hex(n: int) -> str:
    return uuid.uuid4().hex[:n] if n <= 32 else (uuid.uuid4().hex + uuid.uuid4().hex)[:n]


def span(trace: str, name: str, start: float, end: float, parent: str = "", *, status: str = "ok",
         error: str = "", **attrs: Any) -> SpanRecord:
    return SpanRecord(trace_id=trace, span_id=_hex(16), parent_span_id=parent, name=name, start=start, end=end,
                      status=status, error_type=error, attributes={k.replace("__", "."): v for k, v in attrs.items()})


def task_trace(task_id: str, t0: float, *, agent: str = "support", fail_tool: bool = True,
               cost: float = 0.003) -> list[SpanRecord]:
    """invoke_agent > [chat, process > 3 parallel execute_tool (one failed), chat]."""
    tr = _hex(32)
    root = span(tr, f"invoke_agent {agent}", t0, t0 + 1.0, gen_ai__agent__name=agent,
                agentstream__task_id=task_id, agentstream__tenant_id="acme", agentstream__user_id="u-7")
    c1 = span(tr, "chat gpt-4o", t0 + 0.00, t0 + 0.20, root.span_id, gen_ai__request__model="gpt-4o",
              gen_ai__response__model="gpt-4o", gen_ai__usage__input_tokens=120, gen_ai__usage__output_tokens=30,
              gen_ai__response__finish_reasons=["tool_calls"], agentstream__cost_usd=cost / 2,
              agentstream__task_id=task_id)
    proc = span(tr, "process tools.lookup_order.calls", t0 + 0.21, t0 + 0.70, root.span_id,
                messaging__system="nats", messaging__destination__name="tools.lookup_order.calls")
    t1 = span(tr, "execute_tool lookup_order", t0 + 0.22, t0 + 0.60, proc.span_id,
              gen_ai__tool__name="lookup_order", gen_ai__tool__call__id="c1", agentstream__task_id=task_id)
    t2 = span(tr, "execute_tool shipping_status", t0 + 0.25, t0 + 0.65, proc.span_id,
              gen_ai__tool__name="shipping_status", gen_ai__tool__call__id="c2", agentstream__task_id=task_id)
    t3 = span(tr, "execute_tool refund_eligibility", t0 + 0.23, t0 + 0.50, proc.span_id,
              status="error" if fail_tool else "ok", error="timeout" if fail_tool else "",
              gen_ai__tool__name="refund_eligibility", gen_ai__tool__call__id="c3", agentstream__task_id=task_id)
    c2 = span(tr, "chat gpt-4o", t0 + 0.75, t0 + 1.0, root.span_id, gen_ai__request__model="gpt-4o",
              gen_ai__response__model="gpt-4o", gen_ai__usage__input_tokens=300, gen_ai__usage__output_tokens=40,
              gen_ai__response__finish_reasons=["stop"], agentstream__cost_usd=cost / 2,
              agentstream__task_id=task_id)
    return [c1, t1, t3, t2, proc, c2, root]  # finish order, not tree order


def completed(task_id: str, t0: float, dur: float, cost: float = 0.003, agent: str = "support") -> TaskCompleted:
    return TaskCompleted(task_id=task_id, agent=agent, agent_version="v1", output="ok", steps=2, tool_calls=3,
                         usage=Usage(input_tokens=420, output_tokens=70, cost_usd=cost), started_at=t0,
                         finished_at=t0 + dur)


def failed(task_id: str, t0: float, dur: float, reason: str = "max_steps", agent: str = "support") -> TaskFailed:
    return TaskFailed(task_id=task_id, agent=agent, agent_version="v1", reason=reason, message="gave up", steps=5,
                      tool_calls=0, usage=Usage(input_tokens=10, output_tokens=1, cost_usd=0.001), started_at=t0,
                      finished_at=t0 + dur)


def _bar(line: str) -> str:
    m = re.search(r"\|([ #x]+)\|", line)
    assert m, line
    return m.group(1)


def _cells(bar: str) -> set[int]:
    return {i for i, ch in enumerate(bar) if ch != " "}


# --------------------------------------------------------------------------- render_waterfall


def test_waterfall_indents_by_parent_and_orders_by_start() -> None:
    text = views.render_waterfall(task_trace("t-1", 1000.0), width=50)
    lines = text.splitlines()
    names = [ln.split("|")[0].rstrip() for ln in lines[3:]]
    assert names == [
        "invoke_agent support",
        "  chat gpt-4o",
        "  process tools.lookup_order.calls",
        "    execute_tool lookup_order",
        "    execute_tool refund_eligibility",
        "    execute_tool shipping_status",
        "  chat gpt-4o",
    ]
    assert "task t-1" in lines[0] and "agent support" in lines[0] and "1000.0 ms" in lines[0]
    # Root spans the whole axis; the last chat ends at its right edge.
    assert _bar(lines[3]) == "#" * 50
    assert _bar(lines[-1]).rstrip().endswith("#") and _bar(lines[-1])[-1] == "#"


def test_waterfall_draws_parallel_tools_overlapping_and_marks_failures() -> None:
    text = views.render_waterfall(task_trace("t-1", 1000.0), width=60)
    rows = {ln.split("|")[0].strip(): ln for ln in text.splitlines()[3:]}
    tools = [rows[f"execute_tool {n}"] for n in ("lookup_order", "shipping_status", "refund_eligibility")]
    bars = [_cells(_bar(ln)) for ln in tools]
    common = bars[0] & bars[1] & bars[2]
    assert common, "parallel tool bars must overlap on the time axis"
    for ln in tools:
        assert "|| 3 parallel" in ln
    failed_line = rows["execute_tool refund_eligibility"]
    assert set(_bar(failed_line).strip()) == {"x"}
    assert "FAILED timeout" in failed_line
    assert set(_bar(rows["execute_tool lookup_order"]).strip()) == {"#"}
    # Start offsets and durations in ms.
    assert re.search(r"\+220\.0\s+380\.0", rows["execute_tool lookup_order"])
    # Model calls carry tokens and cost; sequential chats are not "parallel".
    chat_lines = [ln for ln in text.splitlines() if ln.startswith("  chat gpt-4o")]
    assert "120/30 tok $0.0015" in chat_lines[0] and "300/40 tok $0.0015" in chat_lines[1]
    assert all("parallel" not in ln for ln in chat_lines)
    assert "2 model calls (420 in / 70 out tokens, $0.0030), 3 tool calls, 1 failed" in text


def test_waterfall_orphans_cycles_and_empty() -> None:
    assert views.render_waterfall([]) == "(no spans)"
    tr = _hex(32)
    a = SpanRecord(trace_id=tr, span_id="a" * 16, parent_span_id="b" * 16, name="x", start=1.0, end=2.0)
    b = SpanRecord(trace_id=tr, span_id="b" * 16, parent_span_id="a" * 16, name="y", start=1.5, end=3.0)
    orphan = SpanRecord(trace_id=tr, span_id="c" * 16, parent_span_id="f" * 16, name="orphan", start=2.0, end=2.0,
                        status="error")
    text = views.render_waterfall([a, b, orphan], width=20)
    assert {ln.split("|")[0].strip() for ln in text.splitlines()[3:]} == {"x", "y", "orphan"}
    assert "FAILED error" in text  # zero-length failed span still gets a one-cell bar
    assert "x" in _bar([ln for ln in text.splitlines() if ln.startswith("orphan")][0])


# --------------------------------------------------------------------------- stats


def test_percentile_interpolates() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert views.percentile(xs, 50) == pytest.approx(50.5)
    assert views.percentile(xs, 95) == pytest.approx(95.05)
    assert views.percentile(xs, 99) == pytest.approx(99.01)
    assert views.percentile([3.0], 99) == 3.0
    assert math.isnan(views.percentile([], 50))


def test_compute_stats_latency_errors_cost() -> None:
    t0 = 1000.0
    spans = task_trace("t-1", t0) + task_trace("t-2", t0 + 10, fail_tool=False)
    # A task with spans but no result in the window: counted from its span.
    spans += task_trace("t-3", t0 + 20, agent="billing", cost=0.01)
    results: list[TaskCompleted | TaskFailed] = [
        completed("t-1", t0, 1.0), completed("t-2", t0 + 10, 2.0, cost=0.005), failed("t-4", t0 + 30, 4.0)]
    results += [completed(f"t-x{i}", t0 + 40 + i, 3.0, cost=0.0) for i in range(7)]
    stats = views.compute_stats(spans, results, since_s=3600)

    assert stats.tasks == 11 and stats.tasks_failed == 1
    assert stats.task_error_rate == pytest.approx(1 / 11)
    assert stats.task_cost_total == pytest.approx(0.003 + 0.005 + 0.001 + 0.01)
    assert stats.task_cost_mean == pytest.approx(stats.task_cost_total / 11)

    agents = {g.name: g for g in stats.agents}
    sup = agents["support"]
    assert sup.count == 10 and sup.errors == 1
    durs = sorted([1.0, 2.0, 4.0] + [3.0] * 7)
    assert sup.latency.p50 == pytest.approx(views.percentile(durs, 50)) == pytest.approx(3.0)
    assert sup.latency.p95 == pytest.approx(views.percentile(durs, 95))
    assert sup.latency.p99 == pytest.approx(3.0 + 0.91 * 1.0)
    assert sup.cost_usd == pytest.approx(0.009)
    assert agents["billing"].count == 1 and agents["billing"].cost_usd == pytest.approx(0.01)

    tools = {g.name: g for g in stats.tools}
    assert tools["refund_eligibility"].count == 3 and tools["refund_eligibility"].errors == 2
    assert tools["refund_eligibility"].error_rate == pytest.approx(2 / 3)
    assert tools["lookup_order"].latency.p50 == pytest.approx(0.38)
    assert stats.tool_calls == 9 and stats.tool_errors == 2
    assert stats.tools[0].count == 3  # sorted by usage

    (model,) = stats.models
    assert model.name == "gpt-4o" and model.count == 6
    assert model.input_tokens == 3 * 420 and model.output_tokens == 3 * 70
    assert model.cost_usd == pytest.approx(0.003 + 0.003 + 0.01)

    kinds = {(e.scope, e.kind): e for e in stats.errors}
    assert kinds[("tool", "timeout")].count == 2
    assert kinds[("tool", "timeout")].rate == pytest.approx(2 / 9)
    assert kinds[("task", "max_steps")].count == 1
    assert kinds[("task", "max_steps")].rate == pytest.approx(1 / 11)

    text = views.render_stats(stats)
    assert "11 tasks in the last 1h: 10 completed, 1 failed (error rate 9.1%)" in text
    for needle in ("support", "billing", "refund_eligibility", "gpt-4o", "timeout", "max_steps", "66.7%"):
        assert needle in text


def test_compute_stats_empty_renders() -> None:
    stats = views.compute_stats([], [], since_s=900)
    assert stats.tasks == 0 and stats.task_cost_mean == 0.0 and stats.errors == []
    assert "0 tasks in the last 15m" in views.render_stats(stats)
    assert views.stats_json(stats)["agents"] == []


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172800),
                                               ("90", 90), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert views.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1w", "-1h", "0m", "1 hour"])
def test_since_bad_value_is_argparse_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="agentstream")
    view_commands.add_stats_parser(p.add_subparsers())
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["stats", f"--since={text}"])
    assert exc.value.code == 2
    assert "invalid duration" in capsys.readouterr().err
    assert p.parse_args(["stats", "--since", "15m"]).since == 900


def test_time_series_and_histogram() -> None:
    now = 10_000.0
    rows = views.time_series([completed("a", now - 100, 1, cost=0.5), failed("b", now - 90, 1),
                              completed("c", now - 5000, 1)], 3600, now=now, buckets=12)
    assert len(rows) == 12 and rows[-1]["tasks"] == 2 and rows[-1]["error_rate"] == 0.5
    assert rows[-1]["cost_usd"] == pytest.approx(0.501)
    # 300 s buckets from now - 3600: a and b finish in the last one; c (now - 4999) is before the window
    assert [r["t"] for r in rows] == pytest.approx([now - 3600 + 300 * i for i in range(12)])
    assert [r["tasks"] for r in rows] == [0.0] * 11 + [2.0]
    # 4 equal bins over 100..1000 ms (225 ms wide): 0.1, 0.2, 0.2 in the first, 1.0 in the last
    h = views.histogram([0.1, 0.2, 0.2, 1.0], bins=4)
    assert h["edges_ms"] == pytest.approx([100.0, 325.0, 550.0, 775.0, 1000.0])
    assert h["counts"] == [3.0, 0.0, 0.0, 1.0]


# --------------------------------------------------------------------------- real nats-server


async def ensure_telemetry_stream(js: JetStreamContext) -> None:
    """Create TELEMETRY unless the runtime (exporter) already did."""
    with contextlib.suppress(jse.BadRequestError):
        await js.add_stream(StreamConfig(name=TELEMETRY_STREAM, subjects=list(TELEMETRY_SUBJECTS)))


async def publish_spans(js: JetStreamContext, spans: list[SpanRecord]) -> None:
    for s in spans:
        await js.publish(span_subject(s.trace_id), codec.encode(s), timeout=10)


async def publish_result(js: JetStreamContext, result: TaskCompleted | TaskFailed) -> None:
    await js.publish(subjects.results(result.agent, result.task_id), codec.encode(result), timeout=10)


async def test_load_and_trace_against_nats(nats_server: EmbeddedNats, client: AgentClient,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    js = client.js
    # No TELEMETRY stream yet (or an empty one): reads are empty, not errors.
    assert await asyncio.wait_for(views.load_trace(js, "nope"), 10) == []
    await ensure_telemetry_stream(js)
    assert await asyncio.wait_for(views.load_spans(js, 3600), 10) == []

    now = time.time()
    a, b = task_trace("task-a", now - 5), task_trace("task-b", now - 3, fail_tool=False)
    await publish_spans(js, a + b)
    await publish_result(js, completed("task-a", now - 5, 1.0))
    await publish_result(js, failed("task-c", now - 2, 0.5, reason="deadline"))

    spans = await asyncio.wait_for(views.load_trace(js, "task-a"), 20)
    assert {s.span_id for s in spans} == {s.span_id for s in a}
    by_trace = await asyncio.wait_for(views.load_trace(js, a[0].trace_id), 20)
    assert {s.span_id for s in by_trace} == {s.span_id for s in a}
    assert await asyncio.wait_for(views.load_trace(js, "task-unknown"), 20) == []

    all_spans = await asyncio.wait_for(views.load_spans(js, 3600), 20)
    assert len(all_spans) == len(a) + len(b)
    results = await asyncio.wait_for(views.load_results(js, 3600), 20)
    assert {r.task_id for r in results} == {"task-a", "task-c"}
    recent = await asyncio.wait_for(views.load_recent_results(js, 1), 20)
    assert [r.task_id for r in recent] == ["task-c"]
    # A bounded scan: the first `limit` messages, oldest first.
    assert await asyncio.wait_for(views.load_spans(js, 3600, limit=3), 20) == all_spans[:3]

    settings = dataclasses.replace(Settings.from_env({}), nats_url=nats_server.url)
    code = await asyncio.wait_for(view_commands.cmd_trace(argparse.Namespace(task_id="task-a", width=40, json=False),
                                                  settings), 30)
    out = capsys.readouterr().out
    assert code == 0
    assert "task task-a" in out and "execute_tool refund_eligibility" in out and "FAILED timeout" in out
    assert "|| 3 parallel" in out and "120/30 tok" in out

    code = await asyncio.wait_for(view_commands.cmd_trace(argparse.Namespace(task_id="task-zzz", width=40, json=False),
                                                  settings), 30)
    cap = capsys.readouterr()
    assert code == 1 and cap.out == ""
    assert cap.err.strip().splitlines() == ["agentstream: error: no spans or events found for task 'task-zzz'"]

    code = await asyncio.wait_for(view_commands.cmd_stats(argparse.Namespace(since=3600.0, json=False), settings), 30)
    out = capsys.readouterr().out
    assert code == 0 and "deadline" in out and "refund_eligibility" in out


async def test_trace_falls_back_to_task_events(client: AgentClient) -> None:
    """With no spans stored, the waterfall is rebuilt from the task's events."""
    js = client.js
    now = time.time()
    for i, (tool, ok) in enumerate([("lookup_order", True), ("shipping_status", False)]):
        ev = ToolCallCompleted(task_id="task-ev", agent="support", step=1, call_id=f"c{i}", tool=tool, ok=ok,
                               error=None if ok else ToolError(kind="timeout", message="slow"),
                               started_at=now - 1 + i * 0.01, finished_at=now - 0.5)
        await js.publish(subjects.events("support", "task-ev"), codec.encode(ev), timeout=10)
    await publish_result(js, completed("task-ev", now - 1.2, 1.0))
    trace = await asyncio.wait_for(views.load_task_trace(js, "task-ev"), 20)
    assert trace.source == "events"
    text = views.render_waterfall(trace.spans)
    assert "rebuilt from task events" in text
    assert "|| 2 parallel" in text and "FAILED timeout" in text and "invoke_agent support" in text


def test_an_unpriced_model_shows_unpriced_and_the_hint_not_zero_dollars() -> None:
    """A local model with no entry in AGENTSTREAM_PRICES used tokens and cost
    nothing: `trace` and `stats` say 'unpriced' and how to set a price."""
    spans = [s for s in task_trace("t-u", 1000.0, cost=0.0)]
    spans = [msgspec.structs.replace(s, attributes={**s.attributes, "gen_ai.request.model": "smollm2",
                                                "gen_ai.response.model": "smollm2"})
             if s.name.startswith("chat") else s for s in spans]
    text = views.render_waterfall(spans, width=40)
    assert "$0.0000" not in text and "tok unpriced" in text and "unpriced: smollm2" in text, text
    stats = views.compute_stats(spans, [completed("t-u", 1000.0, 1.0, cost=0.0)])
    out = views.render_stats(stats)
    assert "$0.0000" not in out, out
    assert "cost unpriced (smollm2)" in out.splitlines()[0]
    assert "AGENTSTREAM_PRICES" in out.splitlines()[1] and "smollm2" in out.splitlines()[1]
    assert views.stats_json(stats)["unpriced_models"] == ["smollm2"]
    # A priced model next to it keeps its dollars.
    assert "$0.0030" in views.render_stats(views.compute_stats(task_trace("t-p", 1000.0), []))
