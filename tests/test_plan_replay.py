"""`agentstream replay` of plan-first and routed tasks (issue 14), against a
real nats-server: production runs the plan_app agents (tests/plan_desk.py);
their recordings are replayed in process with production's own model
responses played back (the determinism check), with the scripted model
again, and with candidates that plan differently or route differently.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from conftest import run_cli
from plan_desk import AGENT, WAIT_S, Desk, desk_fixture, plan_app  # noqa: F401 - the desk fixture

from agentstream.contracts.events import TaskCompleted
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.rollout.replay import RecordedModel, Recording, load_recordings, replay_one

HARD = "Look up order 41 and check where it is, then refund it, and also compare it with orders 43 and 44?"


async def production(desk: Desk) -> dict[str, str]:
    """Every path of the plan-first strategy once, and both routes: task id -> what it exercises."""
    ids = {await desk.client.submit(AGENT, "please refund order 41"): "plan",
           await desk.client.submit(AGENT, "please refund order 41, fail the carrier"): "replan",
           await desk.client.submit(AGENT, "please refund order 41, stubborn carrier"): "fallback",
           await desk.client.submit("router", "Where is my order 41?"): "routed react",
           await desk.client.submit("router", HARD): "routed plan"}
    gated, rec = await desk.parked("please refund order 42")
    await approvals.decide(desk.approver, rec.request.approval_id, approved=True, approver="alice")
    ids[gated] = "approved plan"
    for task_id in ids:
        assert isinstance(await desk.client.result(task_id, timeout=WAIT_S), TaskCompleted), ids[task_id]
    return ids


async def recordings(desk: Desk) -> list[Recording]:
    return [*await load_recordings(desk.admin.js, AGENT, since_s=3600),
            *await load_recordings(desk.admin.js, "router", since_s=3600)]


async def test_replay_reproduces_plan_first_and_routed_tasks(desk: Desk) -> None:
    ids = await production(desk)
    recs = await recordings(desk)
    assert {r.task.task_id for r in recs} == set(ids)
    fallback = next(r for r in recs if ids[r.task.task_id] == "fallback")
    assert [p.attempt for p in fallback.plans] == [1, 2, 3] and all(p.submitted for p in fallback.plans)
    ran = list(desk.runs())
    for rec in recs:
        agent = plan_app.app.get_agent(rec.task.agent)
        for llm in (RecordedModel(rec), agent.scripted()):  # type: ignore[misc]
            r = await replay_one(agent.spec, llm, rec, plan_app.app.tools)
            assert r.divergence.what == "", (ids[rec.task.task_id], llm.name, r.divergence)
            assert isinstance(r.result, TaskCompleted) and isinstance(rec.result, TaskCompleted)
            assert r.result.output == rec.result.output and r.result.steps == rec.result.steps
            assert [p.digest for p in r.plans] == [p.digest for p in rec.plans]
            assert r.served["stub"] == 0 and r.served["recorded"] == rec.result.tool_calls
    assert desk.runs() == ran  # nothing ran for real: every call came from the recording


async def test_replay_names_where_a_candidate_plans_or_routes_differently(desk: Desk) -> None:
    ids = await production(desk)
    recs = {ids[r.task.task_id]: r for r in await recordings(desk)}
    planner = plan_app.app.get_agent(AGENT)
    # The same agent as ReAct: it never plans; the first divergence is the plan.
    react = msgspec.structs.replace(planner.spec, strategy="react")
    r = await replay_one(react, planner.scripted(), recs["plan"], plan_app.app.tools)  # type: ignore[misc]
    assert r.divergence.step == 1 and r.divergence.what.startswith(f"step 1 plan: {recs['plan'].plans[0].digest} -> -")
    # A router with a threshold nothing reaches: the multi-part task goes to ReAct.
    router = plan_app.app.get_agent("router")
    timid = msgspec.structs.replace(router.spec, router_threshold=100.0)
    r = await replay_one(timid, router.scripted(), recs["routed plan"], plan_app.app.tools)  # type: ignore[misc]
    assert r.divergence.what == "route: plan -> react"
    # No replans left: the failed plan falls back to ReAct at once, where production replanned.
    hasty = msgspec.structs.replace(planner.spec, max_replans=0)
    r = await replay_one(hasty, planner.scripted(), recs["replan"], plan_app.app.tools)  # type: ignore[misc]
    assert r.divergence.step == 2 and r.divergence.what.startswith("step 2 plan:")


async def test_the_replay_command_checks_plan_first_production_against_itself(desk: Desk) -> None:
    await production(desk)
    env = {"AGENTSTREAM_NATS_URL": desk.server.url, "AGENTSTREAM_APP": "plan_app:app",
           "PYTHONPATH": str(Path(plan_app.__file__).parent)}
    out = await asyncio.to_thread(run_cli, ["replay", "--agent", AGENT, "--candidate", "v1", "--since", "1h",
                                            "--recorded-model"], env)
    assert out.returncode == 0, out.stderr
    assert "replayed 4 tasks of planner with v1 (recorded model responses): 4 identical to production" in out.stdout
