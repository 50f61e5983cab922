"""Draws a task's timeline in the terminal: model turns and tool calls on one
time axis, so parallel tool calls are visibly side by side. A plan-first task
also shows its plans against their execution: the route taken, each plan
(valid or not), which step ran when and how it ended, replans and a fallback
to ReAct."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol, TypeVar

from agentstream.contracts.events import (
    ApprovalDecided,
    ApprovalRequested,
    ModelTurnCompleted,
    PlanProgress,
    PlanProposed,
    RouteDecided,
    TaskCompleted,
    TaskEvent,
    TaskFailed,
    ToolCallCompleted,
)
from agentstream.runtime.planning.protocol import plan_call

WIDTH = 40

# Failure reasons that mean the last model call itself failed: that call has no
# ModelTurnCompleted, so the timeline draws it from the result as a failed row.
MODEL_CALL_FAILURES = frozenset({"model_error", "model_timeout"})


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"



class Span:
    """One row. ``kind``: ``model``, ``tool``, ``approval`` or ``plan`` (a plan,
    a replan, a fallback: an instant); only tool calls are checked for overlap
    (an approval wait is not a parallel call)."""

    __slots__ = ("label", "start", "end", "note", "group", "failed", "kind")

    def __init__(self, label: str, start: float, end: float, note: str = "", group: int = 0,
                 failed: bool = False, kind: str = "tool") -> None:
        self.label, self.start, self.end, self.note, self.group, self.failed = label, start, end, note, group, failed
        self.kind = kind


class _Interval(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


_I = TypeVar("_I", bound=_Interval)


def overlapping(spans: Sequence[_I]) -> list[list[_I]]:
    """Groups of spans (anything with ``start`` and ``end``) whose intervals
    overlap (connected components), ordered by start."""
    ordered = sorted(spans, key=lambda s: s.start)
    groups: list[list[_I]] = []
    end = float("-inf")
    for s in ordered:
        if groups and s.start < end:
            groups[-1].append(s)
            end = max(end, s.end)
        else:
            groups.append([s])
            end = s.end
    return groups


def spans_of(events: Sequence[TaskEvent]) -> tuple[list[Span], TaskCompleted | TaskFailed | None]:
    spans: list[Span] = []
    result: TaskCompleted | TaskFailed | None = None
    asked = {ev.call_id: ev for ev in events if isinstance(ev, ApprovalRequested)}
    turn_of = {ev.attempt: ev.step for ev in events if isinstance(ev, PlanProposed)}
    for ev in events:
        if isinstance(ev, PlanProposed):
            note = f"{plural(len(ev.steps), 'step')} {ev.digest}" if ev.valid else \
                "INVALID: " + "; ".join(e.get("message", "") for e in ev.errors[:2])
            spans.append(Span(f"  plan {ev.attempt}", ev.at, ev.at, note, ev.step, failed=not ev.valid, kind="plan"))
        elif isinstance(ev, PlanProgress) and ev.kind in ("replanned", "fallback", "failed"):
            what = {"replanned": "replan", "fallback": "FALLBACK to ReAct", "failed": "step failed"}[ev.kind]
            ids = f" [{', '.join(ev.step_ids)}]" if ev.step_ids else ""
            spans.append(Span(f"  {what}", ev.at, ev.at, f"{ev.detail}{ids}", turn_of.get(ev.attempt, 0),
                              failed=ev.kind != "replanned", kind="plan"))
        if isinstance(ev, ApprovalDecided) and ev.call_id in asked:
            req = asked.pop(ev.call_id)
            verdict = "approved" if ev.approved else "DENIED"
            spans.append(Span(f"  approval {req.tool}", req.requested_at, ev.decided_at or req.requested_at,
                              f"{verdict} by {ev.approver}", req.step, failed=not ev.approved, kind="approval"))
        if isinstance(ev, ModelTurnCompleted):
            u = ev.usage
            what = ("-> " + ", ".join(ev.tool_calls)) if ev.tool_calls else "-> answer"
            spans.append(Span(f"model turn {ev.step}", ev.started_at, ev.finished_at,
                              f"{u.input_tokens}/{u.output_tokens} tok {what}", ev.step, kind="model"))
        elif isinstance(ev, ToolCallCompleted):
            note = "" if ev.ok else f"FAILED {ev.error.kind if ev.error else ''}".strip()
            step = plan_call(ev.call_id) if turn_of else None
            label = f"  {step[1]}: {ev.tool}" if step is not None else f"  {ev.tool}"
            spans.append(Span(label, ev.started_at, ev.finished_at, note, ev.step, failed=not ev.ok))
        elif isinstance(ev, (TaskCompleted, TaskFailed)):
            result = ev
    if isinstance(result, TaskFailed) and result.reason in MODEL_CALL_FAILURES:
        turns = {s.group for s in spans if s.kind == "model"}
        if result.steps not in turns:
            # The failed call started after everything before it ended.
            start = max([s.end for s in spans if s.group < result.steps] + [result.started_at])
            spans.append(Span(f"model turn {result.steps}", min(start, result.finished_at), result.finished_at,
                              f"FAILED {result.reason}", result.steps, failed=True, kind="model"))
    return spans, result


def render(events: Sequence[TaskEvent], width: int = WIDTH) -> str:
    spans, result = spans_of(events)
    if result is None and not spans:
        return "(no events)"
    bounds = [(s.start, s.end) for s in spans]
    if result is not None:
        bounds.append((result.started_at, result.finished_at))
    t0 = min(a for a, _ in bounds)
    t1 = max(b for _, b in bounds)
    total = max(t1 - t0, 1e-6)
    lines: list[str] = []
    if result is not None:
        status = "completed" if isinstance(result, TaskCompleted) else f"FAILED ({result.reason})"
        u = result.usage
        lines.append(f"task {result.task_id} [{result.agent} {result.agent_version}] {status} in "
                     f"{(result.finished_at - result.started_at) * 1000:.0f} ms: {plural(result.steps, 'model turn')}, "
                     f"{plural(result.tool_calls, 'tool call')}, {u.input_tokens} in / {u.output_tokens} out tokens")
    route = next((e for e in events if isinstance(e, RouteDecided)), None)
    if route is not None:
        lines.append(f"routed to {route.strategy}: {route.reason} (confidence {route.confidence:.2f})")
    label_w = max([len(s.label) for s in spans] + [12])
    lines.append(f"{'':{label_w}}  0 ms{'':{width - 10}}{total * 1000:>6.0f} ms")
    # Tool calls of one turn that overlapped in time get a bracket and a note.
    parallel: dict[int, int] = {}
    for step in {s.group for s in spans}:
        tools = [s for s in spans if s.group == step and s.kind == "tool"]
        for grp in overlapping(tools):
            if len(grp) > 1:
                for s in grp:
                    parallel[id(s)] = len(grp)
    ordered = sorted(spans, key=lambda s: (s.group, s.kind != "model", s.start))
    for s in ordered:
        a = int((s.start - t0) / total * width)
        b = max(a + 1, int(round((s.end - t0) / total * width)))
        bar = " " * a + ("x" if s.failed else "#") * (b - a) + " " * (width - b)
        dur = (s.end - s.start) * 1000
        note = s.note
        if id(s) in parallel:
            note = (note + " " if note else "") + f"|| overlapped with {parallel[id(s)] - 1} other call(s)"
        lines.append(f"{s.label:<{label_w}} |{bar[:width]}| {dur:7.1f} ms  {note}".rstrip())
    if isinstance(result, TaskFailed):
        lines.append(f"reason: {result.message}")
    lines += plan_table(events)
    return "\n".join(lines)


def plan_table(events: Sequence[TaskEvent]) -> list[str]:
    """Each plan against its execution: every step with its arguments (pointers
    spelled out), how it ended (ok, FAILED, not run) and how long it took;
    then what followed (a replan, a fallback to ReAct)."""
    plans = [e for e in events if isinstance(e, PlanProposed)]
    if not plans:
        return []
    done: dict[str, ToolCallCompleted] = {e.call_id: e for e in events if isinstance(e, ToolCallCompleted)}
    after = {(e.attempt, e.kind): e for e in events if isinstance(e, PlanProgress)}
    out = ["", "plans against execution:"]
    for p in plans:
        if not p.valid:
            out.append(f"plan {p.attempt} (model turn {p.step}): INVALID")
            out += [f"  {e.get('kind', '')}: {e.get('message', '')}" for e in p.errors]
        else:
            out.append(f"plan {p.attempt} (model turn {p.step}) {p.digest}: {p.rationale}".rstrip(": "))
            width = max(len(s.id) for s in p.steps)
            for s in p.steps:
                res = done.get(f"p{p.attempt}-{s.id}")
                if res is None:
                    status = "not run"
                elif res.ok:
                    status = f"ok {(res.finished_at - res.started_at) * 1000:.1f} ms"
                else:
                    status = f"FAILED {res.error.kind if res.error else ''}".rstrip()
                deps = f" after {', '.join(s.depends_on)}" if s.depends_on else ""
                out.append(f"  {s.id:<{width}}  {s.tool} {json.dumps(s.args)}{deps}  -> {status}")
        for kind in ("replanned", "fallback"):
            ev = after.get((p.attempt, kind))
            if ev is not None:
                out.append(f"  -> {'replanned' if kind == 'replanned' else 'fell back to ReAct'}: {ev.detail}")
    return out
