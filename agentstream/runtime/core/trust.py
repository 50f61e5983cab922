"""Whether an inbox event may touch a session at all: a pure decision.

Everything on the bus is untrusted input. Subject permissions (config.auth)
decide who may publish where; this decides whether what arrived is bound to
where it arrived and to what the session did:

- the agent and task id in the subject equal the body's;
- a tool result arrives on ``agents.<a>.events.<task>`` and answers a call
  this session dispatched (a model's call or a plan step's): same step, call
  id and tool, and not one still waiting for a human (that call was never
  dispatched);
- a decision arrives on ``agents.<a>.decisions.<task>`` (only the approval
  service may publish there) and names a call the session asked a human
  about: same approval id, step, call id, tool and arguments digest (for a
  whole plan: the plan it carries has that digest too).

A late duplicate of something legitimate (a redelivered result for an
earlier step) is admitted: ``decide`` treats it as the no-op it is. Anything
else is refused with a reason, which the engine dead-letters and audits.
"""

from __future__ import annotations

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import ApprovalDecided, ToolCallCompleted
from agentstream.runtime.core.state import PendingCall, SessionState
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME

InboxEvent = ToolCallCompleted | ApprovalDecided


def check_inbox(state: SessionState | None, event: InboxEvent, subject: str) -> str | None:
    """None: the event may go to ``decide``; else why it is refused."""
    where = subjects.parse_inbox(subject)
    if where is None:
        return f"{subject!r} is not an agent inbox subject"
    agent, kind, task_id = where
    if task_id != event.task_id:
        return f"the subject names task {task_id!r} but the body names task {event.task_id!r}"
    if agent != event.agent:
        return f"the subject names agent {agent!r} but the body names agent {event.agent!r}"
    want = "decisions" if isinstance(event, ApprovalDecided) else "events"
    if kind != want:
        return f"a {type(event).__name__} is accepted only on agents.<agent>.{want}.<task>, not on {subject!r}"
    if state is None:
        return f"no session for task {task_id!r}"
    if state.task.agent != event.agent:
        return f"task {task_id!r} belongs to agent {state.task.agent!r}, not {event.agent!r}"
    if isinstance(event, ToolCallCompleted):
        return _check_result(state, event)
    return _check_decision(state, event)


def _current(state: SessionState, step: int, call_id: str) -> PendingCall | None:
    if state.status != "awaiting_tools" or step != state.step:
        return None
    return next((p for p in state.pending if p.call_id == call_id), None)


def _in_transcript(state: SessionState, step: int, call_id: str, tool: str) -> bool:
    """A call the model asked for at an earlier step, or a plan step this
    session published (a late duplicate's origin)."""
    if step > state.step or step < 0:
        return False
    if state.planning is not None and any(c.call_id == call_id and c.tool == tool and c.turn == step
                                          for c in state.planning.calls):
        return True
    return any(c.id == call_id and c.name == tool for m in state.messages for c in m.tool_calls)


def _check_result(state: SessionState, ev: ToolCallCompleted) -> str | None:
    pend = _current(state, ev.step, ev.call_id)
    if pend is None:
        if not state.terminal and state.status == "awaiting_tools" and ev.step == state.step:
            return f"call {ev.call_id!r} was not dispatched at step {ev.step}"
        if _in_transcript(state, ev.step, ev.call_id, ev.tool):
            return None  # a late duplicate: decide ignores it
        return f"call {ev.call_id!r} ({ev.tool}) at step {ev.step} is not a call this session dispatched"
    if pend.tool != ev.tool:
        return f"call {ev.call_id!r} was dispatched to {pend.tool!r}, but the result claims {ev.tool!r}"
    if pend.approval == "pending":
        return f"call {ev.call_id!r} is waiting for approval and was never dispatched"
    return None


def _check_decision(state: SessionState, ev: ApprovalDecided) -> str | None:
    pend = _current(state, ev.step, ev.call_id)
    if pend is None or not pend.approval_id:
        if _in_transcript(state, ev.step, ev.call_id, ev.tool) and ev.approval_id == _approval_id(state, ev):
            return None  # a late decision on a call already settled: decide ignores it
        return f"call {ev.call_id!r} at step {ev.step} is not waiting for a decision"
    if pend.approval_id != ev.approval_id:
        return f"approval id {ev.approval_id!r} does not match the call's {pend.approval_id!r}"
    if pend.tool != ev.tool:
        return f"the decision names tool {ev.tool!r}, but the call is to {pend.tool!r}"
    if codec.arguments_digest(pend.arguments) != ev.arguments_digest:
        return "the decision is for other arguments than the call's"
    if pend.tool == SUBMIT_PLAN_NAME and codec.arguments_digest(ev.plan) != ev.arguments_digest:
        # Tool workers judge gated calls by the plan the decision carries: it
        # must be the plan the human approved, the one this session asked about.
        return "the plan the decision carries is not the plan it approves"
    return None


def _approval_id(state: SessionState, ev: ApprovalDecided) -> str:
    """The id the core gives the approval of a call (see decide._on_model)."""
    return f"{state.task.task_id}-{ev.step}-{ev.call_id}"
