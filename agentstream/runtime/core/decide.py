"""The pure decision core: ``decide(state, input, ctx) -> Decision``.

No I/O, no clock reads, no randomness: everything it needs arrives in its
arguments, so every path is unit-testable without a broker and a replayed
step decides exactly what the first attempt decided. Architectures (ReAct
today; plan-first and routed later) are strategies over this shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, assert_never

import msgspec

from agentstream.contracts import subjects
from agentstream.contracts.events import (
    ApprovalDecided,
    ApprovalRequested,
    AuditRecord,
    Message,
    ModelAttempt,
    ModelTurnCompleted,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolCallRequested,
    ToolError,
    Usage,
)
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.core.state import (
    AnyCommand,
    ApprovalExpired,
    CallModel,
    CallResult,
    ClearApprovalTimer,
    ClearDeadline,
    DeadlineReached,
    Input,
    ModelFailed,
    ModelResponded,
    PendingCall,
    PublishApproval,
    PublishAudit,
    PublishProgress,
    PublishResult,
    PublishToolCall,
    RecordApproval,
    RecordTurn,
    SessionState,
    SetApprovalTimer,
    SetDeadline,
    Turn,
    tool_error_content,
    tool_ok_content,
)

# JetStream's default duplicate window. A duplicate input older than this no
# longer re-emits the outbox: the server would not dedupe it any more, and an
# outbox that old was published long ago.
DEDUPE_WINDOW_S = 120.0


@dataclass(frozen=True)
class Context:
    """Everything a decision may depend on besides the state and the input."""

    spec: AgentSpec
    now: float
    history: tuple[Turn, ...] = ()
    worker: str = ""
    model: str = ""  # the model that will be called (prices, budgets)
    # For an ApprovalDecided input: its EVENTS stream sequence, which the
    # approved call carries so the tool worker can read the decision itself.
    decision_seq: int = 0
    # The deployment's rules (runtime.policy.Policy, flattened by the engine).
    # (input, output) USD per million tokens, by model name.
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # Whether a call needs a human's approval, given its tool and arguments.
    needs_approval: Callable[[str, dict[str, Any]], bool] | None = None
    # Identities allowed to decide on a tool's approvals; empty: default_approvers.
    approvers_for: Callable[[str], tuple[str, ...]] | None = None
    # Empty: any identity may decide (development default).
    default_approvers: tuple[str, ...] = ()
    # The hash of this deployment's behaviour (core.version.fingerprint): on results and progress.
    version_hash: str = ""


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
            return _on_model(state, event, ctx)
        case ModelFailed():  # the current step's failure was handled above
            return _duplicate(state, ctx, reemit=False)
        case ToolCallCompleted():
            return _on_tool_result(state, event, ctx)
        case ApprovalDecided():
            return _on_decision(state, event, ctx)
        case ApprovalExpired():
            return _on_approval_expired(state, event, ctx)
        case DeadlineReached():  # not yet due: a stale timer
            return _duplicate(state, ctx, reemit=False)
        case _:
            assert_never(event)


# ----------------------------------------------------------------- transitions


_T = TypeVar("_T")


def _override(value: Any, default: _T) -> _T:
    """A task's own limit when it set a positive one, else the agent's."""
    return value if value is not None and value > 0 else default


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
    return _call_model(state, ctx, extra=(SetDeadline(deadline_at=state.deadline_at),))


def _on_model(state: SessionState, ev: ModelResponded, ctx: Context) -> Decision:
    resp = ev.response
    turn_usage = _priced(resp.usage, resp.model or ctx.model, ctx)
    usage = state.usage + turn_usage
    assistant = Message(role="assistant", content=resp.text, tool_calls=resp.tool_calls)
    messages = (*state.messages, assistant)
    progress = PublishProgress(event=ModelTurnCompleted(
        task_id=state.task.task_id, agent=state.task.agent, step=ev.step,
        model=resp.model, finish_reason=resp.finish_reason,
        tool_calls=tuple(c.name for c in resp.tool_calls), usage=turn_usage,
        started_at=ev.started_at, finished_at=ev.finished_at, worker=ctx.worker,
        agent_version=state.agent_version, version_hash=ctx.version_hash))
    state = msgspec.structs.replace(state, usage=usage, messages=messages, updated_at=ctx.now,
                                    last_input_tokens=resp.usage.input_tokens,
                                    last_input_messages=len(state.messages))

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
        key = f"{call.name}:{msgspec.json.encode(args, order='sorted').decode()}"
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= ctx.spec.loop_limit:
            return _fail(state, ctx, "loop_detected",
                         f"the model called {call.name} with the same arguments {counts[key]} times",
                         extra=(progress,))
        if ctx.needs_approval is not None and ctx.needs_approval(call.name, args):
            approvers = (ctx.approvers_for(call.name) if ctx.approvers_for else ()) or ctx.default_approvers
            approval = ApprovalRequested(
                approval_id=f"{task.task_id}-{ev.step}-{call_id}", task_id=task.task_id, agent=task.agent,
                step=ev.step, call_id=call_id, tool=call.name, arguments=args, approvers=approvers,
                requested_at=ctx.now, deadline_at=approval_deadline, tenant_id=task.tenant_id,
                user_id=task.user_id)
            pending.append(PendingCall(call_id=call_id, tool=call.name, arguments=args, approval="pending",
                                       approval_id=approval.approval_id, approvers=approvers))
            cmds += [PublishApproval(request=approval),
                     SetApprovalTimer(call_id=call_id, at=approval_deadline),
                     RecordApproval(approval_id=approval.approval_id, status="pending", request=approval),
                     _audit("approval.requested", ctx, task, actor=f"agent:{task.agent}",
                            approval_id=approval.approval_id, tool=call.name, step=ev.step)]
            continue
        pending.append(PendingCall(call_id=call_id, tool=call.name, arguments=args))
        cmds.append(PublishToolCall(request=_tool_request(task, ev.step, call_id, call.name, args, ctx)))
    # The transcript must pair every tool call id the model produced with a result.
    if any(c.id != i for c, i in zip(resp.tool_calls, ids)):
        fixed = tuple(msgspec.structs.replace(c, id=i) for c, i in zip(resp.tool_calls, ids))
        messages = (*state.messages[:-1], msgspec.structs.replace(assistant, tool_calls=fixed))
        state = msgspec.structs.replace(state, messages=messages)
    state = msgspec.structs.replace(
        state, status="awaiting_tools", pending=tuple(pending), results=tuple(early),
        tool_calls_total=total, call_counts=counts)
    if any(p.approval == "pending" for p in pending):
        # The task's own clock stops while a human decides: it keeps the time
        # it had left, counted from the approval deadline.
        remaining = max(state.deadline_at - ctx.now, 0.0)
        state = msgspec.structs.replace(state, deadline_at=max(state.deadline_at, approval_deadline + remaining))
        cmds.append(SetDeadline(deadline_at=state.deadline_at))
    dispatched = PublishProgress(event=ToolCallDispatched(
        task_id=task.task_id, agent=task.agent, step=ev.step,
        calls=state.messages[-1].tool_calls, at=ctx.now, agent_version=state.agent_version,
        version_hash=ctx.version_hash))
    if not pending:
        return _next_turn(state, ctx, extra=(progress, dispatched))
    return _emit(state, (progress, dispatched, *cmds))


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
    pend = next((p for p in state.pending if p.call_id == ev.call_id), None) \
        if state.status == "awaiting_tools" and ev.step == state.step else None
    if pend is None or any(r.call_id == ev.call_id for r in state.results):
        return _duplicate(state, ctx, reemit=True)
    if pend.approval == "pending" or pend.tool != ev.tool:
        # Never dispatched (a human has not decided) or another tool: not its result.
        return _duplicate(state, ctx, reemit=False)
    if not ev.ok and ev.error is not None and ev.error.escalate:
        return _fail(state, ctx, "escalated", f"{ev.tool} (call {ev.call_id}): {ev.error.message}; "
                     "the task is escalated to a human")
    if ev.ok:
        content = tool_ok_content(ev.result)
    else:
        content = tool_error_content(ev.error or ToolError(kind="execution_error", message="tool failed"))
    result = CallResult(call_id=ev.call_id, tool=ev.tool, ok=ev.ok, content=content)
    state = msgspec.structs.replace(state, results=(*state.results, result), updated_at=ctx.now)
    if not _all_settled(state):
        # Keep the outbox: if the step that published these calls crashed half
        # way, a redelivery must still be able to publish the rest.
        return Decision(state=state, commands=(), changed=True)
    return _next_turn(state, ctx)


def _pending_approval(state: SessionState, call_id: str, step: int | None = None) -> PendingCall | None:
    if state.status != "awaiting_tools" or (step is not None and step != state.step):
        return None
    for p in state.pending:
        if p.call_id == call_id and p.approval == "pending":
            return p
    return None


def _on_decision(state: SessionState, ev: ApprovalDecided, ctx: Context) -> Decision:
    pend = _pending_approval(state, ev.call_id, ev.step)
    if pend is None or pend.approval_id != ev.approval_id:
        return _duplicate(state, ctx, reemit=True)
    task = state.task
    allowed = pend.approvers or ctx.default_approvers
    if not ev.approver or (allowed and ev.approver not in allowed):
        # Not an allowed identity: the decision does not count, but is audited.
        who = ev.approver or "(anonymous)"
        audit = _audit("approval.rejected", ctx, task, actor=who, approval_id=ev.approval_id, tool=pend.tool,
                       reason=f"{who} may not decide; allowed: {', '.join(allowed) or 'anyone'}")
        return Decision(state=state, commands=(audit,), changed=False)
    verdict = "approved" if ev.approved else "denied"
    audit = _audit("approval.decided", ctx, task, actor=ev.approver, approval_id=ev.approval_id, tool=pend.tool,
                   approved=ev.approved, reason=ev.reason)
    record = RecordApproval(approval_id=ev.approval_id, status=verdict, decision=ev)
    common: tuple[AnyCommand, ...] = (ClearApprovalTimer(call_id=pend.call_id), record, audit)
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
    return _settle_call(state, ctx, pend, error, common)


def _on_approval_expired(state: SessionState, ev: ApprovalExpired, ctx: Context) -> Decision:
    pend = _pending_approval(state, ev.call_id)
    if pend is None:
        return _duplicate(state, ctx, reemit=False)
    task = state.task
    timeout = ctx.spec.approval_timeout_s
    audit = _audit("approval.expired", ctx, task, actor="system", approval_id=pend.approval_id, tool=pend.tool,
                   policy=ctx.spec.on_approval_timeout)
    record = RecordApproval(approval_id=pend.approval_id, status="expired")
    if ctx.spec.on_approval_timeout == "escalate":
        return _fail(state, ctx, "approval_expired",
                     f"no decision on {pend.tool} within {timeout:g}s; the task is escalated to a human",
                     extra=(record, audit))
    error = ToolError(kind="approval_expired", message=f"nobody approved this call within {timeout:g}s",
                      hint="do not retry it; tell the user it could not be approved in time")
    return _settle_call(state, ctx, pend, error, (ClearApprovalTimer(call_id=pend.call_id), record, audit))


def _settle_call(state: SessionState, ctx: Context, pend: PendingCall, error: ToolError,
                 extra: tuple[AnyCommand, ...]) -> Decision:
    """A call that will not run (denied, expired) gets an error result."""
    pending = tuple(msgspec.structs.replace(p, approval="") if p.call_id == pend.call_id else p
                    for p in state.pending)
    result = CallResult(call_id=pend.call_id, tool=pend.tool, ok=False, content=tool_error_content(error))
    state = msgspec.structs.replace(state, pending=pending, results=(*state.results, result), updated_at=ctx.now)
    if not _all_settled(state):
        return _emit(state, extra)
    return _next_turn(state, ctx, extra=extra)


def _tool_request(task: TaskSubmitted, step: int, call_id: str, tool: str, args: dict[str, Any],
                  ctx: Context, *, approval_seq: int = 0) -> ToolCallRequested:
    return ToolCallRequested(approval_seq=approval_seq,
        task_id=task.task_id, agent=task.agent, step=step, call_id=call_id, tool=tool, arguments=args,
        idempotency_key=f"{task.task_id}:{step}:{call_id}", reply_subject=subjects.events(task.agent, task.task_id),
        requested_at=ctx.now, timeout_s=ctx.spec.tool_timeout_s, tenant_id=task.tenant_id, user_id=task.user_id)


def _all_settled(state: SessionState) -> bool:
    """Every pending call of the step has its result."""
    done = {r.call_id for r in state.results}
    return all(p.call_id in done for p in state.pending)


def _audit(kind: str, ctx: Context, task: TaskSubmitted, *, actor: str, **details: Any) -> PublishAudit:
    return PublishAudit(record=AuditRecord(kind=kind, at=ctx.now, actor=actor, agent=task.agent,
                                           task_id=task.task_id, details=details))


# ----------------------------------------------------------------- budgets

MIN_OUTPUT_TOKENS = 16


def estimate_tokens(messages: tuple[Message, ...], tools: tuple[Any, ...]) -> int:
    """A deliberately high estimate of a request's input tokens (3 characters a
    token, where real tokenizers average about 4), so a budget check errs on
    the side of not making the call."""
    chars = 0
    for m in messages:
        chars += len(m.content) + 12
        for c in m.tool_calls:
            chars += len(c.name) + len(c.arguments) + 12
    for t in tools:
        chars += len(msgspec.json.encode(t))
    return chars // 3 + 1


def _price(model: str, ctx: Context) -> tuple[float, float]:
    return ctx.prices.get(model) or ctx.prices.get("*") or (0.0, 0.0)


def _priced(usage: Usage, model: str, ctx: Context) -> Usage:
    if usage.cost_usd:
        return usage
    pin, pout = _price(model, ctx)
    cost = (usage.input_tokens * pin + usage.output_tokens * pout) / 1_000_000
    return msgspec.structs.replace(usage, cost_usd=cost)


def _over_budget(state: SessionState) -> str:
    u = state.usage
    used = u.input_tokens + u.output_tokens
    if state.max_tokens is not None and used > state.max_tokens:
        return f"token budget exceeded: used {used} of {state.max_tokens} tokens"
    if state.max_cost_usd is not None and u.cost_usd > state.max_cost_usd:
        return f"cost budget exceeded: spent ${u.cost_usd:.6f} of ${state.max_cost_usd:.6f}"
    return ""


def _call_model(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...] = ()) -> Decision:
    """Ask the model for the next turn, unless the budget cannot pay for it:
    then the call is not made and the task fails with the figures. The call's
    output is capped at what the budget leaves."""
    max_out = ctx.spec.max_output_tokens
    if state.max_tokens is None and state.max_cost_usd is None:
        # Nothing to check: the estimate walks the whole transcript and encodes
        # every tool spec, work every step of an unbudgeted task would waste.
        return _emit(state, (*extra, CallModel(step=state.step, max_tokens=max_out)))
    u = state.usage
    est_in = estimate_tokens(state.messages, ctx.spec.tools)
    if state.last_input_tokens:
        est_in = max(est_in, state.last_input_tokens
                     + estimate_tokens(state.messages[state.last_input_messages:], ()))
    if state.max_tokens is not None:
        left = state.max_tokens - (u.input_tokens + u.output_tokens)
        if est_in + MIN_OUTPUT_TOKENS > left:
            return _fail(state, ctx, "budget_exceeded",
                         f"token budget of {state.max_tokens} would be exceeded: {u.input_tokens + u.output_tokens} "
                         f"used, the next model call needs about {est_in + MIN_OUTPUT_TOKENS}", extra=extra)
        max_out = min(max_out, left - est_in)
    if state.max_cost_usd is not None:
        pin, pout = _price(ctx.model, ctx)
        left_usd = state.max_cost_usd - u.cost_usd
        need = (est_in * pin + MIN_OUTPUT_TOKENS * pout) / 1_000_000
        if need > left_usd:
            return _fail(state, ctx, "budget_exceeded",
                         f"cost budget of ${state.max_cost_usd:.6f} would be exceeded: ${u.cost_usd:.6f} spent, "
                         f"the next model call costs about ${need:.6f}", extra=extra)
        if pout > 0:
            max_out = min(max_out, int((left_usd - est_in * pin / 1_000_000) * 1_000_000 / pout))
    return _emit(state, (*extra, CallModel(step=state.step, max_tokens=max_out)))


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
    return _call_model(state, ctx, extra=extra)


def _complete(state: SessionState, ctx: Context, output: str, extra: tuple[AnyCommand, ...] = ()) -> Decision:
    task = state.task
    result = TaskCompleted(
        task_id=task.task_id, agent=task.agent, agent_version=state.agent_version, output=output,
        steps=state.step, tool_calls=state.tool_calls_total, usage=state.usage,
        started_at=state.started_at, finished_at=ctx.now, tenant_id=task.tenant_id,
        user_id=task.user_id, conversation_id=task.conversation_id, version_hash=ctx.version_hash)
    cancel = _cancel_approvals(state)
    state = msgspec.structs.replace(state, status="completed", outcome=result, pending=(), results=())
    cmds: list[AnyCommand] = [*extra, *cancel, PublishResult(result=result), ClearDeadline()]
    key = conversation_key(task)
    if key:
        user = task.input or f"(a large input, stored as {task.input_ref})"
        cmds.insert(len(extra), RecordTurn(conversation_key=key, task_id=task.task_id, user=user,
                                           assistant=output))
    return _emit(state, tuple(cmds))


def _fail(state: SessionState, ctx: Context, reason: str, message: str,
          extra: tuple[AnyCommand, ...] = (), attempts: tuple[ModelAttempt, ...] = ()) -> Decision:
    task = state.task
    result = TaskFailed(
        task_id=task.task_id, agent=task.agent, agent_version=state.agent_version, reason=reason,
        message=message, steps=state.step, tool_calls=state.tool_calls_total, usage=state.usage,
        started_at=state.started_at, finished_at=ctx.now, tenant_id=task.tenant_id,
        user_id=task.user_id, conversation_id=task.conversation_id, version_hash=ctx.version_hash,
        model_attempts=attempts)
    cancel = _cancel_approvals(state)
    state = msgspec.structs.replace(state, status="failed", outcome=result, pending=(), results=(),
                                    updated_at=ctx.now)
    return _emit(state, (*extra, *cancel, PublishResult(result=result), ClearDeadline()))


def too_large(state: SessionState, ctx: Context, size: int, limit: int) -> Decision:
    """The session would outgrow what the store holds (the broker's max
    payload): fail now, saying so, instead of failing every write until the
    deadline. The failed state drops the transcript (it is what grew) so the
    failure itself fits."""
    task = msgspec.structs.replace(state.task, input="", metadata={})
    small = msgspec.structs.replace(state, task=task, messages=(), pending=tuple(
        p for p in state.pending if p.approval == "pending"), results=(), outbox=())
    return _fail(small, ctx, "state_too_large",
                 f"the session grew to {size} bytes at step {state.step}, over the {limit}-byte limit "
                 "(the broker's max payload); large inputs and tool results travel by reference, but "
                 "everything the model reads is kept in the session")


def _cancel_approvals(state: SessionState) -> list[AnyCommand]:
    out: list[AnyCommand] = []
    for p in state.pending:
        if p.approval == "pending":
            out += [ClearApprovalTimer(call_id=p.call_id), RecordApproval(approval_id=p.approval_id, status="cancelled")]
    return out


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
