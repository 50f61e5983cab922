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
import math
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
from agentstream.runtime.observability.timeline import overlapping

EVENTS_STREAM = "EVENTS"
ALL_SPANS = span_subject("*")  # telemetry.spans.*
ALL_RESULTS = subjects.any_results("*")  # agents.*.results.*

TRACE_LOOKBACK_S = 300.0  # scan spans from this long before the task started (clock skew, batching)
WATERFALL_WIDTH = 48
SYNTHETIC = "agentstream.synthetic"  # attribute on spans rebuilt from task events

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


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


def _task_of(span: SpanRecord) -> str:
    value = span.attributes.get("agentstream.task_id", "")
    return str(value) if value is not None else ""


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
    return _decode_events(await scan(js, EVENTS_STREAM, subjects.any_task_activity(task_id), limit=limit))


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


# =========================================================================== waterfall


def _attr(span: SpanRecord, key: str, default: Any = None) -> Any:
    return span.attributes.get(key, default)


def _op(span: SpanRecord) -> str:
    return span.name.split(" ", 1)[0]


def error_type(span: SpanRecord) -> str:
    return span.error_type or str(_attr(span, "error.type", "") or "")


def is_error(span: SpanRecord) -> bool:
    return span.status == "error" or bool(error_type(span))


def _num(value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) else 0.0


def tree_order(spans: Sequence[SpanRecord]) -> list[tuple[int, SpanRecord]]:
    """(depth, span) in depth-first order, children by start time. A span whose
    parent is not in the set is a root."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[SpanRecord]] = defaultdict(list)
    roots: list[SpanRecord] = []
    for s in spans:
        if s.parent_span_id and s.parent_span_id in by_id and s.parent_span_id != s.span_id:
            children[s.parent_span_id].append(s)
        else:
            roots.append(s)
    out: list[tuple[int, SpanRecord]] = []
    seen: set[str] = set()

    def key(s: SpanRecord) -> tuple[float, float, str]:
        return (s.start, -s.end, s.name)

    stack: list[tuple[int, SpanRecord]] = [(0, s) for s in sorted(roots, key=key, reverse=True)]
    while stack:
        depth, s = stack.pop()
        if s.span_id in seen:
            continue
        seen.add(s.span_id)
        out.append((depth, s))
        for c in sorted(children.get(s.span_id, []), key=key, reverse=True):
            stack.append((depth + 1, c))
    # Spans caught in a parent cycle never reach a root: show them anyway.
    for s in sorted(spans, key=key):
        if s.span_id not in seen:
            seen.add(s.span_id)
            out.append((0, s))
    return out


def parallel_groups(spans: Sequence[SpanRecord]) -> dict[str, int]:
    """span id -> size of its group, for ``execute_tool`` spans that overlap in time."""
    groups = overlapping([s for s in spans if _op(s) == "execute_tool"])
    return {s.span_id: len(g) for g in groups if len(g) > 1 for s in g}


def _money(v: float) -> str:
    return f"${v:.4f}" if v < 1 else f"${v:,.2f}"


# Models that cost nothing by construction (the scripted demo models, FunctionModel).
_FREE_MODELS = ("scripted", "function-model")
PRICES_HINT = ("set AGENTSTREAM_PRICES='{\"MODEL\": {\"input\": 0.5, \"output\": 1.5}}' "
               "(USD per million tokens)")


def is_unpriced(model: str, tokens: int, cost: float) -> bool:
    """A model that used tokens and cost nothing has no price in the worker's
    table (AGENTSTREAM_PRICES): its cost is unknown, not $0."""
    return tokens > 0 and cost == 0 and not model.startswith(_FREE_MODELS)


def _chat_model(span: SpanRecord) -> str:
    return str(_attr(span, "gen_ai.response.model", "") or _attr(span, "gen_ai.request.model", "") or _suffix(span))


def _chat_unpriced(span: SpanRecord) -> bool:
    tokens = int(_num(_attr(span, "gen_ai.usage.input_tokens", 0))) + \
        int(_num(_attr(span, "gen_ai.usage.output_tokens", 0)))
    return is_unpriced(_chat_model(span), tokens, _num(_attr(span, "agentstream.cost_usd", 0)))


def span_note(span: SpanRecord) -> str:
    parts: list[str] = []
    op = _op(span)
    if op == "chat":
        tin = int(_num(_attr(span, "gen_ai.usage.input_tokens", 0)))
        tout = int(_num(_attr(span, "gen_ai.usage.output_tokens", 0)))
        cost = "unpriced" if _chat_unpriced(span) else _money(_num(_attr(span, "agentstream.cost_usd", 0)))
        parts.append(f"{tin}/{tout} tok {cost}")
        reasons = _attr(span, "gen_ai.response.finish_reasons")
        if isinstance(reasons, list | tuple) and reasons:
            parts.append("-> " + ",".join(map(str, reasons)))
    if is_error(span):
        parts.append(f"FAILED {error_type(span) or 'error'}")
    return "  ".join(parts)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def render_waterfall(spans: Sequence[SpanRecord], width: int = WATERFALL_WIDTH, *, label_width: int = 52,
                     rows: Sequence[tuple[int, SpanRecord]] | None = None,
                     parallel: dict[str, int] | None = None) -> str:
    """The spans of one trace on a common time axis: one line per span, indented
    under its parent, ``#`` bars (``x`` for failures) from its start offset for its
    duration; overlapping tool calls are marked ``||``; model calls show tokens and cost.
    ``rows`` and ``parallel``: :func:`tree_order` and :func:`parallel_groups` of
    ``spans`` if the caller has them already."""
    if not spans:
        return "(no spans)"
    width = max(10, width)
    t0 = min(s.start for s in spans)
    t1 = max(s.end for s in spans)
    total = max(t1 - t0, 1e-6)
    rows = tree_order(spans) if rows is None else rows
    parallel = parallel_groups(spans) if parallel is None else parallel
    labels = [("  " * d + s.name) for d, s in rows]
    lw = min(max([len(x) for x in labels] + [10]), label_width)

    lines: list[str] = []
    # The task's invoke_agent span describes the trace even when it is not the
    # root (a client's ``send`` of the task usually is).
    roots = [s for _d, s in rows if _op(s) == "invoke_agent"]
    head = roots[0] if roots else rows[0][1]
    chats = [s for s in spans if _op(s) == "chat"]
    tools = [s for s in spans if _op(s) == "execute_tool"]
    tin = sum(int(_num(_attr(s, "gen_ai.usage.input_tokens", 0))) for s in chats)
    tout = sum(int(_num(_attr(s, "gen_ai.usage.output_tokens", 0))) for s in chats)
    cost = sum(_num(_attr(s, "agentstream.cost_usd", 0)) for s in chats)
    if not chats and roots:
        cost = _num(_attr(roots[0], "agentstream.cost_usd", 0))
    failed = [s for s in spans if is_error(s)]
    task = _task_of(head) or "?"
    agent = str(_attr(head, "gen_ai.agent.name", "") or (head.name.split(" ", 1)[1] if " " in head.name else ""))
    status = (f"FAILED {error_type(head) or 'error'}" if is_error(head)
              else "in progress" if _attr(head, "agentstream.in_progress") else "ok")
    lines.append(f"trace {head.trace_id}  task {task}  agent {agent or '?'}  {status}  {_ms(total)} ms")
    unpriced = sorted({_chat_model(s) for s in chats if _chat_unpriced(s)})
    cost_text = _money(cost) if not unpriced else \
        f"unpriced: {', '.join(unpriced)}" if cost == 0 else f"{_money(cost)} + unpriced {', '.join(unpriced)}"
    lines.append(f"{len(spans)} spans: {len(chats)} model calls ({tin} in / {tout} out tokens, {cost_text}), "
                 f"{len(tools)} tool calls, {len(failed)} failed"
                 + ("  [rebuilt from task events: no telemetry spans stored]"
                    if any(_attr(s, SYNTHETIC) for s in spans) else ""))
    axis_end = f"{_ms(total)} ms"
    lines.append(f"{'':{lw}} |0 ms{axis_end:>{width - 4}}| {'start':>9} {'dur':>9}")
    for (_depth, s), label in zip(rows, labels):
        a = int((s.start - t0) / total * width)
        a = min(max(a, 0), width - 1)
        b = int(round((s.end - t0) / total * width))
        b = min(max(b, a + 1), width)
        ch = "x" if is_error(s) else "#"
        bar = " " * a + ch * (b - a) + " " * (width - b)
        note = span_note(s)
        if s.span_id in parallel:
            note = (f"|| {parallel[s.span_id]} parallel  " + note).rstrip()
        if len(label) > lw:
            label = label[: lw - 1] + "~"
        lines.append(f"{label:<{lw}} |{bar}| {'+' + _ms(s.start - t0):>9} {_ms(s.end - s.start):>9}  {note}".rstrip())
    return "\n".join(lines)


# =========================================================================== stats


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks
    (numpy's default). NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Latency:
    count: int
    p50: float  # seconds; NaN without samples
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        if not samples:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(len(samples), percentile(samples, 50), percentile(samples, 95), percentile(samples, 99),
                   sum(samples) / len(samples), max(samples))


@dataclass(frozen=True)
class GroupStats:
    """One agent, tool or model."""

    name: str
    count: int
    errors: int
    latency: Latency
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    durations: tuple[float, ...] = field(default=(), repr=False)  # seconds, for histograms

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    @property
    def cost_per_call(self) -> float:
        return self.cost_usd / self.count if self.count else 0.0


@dataclass(frozen=True)
class ErrorKind:
    scope: str  # task | tool | model
    kind: str
    count: int
    rate: float  # count / calls of that scope


@dataclass(frozen=True)
class Stats:
    tasks: int
    tasks_failed: int
    task_cost_total: float
    task_cost_mean: float
    agents: list[GroupStats]
    tools: list[GroupStats]
    models: list[GroupStats]
    errors: list[ErrorKind]
    spans: int
    since_s: float | None = None
    # Models that used tokens and cost nothing: no price configured (shown as "unpriced", not $0).
    unpriced_models: tuple[str, ...] = ()
    # (agent, model, turns): the agent's last turns offered tools and called none.
    tools_unused: tuple[tuple[str, str, int], ...] = ()

    @property
    def task_error_rate(self) -> float:
        return self.tasks_failed / self.tasks if self.tasks else 0.0

    @property
    def tool_calls(self) -> int:
        return sum(t.count for t in self.tools)

    @property
    def tool_errors(self) -> int:
        return sum(t.errors for t in self.tools)

    @property
    def model_calls(self) -> int:
        return sum(m.count for m in self.models)


@dataclass
class _Acc:
    durations: list[float] = field(default_factory=list)
    errors: int = 0
    cost: float = 0.0
    tin: int = 0
    tout: int = 0

    def done(self, name: str) -> GroupStats:
        return GroupStats(name=name, count=len(self.durations), errors=self.errors,
                          latency=Latency.of(self.durations), cost_usd=self.cost, input_tokens=self.tin,
                          output_tokens=self.tout, durations=tuple(self.durations))


def _suffix(span: SpanRecord) -> str:
    return span.name.split(" ", 1)[1] if " " in span.name else span.name


def compute_stats(spans: Sequence[SpanRecord], results: Sequence[TaskResult], *,
                  since_s: float | None = None) -> Stats:
    """Latency percentiles, error rates and cost per agent, tool and model.

    Tasks come from results; a task with an ``invoke_agent`` span but no result in
    the window counts from its span (its cost from the span, else from its model calls)."""
    agents: dict[str, _Acc] = defaultdict(_Acc)
    tools: dict[str, _Acc] = defaultdict(_Acc)
    models: dict[str, _Acc] = defaultdict(_Acc)
    errors: dict[tuple[str, str], int] = defaultdict(int)
    task_costs: list[float] = []
    failed = 0

    chat_cost_by_trace: dict[str, float] = defaultdict(float)
    for s in spans:
        op = _op(s)
        dur = max(0.0, s.end - s.start)
        if op == "execute_tool":
            name = str(_attr(s, "gen_ai.tool.name", "") or _suffix(s))
            acc = tools[name]
            acc.durations.append(dur)
            if is_error(s):
                acc.errors += 1
                errors[("tool", error_type(s) or "error")] += 1
        elif op == "chat":
            name = str(_attr(s, "gen_ai.response.model", "") or _attr(s, "gen_ai.request.model", "") or _suffix(s))
            acc = models[name]
            acc.durations.append(dur)
            cost = _num(_attr(s, "agentstream.cost_usd", 0))
            acc.cost += cost
            acc.tin += int(_num(_attr(s, "gen_ai.usage.input_tokens", 0)))
            acc.tout += int(_num(_attr(s, "gen_ai.usage.output_tokens", 0)))
            chat_cost_by_trace[s.trace_id] += cost
            if is_error(s):
                acc.errors += 1
                errors[("model", error_type(s) or "error")] += 1

    seen: set[str] = set()
    for r in results:
        if r.task_id in seen:
            continue
        seen.add(r.task_id)
        acc = agents[r.agent]
        acc.durations.append(max(0.0, r.finished_at - r.started_at))
        acc.cost += r.usage.cost_usd
        acc.tin += r.usage.input_tokens
        acc.tout += r.usage.output_tokens
        task_costs.append(r.usage.cost_usd)
        if isinstance(r, TaskFailed):
            acc.errors += 1
            failed += 1
            errors[("task", r.reason or "error")] += 1
    for s in spans:
        if _op(s) != "invoke_agent":
            continue
        task = _task_of(s) or s.span_id
        if task in seen:
            continue
        seen.add(task)
        name = str(_attr(s, "gen_ai.agent.name", "") or _suffix(s))
        acc = agents[name]
        acc.durations.append(max(0.0, s.end - s.start))
        cost = _attr(s, "agentstream.cost_usd")
        c = _num(cost) if cost is not None else chat_cost_by_trace.get(s.trace_id, 0.0)
        acc.cost += c
        task_costs.append(c)
        if is_error(s):
            acc.errors += 1
            failed += 1
            errors[("task", error_type(s) or "error")] += 1

    scope_total = {"task": len(task_costs), "tool": sum(len(a.durations) for a in tools.values()),
                   "model": sum(len(a.durations) for a in models.values())}
    kinds = [ErrorKind(scope, kind, n, n / scope_total[scope] if scope_total[scope] else 0.0)
             for (scope, kind), n in errors.items()]
    kinds.sort(key=lambda e: (-e.count, e.scope, e.kind))

    def groups(d: dict[str, _Acc]) -> list[GroupStats]:
        return sorted((a.done(n) for n, a in d.items()), key=lambda g: (-g.count, g.name))

    total = sum(task_costs)
    unused = _tools_unused(spans)
    unpriced = tuple(sorted(n for n, a in models.items() if is_unpriced(n, a.tin + a.tout, a.cost)))
    return Stats(tasks=len(task_costs), tasks_failed=failed, task_cost_total=total,
                 task_cost_mean=total / len(task_costs) if task_costs else 0.0, agents=groups(agents),
                 tools=groups(tools), models=groups(models), errors=kinds, spans=len(spans), since_s=since_s,
                 unpriced_models=unpriced, tools_unused=unused)


# `stats` warns about an agent whose model was offered tools in at least this
# many of its last turns (up to TOOLS_UNUSED_TURNS) and called none.
TOOLS_UNUSED_MIN_TURNS = 5


def _tools_unused(spans: Sequence[SpanRecord]) -> tuple[tuple[str, str, int], ...]:
    from agentstream.runtime.observability.instrumentation import TOOLS_UNUSED_TURNS

    offered: dict[str, list[SpanRecord]] = defaultdict(list)
    for s in spans:
        if _op(s) == "chat" and _num(_attr(s, "agentstream.tools_offered", 0)) > 0:
            offered[str(_attr(s, "gen_ai.agent.name", "") or "?")].append(s)
    out = []
    for agent, chats in sorted(offered.items()):
        last = sorted(chats, key=lambda s: s.end)[-TOOLS_UNUSED_TURNS:]
        if len(last) >= TOOLS_UNUSED_MIN_TURNS and not any(_num(_attr(s, "agentstream.tool_calls", 0)) for s in last):
            out.append((agent, _chat_model(last[-1]), len(last)))
    return tuple(out)


def _lat(v: float) -> str:
    if math.isnan(v):
        return "-"
    if v < 0.01:
        return f"{v * 1000:.1f} ms"
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = [(lambda s, w=w: f"{s:<{w}}") if i == 0 else (lambda s, w=w: f"{s:>{w}}") for i, w in enumerate(widths)]
    out = ["  " + "  ".join(f(h) for f, h in zip(fmt, header))]
    out += ["  " + "  ".join(f(str(c)) for f, c in zip(fmt, r)) for r in rows]
    return out


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def render_stats(stats: Stats) -> str:
    window = f" in the last {format_duration(stats.since_s)}" if stats.since_s else ""
    unpriced = set(stats.unpriced_models)
    # All cost unknown: say so instead of a $0 that reads as free.
    money = (lambda v: "unpriced" if v == 0 else _money(v)) if unpriced else _money
    cost = (f"cost unpriced ({', '.join(sorted(unpriced))})" if unpriced and stats.task_cost_total == 0 else
            f"cost {_money(stats.task_cost_total)} total, {_money(stats.task_cost_mean)} per task"
            + (f" + unpriced {', '.join(sorted(unpriced))}" if unpriced else ""))
    lines = [f"{stats.tasks} tasks{window}: {stats.tasks - stats.tasks_failed} completed, {stats.tasks_failed} failed "
             f"(error rate {stats.task_error_rate:.1%}); {cost}; {stats.model_calls} model calls, "
             f"{stats.tool_calls} tool calls ({stats.spans} spans)"]
    if unpriced:
        lines.append(f"unpriced models (no price configured): {', '.join(sorted(unpriced))}; "
                     + PRICES_HINT.replace("MODEL", sorted(unpriced)[0]))
    for agent, model, turns in stats.tools_unused:
        lines.append(f"warning: agent {agent}: model {model} was offered tools in its last {turns} turns and called "
                     "none; it may not support tool calling (agentstream doctor)")
    if not stats.tasks and not stats.spans:
        lines.append("(no tasks or spans in this window)")
        return "\n".join(lines)
    if stats.agents:
        lines += ["", "agents (task latency)"]
        lines += _table(["agent", "tasks", "p50", "p95", "p99", "errors", "err%", "cost", "cost/task"],
                        [[g.name, str(g.count), _lat(g.latency.p50), _lat(g.latency.p95), _lat(g.latency.p99),
                          str(g.errors), f"{g.error_rate:.1%}", money(g.cost_usd), money(g.cost_per_call)]
                         for g in stats.agents])
    if stats.models:
        lines += ["", "models (chat latency)"]
        lines += _table(["model", "calls", "p50", "p95", "p99", "errors", "err%", "in tok", "out tok", "cost"],
                        [[g.name, str(g.count), _lat(g.latency.p50), _lat(g.latency.p95), _lat(g.latency.p99),
                          str(g.errors), f"{g.error_rate:.1%}", str(g.input_tokens), str(g.output_tokens),
                          "unpriced" if g.name in unpriced else _money(g.cost_usd)] for g in stats.models])
    if stats.tools:
        lines += ["", "tools (execute_tool latency; tools have no cost)"]
        lines += _table(["tool", "calls", "p50", "p95", "p99", "errors", "err%"],
                        [[g.name, str(g.count), _lat(g.latency.p50), _lat(g.latency.p95), _lat(g.latency.p99),
                          str(g.errors), f"{g.error_rate:.1%}"] for g in stats.tools])
    lines += ["", "errors by kind"]
    if stats.errors:
        lines += _table(["scope", "kind", "count", "rate"],
                        [[e.scope, e.kind, str(e.count), f"{e.rate:.1%}"] for e in stats.errors])
    else:
        lines.append("  (none)")
    return "\n".join(lines)


def histogram(samples: Sequence[float], bins: int = 12) -> dict[str, list[float]]:
    """Equal-width histogram of durations in seconds -> edges (ms) and counts."""
    if not samples:
        return {"edges_ms": [], "counts": []}
    lo, hi = min(samples), max(samples)
    if hi - lo < 1e-9:
        return {"edges_ms": [lo * 1000, hi * 1000 + 1], "counts": [len(samples)]}
    step = (hi - lo) / bins
    counts = [0] * bins
    for v in samples:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    return {"edges_ms": [(lo + i * step) * 1000 for i in range(bins + 1)], "counts": [float(c) for c in counts]}


def time_series(results: Sequence[TaskResult], since_s: float, *, now: float | None = None,
                buckets: int = 24) -> list[dict[str, float]]:
    """Per time bucket: tasks, failed, cost, error rate (by finish time)."""
    now = time.time() if now is None else now
    start = now - since_s
    step = since_s / buckets
    rows = [{"t": start + i * step, "tasks": 0.0, "failed": 0.0, "cost_usd": 0.0, "error_rate": 0.0}
            for i in range(buckets)]
    for r in results:
        i = int((r.finished_at - start) / step)
        if 0 <= i < buckets:
            rows[i]["tasks"] += 1
            rows[i]["cost_usd"] += r.usage.cost_usd
            rows[i]["failed"] += isinstance(r, TaskFailed)
    for row in rows:
        row["error_rate"] = row["failed"] / row["tasks"] if row["tasks"] else 0.0
    return rows


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


# =========================================================================== CLI glue

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.I)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``1h``, ``2d`` (or bare seconds) -> seconds. ValueError otherwise."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 15m, 1h or 2d")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"invalid duration {text!r}: must be more than zero")
    return value


def stats_json(stats: Stats) -> dict[str, Any]:
    def nan(v: float) -> float | None:
        return None if math.isnan(v) else v

    def group(g: GroupStats) -> dict[str, Any]:
        lat = g.latency
        return {"name": g.name, "count": g.count, "errors": g.errors, "error_rate": g.error_rate,
                "p50_s": nan(lat.p50), "p95_s": nan(lat.p95), "p99_s": nan(lat.p99), "mean_s": nan(lat.mean),
                "max_s": nan(lat.max), "cost_usd": g.cost_usd, "input_tokens": g.input_tokens,
                "output_tokens": g.output_tokens, "unpriced": g.name in stats.unpriced_models}

    return {"since_s": stats.since_s, "tasks": stats.tasks, "tasks_failed": stats.tasks_failed,
            "task_error_rate": stats.task_error_rate, "task_cost_total": stats.task_cost_total,
            "task_cost_mean": stats.task_cost_mean, "spans": stats.spans, "tool_calls": stats.tool_calls,
            "tool_errors": stats.tool_errors, "model_calls": stats.model_calls,
            "agents": [group(g) for g in stats.agents], "tools": [group(g) for g in stats.tools],
            "models": [group(g) for g in stats.models], "unpriced_models": list(stats.unpriced_models),
            "prices_hint": PRICES_HINT if stats.unpriced_models else "",
            "tools_unused": [{"agent": a, "model": m, "turns": n} for a, m, n in stats.tools_unused],
            "errors": [{"scope": e.scope, "kind": e.kind, "count": e.count, "rate": e.rate} for e in stats.errors]}


__all__ = [
    "GroupStats", "Latency", "Stats", "TaskTrace", "compute_stats", "histogram", "load_recent_results", "load_result", "load_results",
    "load_spans", "load_stats", "load_task_events", "load_task_trace", "load_trace", "parse_duration",
    "percentile", "render_stats", "render_waterfall", "spans_from_events", "stats_json", "time_series",
]
