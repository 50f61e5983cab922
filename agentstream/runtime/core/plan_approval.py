"""Plan-level approval: when a valid plan holds steps that may need a human,
ask once for the whole plan (its steps and arguments shown, its digest bound)
from the identities allowed for every gated tool; take the decision or its
expiry. Approved, the scheduler runs the plan; denied or expired, the planner
hears it (docs/planning.md, "Plan-level approval"). Pure.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentstream.contracts.events import (
    ApprovalDecided,
)
from agentstream.runtime.core.common import (
    Context,
    Decision,
    _approvers,
    _ask_approval,
    _decision_recorded,
    _duplicate,
    _emit,
    _expiry_recorded,
    _pause_deadline,
    _pending_approval,
    _refuse_approver,
)
from agentstream.runtime.core.plan_schedule import advance
from agentstream.runtime.core.plan_turns import replan
from agentstream.runtime.core.state import (
    AnyCommand,
    ApprovalExpired,
    SessionState,
)
from agentstream.runtime.planning.plan import (
    Plan,
    digest,
    refs_in,
    shown,
)
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME


def approval_call_id(attempt: int) -> str:
    return f"plan-{attempt}"


def approval_arguments(plan: Plan, plan_digest: str = "") -> dict[str, Any]:
    """What a plan-level approval shows and binds: every step with its raw
    arguments (pointers as pointers) and as a human reads them, and the
    plan's digest. ``ApprovalDecided.arguments_digest`` is the digest of this.
    ``plan_digest``: the plan's digest when the caller has it already."""
    return {
        "plan_digest": plan_digest or digest(plan),
        "rationale": plan.rationale,
        "steps": [{"id": s.id, "tool": s.tool, "args": s.args, "depends_on": list(s.depends_on)}
                  for s in plan.steps],
        "shown": [{"id": s.id, "tool": s.tool, "args": shown(s.args)} for s in plan.steps],
    }


def _may_need_human(tool: str, args: dict[str, Any], ctx: Context) -> bool:
    """Whether a step may need a human: its rule says so for its arguments, or
    its arguments hold pointers (no values yet) and its tool has a rule."""
    assert ctx.needs_approval is not None
    try:
        if ctx.needs_approval(tool, args):
            return True
    except Exception:  # noqa: BLE001 - a rule that cannot judge a pointer (not a value yet) must ask a human
        return True
    return any(True for _ in refs_in(args)) and ctx.may_need_approval is not None and ctx.may_need_approval(tool)


def plan_approvers(plan: Plan, ctx: Context) -> tuple[str, ...] | None:
    """Who may approve the whole plan, or None when no plan-level approval is
    asked: no step is gated, or no identity may approve every gated step (then
    each gated call asks on its own). ``()``: anyone the deployment allows."""
    if ctx.needs_approval is None:
        return None
    gated = {s.tool for s in plan.steps if _may_need_human(s.tool, s.args, ctx)}
    if not gated:
        return None
    allowed = [set(_approvers(t, ctx)) for t in sorted(gated)]
    restricted = [a for a in allowed if a]
    if not restricted:
        return ()
    both = set.intersection(*restricted)
    return tuple(sorted(both)) if both else None


def ask_plan_approval(state: SessionState, plan: Plan, approvers: tuple[str, ...], ctx: Context,
                       extra: tuple[AnyCommand, ...]) -> Decision:
    assert state.planning is not None
    deadline = ctx.now + ctx.spec.approval_timeout_s
    # The planner turn accepted the plan (plan_first._accept) and stored its digest.
    plan_digest = state.planning.digest
    pend, asking = _ask_approval(state.task, state.step, approval_call_id(state.planning.attempt), SUBMIT_PLAN_NAME,
                                 approval_arguments(plan, plan_digest), approvers, deadline, ctx,
                                 plan_digest=plan_digest)
    state = msgspec.structs.replace(
        state, pending=(pend,), planning=msgspec.structs.replace(state.planning, phase="approval"))
    state, paused = _pause_deadline(state, ctx, deadline)
    return _emit(state, (*extra, *asking, paused))


def on_plan_decision(state: SessionState, ev: ApprovalDecided, ctx: Context) -> Decision:
    """A human's decision on the whole plan. Approved: the plan runs, its gated
    calls under this decision. Denied: the planner hears it and may plan
    again (bounded), then ReAct, where each gated call asks on its own."""
    assert state.planning is not None
    pend = _pending_approval(state, ev.call_id, ev.step)
    if pend is None or pend.approval_id != ev.approval_id or state.planning.phase != "approval":
        return _duplicate(state, ctx, reemit=True)
    refused = _refuse_approver(state, pend, ev, ctx)
    if refused is not None:
        return refused
    common = _decision_recorded(state, pend, ev, ctx, plan_digest=state.planning.digest)
    if ev.approved:
        planning = msgspec.structs.replace(state.planning, phase="executing", approval_seq=ctx.decision_seq)
        state = msgspec.structs.replace(state, planning=planning, pending=(), updated_at=ctx.now)
        return advance(state, ctx, common)
    state = msgspec.structs.replace(state, pending=(), updated_at=ctx.now)
    reply = {"denied": {"by": ev.approver, "reason": ev.reason}}
    return replan(state, ctx, reply, f"plan denied by {ev.approver}", common)


def on_plan_expired(state: SessionState, ev: ApprovalExpired, ctx: Context) -> Decision:
    assert state.planning is not None
    pend = _pending_approval(state, ev.call_id)
    if pend is None or state.planning.phase != "approval":
        return _duplicate(state, ctx, reemit=False)
    recorded = _expiry_recorded(state, pend, ctx, "the plan")
    if isinstance(recorded, Decision):
        return recorded
    state = msgspec.structs.replace(state, pending=(), updated_at=ctx.now)
    why = f"nobody approved the plan within {ctx.spec.approval_timeout_s:g}s"
    return replan(state, ctx, {"denied": {"by": "system", "reason": why}}, "the plan's approval expired", recorded)

