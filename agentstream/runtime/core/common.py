"""What every strategy of the core shares: the decision's context and shape,
recording a model turn, asking the model under the budget, tool requests,
finishing a task (answer, failure), audits, and the outbox that makes a
replayed step re-publish exactly what it published before.

Pure, like ``decide``: ReAct (``decide``) and plan-first (``plan_first``)
build their transitions from these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    ToolCallRequested,
    ToolError,
    ToolSpec,
    Usage,
)
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.core.state import (
    AnyCommand,
    CallModel,
    ClearApprovalTimer,
    ClearDeadline,
    ModelResponded,
    PendingCall,
    PublishApproval,
    PublishAudit,
    PublishProgress,
    PublishResult,
    RecordApproval,
    RecordTurn,
    SessionState,
    SetApprovalTimer,
    SetDeadline,
    Turn,
    tool_error_content,
    tool_ok_content,
)
from agentstream.runtime.planning.protocol import SUBMIT_PLAN, SUBMIT_PLAN_NAME

# JetStream's default duplicate window. A duplicate input older than this no
# longer re-emits the outbox: the server would not dedupe it any more, and an
# outbox that old was published long ago.
DEDUPE_WINDOW_S = 120.0

_json = msgspec.json.Encoder(order="sorted")


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
    # For a ToolCallCompleted input: its EVENTS stream sequence (a plan step's
    # output is proven to a tool worker by it, see ToolCallRequested.plan_inputs).
    result_seq: int = 0
    # The deployment's rules (runtime.policy.Policy, flattened by the engine).
    # (input, output) USD per million tokens, by model name.
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # Whether a call needs a human's approval, given its tool and arguments.
    needs_approval: Callable[[str, dict[str, Any]], bool] | None = None
    # Whether a tool has any approval rule (core.policy.Policy.may_need_approval).
    may_need_approval: Callable[[str], bool] | None = None
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


def dumps(value: Any) -> str:
    """JSON with sorted keys: equal arguments give equal text however the
    model ordered them (the loop key, a plan's transcript)."""
    return _json.encode(value).decode()


_T = TypeVar("_T")


def _override(value: Any, default: _T) -> _T:
    """A task's own limit when it set a positive one, else the agent's."""
    return value if value is not None and value > 0 else default


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


def _fix_call_ids(state: SessionState, calls: tuple[ToolCall, ...], ids: list[str]
                  ) -> tuple[SessionState, tuple[ToolCall, ...]]:
    """The turn's calls under their usable ids (``_ids``), and the session with
    its last (assistant) message carrying them: the transcript must pair every
    tool call id the model produced with a result."""
    if all(c.id == i for c, i in zip(calls, ids)):
        return state, calls
    fixed = tuple(msgspec.structs.replace(c, id=i) for c, i in zip(calls, ids))
    messages = (*state.messages[:-1], msgspec.structs.replace(state.messages[-1], tool_calls=fixed))
    return msgspec.structs.replace(state, messages=messages), fixed


def _count_call(counts: dict[str, int], tool: str, args_json: str) -> int:
    """One more call of ``tool`` with these arguments (``dumps``'d) in
    ``counts``; the loop limit is checked against what it returns."""
    key = f"{tool}:{args_json}"
    counts[key] = counts.get(key, 0) + 1
    return counts[key]


def _approvers(tool: str, ctx: Context) -> tuple[str, ...]:
    return (ctx.approvers_for(tool) if ctx.approvers_for else ()) or ctx.default_approvers


def _pause_deadline(state: SessionState, ctx: Context, approval_deadline: float) -> tuple[SessionState, SetDeadline]:
    """The task's own clock stops while a human decides: it keeps the time it
    had left, counted from the approval deadline."""
    remaining = max(state.deadline_at - ctx.now, 0.0)
    state = msgspec.structs.replace(state, deadline_at=max(state.deadline_at, approval_deadline + remaining))
    return state, SetDeadline(deadline_at=state.deadline_at)


def _tool_request(task: TaskSubmitted, step: int, call_id: str, tool: str, args: dict[str, Any],
                  ctx: Context, *, approval_seq: int = 0, plan_inputs: dict[str, int] | None = None
                  ) -> ToolCallRequested:
    return ToolCallRequested(approval_seq=approval_seq, plan_inputs=plan_inputs or {},
        task_id=task.task_id, agent=task.agent, step=step, call_id=call_id, tool=tool, arguments=args,
        idempotency_key=f"{task.task_id}:{step}:{call_id}", reply_subject=subjects.events(task.agent, task.task_id),
        requested_at=ctx.now, timeout_s=ctx.spec.tool_timeout_s, tenant_id=task.tenant_id, user_id=task.user_id)


def _ask_approval(task: TaskSubmitted, step: int, call_id: str, tool: str, args: dict[str, Any],
                  approvers: tuple[str, ...], deadline_at: float, ctx: Context,
                  **audit_details: Any) -> tuple[PendingCall, list[AnyCommand]]:
    """A call parked until a human decides: its pending entry, and the
    request, timer, listing and audit that ask for the decision."""
    approval = ApprovalRequested(
        approval_id=f"{task.task_id}-{step}-{call_id}", task_id=task.task_id, agent=task.agent,
        step=step, call_id=call_id, tool=tool, arguments=args, approvers=approvers,
        requested_at=ctx.now, deadline_at=deadline_at, tenant_id=task.tenant_id,
        user_id=task.user_id)
    pend = PendingCall(call_id=call_id, tool=tool, arguments=args, approval="pending",
                       approval_id=approval.approval_id, approvers=approvers)
    return pend, [PublishApproval(request=approval),
                  SetApprovalTimer(call_id=call_id, at=deadline_at),
                  RecordApproval(approval_id=approval.approval_id, status="pending", request=approval),
                  _audit("approval.requested", ctx, task, actor=f"agent:{task.agent}",
                         approval_id=approval.approval_id, tool=tool, step=step, **audit_details)]


def _pending_approval(state: SessionState, call_id: str, step: int | None = None) -> PendingCall | None:
    if state.status != "awaiting_tools" or (step is not None and step != state.step):
        return None
    for p in state.pending:
        if p.call_id == call_id and p.approval == "pending":
            return p
    return None


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


def request_shape(state: SessionState, spec: AgentSpec) -> tuple[tuple[ToolSpec, ...], str | None]:
    """The tools and tool_choice of the session's next model call: a planner
    turn (the agent's tools and ``submit_plan``, forced), a solver turn (no
    tools), or (ReAct, a fallback) the agent's own (planning/protocol.py)."""
    p = state.planning
    if p is not None and p.phase == "planning":
        return (*spec.tools, SUBMIT_PLAN), SUBMIT_PLAN_NAME
    if p is not None and p.phase == "solving":
        return (), "none"
    return spec.tools, spec.tool_choice


def _next_model_turn(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...] = ()) -> Decision:
    """Ask the model again, unless the step limit is reached."""
    if state.step >= state.max_steps:
        return _fail(state, ctx, "max_steps",
                     f"reached the limit of {state.max_steps} model turns without a final answer", extra=extra)
    state = msgspec.structs.replace(state, status="awaiting_model", step=state.step + 1, updated_at=ctx.now)
    return _call_model(state, ctx, extra=extra)


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
    est_in = estimate_tokens(state.messages, request_shape(state, ctx.spec)[0])
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


def _record_response(state: SessionState, ev: ModelResponded, ctx: Context) -> tuple[SessionState, PublishProgress]:
    """A model turn into the session: its usage (priced), its message, and the
    progress notice watchers see. Every strategy starts a turn's handling here."""
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
    return state, progress


def _refuse_result(state: SessionState, ev: ToolCallCompleted, ctx: Context) -> Decision | None:
    """What a tool result does before any strategy reads it: nothing, when it
    answers no call in flight at this step (a duplicate re-emits the outbox);
    fail the task, when the tool escalates. None: the strategy takes it."""
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
    return None


def _result_content(ev: ToolCallCompleted) -> str:
    if ev.ok:
        return tool_ok_content(ev.result)
    return tool_error_content(ev.error or ToolError(kind="execution_error", message="tool failed"))


def _refuse_approver(state: SessionState, pend: PendingCall, ev: ApprovalDecided, ctx: Context) -> Decision | None:
    """A decision from an identity not allowed to decide on this call (or
    plan) does not count, but is audited. None: the approver may decide."""
    allowed = pend.approvers or ctx.default_approvers
    if ev.approver and (not allowed or ev.approver in allowed):
        return None
    who = ev.approver or "(anonymous)"
    audit = _audit("approval.rejected", ctx, state.task, actor=who, approval_id=ev.approval_id, tool=pend.tool,
                   reason=f"{who} may not decide; allowed: {', '.join(allowed) or 'anyone'}")
    return Decision(state=state, commands=(audit,), changed=False)


def _decision_recorded(state: SessionState, pend: PendingCall, ev: ApprovalDecided, ctx: Context,
                       **audit: Any) -> tuple[AnyCommand, ...]:
    """What any accepted decision (on a call or a whole plan) does first: stop
    its timer, record it, audit it."""
    return (ClearApprovalTimer(call_id=pend.call_id),
            RecordApproval(approval_id=ev.approval_id, status="approved" if ev.approved else "denied", decision=ev),
            _audit("approval.decided", ctx, state.task, actor=ev.approver, approval_id=ev.approval_id,
                   tool=pend.tool, approved=ev.approved, reason=ev.reason, **audit))


def _expiry_recorded(state: SessionState, pend: PendingCall, ctx: Context, what: str
                     ) -> Decision | tuple[AnyCommand, ...]:
    """What any approval's expiry (on a call or a whole plan, ``what`` names
    it) does first: record and audit it. Under the ``escalate`` policy the
    task fails (the Decision); else the commands that also stop its timer,
    for the strategy to settle the call."""
    timeout = ctx.spec.approval_timeout_s
    audit = _audit("approval.expired", ctx, state.task, actor="system", approval_id=pend.approval_id, tool=pend.tool,
                   policy=ctx.spec.on_approval_timeout)
    record = RecordApproval(approval_id=pend.approval_id, status="expired")
    if ctx.spec.on_approval_timeout == "escalate":
        return _fail(state, ctx, "approval_expired",
                     f"no decision on {what} within {timeout:g}s; the task is escalated to a human",
                     extra=(record, audit))
    return ClearApprovalTimer(call_id=pend.call_id), record, audit
