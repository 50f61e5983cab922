"""A hostile review of plan-level approval and plan trust (issue 14): the
README's guarantee "only approvers approve" must hold for whole plans.

Each attack is a test. Where the bus is involved it runs against a real
nats-server with per-role credentials (tests/plan_desk.py): the attacker
holds the agent role, which may publish tool calls, approval requests and
the approvals listing, but not results or decisions. Pure-core attacks are
unit tests; the tool worker's check also runs on an in-memory stream, so
hypothesis can throw open-ended ``plan_inputs`` at it.

| attack | outcome | test |
| --- | --- | --- |
| an ungated step re-run with other arguments to feed a pointer | was a break, fixed | ..._rerun_with_other_arguments, ..._every_step_they_pass |
| the listing rewritten: steps differ from what the human reads | was a break, fixed | ..._is_the_plan_the_worker_runs |
| an invalid plan's error echoes a huge value back | grew the session, fixed | ..._without_echoing_a_huge_value |
| a plan decision carried to another task | refused | ..._carried_to_another_task[decision] |
| pointer results from another task / another step | refused | ..._carried_to_another_task[inputs]; test_plan_bus (the ship result as look's) |
| a step's arguments other than its pointers resolve to | refused | test_plan_bus ..._runs_its_gated_step |
| the approved step published again under a fresh idempotency key | was a break (per-call approvals too), fixed | ..._runs_once_not_again_... |
| the agent role publishing a result | refused by the server | ..._cannot_publish_a_result_... |
| a replan reusing the approved step id; the decision at another turn | asks again; refused | ..._asks_a_human_again, ..._another_turn_or_attempt |
| a denial, then the identical plan | asks again; the denial runs nothing | ..._asks_again_and_the_denial_runs_nothing |
| an expired plan approval, approved late; the same plan again | refused; asks again | ..._approves_nothing_later_... |
| a plan too large for a session | the task fails, nobody is asked | ..._too_large_for_a_session_... |
| malformed plan_inputs (any keys, any sequences) | only the approved call runs | ..._never_run_other_than_the_approved_refund |
| forged or moved plan decisions | refused | test_plan_bus ..._cannot_be_forged_or_moved_... |
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import pytest
from conftest import until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_desk import AGENT, WAIT_S, Desk, desk_fixture, plan_app  # noqa: F401 - the desk fixture
from test_plan_core import (
    DECISIONS,
    T0,
    approving,
    decision_for,
    events,
    go,
    planner,
    published,
    result,
    task,
)

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    ApprovalDecided,
    PlanProposed,
    TaskCompleted,
    TaskFailed,
    ToolCallCompleted,
    ToolCallRequested,
    ToolError,
)
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryStream
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.core.decide import decide
from agentstream.runtime.core.plan_approval import approval_arguments
from agentstream.runtime.core.policy import ApprovalRecord, encode_record
from agentstream.runtime.core.state import ApprovalExpired, PublishApproval, PublishToolCall
from agentstream.runtime.core.trust import check_inbox
from agentstream.runtime.execution.consumer import Reject
from agentstream.runtime.execution.tool_runner import ToolRunner
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.planning.plan import Plan, PlanStep
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME


def forged(task_id: str, call_id: str, tool: str, args: dict[str, object], *, step: int = 1,
           approval_seq: int = 0, plan_inputs: dict[str, int] | None = None, key: str = "") -> ToolCallRequested:
    """A tool call as the agent role can publish it: anything it likes, to any tool."""
    return ToolCallRequested(task_id=task_id, agent=AGENT, step=step, call_id=call_id, tool=tool, arguments=args,
                             approval_seq=approval_seq, plan_inputs=plan_inputs or {},
                             idempotency_key=key or f"{task_id}:{step}:{call_id}:forged:{time.time_ns()}",
                             reply_subject=subjects.events(AGENT, task_id), requested_at=time.time())


async def approved_run(desk: Desk, text: str) -> tuple[str, int]:
    """A task whose plan a human approved and which then finished; the EVENTS
    sequence of the plan's decision."""
    task_id, rec = await desk.parked(text)
    await approvals.decide(desk.approver, rec.request.approval_id, approved=True, approver="alice")
    assert isinstance(await desk.client.result(task_id, timeout=WAIT_S), TaskCompleted)
    [decision] = await scan(desk.admin.js, "EVENTS", subjects.stored(subjects.decisions(AGENT, task_id)))
    return task_id, decision.seq


async def results_by_call(desk: Desk, task_id: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for raw in await scan(desk.admin.js, "EVENTS", subjects.stored(subjects.events(AGENT, task_id))):
        ev = codec.agent_inbox.decode(raw.data)
        if isinstance(ev, ToolCallCompleted):
            out.setdefault(ev.call_id, raw.seq)  # the first: the one the session took
            out[f"{ev.call_id}@last"] = raw.seq
    return out


async def test_a_pointer_cannot_be_fed_by_an_ungated_step_rerun_with_other_arguments(desk: Desk) -> None:
    """The human approved "look order 42 up, refund its total". The agent role
    runs the ungated lookup step again under its own call id with another
    order (a tool worker answers it honestly), then claims the approved
    refund with the amount that lookup yields."""
    task_id, seq = await approved_run(desk, "please refund order 42")
    evil = await desk.agent_role()
    await evil.publish(subjects.tool_calls("lookup_order"),
                       codec.encode(forged(task_id, "p1-look", "lookup_order", {"order_id": 4242})))

    async def rerun() -> int | None:
        return (await results_by_call(desk, task_id)).get("p1-look@last") \
            if "lookup_order 4242" in desk.runs() else None
    rerun_seq: int = await until(rerun, WAIT_S, "the forged lookup to be answered")
    subject = subjects.tool_calls("issue_refund")
    await evil.publish(subject, codec.encode(forged(
        task_id, "p1-refund", "issue_refund", {"order_id": 4242, "amount": 9000.0}, approval_seq=seq,
        plan_inputs={"look": rerun_seq})))
    await desk.dead_letter(subject, "is not the result of step 'look' as approved")
    await evil.flush()
    assert "issue_refund 4242 9000.0" not in desk.runs()


async def test_an_approved_step_runs_once_not_again_under_a_fresh_idempotency_key(desk: Desk) -> None:
    """The approved refund ran. The agent role publishes exactly that call
    again (same step, arguments, decision and inputs) under a new
    idempotency key, so neither the worker nor the tool would take it for
    the same call: the human approved one refund, not two."""
    task_id, seq = await approved_run(desk, "please refund order 42")
    inputs = {"look": (await results_by_call(desk, task_id))["p1-look"]}
    evil = await desk.agent_role()
    subject = subjects.tool_calls("issue_refund")
    await evil.publish(subject, codec.encode(forged(task_id, "p1-refund", "issue_refund",
                                                    {"order_id": 42, "amount": 120.0}, approval_seq=seq,
                                                    plan_inputs=inputs, key=f"{task_id}:1:p1-refund:again")))
    await desk.dead_letter(subject, "idempotency key")
    await evil.flush()
    assert desk.runs().count("issue_refund 42 120.0") == 1

@pytest.mark.parametrize("borrowed", ["decision", "inputs"])
async def test_a_plan_decision_or_its_inputs_cannot_be_carried_to_another_task(desk: Desk, borrowed: str) -> None:
    """Task A's plan was approved and ran. Task B (the same plan) waits for
    its own human, or was approved too. The agent role claims B's gated step
    under A's decision, or with A's lookup result as its pointer's input."""
    a, seq_a = await approved_run(desk, "please refund order 42")
    if borrowed == "decision":
        b, _ = await desk.parked("please refund order 42")
        seq, refused = seq_a, "is not a decision on task"
    else:
        b, seq = await approved_run(desk, "please refund order 42")
        refused = "is not a result on task"
    evil = await desk.agent_role()
    subject = subjects.tool_calls("issue_refund")
    inputs = {"look": (await results_by_call(desk, a))["p1-look"]}
    ran = desk.runs().count("issue_refund 42 120.0")  # each approved task's own refund
    await evil.publish(subject, codec.encode(forged(b, "p1-refund", "issue_refund", {"order_id": 42, "amount": 120.0},
                                                    approval_seq=seq, plan_inputs=inputs)))
    await desk.dead_letter(subject, f"{refused} {b}")
    await evil.flush()
    assert desk.runs().count("issue_refund 42 120.0") == ran


async def test_a_denied_plan_submitted_again_asks_again_and_the_denial_runs_nothing(desk: Desk) -> None:
    task_id, rec = await desk.parked("please refund order 42")
    await approvals.decide(desk.approver, rec.request.approval_id, approved=False, approver="alice",
                           reason="not without a receipt")

    async def asked_again() -> approvals.ApprovalRecord | None:
        recs = await approvals.list_approvals(desk.admin)
        return next((r for r in recs if r.request.task_id == task_id and r.status == "pending"), None)
    again: approvals.ApprovalRecord = await until(asked_again, WAIT_S, "the replanned plan's own approval")
    assert again.request.approval_id != rec.request.approval_id and again.request.call_id == "plan-2"
    assert desk.runs() == []  # the denial ran nothing, and the new plan waits for a human

    # The denial itself cannot be used as an approval of the new plan's steps, nor of the old one's.
    [denial] = await scan(desk.admin.js, "EVENTS", subjects.stored(subjects.decisions(AGENT, task_id)))
    evil = await desk.agent_role()
    subject = subjects.tool_calls("issue_refund")
    for call_id, step in (("p1-refund", rec.request.step), ("p2-refund", again.request.step)):
        await evil.publish(subject, codec.encode(forged(task_id, call_id, "issue_refund",
                                                        {"order_id": 42, "amount": 120.0}, step=step,
                                                        approval_seq=denial.seq)))
    await desk.dead_letter(subject, "is for another task or turn")
    await desk.dead_letter(subject, "names no result for the step p1-look")
    await evil.flush()
    assert not [r for r in desk.runs() if r.startswith("issue_refund")]


async def test_a_plan_too_large_for_a_session_fails_the_task_and_asks_nobody(desk: Desk) -> None:
    task_id = await desk.client.submit(AGENT, "please refund order 42, huge")
    res = await desk.client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskFailed) and res.reason == "state_too_large", res
    assert "over the" in res.message
    recs = await approvals.list_approvals(desk.admin)
    assert not [r for r in recs if r.request.task_id == task_id and r.status == "pending"]
    assert desk.runs() == []



async def test_the_agent_role_cannot_publish_a_result_to_feed_a_pointer(desk: Desk) -> None:
    """Results are the tool role's to publish: a forged lookup result (a 9000
    total) never reaches the stream for a worker to read."""
    task_id, rec = await desk.parked("please refund order 42")
    errors: list[str] = []
    evil = await desk.agent_role(errors)
    fake = ToolCallCompleted(task_id=task_id, agent=AGENT, step=rec.request.step, call_id="p1-look",
                             tool="lookup_order", ok=True, result={"order": {"id": 42, "total": 9000.0}},
                             arguments_digest=codec.arguments_digest({"order_id": 42}))
    await evil.publish(subjects.events(AGENT, task_id), codec.encode(fake))
    await evil.flush()
    await until(lambda: any("permissions violation" in e.lower() for e in errors), 5.0, "the server to refuse it")
    assert "p1-look" not in await results_by_call(desk, task_id)

# ----------------------------------------------------------------- the tool worker's check, without a broker
#
# The worker reads decisions and results by EVENTS sequence; here the stream
# is a dict, so open-ended inputs (hypothesis) run fast. What is checked is
# the same code the bus tests above drive.

CHAIN = Plan(steps=(
    PlanStep(id="a", tool="lookup_order", args={"order_id": 42}),
    PlanStep(id="b", tool="lookup_order", args={"order_id": {"$ref": "a", "path": ["order", "id"]}}),
    PlanStep(id="c", tool="issue_refund", args={"order_id": {"$ref": "b", "path": ["order", "id"]},
                                                "amount": {"$ref": "b", "path": ["order", "total"]}})))
T = "t-chain"



def _result(task_id: str, call_id: str, tool: str, args: dict[str, object], out: object, *,
            step: int = 1) -> bytes:
    return codec.encode(ToolCallCompleted(task_id=task_id, agent=AGENT, step=step, call_id=call_id, tool=tool,
                                          ok=True, result=out, arguments_digest=codec.arguments_digest(args)))


def chain_world() -> tuple[InMemoryStream, dict[str, int]]:
    """The chain plan approved and its lookups answered; beside them what an
    attacker can get onto the stream: a lookup rerun with another order, a
    result of another task, a decision, garbage."""
    ev = InMemoryStream()
    shown = approval_arguments(CHAIN)
    d = ApprovalDecided(approval_id=f"{T}-1-plan-1", task_id=T, agent=AGENT, step=1, call_id="plan-1", approved=True,
                        approver="alice", tool=SUBMIT_PLAN_NAME, arguments_digest=codec.arguments_digest(shown),
                        plan=shown)
    order = {"order": {"id": 42, "total": 120.0}}
    seqs = {
        "decision": ev.add(subjects.decisions(AGENT, T), codec.encode(d)),
        "a": ev.add(subjects.events(AGENT, T), _result(T, "p1-a", "lookup_order", {"order_id": 42}, order)),
        "b": ev.add(subjects.events(AGENT, T), _result(T, "p1-b", "lookup_order", {"order_id": 42}, order)),
        "b_rerun": ev.add(subjects.events(AGENT, T), _result(T, "p1-b", "lookup_order", {"order_id": 4242},
                                                             {"order": {"id": 4242, "total": 9000.0}})),
        "other_task": ev.add(subjects.events(AGENT, "t-other"), _result("t-other", "p1-b", "lookup_order",
                                                                         {"order_id": 42}, order)),
        "garbage": ev.add(subjects.events(AGENT, T), b"{not json"),
    }
    return ev, seqs


def refund_call(args: dict[str, Any], inputs: dict[str, int], decision: int) -> ToolCallRequested:
    return ToolCallRequested(task_id=T, agent=AGENT, step=1, call_id="p1-c", tool="issue_refund", arguments=args,
                             approval_seq=decision, plan_inputs=inputs, idempotency_key=f"{T}:1:p1-c",
                             reply_subject=subjects.events(AGENT, T), requested_at=0.0)


async def run_refund(ev: InMemoryStream, req: ToolCallRequested) -> str | None:
    """None if the refund ran; else why the worker refused it."""
    tools = {t.name: t for t in (plan_app.lookup_order, plan_app.issue_refund)}
    runner = ToolRunner(tools, InMemoryBus(), worker="w", decisions=ev.read)
    try:
        await runner.on_call(req)
    except Reject as exc:
        return str(exc)
    assert runner.executions == 1
    return None


async def test_the_worker_follows_pointers_through_every_step_they_pass() -> None:
    ev, seqs = chain_world()
    approved = {"order_id": 42, "amount": 120.0}
    assert await run_refund(ev, refund_call(approved, {"a": seqs["a"], "b": seqs["b"]}, seqs["decision"])) is None
    # b rerun with another order (a genuine worker result, other arguments)
    why = await run_refund(ev, refund_call({"order_id": 4242, "amount": 9000.0},
                                           {"a": seqs["a"], "b": seqs["b_rerun"]}, seqs["decision"]))
    assert why is not None and "as approved" in why
    # b's own input must be named too: b's approved arguments come from a
    why = await run_refund(ev, refund_call(approved, {"b": seqs["b"]}, seqs["decision"]))
    assert why is not None and "p1-a" in why


async def test_a_per_call_approval_runs_its_call_once_too() -> None:
    """The same rule without a plan: an approved call republished under a
    fresh idempotency key is not the approved call."""
    ev = InMemoryStream()
    d = ApprovalDecided(approval_id=f"{T}-1-c1", task_id=T, agent=AGENT, step=1, call_id="c1", approved=True,
                        approver="alice", tool="issue_refund",
                        arguments_digest=codec.arguments_digest({"order_id": 42, "amount": 500.0}))
    seq = ev.add(subjects.decisions(AGENT, T), codec.encode(d))
    call = msgspec.structs.replace(refund_call({"order_id": 42, "amount": 500.0}, {}, seq), call_id="c1",
                                   idempotency_key=f"{T}:1:c1")
    assert await run_refund(ev, call) is None
    why = await run_refund(ev, msgspec.structs.replace(call, idempotency_key=f"{T}:1:c1:again"))
    assert why is not None and "idempotency key" in why

def test_the_core_names_every_result_a_gated_steps_pointers_lead_to() -> None:
    c = approving()
    s, _ = go(None, task(), c)
    s, _ = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": 42}},
                         {"id": "b", "tool": "lookup_order", "args": {"order_id": {"$ref": "a", "path": ["id"]}}},
                         {"id": "r", "tool": "refund", "args": {"order_id": {"$ref": "b", "path": ["id"]},
                                                               "amount": {"$ref": "b", "path": ["total"]}}}), c)
    s, _ = go(s, decision_for(s), approving(decision_seq=7))
    s, _ = go(s, result(s, "p1-a", {"id": 42, "total": 120.0}), approving(result_seq=11))
    s, d = go(s, result(s, "p1-b", {"id": 42, "total": 120.0}), approving(result_seq=12))
    [refund] = published(d)
    assert refund.request.call_id == "p1-r" and refund.request.plan_inputs == {"a": 11, "b": 12}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs=st.dictionaries(st.sampled_from(["a", "b", "c", "x", "", "p1-a", "$ref"]),
                              st.one_of(st.sampled_from(["a", "b", "b_rerun", "other_task", "garbage", "decision"]),
                                        st.integers(min_value=-2**63, max_value=2**63 - 1)), max_size=5),
       amount=st.sampled_from([120.0, 9000.0, 101, 1e308]), order=st.sampled_from([42, 4242, -1]))
def test_malformed_plan_inputs_never_run_other_than_the_approved_refund(
        inputs: dict[str, str | int], amount: float, order: int) -> None:
    ev, seqs = chain_world()
    named = {k: seqs[v] if isinstance(v, str) else v for k, v in inputs.items()}
    why = asyncio.run(run_refund(ev, refund_call({"order_id": order, "amount": amount}, named, seqs["decision"])))
    genuine = named.get("a") == seqs["a"] and named.get("b") == seqs["b"]
    if why is None:  # it ran: only the approved refund, from the approved results
        assert genuine and (order, amount) == (42, 120.0)
    else:
        assert not (genuine and (order, amount) == (42, 120.0)), why


async def test_a_plan_shown_to_the_human_is_the_plan_the_worker_runs(desk: Desk) -> None:
    """The agent role rewrites the pending plan approval's listing (it writes
    the approvals bucket): the steps hold a literal 9000 refund while what a
    human reads (``shown``, the digest) is still the genuine plan. The human
    approves what they read; the agent role then claims the 9000 refund."""
    task_id, rec = await desk.parked("please refund order 42")
    q = rec.request
    deceptive = json.loads(json.dumps(q.arguments))
    deceptive["steps"][2]["args"] = {"order_id": 42, "amount": 9000.0}
    evil = await desk.agent_role()
    kv = await evil.jetstream().key_value(subjects.APPROVALS.name)
    await kv.put(q.approval_id, encode_record(ApprovalRecord(request=msgspec.structs.replace(q, arguments=deceptive),
                                                             status="pending")))
    # what the human reads in `agentstream approvals` is the steps as they would run...
    [listed] = [r for r in await approvals.list_approvals(desk.admin) if r.request.task_id == task_id]
    assert '"amount":9000.0' in "\n".join(approvals.plan_lines(listed.request))
    # ... but a reader of the request's own "shown" copy (an HTTP client) would see the genuine plan
    assert listed.request.arguments["shown"] == q.arguments["shown"]
    with pytest.raises(approvals.ApprovalError):  # the agent refuses the decision: not what it asked
        await approvals.decide(desk.approver, q.approval_id, approved=True, approver="alice", wait_s=2.0)
    [decision] = await scan(desk.admin.js, "EVENTS", subjects.stored(subjects.decisions(AGENT, task_id)))
    subject = subjects.tool_calls("issue_refund")
    await evil.publish(subject, codec.encode(forged(task_id, "p1-refund", "issue_refund",
                                                    {"order_id": 42, "amount": 9000.0}, step=q.step,
                                                    approval_seq=decision.seq)))
    await desk.dead_letter(subject, "is not shown as it runs")
    await evil.flush()
    assert "issue_refund 42 9000.0" not in desk.runs()


# ----------------------------------------------------------------- the core


GATED = ({"id": "a", "tool": "lookup_order", "args": {"order_id": 42}},
         {"id": "b", "tool": "shipping_status", "args": {"order_id": 42}},
         {"id": "r", "tool": "refund", "args": {"order_id": 42, "amount": {"$ref": "a", "path": ["total"]}},
          "depends_on": ["b"]})


def test_a_replan_reusing_an_approved_step_id_for_a_bigger_call_asks_a_human_again() -> None:
    c = approving()
    s, _ = go(None, task(), c)
    s, _ = go(s, planner(1, *GATED), c)
    s, d = go(s, decision_for(s), approving(decision_seq=5))
    s, _ = go(s, result(s, "p1-a", {"total": 30.0}), c)
    s, d = go(s, result(s, "p1-b", ok=False, error=ToolError(kind="execution_error", message="down")), c)
    assert published(d) == [] and s.planning is not None and s.planning.phase == "planning"
    # the new plan's step "r" is no longer the approved "r": same id, another amount, another attempt
    s, d = go(s, planner(2, {"id": "r", "tool": "refund", "args": {"order_id": 42, "amount": 9000}}), c)
    assert published(d) == []
    [ask] = [x.request for x in d.commands if isinstance(x, PublishApproval)]
    assert ask.call_id == "plan-2" and ask.arguments["steps"][0]["args"]["amount"] == 9000
    assert s.planning is not None and s.planning.approval_seq == 0  # the first plan's decision is gone


async def test_a_plan_decision_covers_no_call_of_another_turn_or_attempt() -> None:
    """Plan 1 approved at turn 1; its step r claimed at turn 2 (a replan's),
    as p1-r or p2-r, with exactly the approved arguments."""
    ev, seqs = chain_world()
    inputs = {"a": seqs["a"], "b": seqs["b"]}
    for call_id, step in (("p1-c", 2), ("p2-c", 2), ("p2-c", 1)):
        req = msgspec.structs.replace(refund_call({"order_id": 42, "amount": 120.0}, inputs, seqs["decision"]),
                                      call_id=call_id, step=step)
        why = await run_refund(ev, req)
        assert why is not None and ("another task or turn" in why or "is not a step of the plan" in why), why


def test_an_expired_plan_approval_approves_nothing_later_and_the_same_plan_asks_again() -> None:
    c = approving()
    s, _ = go(None, task(), c)
    s, _ = go(s, planner(1, *GATED), c)
    late = decision_for(s)
    s, d = go(s, ApprovalExpired(call_id="plan-1"), approving(now=T0 + 3601))
    assert s.planning is not None and s.planning.phase == "planning"
    assert "nobody approved the plan" in s.messages[-1].content
    # the human's late approval of the expired plan is refused at the inbox, and changes nothing anyway
    assert check_inbox(s, late, DECISIONS) is not None
    after = decide(s, late, approving(now=T0 + 3602, decision_seq=9))
    assert not after.changed and not [x for x in after.commands if isinstance(x, PublishToolCall)]
    # the planner submits the very same plan: a human is asked again, for attempt 2
    s, d = go(s, planner(s.step, *GATED), approving(now=T0 + 3603))
    [ask] = [x.request for x in d.commands if isinstance(x, PublishApproval)]
    assert ask.call_id == "plan-2" and ask.arguments["plan_digest"] == late.plan["plan_digest"]
    assert published(d) == []


def test_an_invalid_plan_is_answered_without_echoing_a_huge_value() -> None:
    s, _ = go(None, task())
    huge = "9" * 300_000
    s, d = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": huge}}))
    [proposed] = events(d, PlanProposed)
    assert not proposed.valid and proposed.errors[0]["kind"] == "bad_arguments"
    assert len(proposed.errors[0]["message"]) < 300
    assert len(s.messages[-1].content) < 1000  # what the planner is told back
