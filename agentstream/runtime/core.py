"""The pure decision core: ``decide(state, input, ctx) -> Decision``.

No I/O, no clock reads, no randomness: everything it needs arrives in its
arguments, so every path is unit-testable without a broker and a replayed
step decides exactly what the first attempt decided. Architectures (ReAct
today; plan-first and routed later) are strategies over this shape.
"""

from __future__ import annotations

from typing import Any, assert_never

import msgspec

from agentstream.contracts import subjects
from agentstream.contracts.events import (
    Message,
    ModelTurnCompleted,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolCallRequested,
    ToolError,
)
from agentstream.runtime.spec import AgentSpec
from agentstream.runtime.state import (
    AnyCommand,
    CallModel,
    CallResult,
    ClearDeadline,
    DeadlineReached,
    Input,
    ModelFailed,
    ModelResponded,
    PendingCall,
    PublishProgress,
    PublishResult,
    PublishToolCall,
    RecordTurn,
    SessionState,
    SetDeadline,
    Turn,
    tool_error_content,
    tool_ok_content,
)

# JetStream's default duplicate window. A duplicate input older than this no
# longer re-emits the outbox: the server would not dedupe it any more, and an
# outbox that old was published long ago.
DEDUPE_WINDOW_S = 120.0


class Context(msgspec.Struct, frozen=True, kw_only=True):
    spec: AgentSpec
    now: float
    history: tuple[Turn, ...] = ()
    worker: str = ""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    state: SessionState | None
    commands: tuple[AnyCommand, ...]
    changed: bool


def conversation_key(task: TaskSubmitted) -> str:
    return f"{task.tenant_id}.{task.conversation_id}" if task.conversation_id else ""


def decide(state: SessionState | None, event: Input, ctx: Context) -> Decision:
    if state is None:
        if isinstance(event, TaskSubmitted):
            return _start(event, ctx)
        # An inbox event for a task we have no state for: nothing to resume.
        return Decision(state=None, commands=(), changed=False)

    if state.terminal:
        return _duplicate(state, ctx, reemit=isinstance(event, (TaskSubmitted, ToolCallCompleted)))

    if isinstance(event, DeadlineReached) or ctx.now >= state.deadline_at:
        return _fail(state, ctx, "deadline",
                     f"deadline of {state.deadline_at - state.started_at:.1f}s passed at step {state.step}")

    match event:
        case TaskSubmitted():
            return _duplicate(state, ctx, reemit=True)
        case ModelResponded():
            if state.status != "awaiting_model" or event.step != state.step:
                return _duplicate(state, ctx, reemit=False)
            return _on_model(state, event, ctx)
        case ModelFailed():
            if state.status != "awaiting_model" or event.step != state.step:
                return _duplicate(state, ctx, reemit=False)
            return _fail(state, ctx, "model_error", event.message)
        case ToolCallCompleted():
            return _on_tool_result(state, event, ctx)
        case DeadlineReached():  # handled above; kept for exhaustiveness
            return _duplicate(state, ctx, reemit=False)
        case _:
            assert_never(event)


# ----------------------------------------------------------------- transitions


def _start(task: TaskSubmitted, ctx: Context) -> Decision:
    spec = ctx.spec
    max_steps = task.max_steps if task.max_steps and task.max_steps > 0 else spec.max_steps
    deadline_s = task.deadline_s if task.deadline_s and task.deadline_s > 0 else spec.deadline_s
    messages: list[Message] = [Message(role="system", content=spec.instructions)]
    for turn in ctx.history[-spec.history_turns:] if spec.history_turns > 0 else ():
        messages.append(Message(role="user", content=turn.user))
        messages.append(Message(role="assistant", content=turn.assistant))
    messages.append(Message(role="user", content=task.input))
    state = SessionState(
        task=task,
        agent_version=task.agent_version or spec.version,
        status="awaiting_model",
        step=1,
        messages=tuple(messages),
        started_at=ctx.now,
        updated_at=ctx.now,
        deadline_at=ctx.now + deadline_s,
        max_steps=max_steps,
    )
    commands: tuple[AnyCommand, ...] = (SetDeadline(deadline_at=state.deadline_at), CallModel(step=1))
    return _emit(state, commands)


def _on_model(state: SessionState, ev: ModelResponded, ctx: Context) -> Decision:
    resp = ev.response
    usage = state.usage + resp.usage
    assistant = Message(role="assistant", content=resp.text, tool_calls=resp.tool_calls)
    messages = (*state.messages, assistant)
    progress = PublishProgress(event=ModelTurnCompleted(
        task_id=state.task.task_id, agent=state.task.agent, step=ev.step,
        model=resp.model, finish_reason=resp.finish_reason,
        tool_calls=tuple(c.name for c in resp.tool_calls), usage=resp.usage,
        started_at=ev.started_at, finished_at=ev.finished_at, worker=ctx.worker))
    state = msgspec.structs.replace(state, usage=usage, messages=messages, updated_at=ctx.now)

    if not resp.tool_calls:
        if resp.finish_reason == "length":
            return _fail(state, ctx, "model_output",
                         "the model's answer was cut off at its token limit (finish_reason=length)",
                         extra=(progress,))
        if not resp.text.strip():
            return _fail(state, ctx, "model_output", "the model returned neither text nor a tool call",
                         extra=(progress,))
        return _complete(state, ctx, resp.text, extra=(progress,))

    pending: list[PendingCall] = []
    early: list[CallResult] = []
    publishes: list[AnyCommand] = []
    ids = _ids(resp.tool_calls, ev.step)
    for idx, call in enumerate(resp.tool_calls):
        call_id = ids[idx]
        err = _check_call(call, ctx.spec, truncated=resp.finish_reason == "length")
        if isinstance(err, ToolError):
            early.append(CallResult(call_id=call_id, tool=call.name, ok=False, content=tool_error_content(err)))
            continue
        pending.append(PendingCall(call_id=call_id, tool=call.name))
        publishes.append(PublishToolCall(request=ToolCallRequested(
            task_id=state.task.task_id, agent=state.task.agent, step=ev.step, call_id=call_id,
            tool=call.name, arguments=err,
            idempotency_key=f"{state.task.task_id}:{ev.step}:{call_id}",
            reply_subject=subjects.events(state.task.agent, state.task.task_id),
            requested_at=ctx.now, timeout_s=ctx.spec.tool_timeout_s,
            tenant_id=state.task.tenant_id, user_id=state.task.user_id)))
    # The transcript must pair every tool call id the model produced with a result.
    if any(c.id != p for c, p in zip(resp.tool_calls, _ids(resp.tool_calls, ev.step))):
        fixed = tuple(msgspec.structs.replace(c, id=i) for c, i in zip(resp.tool_calls, _ids(resp.tool_calls, ev.step)))
        messages = (*state.messages[:-1], msgspec.structs.replace(assistant, tool_calls=fixed))
        state = msgspec.structs.replace(state, messages=messages)
    state = msgspec.structs.replace(
        state, status="awaiting_tools", pending=tuple(pending), results=tuple(early),
        tool_calls_total=state.tool_calls_total + len(resp.tool_calls))
    dispatched = PublishProgress(event=ToolCallDispatched(
        task_id=state.task.task_id, agent=state.task.agent, step=ev.step,
        calls=tuple(c for c in state.messages[-1].tool_calls), at=ctx.now))
    if not pending:
        return _next_turn(state, ctx, extra=(progress, dispatched))
    return _emit(state, (progress, dispatched, *publishes))


def _ids(calls: tuple[ToolCall, ...], step: int) -> list[str]:
    """Call ids usable as subject tokens and unique within the turn. Generated
    ones never collide with ids the model chose; deterministic, so a replayed
    turn produces the same ids (and the same idempotency keys)."""
    taken = {c.id for c in calls}
    out: list[str] = []
    for idx, c in enumerate(calls):
        if c.id and subjects.is_token(c.id) and c.id not in out:
            out.append(c.id)
            continue
        candidate = f"c{step}_{idx}"
        while candidate in taken or candidate in out:
            candidate += "_"
        out.append(candidate)
    return out


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
    if (state.status != "awaiting_tools" or ev.step != state.step
            or all(p.call_id != ev.call_id for p in state.pending)
            or any(r.call_id == ev.call_id for r in state.results)):
        return _duplicate(state, ctx, reemit=True)
    if ev.ok:
        content = tool_ok_content(ev.result)
    else:
        content = tool_error_content(ev.error or ToolError(kind="execution_error", message="tool failed"))
    result = CallResult(call_id=ev.call_id, tool=ev.tool, ok=ev.ok, content=content)
    state = msgspec.structs.replace(state, results=(*state.results, result), updated_at=ctx.now)
    done = {r.call_id for r in state.results}
    if any(p.call_id not in done for p in state.pending):
        # Keep the outbox: if the step that published these calls crashed half
        # way, a redelivery must still be able to publish the rest.
        return Decision(state=state, commands=(), changed=True)
    return _next_turn(state, ctx)


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
    if state.step >= state.max_steps:
        return _fail(state, ctx, "max_steps",
                     f"reached the limit of {state.max_steps} model turns without a final answer", extra=extra)
    state = msgspec.structs.replace(state, status="awaiting_model", step=state.step + 1)
    return _emit(state, (*extra, CallModel(step=state.step)))


def _complete(state: SessionState, ctx: Context, output: str, extra: tuple[AnyCommand, ...] = ()) -> Decision:
    task = state.task
    result = TaskCompleted(
        task_id=task.task_id, agent=task.agent, agent_version=state.agent_version, output=output,
        steps=state.step, tool_calls=state.tool_calls_total, usage=state.usage,
        started_at=state.started_at, finished_at=ctx.now, tenant_id=task.tenant_id,
        user_id=task.user_id, conversation_id=task.conversation_id)
    state = msgspec.structs.replace(state, status="completed", outcome=result, pending=(), results=())
    cmds: list[AnyCommand] = [*extra, PublishResult(result=result), ClearDeadline()]
    key = conversation_key(task)
    if key:
        cmds.insert(len(extra), RecordTurn(conversation_key=key, task_id=task.task_id, user=task.input,
                                           assistant=output))
    return _emit(state, tuple(cmds))


def _fail(state: SessionState, ctx: Context, reason: str, message: str,
          extra: tuple[AnyCommand, ...] = ()) -> Decision:
    task = state.task
    result = TaskFailed(
        task_id=task.task_id, agent=task.agent, agent_version=state.agent_version, reason=reason,
        message=message, steps=state.step, tool_calls=state.tool_calls_total, usage=state.usage,
        started_at=state.started_at, finished_at=ctx.now, tenant_id=task.tenant_id,
        user_id=task.user_id, conversation_id=task.conversation_id)
    state = msgspec.structs.replace(state, status="failed", outcome=result, pending=(), results=(),
                                    updated_at=ctx.now)
    return _emit(state, (*extra, PublishResult(result=result), ClearDeadline()))


def _emit(state: SessionState, commands: tuple[AnyCommand, ...]) -> Decision:
    # The outbox is stored with the state so a redelivered input can re-publish
    # what a crashed attempt may not have (deduplicated by message id).
    state = msgspec.structs.replace(state, outbox=commands, outbox_at=state.updated_at)
    return Decision(state=state, commands=commands, changed=True)


def _duplicate(state: SessionState, ctx: Context, *, reemit: bool) -> Decision:
    if not reemit:
        return Decision(state=state, commands=(), changed=False)
    fresh = ctx.now - state.outbox_at < DEDUPE_WINDOW_S
    # A pending model call is always safe to re-issue: its response lands
    # through compare-and-set, so at most one is recorded.
    cmds = tuple(c for c in state.outbox if fresh or isinstance(c, CallModel))
    return Decision(state=state, commands=cmds, changed=False)


def failed_task(task: TaskSubmitted, version: str, reason: str, message: str, now: float) -> TaskFailed:
    """A failed result for a task that never got a session (e.g. a bad task)."""
    from agentstream.contracts.events import Usage

    return TaskFailed(task_id=task.task_id, agent=task.agent, agent_version=task.agent_version or version,
                      reason=reason, message=message, steps=0, tool_calls=0, usage=Usage(),
                      started_at=now, finished_at=now, tenant_id=task.tenant_id, user_id=task.user_id,
                      conversation_id=task.conversation_id)
