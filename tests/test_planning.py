"""Plan-first building blocks: typed plans, static validation, the parallel
schedule, pointers, plan-level approval coverage, and the router."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.contracts.events import ToolSpec
from agentstream.runtime.planning import plan as P
from agentstream.runtime.planning import router as R

TOOLS = {
    "lookup_order": ToolSpec(name="lookup_order", description="d", parameters={
        "type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}),
    "refund": ToolSpec(name="refund", description="d", parameters={
        "type": "object", "properties": {"order_id": {"type": "integer"}, "amount": {"type": "number"}},
        "required": ["order_id", "amount"]}),
    "ticket": ToolSpec(name="ticket", description="d", parameters={
        "type": "object", "properties": {"priority": {"type": "string", "enum": ["low", "high"]}}, "required": []}),
}


def plan(*steps: dict) -> P.Plan:  # type: ignore[type-arg]
    out = P.parse_plan(json.dumps({"steps": list(steps)}))
    assert isinstance(out, P.Plan), out
    return out


def kinds(errors: list[P.PlanError]) -> list[str]:
    return sorted(e.kind for e in errors)


def test_a_valid_dag_has_no_errors_and_runs_independent_steps_together() -> None:
    p = plan({"id": "a", "tool": "lookup_order", "args": {"order_id": 1}},
             {"id": "b", "tool": "lookup_order", "args": {"order_id": 2}},
             {"id": "c", "tool": "refund", "args": {"order_id": {"$ref": "a", "path": ["id"]},
                                                    "amount": {"$ref": "b", "path": ["total"]}}})
    assert P.validate(p, TOOLS, max_steps=5) == []
    assert [s.id for s in P.ready_steps(p, done=(), started=())] == ["a", "b"]
    assert [s.id for s in P.ready_steps(p, done=("a",), started=("a", "b"))] == []
    assert [s.id for s in P.ready_steps(p, done=("a", "b"), started=("a", "b"))] == ["c"]


def test_invalid_plans_get_structured_errors() -> None:
    assert kinds(P.validate(plan({"id": "a", "tool": "nope", "args": {}}), TOOLS, max_steps=5)) == ["unknown_tool"]
    assert kinds(P.validate(plan({"id": "a", "tool": "lookup_order", "args": {"order_id": "x"}}), TOOLS,
                            max_steps=5)) == ["bad_arguments"]
    assert kinds(P.validate(plan({"id": "a", "tool": "refund", "args": {"order_id": 1}}), TOOLS,
                            max_steps=5)) == ["bad_arguments"]
    assert kinds(P.validate(plan({"id": "a", "tool": "ticket", "args": {"priority": "urgent"}}), TOOLS,
                            max_steps=5)) == ["bad_arguments"]
    cyc = plan({"id": "a", "tool": "lookup_order", "args": {"order_id": {"$ref": "b"}}},
               {"id": "b", "tool": "lookup_order", "args": {"order_id": {"$ref": "a"}}})
    assert kinds(P.validate(cyc, TOOLS, max_steps=5)) == ["cycle"]
    assert kinds(P.validate(plan({"id": "a", "tool": "lookup_order", "args": {"order_id": {"$ref": "z"}}}), TOOLS,
                            max_steps=5)) == ["unknown_ref"]
    many = plan(*({"id": f"s{i}", "tool": "lookup_order", "args": {"order_id": i}} for i in range(4)))
    assert kinds(P.validate(many, TOOLS, max_steps=3)) == ["over_budget"]
    dup = plan({"id": "a", "tool": "lookup_order", "args": {"order_id": 1}},
               {"id": "a", "tool": "lookup_order", "args": {"order_id": 2}})
    assert "duplicate_id" in kinds(P.validate(dup, TOOLS, max_steps=5))
    assert isinstance(P.parse_plan("{not json"), P.PlanError)
    # "nothing to run" is a plan (the solver answers at once), and a valid one
    empty = P.parse_plan('{"steps": []}')
    assert isinstance(empty, P.Plan) and P.validate(empty, TOOLS, max_steps=0) == []


def test_pointers_resolve_to_values_or_fail_loudly() -> None:
    outputs = {"a": {"order": {"id": 7, "items": ["x", "y"]}}}
    assert P.resolve({"order_id": {"$ref": "a", "path": ["order", "id"]}}, outputs) == {"order_id": 7}
    assert P.resolve({"first": {"$ref": "a", "path": ["order", "items", 0]}}, outputs) == {"first": "x"}
    try:
        P.resolve({"order_id": {"$ref": "a", "path": ["order", "nope"]}}, outputs)
    except P.Unresolved as exc:
        assert exc.error.kind == "unresolved" and exc.error.field == "order.nope"
    else:
        raise AssertionError("a missing path must not resolve")
    # a string that looks like a template is just a string: nothing is substituted, silently or otherwise
    assert P.resolve({"order_id": "{{a.order.id}}"}, outputs) == {"order_id": "{{a.order.id}}"}


def test_a_failed_step_blocks_exactly_what_depends_on_it() -> None:
    p = plan({"id": "a", "tool": "lookup_order", "args": {"order_id": 1}},
             {"id": "b", "tool": "lookup_order", "args": {"order_id": {"$ref": "a"}}},
             {"id": "c", "tool": "lookup_order", "args": {"order_id": {"$ref": "b"}}},
             {"id": "d", "tool": "lookup_order", "args": {"order_id": 4}})
    assert P.blocked_by_failure(p, ["a"]) == {"b", "c"}


def test_a_plan_approval_covers_exactly_its_steps() -> None:
    p = plan({"id": "a", "tool": "lookup_order", "args": {"order_id": 1}},
             {"id": "r", "tool": "refund", "args": {"order_id": 1, "amount": {"$ref": "a", "path": ["total"]}}})
    outputs = {"a": {"total": 150.0}}
    assert P.covers(p, "r", "refund", {"order_id": 1, "amount": 150.0}, outputs)
    assert not P.covers(p, "r", "refund", {"order_id": 1, "amount": 999.0}, outputs)  # other arguments
    assert not P.covers(p, "x", "refund", {"order_id": 1, "amount": 150.0}, outputs)  # not in the plan
    assert P.shown(p.steps[1].args) == {"order_id": 1, "amount": "<output of a['total']>"}
    assert P.digest(p) != P.digest(plan({"id": "a", "tool": "lookup_order", "args": {"order_id": 2}}))


@st.composite
def dags(draw: st.DrawFn) -> P.Plan:
    n = draw(st.integers(1, 12))
    steps = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        args = {"order_id": {"$ref": f"s{deps[0]}"}} if deps else {"order_id": i}
        steps.append(P.PlanStep(id=f"s{i}", tool="lookup_order", args=args,
                                depends_on=tuple(f"s{d}" for d in deps[1:])))
    order = draw(st.permutations(steps))
    return P.Plan(steps=tuple(order))


@given(dags())
def test_running_ready_steps_in_waves_runs_every_step_once_after_its_dependencies(p: P.Plan) -> None:
    assert P.validate(p, TOOLS, max_steps=100) == []
    done: list[str] = []
    while len(done) < len(p.steps):
        wave = P.ready_steps(p, done=done, started=done)
        assert wave, "a valid plan never stalls"
        for s in wave:
            assert P.dependencies(s) <= set(done)
        done.extend(s.id for s in wave)
    assert sorted(done) == sorted(s.id for s in p.steps)


def test_the_router_sends_simple_tasks_to_react_and_multi_part_ones_to_plan_first() -> None:
    simple = R.route("Where is my order 42?")
    assert simple.strategy == "react" and "complexity" in simple.reason and 0.5 <= simple.confidence <= 1
    multi = R.route("Check orders 12, 13 and 14, then refund the cheapest and also create a ticket for the rest")
    assert multi.strategy == "plan"


def test_calibration_picks_the_threshold_that_separates_held_out_cases() -> None:
    examples: list[tuple[str, R.Strategy]] = [
        ("Where is my order 42?", "react"), ("What are your opening hours?", "react"),
        ("Reset my password please", "react"),
        ("Check orders 12, 13 and 14, then refund the cheapest", "plan"),
        ("Look up order 5 and order 6 and compare their totals, then create a ticket", "plan")]
    policy = R.calibrate(examples)
    assert all(R.route(t, policy).strategy == s for t, s in examples)


# A clause that makes an action depend on an outcome not yet seen, each
# starting with its marker (so appending one cannot merge with the text before).
CONDITIONAL_CLAUSES = ["if it is eligible", "unless it has shipped", "whether it qualifies", "in case it is late",
                       "depending on its status", "whichever is eligible", "if they qualify", "only when it arrives"]


def test_an_action_that_depends_on_an_unseen_outcome_goes_to_react_however_wide_the_request() -> None:
    wide = "For orders 12, 13 and 14: where are they, when will they arrive, and who are the customers?"
    assert R.route(wide).strategy == "plan"
    gated = "For orders 12, 13 and 14: refund the ones that are eligible, and tell me who the customers are."
    decision = R.route(gated)
    assert decision.strategy == "react" and decision.features.conditionals >= 1
    assert "cannot branch" in decision.reason
    for text in ("Refund orders 2 and 4 if they are eligible.", "Refund whichever of orders 8 and 10 is eligible.",
                 "Cancel order 5 unless it has shipped, and check order 6 and 7."):
        assert R.route(text).strategy == "react", text
    # a question about eligibility acts on nothing: no conditional
    assert R.features("Can orders 8, 10 and 13 be refunded?").conditionals == 0


def test_calibration_can_now_tell_conditional_requests_from_wide_ones() -> None:
    """The cases plan-first loses (conditional refunds) scored as high as those
    it wins (fans, chains): no threshold separated them. Now one does."""
    examples: list[tuple[str, R.Strategy]] = [
        ("Where is my order 42?", "react"), ("Hello!", "react"),
        ("Refund whichever of orders 8 and 10 is eligible.", "react"),
        ("Refund each of orders 12, 13 and 14 that is eligible.", "react"),
        ("Check orders 3 and 4: refund the ones that qualify and tell me their status.", "react"),
        ("Where are my orders 5, 7 and 11?", "plan"), ("What is the status of orders 6, 9, 12 and 15?", "plan"),
        ("For orders 1 and 2: where are they, can they be refunded, and who are the customers?", "plan")]
    policy = R.calibrate(examples)
    assert all(R.route(t, policy).strategy == s for t, s in examples)
    held_out = [("Refund orders 2 and 4 if they are eligible.", "react"),
                ("Please look up orders 1, 2, 3, 4 and 5.", "plan")]
    assert all(R.route(t, policy).strategy == s for t, s in held_out)


@settings(max_examples=300)
@given(text=st.text(max_size=300) | st.lists(st.sampled_from(
           ["orders", "order", "1", "2", "17", "and", "then", "refund", "check", "where", "?", "if", "eligible",
            "please", "customer", "ship", "also", "each", "whether", "unless", ":"]), max_size=40).map(" ".join),
       clause=st.sampled_from(CONDITIONAL_CLAUSES),
       threshold=st.floats(-50, 50, allow_nan=False))
def test_adding_a_conditional_never_makes_a_request_more_likely_to_be_planned(text: str, clause: str,
                                                                              threshold: float) -> None:
    policy = R.RouterPolicy(threshold=threshold)
    before, after = R.route(text, policy), R.route(f"{text} {clause}", policy)
    assert after.features.conditionals > before.features.conditionals
    assert after.score < before.score
    assert after.strategy == "react" or before.strategy == "plan"


@given(text=st.text(max_size=500), threshold=st.floats(allow_nan=False, allow_infinity=False),
       softness=st.floats(allow_nan=False, allow_infinity=False))
def test_every_decision_is_consistent_and_its_confidence_within_half_and_one(text: str, threshold: float,
                                                                             softness: float) -> None:
    d = R.route(text, R.RouterPolicy(threshold=threshold, softness=softness))
    assert 0.5 <= d.confidence <= 1.0
    assert (d.strategy == "plan") == (d.score >= threshold) and d.threshold == threshold
