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
When every step has its output, a solver turn (no tools) writes the answer;
a plan with no steps ("nothing to run") goes to the solver at once.

Every transition keeps the ReAct guarantees: call ids and idempotency keys
are deterministic (``p<attempt>-<step id>``), the deadline, budgets and
loop limit apply, gated calls outside an approved plan need their own
approval, and the outbox re-publishes every call still in flight.

This module is the planner turn; ``plan_approval`` asks for and takes a
whole plan's approval, ``plan_schedule`` runs the DAG, ``plan_turns`` holds
the replan, fallback and solver turns.
"""

from __future__ import annotations

import msgspec

from agentstream.contracts.events import (
    SUBMITTED_MAX,
    Message,
    ModelResponse,
    PlanProposed,
    PlanStepShown,
)
from agentstream.runtime.core.common import (
    Context,
    Decision,
    _fail,
    _fix_call_ids,
    _ids,
    _over_budget,
    _record_response,
    dumps,
    request_shape,  # noqa: F401 - the engine asks it here, beside the strategy
)
from agentstream.runtime.core.plan_approval import ask_plan_approval, plan_approvers
from agentstream.runtime.core.plan_schedule import advance
from agentstream.runtime.core.plan_turns import replan
from agentstream.runtime.core.state import (
    AnyCommand,
    ModelResponded,
    PublishProgress,
    SessionState,
)
from agentstream.runtime.planning.plan import (
    Plan,
    PlanError,
    digest,
    parse_plan,
    shown,
    validate,
)
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME


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
    state, calls = _fix_call_ids(state, resp.tool_calls, _ids(resp.tool_calls, ev.step))
    submitted = next((c for c in calls if c.name == SUBMIT_PLAN_NAME), None)
    # Every other call is answered (a transcript must pair each call with a
    # result) but never run: nothing runs before the whole plan is validated.
    others = tuple(Message(role="tool", tool_call_id=c.id, name=c.name, content=dumps(
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
        elif not parsed.steps and others:
            # An empty plan says "nothing to run"; beside direct calls the model
            # meant to act, and answering now would silently drop that work.
            errors = [PlanError(kind="empty", message="the plan has no steps but you called "
                                + ", ".join(sorted({c.name for c in calls if c.id != submitted.id}))
                                + " directly: put those calls in the plan, or submit an empty plan alone to answer")]
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
    plan_digest = digest(plan) if plan is not None else ""
    proposed = PublishProgress(event=PlanProposed(
        task_id=task.task_id, agent=task.agent, attempt=attempt, step=ev.step,
        digest=plan_digest, steps=_shown_steps(plan), valid=not errors, at=ctx.now,
        rationale=plan.rationale if plan is not None else "",
        errors=tuple(msgspec.to_builtins(e) for e in errors), agent_version=state.agent_version,
        version_hash=ctx.version_hash,
        submitted=submitted.arguments if submitted and len(submitted.arguments) <= SUBMITTED_MAX else ""))
    if errors or plan is None:
        summary = "; ".join(e.message for e in errors[:3])
        return replan(state, ctx, {"errors": [msgspec.to_builtins(e) for e in errors]},
                       f"invalid plan: {summary}", (progress, proposed))
    return _accept(state, plan, plan_digest, ctx, (progress, proposed))


def _shown_steps(plan: Plan | None) -> tuple[PlanStepShown, ...]:
    if plan is None:
        return ()
    return tuple(PlanStepShown(id=s.id, tool=s.tool, args=shown(s.args), depends_on=s.depends_on)
                 for s in plan.steps)


def _accept(state: SessionState, plan: Plan, plan_digest: str, ctx: Context,
            extra: tuple[AnyCommand, ...]) -> Decision:
    assert state.planning is not None
    planning = msgspec.structs.replace(state.planning, plan=plan, digest=plan_digest, phase="executing")
    state = msgspec.structs.replace(state, planning=planning, status="awaiting_tools", pending=(), results=())
    approvers = plan_approvers(plan, ctx)
    if approvers is None:
        return advance(state, ctx, extra)
    return ask_plan_approval(state, plan, approvers, ctx, extra)

