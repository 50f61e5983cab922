"""The pure core's human-in-the-loop and runaway protection: approvals parked
in the session, budgets checked before a model call, tool-call caps and the
loop breaker. No broker."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from test_core import SPEC, T0, TASK_ID, call, completed, of, responded, submitted, tool_error

from agentstream.contracts.events import ApprovalDecided, TaskCompleted, TaskFailed, Usage
from agentstream.runtime.core.decide import MIN_OUTPUT_TOKENS, Context, decide, estimate_tokens
from agentstream.runtime.core.state import (
    ApprovalExpired,
    CallModel,
    PublishApproval,
    PublishAudit,
    PublishResult,
    PublishToolCall,
    RecordApproval,
    SessionState,
    SetDeadline,
)


def refunds_need_approval(tool: str, args: dict[str, Any]) -> bool:
    return tool == "refund_eligibility" or (tool == "shipping_status" and args.get("order_id", 0) > 100)


def gctx(now: float = T0, *, approvers: tuple[str, ...] = ("alice",), **spec_kw: Any) -> Context:
    return Context(spec=msgspec.structs.replace(SPEC, **spec_kw) if spec_kw else SPEC, now=now, worker="w", model="m-test",
                   prices={"m-test": (1_000.0, 2_000.0)}, needs_approval=refunds_need_approval,
                   default_approvers=approvers)


def begin(c: Context, **task: Any) -> SessionState:
    d = decide(None, submitted(**task), c)
    assert d.state is not None
    return d.state


def parked(now: float = T0, **spec_kw: Any) -> tuple[SessionState, Context]:
    """A turn with two calls needing approval (b, c) and one that does not (a)."""
    c = gctx(now, **spec_kw)
    state = begin(c)
    d = decide(state, responded(1, call("a", "lookup_order"), call("b", "refund_eligibility"),
                                call("c", "shipping_status", {"order_id": 500})), replace(c, now=now + 1))
    assert d.state is not None
    return d.state, c


def decision(state: SessionState, call_id: str, approved: bool, approver: str = "alice",
             reason: str = "") -> ApprovalDecided:
    return ApprovalDecided(approval_id=f"{TASK_ID}-{state.step}-{call_id}", task_id=TASK_ID, agent="support",
                           step=state.step, call_id=call_id, approved=approved, approver=approver, reason=reason)


def test_calls_needing_approval_are_parked_not_published() -> None:
    c = gctx()
    d = decide(begin(c), responded(1, call("a", "lookup_order"), call("b", "refund_eligibility")),
               replace(c, now=T0 + 1))
    assert [p.request.call_id for p in of(d.commands, PublishToolCall)] == ["a"]
    (req,) = [p.request for p in of(d.commands, PublishApproval)]
    assert (req.tool, req.call_id, req.approvers) == ("refund_eligibility", "b", ("alice",))
    assert req.deadline_at == T0 + 1 + SPEC.approval_timeout_s
    assert of(d.commands, RecordApproval)[0].status == "pending"
    assert [a.record.kind for a in of(d.commands, PublishAudit)] == ["approval.requested"]
    # The task's clock stops while a human decides.
    assert d.state is not None and d.state.deadline_at > req.deadline_at
    assert of(d.commands, SetDeadline)[0].deadline_at == d.state.deadline_at


def test_one_approved_one_denied_then_the_turn_resumes_with_both_outcomes() -> None:
    state, c = parked()
    state = decide(state, completed(1, "a"), replace(c, now=T0 + 2)).state  # type: ignore[assignment]
    d = decide(state, decision(state, "b", True), replace(c, now=T0 + 3))
    assert [p.request.call_id for p in of(d.commands, PublishToolCall)] == ["b"]
    assert of(d.commands, CallModel) == []
    state = d.state  # type: ignore[assignment]
    d = decide(state, decision(state, "c", False, reason="too large"), replace(c, now=T0 + 4))
    assert of(d.commands, CallModel) == []  # b has not run yet
    state = d.state  # type: ignore[assignment]
    d = decide(state, completed(1, "b", "refund_eligibility"), replace(c, now=T0 + 5))
    assert of(d.commands, CallModel) != []
    tool_msgs = [m for m in d.state.messages if m.role == "tool"]  # type: ignore[union-attr]
    assert [m.tool_call_id for m in tool_msgs] == ["a", "b", "c"]
    denied = tool_error(tool_msgs[2].content)
    assert denied["kind"] == "approval_denied" and "alice" in denied["message"] and "too large" in denied["message"]


def test_a_decision_by_an_identity_not_allowed_does_not_count_and_is_audited() -> None:
    state, c = parked()
    d = decide(state, decision(state, "b", True, approver="mallory"), replace(c, now=T0 + 2))
    assert not d.changed and of(d.commands, PublishToolCall) == []
    (audit,) = of(d.commands, PublishAudit)
    assert audit.record.kind == "approval.rejected" and audit.record.actor == "mallory"


def test_duplicate_decisions_run_the_call_once() -> None:
    state, c = parked()
    d1 = decide(state, decision(state, "b", True), replace(c, now=T0 + 2))
    d2 = decide(d1.state, decision(state, "b", False), replace(c, now=T0 + 3))
    assert not d2.changed and d2.state == d1.state
    # What a duplicate re-emits is the first decision's outbox: the same
    # idempotency key, which JetStream deduplicates, and no denial.
    first = {p.request.idempotency_key for p in of(d1.commands, PublishToolCall)}
    assert first and {p.request.idempotency_key for p in of(d2.commands, PublishToolCall)} <= first
    assert all(r.status != "denied" for r in of(d2.commands, RecordApproval))


def test_expired_approval_denies_or_escalates_by_configuration() -> None:
    state, c = parked()
    d = decide(state, ApprovalExpired(call_id="b"), replace(c, now=T0 + 2 + SPEC.approval_timeout_s))
    assert d.state is not None and d.state.status == "awaiting_tools"
    assert any(json.loads(r.content)["error"]["kind"] == "approval_expired" for r in d.state.results)
    state, c = parked(on_approval_timeout="escalate")
    d = decide(state, ApprovalExpired(call_id="b"), replace(c, now=T0 + 2 + SPEC.approval_timeout_s))
    (pub,) = of(d.commands, PublishResult)
    assert isinstance(pub.result, TaskFailed) and pub.result.reason == "approval_expired"
    assert "escalated" in pub.result.message
    # The other pending approval is cancelled in the listing.
    assert {r.status for r in of(d.commands, RecordApproval)} >= {"expired", "cancelled"}


# ----------------------------------------------------------------- budgets and runaway protection


def test_token_budget_stops_the_call_that_would_exceed_it_with_figures() -> None:
    c = gctx()
    state = begin(c, max_tokens=2_000)
    big = Usage(input_tokens=1_500, output_tokens=400)
    d = decide(state, responded(1, call("a", "lookup_order"), usage=big), replace(c, now=T0 + 1))
    state = d.state  # type: ignore[assignment]
    d = decide(state, completed(1, "a"), replace(c, now=T0 + 2))
    assert of(d.commands, CallModel) == []  # the model call is not made
    (pub,) = of(d.commands, PublishResult)
    assert isinstance(pub.result, TaskFailed) and pub.result.reason == "budget_exceeded"
    assert "2000" in pub.result.message and "1900" in pub.result.message
    assert pub.result.usage.input_tokens == 1_500  # usage on the result


def test_the_output_of_a_call_is_capped_by_what_the_budget_leaves() -> None:
    d = decide(None, submitted(max_tokens=600), gctx())
    assert d.state is not None
    est = estimate_tokens(d.state.messages, SPEC.tools)
    (cm,) = of(d.commands, CallModel)
    assert cm.max_tokens == min(SPEC.max_output_tokens, 600 - est)


def test_cost_is_priced_from_the_table_and_the_cost_budget_is_enforced() -> None:
    c = gctx()
    state = begin(c, max_cost_usd=5.0)
    # 1000 in at $1000/M + 1000 out at $2000/M = $3
    d = decide(state, responded(1, call("a", "lookup_order"), usage=Usage(input_tokens=1000, output_tokens=1000)),
               replace(c, now=T0 + 1))
    assert d.state is not None and abs(d.state.usage.cost_usd - 3.0) < 1e-9
    d = decide(d.state, completed(1, "a"), replace(c, now=T0 + 2))
    (cm,) = of(d.commands, CallModel)
    assert cm.max_tokens is not None and cm.max_tokens * 2_000 / 1e6 <= 2.0
    res = decide(d.state, responded(2, text="done", usage=Usage(input_tokens=10, output_tokens=10)),
                 replace(c, now=T0 + 3))
    (pub,) = of(res.commands, PublishResult)
    assert isinstance(pub.result, TaskCompleted) and pub.result.usage.cost_usd > 3.0


def test_tool_call_cap_and_loop_breaker() -> None:
    c = gctx(max_tool_calls=2)
    d = decide(begin(c), responded(1, call("a", "lookup_order"), call("b", "lookup_order", {"order_id": 1}),
                                  call("c", "lookup_order", {"order_id": 2})), replace(c, now=T0 + 1))
    (pub,) = of(d.commands, PublishResult)
    assert isinstance(pub.result, TaskFailed) and pub.result.reason == "tool_call_limit"

    c = gctx(loop_limit=2, max_steps=10)
    state = begin(c)
    state = decide(state, responded(1, call("a", "lookup_order")), c).state  # type: ignore[assignment]
    state = decide(state, completed(1, "a"), c).state  # type: ignore[assignment]
    d = decide(state, responded(2, call("a2", "lookup_order")), c)
    (pub,) = of(d.commands, PublishResult)
    assert isinstance(pub.result, TaskFailed) and pub.result.reason == "loop_detected"
    assert "lookup_order" in pub.result.message and "2 times" in pub.result.message


@settings(max_examples=150)
@given(budget=st.integers(min_value=1, max_value=5_000),
       turns=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 2_000)), min_size=1, max_size=6))
def test_no_model_call_is_made_once_the_budget_is_spent(budget: int, turns: list[tuple[int, int]]) -> None:
    """Whatever the usage, a CallModel is only emitted while the budget can
    still pay for the estimated input plus a minimal output, and the output
    cap never exceeds what is left."""
    c = gctx(max_steps=20, loop_limit=100)
    d = decide(None, submitted(max_tokens=budget), c)
    for i, (tin, tout) in enumerate(turns, start=1):
        state = d.state
        assert state is not None
        for cm in of(d.commands, CallModel):
            used = state.usage.input_tokens + state.usage.output_tokens
            left = budget - used
            assert cm.max_tokens is not None
            assert MIN_OUTPUT_TOKENS <= cm.max_tokens <= left - estimate_tokens(state.messages, c.spec.tools)
        if state.terminal or not of(d.commands, CallModel):
            return
        d = decide(state, responded(i, call(f"k{i}", "lookup_order", {"order_id": i}),
                                    usage=Usage(input_tokens=tin, output_tokens=tout)), c)
        if d.state is None or d.state.terminal:
            return
        d = decide(d.state, completed(i, f"k{i}"), c)
