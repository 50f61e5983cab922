"""Read-side views over telemetry: a task's trace as a terminal waterfall,
latency/error/cost statistics, and the data access both (and the dashboard) use.

Data comes from JetStream only, no other infrastructure:

- finished spans (:class:`SpanRecord`) on stream ``TELEMETRY``, subject
  ``telemetry.spans.<trace_id>``, written by the built-in exporter;
- results (``TaskCompleted`` / ``TaskFailed``) on stream ``RESULTS``;
- when a task has no spans (no exporter running, or spans expired), its
  progress events on ``EVENTS`` are turned into equivalent spans, so the
  waterfall still works; views say when they show such a reconstruction.

Every read is a bounded scan: an ephemeral, unacknowledged pull consumer (the
same thing an ordered consumer is under the hood) that stops at the number of
messages pending when it was created, at the stream's last sequence at call
time, at ``limit`` messages, or at ``timeout`` seconds, whichever comes first.
That is fine for demo- and small-production-size data; an index is the next step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors as jse
from nats.js import JetStreamContext

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    ModelTurnCompleted,
    TaskEvent,
    TaskFailed,
    TaskResult,
    ToolCallCompleted,
)
from agentstream.contracts.telemetry import TELEMETRY_STREAM, SpanRecord, decode_spans, span_subject
from agentstream.runtime.adapters.scan import MAX_SCAN, RESULTS_STREAM, Raw, last_seq, scan, stored_result
from agentstream.runtime.observability.task_stats import (  # re-exported: views is the read side's one import
    TOOLS_UNUSED_MIN_TURNS,
    ErrorKind,
    GroupStats,
    Latency,
    Stats,
    compute_stats,
    format_duration,
    histogram,
    parse_duration,
    percentile,
    render_stats,
    stats_json,
    time_series,
)
from agentstream.runtime.observability.waterfall import (
    _TRACE_ID,
    ALL_RESULTS,
    ALL_SPANS,
    EVENTS_STREAM,
    # re-exported, as above
    PRICES_HINT,
    SYNTHETIC,
    TRACE_LOOKBACK_S,
    _op,
    _task_of,
    error_type,
    is_error,
    is_unpriced,
    parallel_groups,
    render_waterfall,
    span_note,
    tree_order,
)

# =========================================================================== data access


def _decode_spans(raws: Iterable[Raw]) -> list[SpanRecord]:
    """Every span in the messages, each span id once (a redelivered final step
    may have emitted its ``invoke_agent`` span twice)."""
    spans: dict[str, SpanRecord] = {}
    for r in raws:
        try:
            batch = decode_spans(r.data)
        except (msgspec.DecodeError, UnicodeError):
            continue  # a newer or broken producer: skip, never fail the view
        for sp in batch:
            spans.setdefault(sp.span_id, sp)
    return list(spans.values())


def _decode_results(raws: Iterable[Raw]) -> list[TaskResult]:
    by_task: dict[str, TaskResult] = {}
    for r in raws:
        try:
            res = codec.task_result.decode(r.data)
        except codec.DecodeError:
            continue
        by_task[res.task_id] = res  # a task has one result; keep the last copy
    return list(by_task.values())


async def load_spans(js: JetStreamContext, since_s: float, *, limit: int = MAX_SCAN) -> list[SpanRecord]:
    """Every span written in the last ``since_s`` seconds (bounded)."""
    raws = await scan(js, TELEMETRY_STREAM, ALL_SPANS, start_time=time.time() - since_s, limit=limit)
    return _decode_spans(raws)


async def load_results(js: JetStreamContext, since_s: float, *, limit: int = MAX_SCAN) -> list[TaskResult]:
    """Task results (``TaskCompleted`` / ``TaskFailed``) written in the last ``since_s`` seconds."""
    raws = await scan(js, RESULTS_STREAM, ALL_RESULTS, start_time=time.time() - since_s, limit=limit)
    return _decode_results(raws)


async def load_recent_results(js: JetStreamContext, limit: int = 50) -> list[TaskResult]:
    """The last ``limit`` results, newest first."""
    last = await last_seq(js, RESULTS_STREAM)
    if not last:
        return []
    # A few spare messages absorb duplicate copies of a result.
    raws = await scan(js, RESULTS_STREAM, ALL_RESULTS, start_seq=max(1, last - 2 * limit + 1), limit=2 * limit,
                      last=last)
    results = _decode_results(raws)
    results.sort(key=lambda r: r.finished_at, reverse=True)
    return results[:limit]


async def load_result(js: JetStreamContext, task_id: str) -> TaskResult | None:
    """The task's stored result, if any."""
    if not subjects.is_token(task_id):
        return None
    try:
        data = await stored_result(js, task_id)
    except (jse.NotFoundError, nats.errors.TimeoutError):
        return None
    if data is None:
        return None
    try:
        return codec.task_result.decode(data)
    except codec.DecodeError:
        return None


def _by_start(spans: Iterable[SpanRecord]) -> list[SpanRecord]:
    return sorted(spans, key=lambda s: (s.start, s.end))


async def _find_trace(js: JetStreamContext, task_or_trace_id: str, *, limit: int = MAX_SCAN,
                      ) -> tuple[list[SpanRecord], tuple[str, TaskResult | None] | None]:
    """:func:`load_trace`, plus ``(task_id, result)`` when the id was looked up
    as a task id, so callers that also want the result need not read it again."""
    ident = task_or_trace_id.strip()
    if not subjects.is_token(ident):
        return [], None
    if _TRACE_ID.fullmatch(ident):
        spans = _decode_spans(await scan(js, TELEMETRY_STREAM, span_subject(ident), limit=limit))
        if spans:
            return _by_start(spans), None
    # A task id: find its trace(s). Spans are published once finished, so never
    # before the task started: with the result's start time the scan is short.
    result = await load_result(js, ident)
    start = None if result is None else result.started_at - TRACE_LOOKBACK_S
    raws = await scan(js, TELEMETRY_STREAM, ALL_SPANS, start_time=start, limit=limit)
    candidates = _decode_spans(raws)
    trace_ids = sorted({s.trace_id for s in candidates if _task_of(s) == ident})
    # A trace's spans may predate the lookback window, or lie past a scan cut
    # at ``limit``: then read each trace's subject in full. Otherwise the scan
    # above already holds every message of these traces.
    rescan = start is not None or len(raws) >= limit
    by_subject: dict[str, list[Raw]] = defaultdict(list)
    if not rescan:
        for r in raws:
            by_subject[r.subject].append(r)
    spans_by_id: dict[str, SpanRecord] = {}
    for trace_id in trace_ids:
        if not subjects.is_token(trace_id):
            continue
        subject = span_subject(trace_id)
        trace_raws = (await scan(js, TELEMETRY_STREAM, subject, limit=limit) if rescan
                      else by_subject.get(subject, []))
        for s in _decode_spans(trace_raws):
            spans_by_id[s.span_id] = s
    return _by_start(spans_by_id.values()), (ident, result)


async def load_trace(js: JetStreamContext, task_or_trace_id: str, *, limit: int = MAX_SCAN) -> list[SpanRecord]:
    """The spans of a task (found through ``agentstream.task_id`` on its spans) or
    of a trace id (32 hex chars), sorted by start. Empty if none are stored."""
    spans, _looked_up = await _find_trace(js, task_or_trace_id, limit=limit)
    return spans


async def load_task_events(js: JetStreamContext, task_id: str, *, limit: int = 10_000) -> list[TaskEvent]:
    """The task's progress and inbox events from ``EVENTS`` (bounded)."""
    if not subjects.is_token(task_id):
        return []
    return _decode_events(await scan(js, EVENTS_STREAM, subjects.stored(subjects.any_task_activity(task_id)), limit=limit))


def _decode_events(raws: Iterable[Raw]) -> list[TaskEvent]:
    events: list[TaskEvent] = []
    for r in raws:
        try:
            events.append(codec.task_event.decode(r.data))
        except codec.DecodeError:
            continue
    return events


def _sid(*parts: object) -> str:
    return uuid.uuid5(uuid.NAMESPACE_OID, ":".join(map(str, parts))).hex[:16]


def spans_from_events(task_id: str, events: Sequence[TaskEvent], result: TaskResult | None) -> list[SpanRecord]:
    """Spans equivalent to what the exporter writes, rebuilt from a task's events:
    ``invoke_agent`` (from the result), ``chat`` per model turn, ``execute_tool``
    per tool call. Marked with attribute ``agentstream.synthetic``."""
    trace_id = uuid.uuid5(uuid.NAMESPACE_OID, f"agentstream-task:{task_id}").hex
    root = _sid(task_id, "root")
    spans: list[SpanRecord] = []
    agent = result.agent if result is not None else ""
    for ev in events:
        if isinstance(ev, ModelTurnCompleted):
            agent = agent or ev.agent
            u = ev.usage
            spans.append(SpanRecord(
                trace_id=trace_id, span_id=_sid(task_id, "chat", ev.step), parent_span_id=root,
                name=f"chat {ev.model}", kind="client", start=ev.started_at, end=ev.finished_at,
                worker=ev.worker, attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": ev.model,
                    "gen_ai.response.model": ev.model, "gen_ai.usage.input_tokens": u.input_tokens,
                    "gen_ai.usage.output_tokens": u.output_tokens,
                    "gen_ai.response.finish_reasons": [ev.finish_reason], "agentstream.cost_usd": u.cost_usd,
                    "agentstream.task_id": task_id, "agentstream.step": ev.step, SYNTHETIC: True}))
        elif isinstance(ev, ToolCallCompleted):
            agent = agent or ev.agent
            kind = ev.error.kind if (not ev.ok and ev.error is not None) else ("error" if not ev.ok else "")
            spans.append(SpanRecord(
                trace_id=trace_id, span_id=_sid(task_id, "tool", ev.call_id), parent_span_id=root,
                name=f"execute_tool {ev.tool}", start=ev.started_at, end=ev.finished_at,
                status="ok" if ev.ok else "error", error_type=kind, worker=ev.worker, attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": ev.tool,
                    "gen_ai.tool.call.id": ev.call_id, "agentstream.task_id": task_id,
                    "agentstream.step": ev.step, SYNTHETIC: True, **({"error.type": kind} if kind else {})}))
    if result is not None:
        start = min([result.started_at, *(s.start for s in spans)])
        end = max([result.finished_at, *(s.end for s in spans)])
        failed = isinstance(result, TaskFailed)
        reason = result.reason if isinstance(result, TaskFailed) else ""
        spans.append(SpanRecord(
            trace_id=trace_id, span_id=root, name=f"invoke_agent {result.agent}", start=start, end=end,
            status="error" if failed else "ok", error_type=reason, attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": result.agent,
                "gen_ai.conversation.id": result.conversation_id, "agentstream.task_id": task_id,
                "agentstream.tenant_id": result.tenant_id, "agentstream.user_id": result.user_id,
                "agentstream.cost_usd": result.usage.cost_usd, SYNTHETIC: True,
                **({"error.type": reason} if reason else {})}))
    elif spans:
        spans.append(SpanRecord(
            trace_id=trace_id, span_id=root, name=f"invoke_agent {agent}".strip(),
            start=min(s.start for s in spans), end=max(s.end for s in spans), attributes={
                "gen_ai.agent.name": agent, "agentstream.task_id": task_id, SYNTHETIC: True,
                "agentstream.in_progress": True}))
    return _by_start(spans)


@dataclass(frozen=True)
class TaskTrace:
    task_id: str
    spans: list[SpanRecord]
    result: TaskResult | None
    source: str  # "telemetry" | "events" | "" (nothing found)


async def load_task_trace(js: JetStreamContext, task_or_trace_id: str) -> TaskTrace:
    """Spans of a task from TELEMETRY, else rebuilt from its events and result."""
    spans, looked_up = await _find_trace(js, task_or_trace_id)
    task_id = next((t for t in map(_task_of, spans) if t), task_or_trace_id)
    if looked_up is not None and looked_up[0] == task_id:
        result = looked_up[1]  # already read while finding the trace
    else:
        result = await load_result(js, task_id)
    if spans:
        return TaskTrace(task_id, spans if result is not None else _with_pending_root(spans), result, "telemetry")
    events = await load_task_events(js, task_id)
    spans = spans_from_events(task_id, events, result)
    return TaskTrace(task_id, spans, result, "events" if spans else "")


def _with_pending_root(spans: list[SpanRecord]) -> list[SpanRecord]:
    """A task still running (waiting for a human, say) has no ``invoke_agent``
    span yet: it is recorded when the task ends. Its spans all hang under that
    span's id, so show a stand-in root with it, marked in progress."""
    if any(_op(s) == "invoke_agent" for s in spans):
        return spans
    ids = {s.span_id for s in spans}
    missing = {s.parent_span_id for s in spans if s.parent_span_id and s.parent_span_id not in ids}
    if len(missing) != 1:
        return spans
    agent = next((s.name.split(" ", 1)[1] for s in spans if _op(s) == "step" and " " in s.name), "")
    task_id = next((t for t in map(_task_of, spans) if t), "")
    root = SpanRecord(trace_id=spans[0].trace_id, span_id=missing.pop(), name=f"invoke_agent {agent}".strip(),
                      start=min(s.start for s in spans), end=max(s.end for s in spans),
                      attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
                                  "agentstream.task_id": task_id, "agentstream.in_progress": True})
    return _by_start([*spans, root])

async def load_stats(js: JetStreamContext, since_s: float) -> tuple[Stats, list[TaskResult], str]:
    """Stats over the window: spans from TELEMETRY, else (no exporter) rebuilt from
    the window's events. Returns (stats, results, source)."""
    # Both scans at once; on failure, the results scan's error wins, as when run in turn.
    got_results, got_spans = await asyncio.gather(load_results(js, since_s), load_spans(js, since_s),
                                                  return_exceptions=True)
    if isinstance(got_results, BaseException):
        raise got_results
    if isinstance(got_spans, BaseException):
        raise got_spans
    results, spans = got_results, got_spans
    source = "telemetry"
    if not spans and results:
        source = "events"
        by_task: dict[str, list[TaskEvent]] = defaultdict(list)
        for ev in _decode_events(await scan(js, EVENTS_STREAM, ">", start_time=time.time() - since_s)):
            if isinstance(ev, (ModelTurnCompleted, ToolCallCompleted)):
                by_task[ev.task_id].append(ev)
        for task_id, evs in by_task.items():
            spans.extend(s for s in spans_from_events(task_id, evs, None) if _op(s) != "invoke_agent")
    return compute_stats(spans, results, since_s=since_s), results, source


__all__ = [
    "ErrorKind",
    "GroupStats",
    "Latency",
    "PRICES_HINT",
    "Stats",
    "TOOLS_UNUSED_MIN_TURNS",
    "TaskTrace",
    "compute_stats",
    "error_type",
    "format_duration",
    "histogram",
    "is_error",
    "is_unpriced",
    "load_recent_results",
    "load_result",
    "load_results",
    "load_spans",
    "load_stats",
    "load_task_events",
    "load_task_trace",
    "load_trace",
    "parallel_groups",
    "parse_duration",
    "percentile",
    "render_stats",
    "render_waterfall",
    "span_note",
    "spans_from_events",
    "stats_json",
    "time_series",
    "tree_order",
]
