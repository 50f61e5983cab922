"""The pure decision core: ``decide(state, input, ctx) -> Decision``.

No I/O, no clock reads, no randomness: everything it needs arrives in its
arguments, so every path is unit-testable without a broker and a replayed
step decides exactly what the first attempt decided. Architectures are
strategies over this shape, chosen by ``AgentSpec.strategy``: ReAct (this
module), plan-first (``plan_first`` and its ``plan_*`` siblings) and routed (``routing`` picks one of the
two per task); what they share is in ``common``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, assert_never

import msgspec

from agentstream.contracts.events import (
    ApprovalDecided,
    Message,
    TaskSubmitted,
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolError,
)
from agentstream.runtime.core import plan_approval, plan_first, plan_schedule, routing
from agentstream.runtime.core.common import (  # noqa: F401 - re-exported: the engine and tests use them from here
    DEDUPE_WINDOW_S,
    MIN_OUTPUT_TOKENS,
    Context,
    Decision,
    _all_settled,
    _approvers,
    _ask_approval,
    _audit,
    _call_model,
    _complete,
    _count_call,
    _decision_recorded,
    _duplicate,
    _emit,
    _expiry_recorded,
    _fail,
    _fix_call_ids,
    _ids,
    _next_model_turn,
    _over_budget,
    _override,
    _pause_deadline,
    _pending_approval,
    _record_response,
    _refuse_approver,
    _refuse_result,
    _result_content,
    _tool_request,
    conversation_key,
    dumps,
    estimate_tokens,
    too_large,
)
from agentstream.runtime.core.plan_turns import phase
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.core.state import (
    AnyCommand,
    ApprovalExpired,
    CallResult,
    DeadlineReached,
    Input,
    ModelFailed,
    ModelResponded,
    PendingCall,
    PublishProgress,
    PublishToolCall,
    SessionState,
    SetDeadline,
    tool_error_content,
)

# A strategy's continuation after a call settled without running (see _settle_call).
_After = Callable[[SessionState, Context, tuple[AnyCommand, ...]], Decision]


def decide(state: SessionState | None, event: Input, ctx: Context) -> Decision:
    if state is None:
        if isinstance(event, TaskSubmitted):
            return _start(event, ctx)
        # An inbox event for a task we have no state for: nothing to resume.
        return Decision(state=None, commands=(), changed=False)

    if state.terminal:
        return _duplicate(state, ctx, reemit=isinstance(event, (TaskSubmitted, ToolCallCompleted)))

    if isinstance(event, ModelFailed) and state.status == "awaiting_model" and event.step == state.step:
        # Before the deadline check: a model call bounded by the deadline ends
        # at it, and the task failed because the model did not answer, which
        # is what its reason must say.
        return _fail(state, ctx, event.reason, event.message, attempts=event.attempts)

    # The sweeper's DeadlineReached is only a hint: the deadline stored in the
    # state decides (it moves while a call waits on a human).
    if ctx.now >= state.deadline_at:
        return _fail(state, ctx, "deadline",
                     f"deadline of {state.deadline_at - state.started_at:.1f}s passed at step {state.step}")

    match event:
        case TaskSubmitted():
            return _duplicate(state, ctx, reemit=True)
        case ModelResponded():
            if state.status != "awaiting_model" or event.step != state.step:
                return _duplicate(state, ctx, reemit=False)
            if phase(state) == "planning":
                return plan_first.on_planner(state, event, ctx)
            if phase(state) == "solving":
                return _on_model(state, plan_first.solver_response(event), ctx)
            return _on_model(state, event, ctx)
        case ModelFailed():  # the current step's failure was handled above
            return _duplicate(state, ctx, reemit=False)
        case ToolCallCompleted():
            if phase(state) == "executing":
                return plan_schedule.on_tool_result(state, event, ctx)
            return _on_tool_result(state, event, ctx)
        case ApprovalDecided():
            if phase(state) == "approval":
                return plan_approval.on_plan_decision(state, event, ctx)
            if phase(state) == "executing":
                return plan_schedule.keep_in_flight(_on_decision(state, event, ctx, after=plan_schedule.after_settle), ctx)
            return _on_decision(state, event, ctx)
        case ApprovalExpired():
            if phase(state) == "approval":
                return plan_approval.on_plan_expired(state, event, ctx)
            if phase(state) == "executing":
                return _on_approval_expired(state, event, ctx, after=plan_schedule.after_settle)
            return _on_approval_expired(state, event, ctx)
        case DeadlineReached():  # not yet due: a stale timer
            return _duplicate(state, ctx, reemit=False)
        case _:
            assert_never(event)


# ----------------------------------------------------------------- transitions


def _start(task: TaskSubmitted, ctx: Context) -> Decision:
    spec = ctx.spec
    max_steps = _override(task.max_steps, spec.max_steps)
    deadline_s = _override(task.deadline_s, spec.deadline_s)
    messages: list[Message] = [Message(role="system", content=spec.instructions)]
    for turn in ctx.history[-spec.history_turns:] if spec.history_turns > 0 else ():
        messages.append(Message(role="user", content=turn.user))
        messages.append(Message(role="assistant", content=turn.assistant))
    messages.append(Message(role="user", content=task.input))
    state = SessionState(
        # A claim-checked input is kept once, in the transcript; the task keeps its reference.
        task=msgspec.structs.replace(task, input="") if task.input_ref else task,
        agent_version=task.agent_version or spec.version,
        status="awaiting_model",
        step=1,
        messages=tuple(messages),
        started_at=ctx.now,
        updated_at=ctx.now,
        deadline_at=ctx.now + deadline_s,
        max_steps=max_steps,
        max_tokens=_override(task.max_tokens, spec.max_tokens),
        max_cost_usd=_override(task.max_cost_usd, spec.max_cost_usd),
    )
    planning, announce = routing.start(task, state.agent_version, ctx)
    if planning is not None:
        state = msgspec.structs.replace(state, planning=planning)
    return _call_model(state, ctx, extra=(*announce, SetDeadline(deadline_at=state.deadline_at)))


def _on_model(state: SessionState, ev: ModelResponded, ctx: Context) -> Decision:
    resp = ev.response
    state, progress = _record_response(state, ev, ctx)

    over = _over_budget(state)
    if over:
        # Only possible when the provider counted more input tokens than estimated.
        return _fail(state, ctx, "budget_exceeded", over, extra=(progress,))

    if not resp.tool_calls:
        if resp.finish_reason == "length":
            return _fail(state, ctx, "model_output",
                         "the model's answer was cut off at its token limit (finish_reason=length)",
                         extra=(progress,))
        if not resp.text.strip():
            return _fail(state, ctx, "model_output", "the model returned neither text nor a tool call",
                         extra=(progress,))
        return _complete(state, ctx, resp.text, extra=(progress,))

    total = state.tool_calls_total + len(resp.tool_calls)
    if total > ctx.spec.max_tool_calls:
        return _fail(state, ctx, "tool_call_limit",
                     f"the model asked for {total} tool calls; the limit is {ctx.spec.max_tool_calls} a task",
                     extra=(progress,))

    task = state.task
    pending: list[PendingCall] = []
    early: list[CallResult] = []
    cmds: list[AnyCommand] = []
    counts = dict(state.call_counts)
    approval_deadline = ctx.now + ctx.spec.approval_timeout_s
    ids = _ids(resp.tool_calls, ev.step)
    for call, call_id in zip(resp.tool_calls, ids):
        args = _check_call(call, ctx.spec, truncated=resp.finish_reason == "length")
        if isinstance(args, ToolError):
            early.append(CallResult(call_id=call_id, tool=call.name, ok=False, content=tool_error_content(args)))
            continue
        repeats = _count_call(counts, call.name, dumps(args))
        if repeats >= ctx.spec.loop_limit:
            return _fail(state, ctx, "loop_detected",
                         f"the model called {call.name} with the same arguments {repeats} times",
                         extra=(progress,))
        if ctx.needs_approval is not None and ctx.needs_approval(call.name, args):
            asked, asking = _ask_approval(task, ev.step, call_id, call.name, args, _approvers(call.name, ctx),
                                          approval_deadline, ctx)
            pending.append(asked)
            cmds += asking
            continue
        pending.append(PendingCall(call_id=call_id, tool=call.name, arguments=args))
        cmds.append(PublishToolCall(request=_tool_request(task, ev.step, call_id, call.name, args, ctx)))
    # After the loop: a task failed above keeps the transcript as the model wrote it.
    state, _ = _fix_call_ids(state, resp.tool_calls, ids)
    state = msgspec.structs.replace(
        state, status="awaiting_tools", pending=tuple(pending), results=tuple(early),
        tool_calls_total=total, call_counts=counts)
    if any(p.approval == "pending" for p in pending):
        state, paused = _pause_deadline(state, ctx, approval_deadline)
        cmds.append(paused)
    dispatched = PublishProgress(event=ToolCallDispatched(
        task_id=task.task_id, agent=task.agent, step=ev.step,
        calls=state.messages[-1].tool_calls, at=ctx.now, agent_version=state.agent_version,
        version_hash=ctx.version_hash))
    if not pending:
        return _next_turn(state, ctx, extra=(progress, dispatched))
    return _emit(state, (progress, dispatched, *cmds))


def _check_call(call: ToolCall, spec: AgentSpec, *, truncated: bool) -> ToolError | dict[str, Any]:
    """Return parsed arguments, or the structured error the model will see."""
    if spec.tool(call.name) is None:
        names = ", ".join(t.name for t in spec.tools) or "(none)"
        return ToolError(kind="unknown_tool", message=f"there is no tool named {call.name!r}",
                         hint=f"available tools: {names}")
    try:
        args = msgspec.json.decode(call.arguments or "{}")
    except msgspec.DecodeError as exc:
        hint = "your output was cut off; send shorter arguments" if truncated else \
            "send the arguments as one JSON object matching the tool's schema"
        return ToolError(kind="invalid_arguments", message=f"arguments are not valid JSON: {exc}", hint=hint)
    if not isinstance(args, dict):
        return ToolError(kind="invalid_arguments", message="arguments must be a JSON object",
                         hint="wrap the arguments in an object keyed by parameter name")
    return args


def _on_tool_result(state: SessionState, ev: ToolCallCompleted, ctx: Context) -> Decision:
    refused = _refuse_result(state, ev, ctx)
    if refused is not None:
        return refused
    content = _result_content(ev)
    result = CallResult(call_id=ev.call_id, tool=ev.tool, ok=ev.ok, content=content)
    state = msgspec.structs.replace(state, results=(*state.results, result), updated_at=ctx.now)
    if not _all_settled(state):
        # Keep the outbox: if the step that published these calls crashed half
        # way, a redelivery must still be able to publish the rest.
        return Decision(state=state, commands=(), changed=True)
    return _next_turn(state, ctx)


def _on_decision(state: SessionState, ev: ApprovalDecided, ctx: Context, after: _After | None = None) -> Decision:
    pend = _pending_approval(state, ev.call_id, ev.step)
    if pend is None or pend.approval_id != ev.approval_id:
        return _duplicate(state, ctx, reemit=True)
    refused = _refuse_approver(state, pend, ev, ctx)
    if refused is not None:
        return refused
    task = state.task
    common = _decision_recorded(state, pend, ev, ctx)
    if ev.approved:
        pending = tuple(msgspec.structs.replace(p, approval="approved", approval_seq=ctx.decision_seq)
                        if p.call_id == pend.call_id else p for p in state.pending)
        state = msgspec.structs.replace(state, pending=pending, updated_at=ctx.now)
        request = _tool_request(task, state.step, pend.call_id, pend.tool, pend.arguments, ctx,
                                approval_seq=ctx.decision_seq)
        return _emit(state, (*common, PublishToolCall(request=request)))
    reason = f": {ev.reason}" if ev.reason else ""
    error = ToolError(kind="approval_denied", message=f"{ev.approver} denied this call{reason}",
                      hint="do not retry it; tell the user it was not approved")
    return _settle_call(state, ctx, pend, error, common, after)


def _on_approval_expired(state: SessionState, ev: ApprovalExpired, ctx: Context,
                         after: _After | None = None) -> Decision:
    pend = _pending_approval(state, ev.call_id)
    if pend is None:
        return _duplicate(state, ctx, reemit=False)
    recorded = _expiry_recorded(state, pend, ctx, pend.tool)
    if isinstance(recorded, Decision):
        return recorded
    error = ToolError(kind="approval_expired",
                      message=f"nobody approved this call within {ctx.spec.approval_timeout_s:g}s",
                      hint="do not retry it; tell the user it could not be approved in time")
    return _settle_call(state, ctx, pend, error, recorded, after)


def _settle_call(state: SessionState, ctx: Context, pend: PendingCall, error: ToolError,
                 extra: tuple[AnyCommand, ...], after: _After | None = None) -> Decision:
    """A call that will not run (denied, expired) gets an error result.
    ``after``: what the strategy does next (ReAct: the next turn once the
    turn's calls have all settled; plan-first: its scheduler)."""
    pending = tuple(msgspec.structs.replace(p, approval="") if p.call_id == pend.call_id else p
                    for p in state.pending)
    result = CallResult(call_id=pend.call_id, tool=pend.tool, ok=False, content=tool_error_content(error))
    state = msgspec.structs.replace(state, pending=pending, results=(*state.results, result), updated_at=ctx.now)
    if after is not None:
        return after(state, ctx, extra)
    if not _all_settled(state):
        return _emit(state, extra)
    return _next_turn(state, ctx, extra=extra)


def _next_turn(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...] = ()) -> Decision:
    """All results of this turn are in: append them in the model's call order
    (arrival order varies across replicas; the transcript must not) and ask
    the model again, unless the step limit is reached."""
    by_id = {r.call_id: r for r in state.results}
    calls = state.messages[-1].tool_calls
    tool_msgs = tuple(
        Message(role="tool", content=by_id[c.id].content, tool_call_id=c.id, name=c.name)
        for c in calls if c.id in by_id)
    state = msgspec.structs.replace(state, messages=(*state.messages, *tool_msgs), pending=(), results=())
    # Every caller has set updated_at to now already: the shared turn's setting it again changes nothing.
    return _next_model_turn(state, ctx, extra)
