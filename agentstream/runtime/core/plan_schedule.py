"""The plan-first scheduler: publish every step whose dependencies have
outputs (in parallel, on the ordinary tool subscriptions), take each result,
and once nothing is in flight replan on a failure or ask the solver. Gated
steps run under the plan's approval only when they are exactly the approved
step (``planning.plan.covers``), else they ask on their own. Pure.
"""

from __future__ import annotations

import msgspec

from agentstream.contracts.events import (
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolError,
)
from agentstream.runtime.core.common import (
    Context,
    Decision,
    _approvers,
    _ask_approval,
    _cancel_approvals,
    _count_call,
    _fail,
    _pause_deadline,
    _refuse_result,
    _result_content,
    _tool_request,
    dumps,
)
from agentstream.runtime.core.plan_turns import (
    call_id,
    error_message,
    failure_reply,
    phase,
    progress,
    replan,
    solve,
    step_of,
)
from agentstream.runtime.core.state import (
    AnyCommand,
    CallResult,
    PendingCall,
    PlanCall,
    Planning,
    PublishProgress,
    PublishToolCall,
    SessionState,
    tool_error_content,
)
from agentstream.runtime.planning.plan import (
    REF_KEY,
    Unresolved,
    covers,
    ready_steps,
    refs_in,
    resolve,
)


def on_tool_result(state: SessionState, ev: ToolCallCompleted, ctx: Context) -> Decision:
    assert state.planning is not None
    refused = _refuse_result(state, ev, ctx)
    if refused is not None:
        return refused
    step_id = step_of(ev.call_id, state.planning.attempt) or ev.call_id
    planning = state.planning
    content = _result_content(ev)
    if ev.ok:
        planning = msgspec.structs.replace(planning, outputs={**planning.outputs, step_id: ev.result},
                                           output_seqs={**planning.output_seqs, step_id: ctx.result_seq})
    else:
        planning = msgspec.structs.replace(planning, failed={**planning.failed, step_id: content})
    result = CallResult(call_id=ev.call_id, tool=ev.tool, ok=ev.ok, content=content)
    state = msgspec.structs.replace(state, results=(*state.results, result), planning=planning, updated_at=ctx.now)
    extra: tuple[AnyCommand, ...] = ()
    if not ev.ok:
        extra = (progress(state, ctx, "failed", (step_id,), f"{ev.tool}: {error_message(content)}"),)
    return advance(state, ctx, extra)


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
        extra = (*extra, progress(state, ctx, "failed", tuple(new), "not approved"))
    return advance(state, ctx, extra)


def advance(state: SessionState, ctx: Context, extra: tuple[AnyCommand, ...]) -> Decision:
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
                failed[s.id] = dumps({"error": msgspec.to_builtins(exc.error)})
                unresolved.append(s.id)
                continue
            cid = call_id(p.attempt, s.id)
            args_json = dumps(args)
            repeats = _count_call(counts, s.tool, args_json)
            if repeats >= ctx.spec.loop_limit:
                return _fail(state, ctx, "loop_detected",
                             f"the plan called {s.tool} with the same arguments {repeats} times", extra=extra)
            calls.append(PlanCall(call_id=cid, step_id=s.id, tool=s.tool, attempt=p.attempt, turn=state.step,
                                  at=ctx.now))
            total += 1
            dispatched.append(s.id)
            dispatched_calls.append(ToolCall(id=cid, name=s.tool, arguments=args_json))
            if ctx.needs_approval is not None and ctx.needs_approval(s.tool, args):
                # Not always true: a step whose args are one whole pointer gets
                # whatever that output is, which need not be an object.
                if p.approval_seq and covers(plan, s.id, s.tool, args, p.outputs):
                    pending.append(PendingCall(call_id=cid, tool=s.tool, arguments=args, approval="approved",
                                               approval_seq=p.approval_seq))
                    cmds.append(PublishToolCall(request=_tool_request(
                        task, state.step, cid, s.tool, args, ctx, approval_seq=p.approval_seq,
                        plan_inputs=plan_inputs(p, s.id))))
                    continue
                pend, asking = _ask_approval(task, state.step, cid, s.tool, args, _approvers(s.tool, ctx),
                                             approval_deadline, ctx, plan_step=s.id)
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
        cmds.append(progress(state, ctx, "dispatched", tuple(dispatched)))
    if unresolved:
        cmds.append(progress(state, ctx, "failed", tuple(unresolved), "a pointer did not resolve"))
    if asked:
        state, paused = _pause_deadline(state, ctx, approval_deadline)
        cmds.append(paused)
    if failed:
        # The plan will be replanned: a step still waiting for a human is not
        # asked about any longer (it would never run under this plan).
        state, cancelled = cancel_waiting(state)
        cmds += cancelled
    settled = {r.call_id for r in state.results}
    if any(c.call_id not in settled for c in state.pending):
        return emit_in_flight(state, ctx, tuple(cmds))
    if failed:
        return replan(state, ctx, failure_reply(state), "step " + ", ".join(sorted(failed)) + " failed",
                       tuple(cmds))
    if all(s.id in planning.outputs for s in plan.steps):
        return solve(state, ctx, tuple(cmds))
    # Unreachable for a validated plan (every step is ready once its
    # dependencies have outputs); a plan that cannot progress is replanned.
    return replan(state, ctx, failure_reply(state), "the plan cannot progress", tuple(cmds))


def cancel_waiting(state: SessionState) -> tuple[SessionState, list[AnyCommand]]:
    waiting = [p for p in state.pending if p.approval == "pending"]
    if not waiting:
        return state, []
    error = ToolError(kind="cancelled", message="not run: another step of the plan failed")
    results = tuple(CallResult(call_id=p.call_id, tool=p.tool, ok=False, content=tool_error_content(error))
                    for p in waiting)
    pending = tuple(msgspec.structs.replace(p, approval="") if p.approval == "pending" else p for p in state.pending)
    return msgspec.structs.replace(state, pending=pending, results=(*state.results, *results)), _cancel_approvals(state)


def plan_inputs(p: Planning, step_id: str) -> dict[str, int]:
    """The results a gated step's pointers resolve from, by EVENTS sequence,
    and those its pointed-at steps' own pointers resolved from (transitively):
    a tool worker reads them to check the call is the approved step, fed by
    the approved steps' results."""
    steps = {s.id: s for s in p.plan.steps} if p.plan is not None else {}
    seen: set[str] = set()
    todo = [step_id] if step_id in steps else []
    while todo:
        for ref in {str(r[REF_KEY]) for r in refs_in(steps[todo.pop()].args)} - seen:
            seen.add(ref)
            if ref in steps:
                todo.append(ref)
    return {ref: p.output_seqs[ref] for ref in sorted(seen) if p.output_seqs.get(ref)}


def keep_in_flight(decision: Decision, ctx: Context) -> Decision:
    """A step's own approval published its call (decide._on_decision): the
    stored outbox must still re-publish the plan's other calls in flight."""
    s = decision.state
    if not decision.changed or s is None or s.terminal or phase(s) != "executing":
        return decision
    return emit_in_flight(s, ctx, decision.commands)


def emit_in_flight(state: SessionState, ctx: Context, cmds: tuple[AnyCommand, ...]) -> Decision:
    """Like ``_emit``, but the stored outbox also re-publishes every call still
    in flight: a later input's outbox must not hide a call an earlier step may
    not have published (the same message id: deduplicated if it was)."""
    published = {c.request.call_id for c in cmds if isinstance(c, PublishToolCall)}
    settled = {r.call_id for r in state.results}
    planning = state.planning
    assert planning is not None
    again = tuple(PublishToolCall(request=_tool_request(
        state.task, state.step, p.call_id, p.tool, p.arguments, ctx, approval_seq=p.approval_seq,
        plan_inputs=plan_inputs(planning, step_of(p.call_id, planning.attempt) or "") if p.approval_seq else None))
        for p in state.pending
        if p.call_id not in settled and p.call_id not in published and p.approval != "pending")
    state = msgspec.structs.replace(state, outbox=(*cmds, *again), outbox_at=state.updated_at)
    return Decision(state=state, commands=cmds, changed=True)

