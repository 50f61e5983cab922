"""evaluation/strategies.py: the held-out split, which strategy did better on
a case, router calibration from labels, and the per-strategy figures."""

from __future__ import annotations

import json
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.contracts.events import (
    ApprovalDecided,
    ApprovalRequested,
    TaskCompleted,
    TaskSubmitted,
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    Usage,
)
from agentstream.runtime.evaluation import strategies as S
from agentstream.runtime.evaluation.dataset import Case, Dataset
from agentstream.runtime.evaluation.results import CaseRun, CaseSummary, EvalRun
from agentstream.runtime.evaluation.scoring import OutcomeScore, TaskEvidence, score_outcome
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME
from agentstream.runtime.planning.router import route


def _ds(name: str, n: int) -> Dataset:
    return Dataset(name=name, cases=tuple(Case(id=f"{name}-{i}", input=f"q{i}") for i in range(n)))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 60), m=st.integers(2, 40), frac=st.floats(0.05, 0.95), seed=st.integers(0, 99))
def test_the_split_is_per_dataset_deterministic_and_disjoint(n: int, m: int, frac: float, seed: int) -> None:
    a, b = _ds("a", n), _ds("b", m)
    cal, held = S.split([a, b], frac, seed)
    assert (cal, held) == S.split([a, b], frac, seed)
    for ds, c, h in zip((a, b), cal, held):
        ids_c, ids_h = {x.id for x in c.cases}, {x.id for x in h.cases}
        assert not ids_c & ids_h and ids_c | ids_h == {x.id for x in ds.cases}
        assert 1 <= len(ids_h) <= len(ds.cases) - 1  # both parts represented
        assert len(ids_h) == min(max(1, round(frac * len(ds.cases))), len(ds.cases) - 1)


@given(seed=st.integers(0, 99))
def test_adding_a_case_does_not_reshuffle_the_others(seed: int) -> None:
    small, big = _ds("a", 40), Dataset(name="a", cases=(*_ds("a", 40).cases, Case(id="a-new", input="q")))
    held_small = {c.id for c in S.split([small], 0.25, seed)[1][0].cases}
    held_big = {c.id for c in S.split([big], 0.25, seed)[1][0].cases}
    # The ranking is per case id, so at most one case changes sides.
    assert len(held_small ^ (held_big - {"a-new"})) <= 1


def test_a_split_needs_a_share_strictly_between_zero_and_one() -> None:
    with pytest.raises(ValueError):
        S.split([_ds("a", 4)], 1.0, 0)


def _cs(passed: int, n: int = 2, *, cost: float = 0.0, tokens: float = 1000, latency: float = 1.0) -> CaseSummary:
    return CaseSummary(case_id="c", n=n, c=passed, means={}, cost_usd=cost, latency_s=latency, tokens=tokens)


def test_success_decides_first_then_cost_then_latency_and_ties_go_to_react() -> None:
    assert S.better(_cs(1, tokens=100), _cs(2, tokens=9000)) == ("plan", "success")
    assert S.better(_cs(2, cost=0.002), _cs(2, cost=0.001)) == ("plan", "cost")
    assert S.better(_cs(2, cost=0.001), _cs(2, cost=0.002, latency=0.1)) == ("react", "cost")
    assert S.better(_cs(2, tokens=1000), _cs(2, tokens=800)) == ("plan", "tokens")  # unpriced: tokens
    assert S.better(_cs(2, latency=2.0), _cs(2, latency=1.0)) == ("plan", "latency")
    assert S.better(_cs(2, latency=1.0), _cs(2, latency=0.9)) == ("react", "tie")  # within the noise
    assert S.better(_cs(2, tokens=1000), _cs(2, tokens=1020)) == ("react", "tie")


def test_calibration_learns_the_threshold_and_is_scored_on_the_held_out_labels() -> None:
    simple = ["Where is order 1?", "What are your hours?", "Hello!"]
    complex_ = ["Where are orders 1, 2 and 3, and when will they arrive, and can they be refunded?",
                "Check orders 5 and 9, then tell me their status and shipping and who the customers are."]
    cal = [S.Label(case_id=t, input=t, better="react", why="cost") for t in simple]
    cal += [S.Label(case_id=t, input=t, better="plan", why="cost") for t in complex_]
    held = [S.Label(case_id="h1", input="Where is #7?", better="react", why="tie"),
            S.Label(case_id="h2", input="For orders 4, 6 and 8: where are they, and who are the customers, "
                    "and can each be refunded?", better="plan", why="latency")]
    result = S.calibrate_router(cal, held)
    assert result.calibration_accuracy == 1.0 and result.held_out_accuracy == 1.0
    assert result.always_react_accuracy == 0.5
    assert f"router_threshold={result.policy.threshold:.2f}" in result.render()
    # When planning never did better, the router never plans.
    never = S.calibrate_router([S.Label(case_id=t, input=t, better="react", why="tie") for t in simple + complex_],
                               held)
    assert all(route(lb.input, never.policy).strategy == "react" for lb in never.held_out)


def _run(version: str, outcomes: dict[str, list[tuple[bool, float, int, float]]]) -> EvalRun:
    results = []
    for cid, runs in outcomes.items():
        for i, (ok, cost, tokens, latency) in enumerate(runs):
            score = OutcomeScore(task_id=f"{version}-{cid}-{i}", passed=ok, action=1.0, outcome=1.0 if ok else 0.0,
                                 groundedness=1.0, safety=True, within_budget=True, cost_usd=cost, tokens=tokens,
                                 latency_s=latency)
            results.append(CaseRun(case_id=cid, run=i, task_id=f"{version}-{cid}-{i}", score=score, output="",
                                    status="completed"))
    return EvalRun(run_id=version, dataset="d", dataset_hash="h", agent="a", version=version, runs_per_case=2,
                   seed=0, started_at=0.0, finished_at=1.0, case_ids=tuple(outcomes), results=tuple(results))


def test_figures_and_the_paired_comparison_with_react() -> None:
    react = _run("v1", {f"c{i}": [(True, 0.002, 2000, 2.0), (i != 0, 0.002, 2000, 2.2)] for i in range(6)})
    plan = _run("plan", {f"c{i}": [(i != 5, 0.001, 1000, 1.0), (i != 5, 0.001, 1000, 1.1)] for i in range(6)})
    f = S.figures(plan, "plan")
    assert (f.cases, f.runs) == (6, 2) and math.isclose(f.success.estimate, 5 / 6)
    assert f.tokens.estimate == 1000 and f.latency_p50_s.low <= f.latency_p50_s.estimate <= f.latency_p50_s.high
    p = S.paired(plan, react, "plan")
    assert (p.worse, p.better) == (2, 1)  # c5 lost twice, c0's second run gained
    assert math.isclose(p.tokens_ratio.estimate, 0.5) and math.isclose(p.cost_ratio.estimate, 0.5)
    assert p.latency_ratio.estimate < 0.55
    table = S.markdown_table([S.figures(react, "react"), f], [None, p])
    assert "| d | plan | 6 x 2 |" in table and "2 / 1" in table
    held = S.restrict(plan, ["c0", "c5"])
    assert held.case_ids == ("c0", "c5") and len(held.results) == 4


def _plan_task(approved: bool) -> list[msgspec.Struct]:
    """A plan whose gated refund a human approved (or denied) as part of the whole plan."""
    refund = {"order_id": 42, "amount": 156.0}
    evs: list[msgspec.Struct] = [
        TaskSubmitted(agent="a", input="Please refund order 42.", task_id="t1", submitted_at=100.0),
        ApprovalRequested(approval_id="ap", task_id="t1", agent="a", step=1, call_id="plan-1", tool=SUBMIT_PLAN_NAME,
                          arguments={"steps": []}, approvers=("supervisor",), requested_at=1, deadline_at=2),
        ApprovalDecided(approval_id="ap", task_id="t1", agent="a", step=1, call_id="plan-1", approved=approved,
                        approver="supervisor"),
        ToolCallDispatched(task_id="t1", agent="a", step=1, at=101.0,
                           calls=(ToolCall(id="p1-s1", name="issue_refund", arguments=json.dumps(refund)),)),
    ]
    if approved:
        evs.append(ToolCallCompleted(task_id="t1", agent="a", step=1, call_id="p1-s1", tool="issue_refund", ok=True,
                                     attempts=1, result={"refunded": 156.0}))
    evs.append(TaskCompleted(task_id="t1", agent="a", agent_version="plan", output="Refunded $156.00.", steps=2,
                             tool_calls=1, usage=Usage(), started_at=100.5, finished_at=102.0))
    return evs


def test_a_plan_level_approval_approves_the_plans_calls_in_the_evidence() -> None:
    case = msgspec.convert({"id": "c", "input": "Please refund order 42.", "expect": {"tools": {
        "calls": [{"name": "issue_refund", "args": {"order_id": 42}}],
        "forbidden": [{"name": "issue_refund", "args": {"amount": {"gt": 100}}, "unless_approved": True}]}}}, Case)
    ev = TaskEvidence.from_events(_plan_task(approved=True))
    assert [(c.name, c.executed, c.approval) for c in ev.calls] == [("issue_refund", True, "approved")]
    assert score_outcome(ev, case).safety  # approved as part of the plan a human saw
    denied = TaskEvidence.from_events(_plan_task(approved=False))
    assert [(c.name, c.approval) for c in denied.calls] == [("issue_refund", "denied")]


def test_the_calibration_estimates_what_each_routing_does_on_the_held_out_cases() -> None:
    def lb(text: str, better: str, success: tuple[float, float], tokens: tuple[float, float]) -> S.Label:
        return S.Label(case_id=text, input=text, better=better, why="x", success=success,  # type: ignore[arg-type]
                       tokens=tokens, cost_usd=(0.0, 0.0))

    simple = lb("Hello!", "react", (1.0, 0.0), (700, 3900))
    fan = lb("Where are orders 1, 2, 3, 4 and 5, and when will they arrive, and can they be refunded?", "plan",
             (1.0, 1.0), (2500, 1500))
    result = S.calibrate_router([simple, fan], [simple, fan])
    mixes = result.held_out_mixes()
    assert (mixes["always ReAct"].success, mixes["always ReAct"].tokens) == (1.0, 1600)
    assert (mixes["always plan-first"].success, mixes["always plan-first"].tokens) == (0.5, 2700)
    routed = mixes[f"routed at {result.policy.threshold:.2f}"]
    assert (routed.success, routed.tokens) == (1.0, 1100)  # the router earns its place here
    assert "routed at" in result.render()
