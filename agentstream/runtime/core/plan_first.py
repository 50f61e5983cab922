"""The plan-first strategy of the core (docs/planning.md). Pure.

A planner turn (``planning/protocol.py``: the agent's tools plus
``submit_plan``, forced) emits a typed DAG; it is validated before anything
runs; an invalid plan goes back to the planner as ``{"errors": [...]}``.
A valid plan is an event (``PlanProposed``); when it holds approval-gated
calls a human may approve it whole, once. Its ready steps are published as
ordinary tool calls on the tool subscriptions, in parallel; each result
unblocks its dependents, pointers resolved from earlier outputs. A failed
step (or a pointer its output cannot satisfy) sends the planner
``{"failed": {...}, "done": {...}}``; after ``max_replans`` replans the
task falls back to ReAct with everything done so far in its transcript.
When every step has its output, a solver turn (no tools) writes the answer.

Every transition keeps the ReAct guarantees: call ids and idempotency keys
are deterministic (``p<attempt>-<step id>``), the deadline, budgets and
loop limit apply, gated calls outside an approved plan need their own
approval, and the outbox re-publishes every call still in flight.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentstream.contracts.events import (
    ApprovalDecided,
    Message,
    ModelResponse,
    PlanProgress,
    PlanProposed,
    PlanStepShown,
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolError,
)
from agentstream.runtime.core.common import (
    Context,
    Decision,
    _ask_approval,
    _audit,
    _call_model,
    _duplicate,
    _emit,
    _fail,
    _ids,
    _over_budget,
    _record_response,
    _tool_request,
    request_shape,  # noqa: F401 - the engine asks it here, beside the strategy
)
from agentstream.runtime.core.state import (
    AnyCommand,
    ApprovalExpired,
    CallResult,
    ClearApprovalTimer,
    ModelResponded,
    PendingCall,
    PlanCall,
    Planning,
    PublishProgress,
    PublishToolCall,
    RecordApproval,
    SessionState,
    SetDeadline,
    tool_error_content,
    tool_ok_content,
)
from agentstream.runtime.planning.plan import (
    REF_KEY,
    Plan,
    PlanError,
    Unresolved,
    covers,
    digest,
    parse_plan,
    ready_steps,
    refs_in,
    resolve,
    shown,
    validate,
)
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME

_json = msgspec.json.Encoder(order="sorted")


# ----------------------------------------------------------------- what the engine asks


def phase(state: SessionState) -> str:
    """What a plan-first session waits for; ``react`` for a ReAct session."""
    return state.planning.phase if state.planning is not None else "react"


def call_id(attempt: int, step_id: str) -> str:
    """A plan step's call id: deterministic, so a replayed step publishes the
    same call with the same idempotency key (and a tool worker can tell which
    step of an approved plan a call claims to be)."""
    return f"p{attempt}-{step_id}"


def approval_call_id(attempt: int) -> str:
    return f"plan-{attempt}"


def step_of(call: str, attempt: int) -> str | None:
    prefix = f"p{attempt}-"
    return call[len(prefix):] if call.startswith(prefix) else None


def approval_arguments(plan: Plan) -> dict[str, Any]:
    """What a plan-level approval shows and binds: every step with its raw
    arguments (pointers as pointers) and as a human reads them, and the
    plan's digest. ``ApprovalDecided.arguments_digest`` is the digest of this."""
    return {
        "plan_digest": digest(plan),
        "rationale": plan.rationale,
        "steps": [{"id": s.id, "tool": s.tool, "args": s.args, "depends_on": list(s.depends_on)}
                  for s in plan.steps],
        "shown": [{"id": s.id, "tool": s.tool, "args": shown(s.args)} for s in plan.steps],
    }


# ----------------------------------------------------------------- planner turn


def solver_response(ev: ModelResponded) -> ModelResponded:
    """A solver turn answers in text; tool calls it was not offered are dropped."""
    if not ev.response.tool_calls:
        return ev
    return msgspec.structs.replace(ev, response=msgspec.structs.replace(ev.response, tool_calls=()))


def on_planner(state: SessionState, ev: ModelResponded, ctx: Context) -> Decision:
    before = state.planning
    assert before is not None
    resp: ModelResponse = ev.response
    state, progress = _record_response(state, ev, ctx)
    over = _over_budget(state)
    if over:
        return _fail(state, ctx, "budget_exceeded", over, extra=(progress,))
    attempt = before.attempt + 1
    ids = _ids(resp.tool_calls, ev.step)
    calls = tuple(msgspec.structs.replace(c, id=i) for c, i in zip(resp.tool_calls, ids))
    if calls != resp.tool_calls:
        state = msgspec.structs.replace(state, messages=(
            *state.messages[:-1], msgspec.structs.replace(state.messages[-1], tool_calls=calls)))
    submitted = next((c for c in calls if c.name == SUBMIT_PLAN_NAME), None)
    # Every other call is answered (a transcript must pair each call with a
    # result) but never run: nothing runs before the whole plan is validated.
    others = tuple(Message(role="tool", tool_call_id=c.id, name=c.name, content=_dumps(
        {"errors": [{"kind": "malformed", "message": "not run: submit the whole plan with submit_plan first"}]}))
        for c in calls if submitted is None or c.id != submitted.id)
    state = msgspec.structs.replace(state, messages=(*state.messages, *others))

    plan: Plan | None = None
    errors: list[PlanError]
    if submitted is None:
        errors = [PlanError(kind="malformed", message="no submit_plan call: answer with one submit_plan call "
                                                      "holding the whole plan")]
    else:
        parsed = parse_plan(submitted.arguments)
        if isinstance(parsed, PlanError):
            errors = [parsed]
        else:
            plan = parsed
            left = max(ctx.spec.max_tool_calls - state.tool_calls_total, 0)
            errors = validate(plan, {t.name: t for t in ctx.spec.tools}, max_steps=left)
    planning = msgspec.structs.replace(before, attempt=attempt,
                                       planner_call_id=submitted.id if submitted else "",
                                       plan=None, digest="", outputs={}, output_seqs={}, failed={},
                                       approval_seq=0)
    state = msgspec.structs.replace(state, planning=planning)
    task = state.task
    proposed = PublishProgress(event=PlanProposed(
        task_id=task.task_id, agent=task.agent, attempt=attempt, step=ev.step,
        digest=digest(plan) if plan is not None else "", steps=_shown_steps(plan), valid=not errors, at=ctx.now,
        rationale=plan.rationale if plan is not None else "",
        errors=tuple(msgspec.to_builtins(e) for e in errors), agent_version=state.agent_version,
        version_hash=ctx.version_hash))
    if errors or plan is None:
        summary = "; ".join(e.message for e in errors[:3])
        return _replan(state, ctx, {"errors": [msgspec.to_builtins(e) for e in errors]},
                       f"invalid plan: {summary}", (progress, proposed))
    return _accept(state, plan, ctx, (progress, proposed))


def _shown_steps(plan: Plan | None) -> tuple[PlanStepShown, ...]:
    if plan is None:
        return ()
    return tuple(PlanStepShown(id=s.id, tool=s.tool, args=shown(s.args), depends_on=s.depends_on)
                 for s in plan.steps)


def _accept(state: SessionState, plan: Plan, ctx: Context, extra: tuple[AnyCommand, ...]) -> Decision:
    assert state.planning is not None
    planning = msgspec.structs.replace(state.planning, plan=plan, digest=digest(plan), phase="executing")
    state = msgspec.structs.replace(state, planning=planning, status="awaiting_tools", pending=(), results=())
    approvers = _plan_approvers(plan, ctx)
    if approvers is None:
        return _advance(state, ctx, extra)
    return _ask_plan_approval(state, plan, approvers, ctx, extra)


def _gated(tool: str, args: dict[str, Any], ctx: Context) -> bool:
    """Whether a step may need a human: its rule says so for its arguments, or
    its arguments hold pointers (no values yet) and its tool has a rule."""
    assert ctx.needs_approval is not None
    try:
        if ctx.needs_approval(tool, args):
            return True
    except Exception:  # noqa: BLE001 - a rule that cannot judge a pointer (not a value yet) must ask a human
        return True
    return any(True for _ in refs_in(args)) and ctx.may_need_approval is not None and ctx.may_need_approval(tool)


def _plan_approvers(plan: Plan, ctx: Context) -> tuple[str, ...] | None:
    """Who may approve the whole plan, or None when no plan-level approval is
    asked: no step is gated, or no identity may approve every gated step (then
    each gated call asks on its own). ``()``: anyone the deployment allows."""
    if ctx.needs_approval is None:
        return None
    gated = {s.tool for s in plan.steps if _gated(s.tool, s.args, ctx)}
    if not gated:
        return None
    allowed = [set((ctx.approvers_for(t) if ctx.approvers_for else ()) or ctx.default_approvers)
               for t in sorted(gated)]
    restricted = [a for a in allowed if a]
    if not restricted:
        return ()
    both = set.intersection(*restricted)
    return tuple(sorted(both)) if both else None


def _ask_plan_approval(state: SessionState, plan: Plan, approvers: tuple[str, ...], ctx: Context,
                       extra: tuple[AnyCommand, ...]) -> Decision:
    assert state.planning is not None
    deadline = ctx.now + ctx.spec.approval_timeout_s
    pend, asking = _ask_approval(state.task, state.step, approval_call_id(state.planning.attempt), SUBMIT_PLAN_NAME,
                                 approval_arguments(plan), approvers, deadline, ctx,
                                 plan_digest=digest(plan))
    remaining = max(state.deadline_at - ctx.now, 0.0)
    state = msgspec.structs.replace(
        state, pending=(pend,), planning=msgspec.structs.replace(state.planning, phase="approval"),
        deadline_at=max(state.deadline_at, deadline + remaining))
    return _emit(state, (*extra, *asking, SetDeadline(deadline_at=state.deadline_at)))


def on_plan_decision(state: SessionState, ev: ApprovalDecided, ctx: Context) -> Decision:
    """A human's decision on the whole plan. Approved: the plan runs, its gated
    calls under this decision. Denied: the planner hears it and may plan
    again (bounded), then ReAct, where each gated call asks on its own."""
    assert state.planning is not None
    pend = next((p for p in state.pending if p.call_id == ev.call_id and p.approval == "pending"), None)
    if (pend is None or ev.step != state.step or pend.approval_id != ev.approval_id
            or state.planning.phase != "approval"):
        return _duplicate(state, ctx, reemit=True)
    task = state.task
    allowed = pend.approvers or ctx.default_approvers
    if not ev.approver or (allowed and ev.approver not in allowed):
        who = ev.approver or "(anonymous)"
        audit = _audit("approval.rejected", ctx, task, actor=who, approval_id=ev.approval_id, tool=pend.tool,
                       reason=f"{who} may not decide; allowed: {', '.join(allowed) or 'anyone'}")
        return Decision(state=state, commands=(audit,), changed=False)
    verdict = "approved" if ev.approved else "denied"
    common: tuple[AnyCommand, ...] = (
        ClearApprovalTimer(call_id=pend.call_id),
        RecordApproval(approval_id=ev.approval_id, status=verdict, decision=ev),
        _audit("approval.decided", ctx, task, actor=ev.approver, approval_id=ev.approval_id, tool=pend.tool,
               approved=ev.approved, reason=ev.reason, plan_digest=state.planning.digest))
    if ev.approved:
        planning = msgspec.structs.replace(state.planning, phase="executing", approval_seq=ctx.decision_seq)
        state = msgspec.structs.replace(state, planning=planning, pending=(), updated_at=ctx.now)
        return _advance(state, ctx, common)
    state = msgspec.structs.replace(state, pending=(), updated_at=ctx.now)
    reply = {"denied": {"by": ev.approver, "reason": ev.reason}}
    return _replan(state, ctx, reply, f"plan denied by {ev.approver}", common)


def on_plan_expired(state: SessionState, ev: ApprovalExpired, ctx: Context) -> Decision:
    assert state.planning is not None
    pend = next((p for p in state.pending if p.call_id == ev.call_id and p.approval == "pending"), None)
    if pend is None or state.planning.phase != "approval":
        return _duplicate(state, ctx, reemit=False)
    timeout = ctx.spec.approval_timeout_s
    record = RecordApproval(approval_id=pend.approval_id, status="expired")
    audit = _audit("approval.expired", ctx, state.task, actor="system", approval_id=pend.approval_id,
                   tool=pend.tool, policy=ctx.spec.on_approval_timeout)
    if ctx.spec.on_approval_timeout == "escalate":
        return _fail(state, ctx, "approval_expired",
                     f"no decision on the plan within {timeout:g}s; the task is escalated to a human",
                     extra=(record, audit))
    state = msgspec.structs.replace(state, pending=(), updated_at=ctx.now)
    return _replan(state, ctx, {"denied": {"by": "system", "reason": f"nobody approved the plan within {timeout:g}s"}},
                   "the plan's approval expired", (ClearApprovalTimer(call_id=pend.call_id), record, audit))


# ----------------------------------------------------------------- execution


def on_tool_result(state: SessionState, ev: ToolCallCompleted, ctx: Context) -> Decision:
    assert state.planning is not None
    pend = next((p for p in state.pending if p.call_id == ev.call_id), None) \
        if state.status == "awaiting_tools" and ev.step == state.step else None
    if pend is None or any(r.call_id == ev.call_id for r in state.results):
        return _duplicate(state, ctx, reemit=True)
    if pend.approval == "pending" or pend.tool != ev.tool:
        return _duplicate(state, ctx, reemit=False)
    if not ev.ok and ev.error is not None and ev.error.escalate:
        return _fail(state, ctx, "escalated", f"{ev.tool} (call {ev.call_id}): {ev.error.message}; "
                     "the task is escalated to a human")
    step_id = step_of(ev.call_id, state.planning.attempt) or ev.call_id
    planning = state.planning
    if ev.ok:
        content = tool_ok_content(ev.result)
        planning = msgspec.structs.replace(planning, outputs={**planning.outputs, step_id: ev.result},
                                           output_seqs={**planning.output_seqs, step_id: ctx.result_seq})
    else:
        content = tool_error_content(ev.error or ToolError(kind="execution_error", message="tool failed"))
        planning = msgspec.structs.replace(planning, failed={**planning.failed, step_id: content})
    result = CallResult(call_id=ev.call_id, tool=ev.tool, ok=ev.ok, content=content)
    state = msgspec.structs.replace(state, results=(*state.results, result), planning=planning, updated_at=ctx.now)
    extra: tuple[AnyCommand, ...] = ()
    if not ev.ok:
        extra = (_progress(state, ctx, "failed", (step_id,), f"{ev.tool}: {_error_message(content)}"),)
    return _advance(state, ctx, extra)


def after_settle(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...]) -> Decision:
    """A gated step's own approval was denied or expired (decide._settle_call):
    the step failed; the scheduler takes it from there."""
    assert state.planning is not None
    p = state.planning
    failed = dict(p.failed)
    new: list[str] = []
    for r in state.results:
        sid = step_of(r.call_id, p.attempt)
        if sid is not None and not r.ok and sid not in failed and sid not in p.outputs:
            failed[sid] = r.content
            new.append(sid)
    state = msgspec.structs.replace(state, planning=msgspec.structs.replace(p, failed=failed))
    if new:
        extra = (*extra, _progress(state, ctx, "failed", tuple(new), "not approved"))
    return _advance(state, ctx, extra)


def _advance(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...]) -> Decision:
    """The scheduler: publish every step whose dependencies have their
    outputs; once nothing is in flight, replan on a failure, or ask the solver."""
    assert state.planning is not None and state.planning.plan is not None
    p = state.planning
    plan = p.plan
    assert plan is not None
    task = state.task
    cmds: list[AnyCommand] = list(extra)
    pending = list(state.pending)
    failed = dict(p.failed)
    calls = list(p.calls)
    counts = dict(state.call_counts)
    total = state.tool_calls_total
    dispatched: list[str] = []
    dispatched_calls: list[ToolCall] = []
    unresolved: list[str] = []
    approval_deadline = ctx.now + ctx.spec.approval_timeout_s
    asked = False
    if not failed:
        started = {c.step_id for c in p.calls if c.attempt == p.attempt}
        for s in ready_steps(plan, p.outputs, started):
            try:
                args = resolve(s.args, p.outputs)
            except Unresolved as exc:
                failed[s.id] = _dumps({"error": msgspec.to_builtins(exc.error)})
                unresolved.append(s.id)
                continue
            cid = call_id(p.attempt, s.id)
            key = f"{s.tool}:{msgspec.json.encode(args, order='sorted').decode()}"
            counts[key] = counts.get(key, 0) + 1
            if counts[key] >= ctx.spec.loop_limit:
                return _fail(state, ctx, "loop_detected",
                             f"the plan called {s.tool} with the same arguments {counts[key]} times", extra=extra)
            calls.append(PlanCall(call_id=cid, step_id=s.id, tool=s.tool, attempt=p.attempt, turn=state.step,
                                  at=ctx.now))
            total += 1
            dispatched.append(s.id)
            dispatched_calls.append(ToolCall(id=cid, name=s.tool, arguments=_dumps(args)))
            if ctx.needs_approval is not None and ctx.needs_approval(s.tool, args):
                if p.approval_seq and covers(plan, s.id, s.tool, args, p.outputs):
                    pending.append(PendingCall(call_id=cid, tool=s.tool, arguments=args, approval="approved",
                                               approval_seq=p.approval_seq))
                    cmds.append(PublishToolCall(request=_tool_request(
                        task, state.step, cid, s.tool, args, ctx, approval_seq=p.approval_seq,
                        plan_inputs=_inputs(p, s.id))))
                    continue
                approvers = (ctx.approvers_for(s.tool) if ctx.approvers_for else ()) or ctx.default_approvers
                pend, asking = _ask_approval(task, state.step, cid, s.tool, args, approvers, approval_deadline, ctx,
                                             plan_step=s.id)
                pending.append(pend)
                cmds += asking
                asked = True
                continue
            pending.append(PendingCall(call_id=cid, tool=s.tool, arguments=args))
            cmds.append(PublishToolCall(request=_tool_request(task, state.step, cid, s.tool, args, ctx)))
    planning = msgspec.structs.replace(p, failed=failed, calls=tuple(calls))
    state = msgspec.structs.replace(state, pending=tuple(pending), planning=planning, tool_calls_total=total,
                                    call_counts=counts, updated_at=ctx.now)
    if dispatched:
        # The same notice a ReAct turn's calls get (evaluation reads the calls'
        # arguments from it), and the plan's own, naming the steps.
        cmds.append(PublishProgress(event=ToolCallDispatched(
            task_id=task.task_id, agent=task.agent, step=state.step, calls=tuple(dispatched_calls), at=ctx.now,
            agent_version=state.agent_version, version_hash=ctx.version_hash)))
        cmds.append(_progress(state, ctx, "dispatched", tuple(dispatched)))
    if unresolved:
        cmds.append(_progress(state, ctx, "failed", tuple(unresolved), "a pointer did not resolve"))
    if asked:
        remaining = max(state.deadline_at - ctx.now, 0.0)
        state = msgspec.structs.replace(state, deadline_at=max(state.deadline_at, approval_deadline + remaining))
        cmds.append(SetDeadline(deadline_at=state.deadline_at))
    if failed:
        # The plan will be replanned: a step still waiting for a human is not
        # asked about any longer (it would never run under this plan).
        state, cancelled = _cancel_waiting(state)
        cmds += cancelled
    settled = {r.call_id for r in state.results}
    if any(c.call_id not in settled for c in state.pending):
        return _emit_in_flight(state, ctx, tuple(cmds))
    if failed:
        return _replan(state, ctx, _failure_reply(state), "step " + ", ".join(sorted(failed)) + " failed",
                       tuple(cmds))
    if all(s.id in planning.outputs for s in plan.steps):
        return _solve(state, ctx, tuple(cmds))
    # Unreachable for a validated plan (every step is ready once its
    # dependencies have outputs); a plan that cannot progress is replanned.
    return _replan(state, ctx, _failure_reply(state), "the plan cannot progress", tuple(cmds))


def _cancel_waiting(state: SessionState) -> tuple[SessionState, list[AnyCommand]]:
    waiting = [p for p in state.pending if p.approval == "pending"]
    if not waiting:
        return state, []
    error = ToolError(kind="cancelled", message="not run: another step of the plan failed")
    results = tuple(CallResult(call_id=p.call_id, tool=p.tool, ok=False, content=tool_error_content(error))
                    for p in waiting)
    pending = tuple(msgspec.structs.replace(p, approval="") if p.approval == "pending" else p for p in state.pending)
    cmds: list[AnyCommand] = []
    for p in waiting:
        cmds += [ClearApprovalTimer(call_id=p.call_id), RecordApproval(approval_id=p.approval_id, status="cancelled")]
    return msgspec.structs.replace(state, pending=pending, results=(*state.results, *results)), cmds


def _inputs(p: Planning, step_id: str) -> dict[str, int]:
    """The results a gated step's pointers resolve from, by EVENTS sequence:
    a tool worker reads them to check the call is the approved step."""
    step = next((s for s in p.plan.steps if s.id == step_id), None) if p.plan is not None else None
    if step is None:
        return {}
    refs = {str(r[REF_KEY]) for r in refs_in(step.args)}
    return {ref: p.output_seqs[ref] for ref in sorted(refs) if p.output_seqs.get(ref)}


def keep_in_flight(decision: Decision, ctx: Context) -> Decision:
    """A step's own approval published its call (decide._on_decision): the
    stored outbox must still re-publish the plan's other calls in flight."""
    s = decision.state
    if not decision.changed or s is None or s.terminal or phase(s) != "executing":
        return decision
    return _emit_in_flight(s, ctx, decision.commands)


def _emit_in_flight(state: SessionState, ctx: Context, cmds: tuple[AnyCommand, ...]) -> Decision:
    """Like ``_emit``, but the stored outbox also re-publishes every call still
    in flight: a later input's outbox must not hide a call an earlier step may
    not have published (the same message id: deduplicated if it was)."""
    published = {c.request.call_id for c in cmds if isinstance(c, PublishToolCall)}
    settled = {r.call_id for r in state.results}
    planning = state.planning
    assert planning is not None
    again = tuple(PublishToolCall(request=_tool_request(
        state.task, state.step, p.call_id, p.tool, p.arguments, ctx, approval_seq=p.approval_seq,
        plan_inputs=_inputs(planning, step_of(p.call_id, planning.attempt) or "") if p.approval_seq else None))
        for p in state.pending
        if p.call_id not in settled and p.call_id not in published and p.approval != "pending")
    state = msgspec.structs.replace(state, outbox=(*cmds, *again), outbox_at=state.updated_at)
    return Decision(state=state, commands=cmds, changed=True)


def _failure_reply(state: SessionState) -> dict[str, Any]:
    assert state.planning is not None and state.planning.plan is not None
    p = state.planning
    plan = p.plan
    assert plan is not None
    tools = {s.id: s.tool for s in plan.steps}
    return {
        "failed": {sid: {"tool": tools.get(sid, ""), "error": _loads(content)} for sid, content in p.failed.items()},
        "done": {s.id: p.outputs[s.id] for s in plan.steps if s.id in p.outputs},
        "not_run": [s.id for s in plan.steps if s.id not in p.outputs and s.id not in p.failed],
    }


def _solve(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...]) -> Decision:
    """Every step has its output: the transcript gets the plan's calls and
    results as a model would have made them, and the solver is asked."""
    assert state.planning is not None and state.planning.plan is not None
    p = state.planning
    plan = p.plan
    assert plan is not None
    by_call = {c.call_id: c for c in state.pending}
    by_result = {r.call_id: r for r in state.results}
    order = [call_id(p.attempt, s.id) for s in plan.steps]
    tool_calls = tuple(ToolCall(id=c, name=by_call[c].tool, arguments=_dumps(by_call[c].arguments))
                       for c in order if c in by_call)
    messages = [*_reply_messages(state, {"plan": p.digest, "done": [s.id for s in plan.steps]}),
                Message(role="assistant", tool_calls=tool_calls)]
    messages += [Message(role="tool", tool_call_id=c.id, name=c.name, content=by_result[c.id].content)
                 for c in tool_calls if c.id in by_result]
    state = msgspec.structs.replace(state, messages=(*state.messages, *messages), pending=(), results=(),
                                    planning=msgspec.structs.replace(p, phase="solving"))
    return _next_model_turn(state, ctx, (*extra, _progress(state, ctx, "solving", tuple(s.id for s in plan.steps))))


def _replan(state: SessionState, ctx: Context, reply: dict[str, Any], why: str,
            extra: tuple[AnyCommand, ...]) -> Decision:
    """The planner hears what went wrong and plans again, or, with no replans
    left, the task goes on as ReAct from the same transcript."""
    assert state.planning is not None
    p = state.planning
    messages = _reply_messages(state, reply)
    state = msgspec.structs.replace(state, messages=(*state.messages, *messages), pending=(), results=())
    if p.attempt <= ctx.spec.max_replans:
        state = msgspec.structs.replace(state, planning=msgspec.structs.replace(p, phase="planning"))
        return _next_model_turn(state, ctx, (*extra, _progress(state, ctx, "replanned", (), why)))
    state = msgspec.structs.replace(state, planning=msgspec.structs.replace(p, phase="react", fallback=why))
    audit = _audit("plan.fallback", ctx, state.task, actor=f"agent:{state.task.agent}", attempts=p.attempt,
                   reason=why)
    return _next_model_turn(state, ctx, (*extra, _progress(state, ctx, "fallback", (), why), audit))


def _reply_messages(state: SessionState, reply: dict[str, Any]) -> tuple[Message, ...]:
    """The answer to the attempt's ``submit_plan`` call (protocol.py); when the
    planner made none, a user message says it instead."""
    assert state.planning is not None
    cid = state.planning.planner_call_id
    if cid:
        return (Message(role="tool", tool_call_id=cid, name=SUBMIT_PLAN_NAME, content=_dumps(reply)),)
    return (Message(role="user", content=_dumps(reply)),)


def _next_model_turn(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...]) -> Decision:
    if state.step >= state.max_steps:
        return _fail(state, ctx, "max_steps",
                     f"reached the limit of {state.max_steps} model turns without a final answer", extra=extra)
    state = msgspec.structs.replace(state, status="awaiting_model", step=state.step + 1, updated_at=ctx.now)
    return _call_model(state, ctx, extra=extra)


def _progress(state: SessionState, ctx: Context, kind: Any, step_ids: tuple[str, ...],
              detail: str = "") -> PublishProgress:
    assert state.planning is not None
    task = state.task
    return PublishProgress(event=PlanProgress(
        task_id=task.task_id, agent=task.agent, attempt=state.planning.attempt, kind=kind, step_ids=step_ids,
        at=ctx.now, detail=detail[:500], agent_version=state.agent_version, version_hash=ctx.version_hash))


def _dumps(value: Any) -> str:
    return _json.encode(value).decode()


def _loads(content: str) -> Any:
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content


def _error_message(content: str) -> str:
    value = _loads(content)
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        return str(value["error"].get("message", content))
    return content
