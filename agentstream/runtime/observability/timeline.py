"""Draws a task's timeline in the terminal: model turns and tool calls on one
time axis, so parallel tool calls are visibly side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from agentstream.contracts.events import (
    ApprovalDecided,
    ApprovalRequested,
    ModelTurnCompleted,
    TaskCompleted,
    TaskEvent,
    TaskFailed,
    ToolCallCompleted,
)

WIDTH = 40

# Failure reasons that mean the last model call itself failed: that call has no
# ModelTurnCompleted, so the timeline draws it from the result as a failed row.
MODEL_CALL_FAILURES = frozenset({"model_error", "model_timeout"})


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class Span:
    """One row. ``kind``: ``model``, ``tool`` or ``approval``; only tool calls
    are checked for overlap (an approval wait is not a parallel call)."""

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
    for ev in events:
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
            spans.append(Span(f"  {ev.tool}", ev.started_at, ev.finished_at, note, ev.step, failed=not ev.ok))
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
    return "\n".join(lines)
