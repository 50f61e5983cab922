"""The plan-first strategy's model turns besides the planner's own: what the
planner is told when a plan cannot go on (``replan``: a failure, a denial, an
invalid plan; with no replans left, the fall back to ReAct), the solver turn
(``solve``), and the ids and progress notices every part of the strategy
shares (docs/planning.md). Pure.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentstream.contracts.events import (
    Message,
    PlanProgress,
    ToolCall,
)
from agentstream.runtime.core.common import (
    Context,
    Decision,
    _audit,
    _next_model_turn,
    dumps,
)
from agentstream.runtime.core.state import (
    AnyCommand,
    PublishProgress,
    SessionState,
)
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME


def call_id(attempt: int, step_id: str) -> str:
    """A plan step's call id: deterministic, so a replayed step publishes the
    same call with the same idempotency key (and a tool worker can tell which
    step of an approved plan a call claims to be)."""
    return f"p{attempt}-{step_id}"


def step_of(call: str, attempt: int) -> str | None:
    prefix = f"p{attempt}-"
    return call[len(prefix):] if call.startswith(prefix) else None


def phase(state: SessionState) -> str:
    """What a plan-first session waits for; ``react`` for a ReAct session."""
    return state.planning.phase if state.planning is not None else "react"


def failure_reply(state: SessionState) -> dict[str, Any]:
    assert state.planning is not None and state.planning.plan is not None
    p = state.planning
    plan = p.plan
    assert plan is not None
    tools = {s.id: s.tool for s in plan.steps}
    return {
        "failed": {sid: {"tool": tools.get(sid, ""), "error": loads(content)} for sid, content in p.failed.items()},
        "done": {s.id: p.outputs[s.id] for s in plan.steps if s.id in p.outputs},
        "not_run": [s.id for s in plan.steps if s.id not in p.outputs and s.id not in p.failed],
    }


def solve(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...]) -> Decision:
    """Every step has its output: the transcript gets the plan's calls and
    results as a model would have made them, and the solver is asked."""
    assert state.planning is not None and state.planning.plan is not None
    p = state.planning
    plan = p.plan
    assert plan is not None
    by_call = {c.call_id: c for c in state.pending}
    by_result = {r.call_id: r for r in state.results}
    order = [call_id(p.attempt, s.id) for s in plan.steps]
    tool_calls = tuple(ToolCall(id=c, name=by_call[c].tool, arguments=dumps(by_call[c].arguments))
                       for c in order if c in by_call)
    messages = [*reply_messages(state, {"plan": p.digest, "done": [s.id for s in plan.steps]})]
    if tool_calls:
        # An empty plan ran nothing: an assistant message with neither text nor
        # calls is refused by hosted APIs (OpenAI answers 400), so there is none.
        messages.append(Message(role="assistant", tool_calls=tool_calls))
    messages += [Message(role="tool", tool_call_id=c.id, name=c.name, content=by_result[c.id].content)
                 for c in tool_calls if c.id in by_result]
    state = msgspec.structs.replace(state, messages=(*state.messages, *messages), pending=(), results=(),
                                    planning=msgspec.structs.replace(p, phase="solving"))
    return _next_model_turn(state, ctx, (*extra, progress(state, ctx, "solving", tuple(s.id for s in plan.steps))))


def replan(state: SessionState, ctx: Context, reply: dict[str, Any], why: str,
            extra: tuple[AnyCommand, ...]) -> Decision:
    """The planner hears what went wrong and plans again, or, with no replans
    left, the task goes on as ReAct from the same transcript."""
    assert state.planning is not None
    p = state.planning
    messages = reply_messages(state, reply)
    state = msgspec.structs.replace(state, messages=(*state.messages, *messages), pending=(), results=())
    if p.attempt <= ctx.spec.max_replans:
        state = msgspec.structs.replace(state, planning=msgspec.structs.replace(p, phase="planning"))
        return _next_model_turn(state, ctx, (*extra, progress(state, ctx, "replanned", (), why)))
    state = msgspec.structs.replace(state, planning=msgspec.structs.replace(p, phase="react", fallback=why))
    audit = _audit("plan.fallback", ctx, state.task, actor=f"agent:{state.task.agent}", attempts=p.attempt,
                   reason=why)
    return _next_model_turn(state, ctx, (*extra, progress(state, ctx, "fallback", (), why), audit))


def reply_messages(state: SessionState, reply: dict[str, Any]) -> tuple[Message, ...]:
    """The answer to the attempt's ``submit_plan`` call (protocol.py); when the
    planner made none, a user message says it instead."""
    assert state.planning is not None
    cid = state.planning.planner_call_id
    if cid:
        return (Message(role="tool", tool_call_id=cid, name=SUBMIT_PLAN_NAME, content=dumps(reply)),)
    return (Message(role="user", content=dumps(reply)),)


def progress(state: SessionState, ctx: Context, kind: Any, step_ids: tuple[str, ...],
              detail: str = "") -> PublishProgress:
    assert state.planning is not None
    task = state.task
    return PublishProgress(event=PlanProgress(
        task_id=task.task_id, agent=task.agent, attempt=state.planning.attempt, kind=kind, step_ids=step_ids,
        at=ctx.now, detail=detail[:500], agent_version=state.agent_version, version_hash=ctx.version_hash))


def loads(content: str) -> Any:
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content


def error_message(content: str) -> str:
    value = loads(content)
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        return str(value["error"].get("message", content))
    return content

