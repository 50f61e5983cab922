"""Scoring one task's outcome from its events: the API the canary comparator uses."""

from __future__ import annotations

import json

import msgspec
import pytest

from agentstream.contracts.events import (
    ApprovalDecided,
    ApprovalRequested,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    Usage,
)
from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.evaluation import TaskEvidence, score_outcome
from agentstream.runtime.evaluation.dataset import Budget, parse_dataset
from agentstream.runtime.evaluation.scoring import claims_in, pii_in


def case(spec: dict[str, object]):  # type: ignore[no-untyped-def]
    return parse_dataset({"name": "t", "cases": [{"id": "c", "input": "q", **spec}]}, source="t.yaml").cases[0]


def task_events(calls: list[tuple[int, str, dict[str, object], object]], output: str = "done", *,
                failed: bool = False, approvals: dict[str, bool] | None = None,
                cost: float = 0.0) -> list[msgspec.Struct]:
    """A task's events: dispatches by step, completions (None result: not executed), the result."""
    evs: list[msgspec.Struct] = [TaskSubmitted(agent="a", input="q", task_id="t1", submitted_at=100.0)]
    steps: dict[int, list[ToolCall]] = {}
    for i, (step, name, args, _) in enumerate(calls):
        steps.setdefault(step, []).append(ToolCall(id=f"c{i}", name=name, arguments=json.dumps(args)))
    for step, tcs in steps.items():
        evs.append(ToolCallDispatched(task_id="t1", agent="a", step=step, calls=tuple(tcs), at=101.0))
    for i, (step, name, args, result) in enumerate(calls):
        if approvals and name in approvals:
            evs.append(ApprovalRequested(approval_id=f"ap{i}", task_id="t1", agent="a", step=step, call_id=f"c{i}",
                                         tool=name, arguments=args, approvers=(), requested_at=1, deadline_at=2))
            evs.append(ApprovalDecided(approval_id=f"ap{i}", task_id="t1", agent="a", step=step, call_id=f"c{i}",
                                       approved=approvals[name], approver="boss"))
        if result is not None:
            evs.append(ToolCallCompleted(task_id="t1", agent="a", step=step, call_id=f"c{i}", tool=name, ok=True,
                                         result=result))
    usage = Usage(input_tokens=100, output_tokens=20, cost_usd=cost)
    if failed:
        evs.append(TaskFailed(task_id="t1", agent="a", agent_version="v1", reason="max_steps", message="gave up",
                              steps=3, tool_calls=len(calls), usage=usage, started_at=100.5, finished_at=103.0))
    else:
        evs.append(TaskCompleted(task_id="t1", agent="a", agent_version="v1", output=output, steps=2,
                                 tool_calls=len(calls), usage=usage, started_at=100.5, finished_at=102.0))
    return evs


def test_evidence_from_events_takes_calls_results_approvals_and_usage() -> None:
    ev = TaskEvidence.from_events(task_events([(1, "lookup", {"id": 4}, {"total": 9.5}),
                                               (2, "refund", {"id": 4, "amount": 9.5}, None)],
                                              output="ok", approvals={"refund": False}, cost=0.25))
    assert ev.status == "completed" and ev.inputs == ("q",) and ev.latency_s == pytest.approx(2.0)
    assert [(c.name, c.executed, c.approval) for c in ev.calls] == [("lookup", True, ""), ("refund", False, "denied")]
    assert ev.tokens == 120 and ev.cost_usd == 0.25


def test_action_argument_constraints_and_set_vs_ordered() -> None:
    ev = TaskEvidence.from_events(task_events([(1, "b", {"n": 2}, 1), (1, "a", {"n": 1, "s": "Hello"}, 1)]))
    c = case({"expect": {"tools": {"calls": [{"name": "a", "args": {"n": 1, "s": {"contains": "hell"}}},
                                             {"name": "b", "args": {"n": {"ge": 2, "lt": 3}}}]}}})
    assert score_outcome(ev, c).action == 1.0
    ordered = case({"expect": {"tools": {"order": "ordered", "calls": [{"name": "a"}, {"name": "b"}]}}})
    s = score_outcome(ev, ordered)
    assert s.action == 0.5 and not s.passed
    wrong_arg = case({"expect": {"tools": {"calls": [{"name": "a", "args": {"n": 7}}]}}})
    s = score_outcome(ev, wrong_arg)
    assert s.action == 0.0 and "called: " in s.failed_checks[0].detail


def test_exact_and_parallel() -> None:
    ev = TaskEvidence.from_events(task_events([(1, "a", {}, 1), (2, "b", {}, 1)]))
    both = {"calls": [{"name": "a"}, {"name": "b"}]}
    assert not score_outcome(ev, case({"expect": {"tools": {**both, "parallel": True}}})).passed
    assert score_outcome(ev, case({"expect": {"tools": {**both, "exact": True}}})).passed
    assert not score_outcome(ev, case({"expect": {"tools": {"calls": [{"name": "a"}], "exact": True}}})).passed
    assert not score_outcome(ev, case({"expect": {"tools": {"exact": True}}})).passed  # "no tools at all"


def test_forbidden_counts_only_executed_calls_and_honours_approval() -> None:
    forbid = case({"expect": {"tools": {"forbidden": [{"name": "refund", "args": {"amount": {"gt": 100}},
                                                        "unless_approved": True}]}}})
    approved = TaskEvidence.from_events(task_events([(1, "refund", {"amount": 150}, {"ok": 1})],
                                                    approvals={"refund": True}))
    denied = TaskEvidence.from_events(task_events([(1, "refund", {"amount": 150}, None)], approvals={"refund": False}))
    unasked = TaskEvidence.from_events(task_events([(1, "refund", {"amount": 150}, {"ok": 1})]))
    small = TaskEvidence.from_events(task_events([(1, "refund", {"amount": 50}, {"ok": 1})]))
    assert score_outcome(approved, forbid).safety
    assert score_outcome(denied, forbid).safety
    assert score_outcome(small, forbid).safety
    s = score_outcome(unasked, forbid)
    assert not s.safety and not s.passed


def test_pii_in_the_answer_is_unsafe_but_order_numbers_are_not() -> None:
    assert pii_in("Order 42 is shipped, total $156.00, ref R-00042.") == []
    assert pii_in("We will email jane.doe@example.com") == ["email"]
    assert pii_in("card 4111 1111 1111 1111 on file") == ["card"]
    ev = TaskEvidence.from_events(task_events([], output="Sure, jane.doe@example.com"))
    assert not score_outcome(ev).safety


def test_answer_checks() -> None:
    ev = TaskEvidence.from_events(task_events([(1, "lookup", {}, {"total": 156.0})],
                                              output="Order 42 totals $156.00."))
    c = case({"expect": {"answer": {"contains": ["ORDER 42"], "not_contains": ["refund"], "regex": r"\$\d+\.\d\d",
                                    "number": {"value": 156, "tolerance": 0.01}}}})
    s = score_outcome(ev, c)
    assert s.outcome == 1.0 and s.passed
    bad = case({"expect": {"answer": {"contains": ["shipped"], "number": {"value": 155}}}})
    s = score_outcome(ev, bad)
    assert s.outcome == pytest.approx(1 / 3) and not s.passed


def test_json_schema_answer_check() -> None:
    schema = {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok"]}}}
    c = case({"expect": {"answer": {"json_schema": schema}}})
    good = TaskEvidence.from_events(task_events([], output='{"status": "ok"}'))
    bad = TaskEvidence.from_events(task_events([], output='{"status": "no"}'))
    prose = TaskEvidence.from_events(task_events([], output="status ok"))
    assert score_outcome(good, c).passed
    assert not score_outcome(bad, c).passed
    assert "not JSON" in score_outcome(prose, c).failed_checks[0].detail


def test_groundedness_flags_numbers_and_codes_no_tool_returned() -> None:
    ev = TaskEvidence.from_events(task_events([(1, "lookup", {"order_id": 42}, {"total": 156.0, "ref": "R-00042"})],
                                              output="Order 42: $156.00, reference R-00042."))
    assert score_outcome(ev).groundedness == 1.0
    made_up = TaskEvidence.from_events(task_events([(1, "lookup", {"order_id": 42}, {"total": 156.0})],
                                                   output="Order 42: $99.00, reference R-77777."))
    s = score_outcome(made_up)
    assert s.groundedness == pytest.approx(1 / 3)
    assert "R-77777" in next(c for c in s.checks if c.kind == "groundedness").detail
    assert claims_in("see https://help.example/reset.") == ["https://help.example/reset"]


def test_failed_task_and_expected_failure() -> None:
    ev = TaskEvidence.from_events(task_events([], failed=True))
    assert ev.status == "failed" and ev.failure_reason == "max_steps"
    assert not score_outcome(ev, case({})).passed
    assert score_outcome(ev, case({"expect": {"status": "failed"}})).passed


def test_no_result_is_a_timeout_that_fails() -> None:
    ev = TaskEvidence.from_events([TaskSubmitted(agent="a", input="q", task_id="t1")])
    s = score_outcome(ev, case({}))
    assert ev.status == "timeout" and not s.passed


def test_budgets_are_reported_apart_from_pass() -> None:
    ev = TaskEvidence.from_events(task_events([], cost=0.5))
    s = score_outcome(ev, case({}), budget=Budget(cost_usd=0.1, latency_s=10, tokens=50))
    assert s.passed and not s.within_budget
    assert {c.name for c in s.failed_checks} == {"cost <= $0.1", "tokens <= 50"}


@pytest.mark.parametrize("bad,why", [
    ({"id": "x", "input": "q", "expcet": {}}, "expcet"),
    ({"id": "x", "input": "q", "expect": {"answer": {"regex": "("}}}, "bad regex"),
    ({"id": "x", "input": "q", "expect": {"tools": {"order": "random"}}}, "order"),
    ({"id": "x", "input": "q", "expect": {"tools": {"calls": [{"name": "a", "args": {"n": {"gt": 1, "foo": 2}}}]}}},
     "mixes constraint"),
    ({"id": "x", "input": "q", "expect": {"answer": {"json_schema": {"type": "nope"}}}}, "bad json_schema"),
])
def test_dataset_mistakes_name_the_case(bad: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_dataset({"name": "t", "cases": [bad]}, source="d.yaml")
    assert "x" in str(err.value) and why in str(err.value)


def test_duplicate_ids_and_hash_ignores_layout() -> None:
    with pytest.raises(ConfigError, match="two cases"):
        parse_dataset([{"id": "a", "input": "1"}, {"id": "a", "input": "2"}], source="d.yaml")
    a = parse_dataset({"cases": [{"id": "a", "input": "1", "tags": ["x"]}]}, source="d.yaml")
    b = parse_dataset([{"tags": ["x"], "input": "1", "id": "a"}], source="other.yaml")
    c = parse_dataset([{"id": "a", "input": "2"}], source="d.yaml")
    assert a.hash == b.hash != c.hash
