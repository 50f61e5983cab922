"""A task's trace drawn in the terminal: span tree order, parallel groups,
per-span notes (tokens, cost or "unpriced", errors) and the waterfall."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from agentstream.contracts import subjects
from agentstream.contracts.telemetry import SpanRecord, span_subject
from agentstream.runtime.observability.timeline import overlapping

EVENTS_STREAM = "EVENTS"
ALL_SPANS = span_subject("*")  # telemetry.spans.*
ALL_RESULTS = subjects.any_results("*")  # agents.*.results.*

TRACE_LOOKBACK_S = 300.0  # scan spans from this long before the task started (clock skew, batching)
WATERFALL_WIDTH = 48
SYNTHETIC = "agentstream.synthetic"  # attribute on spans rebuilt from task events

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


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
    turn = _attr(span, "agentstream.turn")
    if turn:  # plan-first: the planner or the solver turn
        parts.append(f"{turn} turn")
    step = _attr(span, "agentstream.plan.step")
    if step:
        parts.append(f"plan {_attr(span, 'agentstream.plan.attempt', '?')} step {step}")
    elif op == "invoke_agent" and _attr(span, "agentstream.plan.phase"):
        route = _attr(span, "agentstream.route.strategy")
        if route:
            parts.append(f"routed: {route} (complexity {_attr(span, 'agentstream.route.score', '?')})")
        digest = _attr(span, "agentstream.plan.digest")
        if digest:
            parts.append(f"plan {digest} (attempt {_attr(span, 'agentstream.plan.attempt', '?')})")
        if _attr(span, "agentstream.plan.fallback"):
            parts.append("FELL BACK to ReAct")
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

def _task_of(span: SpanRecord) -> str:
    value = span.attributes.get("agentstream.task_id", "")
    return str(value) if value is not None else ""


def _suffix(span: SpanRecord) -> str:
    return span.name.split(" ", 1)[1] if " " in span.name else span.name
