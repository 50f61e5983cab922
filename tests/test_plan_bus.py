"""Plan-first against a real nats-server with per-role credentials: the
``planner`` agent of tests/apps/plan_app.py (a FunctionModel planner and
solver) and its tool workers in process under the ``worker`` role.

A plan runs end to end on the ordinary tool subscriptions; a failed step is
replanned; a whole plan is approved once through the approval service and
its gated step runs under that decision, which the tool worker checks; and
the attacks on a plan approval (forged, another digest, a call outside the
plan) change nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
from conftest import run_cli, until
from plan_desk import AGENT, WAIT_S, Desk, desk_fixture, kinds  # noqa: F401 - the desk fixture

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    ApprovalDecided,
    PlanProgress,
    PlanProposed,
    RouteDecided,
    TaskCompleted,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolCallRequested,
)
from agentstream.contracts.telemetry import SpanRecord
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability.timeline import render
from agentstream.runtime.observability.views import load_trace
from agentstream.runtime.observability.waterfall import render_waterfall
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME


async def test_a_plan_first_task_runs_its_dag_on_the_tool_subscriptions(desk: Desk) -> None:
    task_id = await desk.client.submit(AGENT, "please refund order 41")
    res = await desk.client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted), res
    assert res.output == "order 41 is in transit; refunded 80.0 on order 41"
    assert res.steps == 2 and res.tool_calls == 3  # a planner and a solver turn; three steps
    runs = desk.runs()
    assert sorted(runs[:2]) == ["lookup_order 41", "shipping_status 41"] and runs[2:] == ["issue_refund 41 80.0"]

    evs = await desk.events(task_id)
    [proposed] = kinds(evs, PlanProposed)
    assert proposed.valid and [s.id for s in proposed.steps] == ["look", "ship", "refund"]
    assert proposed.steps[2].depends_on == ("look", "ship")
    progress = [(e.kind, e.step_ids) for e in kinds(evs, PlanProgress)]
    assert progress == [("dispatched", ("look", "ship")), ("dispatched", ("refund",)),
                        ("solving", ("look", "ship", "refund"))]
    assert {e.call_id for e in kinds(evs, ToolCallCompleted)} == {"p1-look", "p1-ship", "p1-refund"}
    # each wave is announced like a ReAct turn's calls, with the arguments sent (evaluation reads them)
    waves = [[(c.id, json.loads(c.arguments)) for c in e.calls] for e in kinds(evs, ToolCallDispatched)]
    assert waves == [[("p1-look", {"order_id": 41}), ("p1-ship", {"fail": False, "order_id": 41})],
                     [("p1-refund", {"amount": 80.0, "order_id": 41})]]


async def test_the_trace_shows_the_plan_against_its_execution(desk: Desk) -> None:
    task_id = await desk.client.submit(AGENT, "please refund order 41")
    assert isinstance(await desk.client.result(task_id, timeout=WAIT_S), TaskCompleted)
    assert desk.rt.telemetry is not None
    await desk.rt.telemetry.force_flush()

    async def complete() -> list[SpanRecord] | None:
        spans = await load_trace(desk.admin.js, task_id)
        names = [s.name for s in spans]
        return spans if any(n.startswith("invoke_agent") for n in names) and \
            sum(n.startswith("execute_tool") for n in names) == 3 else None
    spans: list[SpanRecord] = await until(complete, WAIT_S, "the task's trace")
    steps = {s.attributes.get("agentstream.plan.step"): s.name for s in spans if s.name.startswith("execute_tool")}
    assert steps == {"look": "execute_tool lookup_order", "ship": "execute_tool shipping_status",
                     "refund": "execute_tool issue_refund"}
    turns = sorted(str(s.attributes.get("agentstream.turn")) for s in spans if s.name.startswith("chat"))
    assert turns == ["planner", "solver"]
    [root] = [s for s in spans if s.name.startswith("invoke_agent")]
    [proposed] = kinds(await desk.events(task_id), PlanProposed)
    assert root.attributes["agentstream.plan.digest"] == proposed.digest
    drawn = render_waterfall(spans)
    assert "plan 1 step refund" in drawn and "planner turn" in drawn and f"plan {proposed.digest}" in drawn


async def test_a_failed_step_is_replanned_on_the_bus(desk: Desk) -> None:
    task_id = await desk.client.submit(AGENT, "please refund order 41, fail the carrier")
    res = await desk.client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted), res
    assert res.output == "refunded 80.0 on order 41"
    evs = await desk.events(task_id)
    assert [p.attempt for p in kinds(evs, PlanProposed)] == [1, 2]
    assert [(e.attempt, e.kind, e.step_ids) for e in kinds(evs, PlanProgress)] == [
        (1, "dispatched", ("look", "ship")), (1, "failed", ("ship",)), (1, "replanned", ()),
        (2, "dispatched", ("look",)), (2, "dispatched", ("refund",)), (2, "solving", ("look", "refund"))]
    # the refund of the first plan waited for the failed step: it never ran; the second plan's did, once
    assert [r for r in desk.runs() if r.startswith("issue_refund")] == ["issue_refund 41 80.0"]

    # `agentstream timeline` draws both plans against what ran
    out = render(evs)
    rows = [line.split("|")[0].strip() for line in out.splitlines()]
    assert {"plan 1", "look: lookup_order", "ship: shipping_status", "step failed", "replan", "plan 2",
            "refund: issue_refund"} <= set(rows), out
    table = out[out.index("plans against execution:"):]
    assert 'shipping_status {"order_id": 41, "fail": true}  -> FAILED execution_error' in table
    assert 'refund  issue_refund {"order_id": 41, "amount": 80.0} after look, ship  -> not run' in table
    assert "-> replanned: step ship failed" in table


async def test_one_approval_of_the_whole_plan_runs_its_gated_step(desk: Desk) -> None:
    task_id, rec = await desk.parked("please refund order 42")
    q = rec.request
    assert q.tool == SUBMIT_PLAN_NAME and q.approvers == ("alice",)
    assert [s["id"] for s in q.arguments["shown"]] == ["look", "ship", "refund"]
    assert desk.runs() == []  # nothing ran before the human decided

    # the CLI shows the plan: every step with its arguments, pointers spelled out
    env = {"AGENTSTREAM_NATS_URL": desk.server.url}
    out = await asyncio.to_thread(run_cli, ["approvals"], env)
    assert out.returncode == 0, out.stderr
    assert f"{AGENT}/{SUBMIT_PLAN_NAME} plan {q.arguments['plan_digest']} (3 steps)" in out.stdout
    assert "refund: issue_refund {\"order_id\":\"<output of look['order']['id']>\"" in out.stdout

    await approvals.decide(desk.approver, q.approval_id, approved=True, approver="alice")
    res = await desk.client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted) and res.output.endswith("refunded 120.0 on order 42"), res
    assert desk.runs()[-1] == "issue_refund 42 120.0"
    assert len(kinds(await desk.events(task_id), ApprovalDecided)) == 1  # once for the plan, not per call

    # The genuine plan decision cannot carry calls the plan does not hold.
    seq = (await scan(desk.admin.js, "EVENTS", subjects.stored(subjects.decisions(AGENT, task_id))))[0].seq
    evil = await desk.agent_role()
    subject = subjects.tool_calls("issue_refund")

    def call(call_id: str, amount: float) -> ToolCallRequested:
        return ToolCallRequested(task_id=task_id, agent=AGENT, step=1, call_id=call_id, tool="issue_refund",
                                 arguments={"order_id": 42, "amount": amount}, approval_seq=seq,
                                 idempotency_key=f"{task_id}:1:{call_id}:{amount}",
                                 reply_subject=subjects.events(AGENT, task_id), requested_at=time.time())
    await evil.publish(subject, codec.encode(call("p1-look", 500.0)))
    await desk.dead_letter(subject, "has no step 'look' calling issue_refund")
    await evil.publish(subject, codec.encode(call("p1-more", 500.0)))
    await desk.dead_letter(subject, "has no step 'more'")
    await evil.publish(subject, codec.encode(call("c1", 500.0)))
    await desk.dead_letter(subject, "is not a step of the plan")
    # The approved step itself, with another amount than its pointer resolves
    # to: the worker reads the lookup's result (at the sequence the call
    # names) and resolves the approved pointers itself.
    results = {codec.agent_inbox.decode(r.data).call_id: r.seq
               for r in await scan(desk.admin.js, "EVENTS", subjects.stored(subjects.events(AGENT, task_id)))}
    more = msgspec.structs.replace(call("p1-refund", 500.0), plan_inputs={"look": results["p1-look"]})
    await evil.publish(subject, codec.encode(more))
    await desk.dead_letter(subject, "approved other arguments for step 'refund'")
    # ... or naming another result as the lookup's (the shipping check's).
    moved = msgspec.structs.replace(call("p1-refund", 120.0), plan_inputs={"look": results["p1-ship"]})
    await evil.publish(subject, codec.encode(moved))
    await desk.dead_letter(subject, "is not a successful result of p1-look")
    await evil.flush()
    assert [r for r in desk.runs() if r.startswith("issue_refund")] == ["issue_refund 42 120.0"]


async def test_a_plan_approval_cannot_be_forged_or_moved_to_another_plan(desk: Desk) -> None:
    task_id, rec = await desk.parked("please refund order 42")
    q = rec.request
    decisions = subjects.decisions(AGENT, task_id)

    def decision(**changes: Any) -> ApprovalDecided:
        d = ApprovalDecided(approval_id=q.approval_id, task_id=task_id, agent=AGENT, step=q.step, call_id=q.call_id,
                            approved=True, approver="alice", tool=q.tool, decided_at=time.time(),
                            arguments_digest=codec.arguments_digest(q.arguments), plan=q.arguments)
        return msgspec.structs.replace(d, **changes)

    # Another plan (a bigger refund), its own digest: not this session's plan.
    other = json.loads(json.dumps(q.arguments))
    other["steps"][2]["args"]["amount"] = 9999
    await desk.approver.js.publish(decisions, codec.encode(decision(plan=other,
                                                                    arguments_digest=codec.arguments_digest(other))))
    await desk.dead_letter(decisions, "other arguments than the call's")
    # The right digest, carrying another plan for the workers to check calls against.
    await desk.approver.js.publish(decisions, codec.encode(decision(plan=other)))
    await desk.dead_letter(decisions, "not the plan it approves")
    # The agent role may not publish a decision at all.
    errors: list[str] = []
    evil = await desk.agent_role(errors)
    await evil.publish(decisions, codec.encode(decision()))
    await evil.flush()
    await until(lambda: any("permissions violation" in e.lower() for e in errors), 5.0, "the server to refuse it")
    # still waiting for a human, nothing ran
    still = await approvals.get_approval(desk.admin, q.approval_id)
    assert still.status == "pending" and desk.runs() == []



async def test_the_http_api_lists_and_approves_a_plan(desk: Desk) -> None:
    import aiohttp

    from agentstream.runtime.interfaces.http_api import HttpServer

    task_id, rec = await desk.parked("please refund order 42")
    gateway = await AgentClient.connect(desk.server.plain_url, provision=False, telemetry=False,
                                        auth=desk.auth("gateway"))
    api = HttpServer(gateway, approver_auth=approvals.ApproverAuth(tokens={"alice-secret-token-123": "alice"}))
    alice = {"Authorization": "Bearer alice-secret-token-123"}
    try:
        await api.start("127.0.0.1", 0)
        async with aiohttp.ClientSession(base_url=api.url, timeout=aiohttp.ClientTimeout(total=WAIT_S)) as s:
            async with s.get("/v1/approvals", headers=alice) as resp:
                assert resp.status == 200
                [listed] = (await resp.json())["approvals"]
            req = listed["request"]
            assert req["tool"] == SUBMIT_PLAN_NAME and req["arguments"]["plan_digest"]
            assert req["arguments"]["shown"][2]["args"]["amount"] == "<output of look['order']['total']>"
            async with s.post(f"/v1/approvals/{rec.request.approval_id}/approve", headers=alice, json={}) as resp:
                assert resp.status == 202, await resp.text()
        res = await desk.client.result(task_id, timeout=WAIT_S)
        assert isinstance(res, TaskCompleted) and desk.runs()[-1] == "issue_refund 42 120.0"
    finally:
        await api.stop()
        await gateway.close()


async def test_each_routing_decision_is_an_event_of_the_task(desk: Desk) -> None:
    simple = await desk.client.submit("router", "Where is my order 41?")
    hard = await desk.client.submit("router", "Look up order 41 and check where it is, then refund it, and also "
                                              "compare it with orders 43 and 44?")
    for task_id, strategy, output in ((simple, "react", "(react) I can only plan."),
                                      (hard, "plan", "order 41 is in transit; refunded 80.0 on order 41")):
        res = await desk.client.result(task_id, timeout=WAIT_S)
        assert isinstance(res, TaskCompleted) and res.output == output, res
        evs = await desk.events(task_id)
        [decided] = kinds(evs, RouteDecided)
        assert decided.strategy == strategy and decided.reason.startswith("complexity")
        assert (decided.score >= decided.threshold) == (strategy == "plan") and decided.threshold == 2.5
        assert bool(kinds(evs, PlanProposed)) == (strategy == "plan")
