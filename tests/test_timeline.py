"""`agentstream timeline` / the demo's per-task drawing, from a task's events."""

from __future__ import annotations

from agentstream.contracts.events import (
    ApprovalDecided,
    ApprovalRequested,
    ModelTurnCompleted,
    TaskCompleted,
    TaskEvent,
    ToolCallCompleted,
    Usage,
)
from agentstream.runtime.observability.timeline import render

T0 = 1_800_000_000.0


def _tool(call_id: str, tool: str, start: float, end: float, ok: bool = True) -> ToolCallCompleted:
    return ToolCallCompleted(task_id="t", agent="a", step=1, call_id=call_id, tool=tool, ok=ok,
                             started_at=T0 + start, finished_at=T0 + end)


def test_only_tool_calls_that_overlap_are_marked_parallel_not_an_approval_wait() -> None:
    """Two calls run side by side while a third waits for a human: the two are
    marked as overlapping each other, the approval wait is drawn but is no call."""
    events: list[TaskEvent] = [
        ModelTurnCompleted(task_id="t", agent="a", step=1, model="m", finish_reason="tool_calls",
                           tool_calls=("lookup", "status", "refund"), usage=Usage(input_tokens=10, output_tokens=2),
                           started_at=T0, finished_at=T0 + 0.010),
        ApprovalRequested(approval_id="t-1-c3", task_id="t", agent="a", step=1, call_id="c3", tool="refund",
                          arguments={}, approvers=(), requested_at=T0 + 0.011, deadline_at=T0 + 60),
        _tool("c1", "lookup", 0.012, 0.050),
        _tool("c2", "status", 0.020, 0.060),
        ApprovalDecided(approval_id="t-1-c3", task_id="t", agent="a", step=1, call_id="c3", approved=True,
                        approver="alice", decided_at=T0 + 0.080),
        _tool("c3", "refund", 0.081, 0.090),
        TaskCompleted(task_id="t", agent="a", agent_version="", output="ok", steps=1, tool_calls=3,
                      usage=Usage(input_tokens=10, output_tokens=2), started_at=T0, finished_at=T0 + 0.1),
    ]
    rows = {line.split("|")[0].strip(): line for line in render(events).splitlines()[2:]}
    assert set(rows) == {"model turn 1", "approval refund", "lookup", "status", "refund"}, rows
    assert rows["lookup"].endswith("|| overlapped with 1 other call(s)"), rows["lookup"]
    assert rows["status"].endswith("|| overlapped with 1 other call(s)"), rows["status"]
    assert rows["approval refund"].endswith("approved by alice"), rows["approval refund"]
    assert "overlapped" not in rows["refund"] and "overlapped" not in rows["model turn 1"]
    # The model turn leads its step's rows.
    assert render(events).splitlines()[2].startswith("model turn 1")


def test_a_failed_model_call_is_a_failed_row_and_counts_are_singular() -> None:
    """A task whose first model call timed out: one failed model row spanning
    the wait, not an empty chart, and '1 model turn', not '1 model turns'."""
    from agentstream.contracts.events import TaskFailed

    events: list[TaskEvent] = [
        TaskFailed(task_id="t", agent="a", agent_version="v1", reason="model_timeout",
                   message="the model did not answer", steps=1, tool_calls=0, usage=Usage(),
                   started_at=T0, finished_at=T0 + 2.0)]
    out = render(events).splitlines()
    assert "1 model turn, 0 tool calls" in out[0], out[0]
    rows = [line for line in out[2:] if line.startswith("model turn")]
    assert len(rows) == 1, out
    assert "FAILED model_timeout" in rows[0] and "x" * 10 in rows[0] and "#" not in rows[0], rows[0]


def test_one_tool_call_is_singular() -> None:
    events: list[TaskEvent] = [
        _tool("c1", "lookup", 0.0, 0.01),
        TaskCompleted(task_id="t", agent="a", agent_version="", output="ok", steps=2, tool_calls=1,
                      usage=Usage(), started_at=T0, finished_at=T0 + 0.1)]
    assert "2 model turns, 1 tool call," in render(events).splitlines()[0]
