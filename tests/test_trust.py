"""The pure inbox check (core.trust.check_inbox): what an inbox event must be
bound to before it may touch a session. No broker; the same attacks as
tests/test_security.py, decided in microseconds."""

from __future__ import annotations

from dataclasses import replace

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from test_core import TASK_ID, completed
from test_core_guards import decision, parked

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import ApprovalDecided
from agentstream.runtime.core.decide import decide
from agentstream.runtime.core.state import PublishToolCall, SessionState
from agentstream.runtime.core.trust import check_inbox

EVENTS = subjects.events("support", TASK_ID)
DECISIONS = subjects.decisions("support", TASK_ID)


def signed_off(state: SessionState, call_id: str, approved: bool = True) -> ApprovalDecided:
    """The decision the approval service would publish for ``call_id``."""
    pend = next(p for p in state.pending if p.call_id == call_id)
    return msgspec.structs.replace(decision(state, call_id, approved), tool=pend.tool,
                                   arguments_digest=codec.arguments_digest(pend.arguments))


def test_a_dispatched_call_s_result_and_a_matching_decision_are_admitted() -> None:
    state, _ = parked()
    assert check_inbox(state, completed(1, "a"), EVENTS) is None
    assert check_inbox(state, signed_off(state, "b"), DECISIONS) is None


def test_a_result_for_a_call_waiting_for_approval_is_refused() -> None:
    state, _ = parked()
    why = check_inbox(state, completed(1, "b", "refund_eligibility"), EVENTS)
    assert why is not None and "waiting for approval" in why


def test_decisions_only_on_the_decisions_subject_and_results_only_on_events() -> None:
    state, _ = parked()
    assert "accepted only on agents.<agent>.decisions" in (check_inbox(state, signed_off(state, "b"), EVENTS) or "")
    assert "accepted only on agents.<agent>.events" in (check_inbox(state, completed(1, "a"), DECISIONS) or "")


def test_the_subject_wins_over_the_body() -> None:
    state, _ = parked()
    other = subjects.events("support", "someone-else")
    assert "but the body names task" in (check_inbox(state, completed(1, "a"), other) or "")
    assert "but the body names agent" in (check_inbox(state, completed(1, "a"),
                                                      subjects.events("billing", TASK_ID)) or "")
    assert "not an agent inbox subject" in (check_inbox(state, completed(1, "a"), "tools.x.calls") or "")


def test_a_decision_must_name_the_call_s_tool_and_arguments() -> None:
    state, _ = parked()
    good = signed_off(state, "b")
    assert "names tool" in (check_inbox(state, msgspec.structs.replace(good, tool="lookup_order"), DECISIONS) or "")
    moved = msgspec.structs.replace(good, arguments_digest=codec.arguments_digest({"order_id": 1}))
    assert "other arguments" in (check_inbox(state, moved, DECISIONS) or "")
    assert "does not match" in (check_inbox(state, msgspec.structs.replace(good, approval_id="x-1-b"),
                                            DECISIONS) or "")
    ungated = msgspec.structs.replace(good, call_id="a", approval_id=f"{TASK_ID}-1-a")
    assert "not waiting for a decision" in (check_inbox(state, ungated, DECISIONS) or "")


def test_no_session_no_admission() -> None:
    assert "no session" in (check_inbox(None, completed(1, "a"), EVENTS) or "")


def test_an_approved_call_carries_its_decision_s_sequence() -> None:
    state, c = parked()
    d = decide(state, signed_off(state, "b"), replace(c, decision_seq=4242))
    (req,) = [cmd.request for cmd in d.commands if isinstance(cmd, PublishToolCall)]
    assert req.call_id == "b" and req.approval_seq == 4242
    # Once approved and dispatched, its result is admitted.
    assert d.state is not None and check_inbox(d.state, completed(1, "b", "refund_eligibility"), EVENTS) is None


@given(task=st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12),
       call_id=st.text(alphabet="abcxyz_0123", min_size=1, max_size=6), step=st.integers(-3, 9),
       tool=st.sampled_from(["lookup_order", "refund_eligibility", "shipping_status", "pay"]))
def test_a_forged_result_is_admitted_only_when_it_answers_a_dispatched_call(
        task: str, call_id: str, step: int, tool: str) -> None:
    state, _ = parked()
    ev = msgspec.structs.replace(completed(step, call_id, tool), task_id=task)
    admitted = check_inbox(state, ev, subjects.events("support", task)) is None
    dispatched = {(p.call_id, p.tool) for p in state.pending if p.approval != "pending"}
    assert admitted == (task == TASK_ID and step == state.step and (call_id, tool) in dispatched)
