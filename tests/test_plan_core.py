"""Plan-first and routed strategies in the pure core: ``decide`` driven by a
planner turn, the plan's tool results and a solver turn; no broker.

What a user notices: which tool calls are published and when, what the
planner and the solver are told, what the task ends with, and which events
(PlanProposed, PlanProgress, RouteDecided) a watcher sees.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    ApprovalDecided,
    ModelResponse,
    PlanProgress,
    PlanProposed,
    RouteDecided,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCall,
    ToolCallCompleted,
    ToolError,
    ToolSpec,
)
from agentstream.runtime.core.decide import Context, Decision, decide
from agentstream.runtime.core.plan_first import request_shape
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.core.state import (
    CallModel,
    Input,
    ModelResponded,
    PublishApproval,
    PublishAudit,
    PublishProgress,
    PublishResult,
    PublishToolCall,
    RecordApproval,
    SessionState,
    decode_state,
    encode_state,
)
from agentstream.runtime.core.trust import check_inbox
from agentstream.runtime.planning.plan import Plan, digest
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME

_ID = {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}
TOOLS = (
    ToolSpec(name="lookup_order", description="Look up an order.", parameters=_ID),
    ToolSpec(name="shipping_status", description="Where an order is.", parameters=_ID),
    ToolSpec(name="refund", description="Refund an order.", parameters={
        "type": "object", "properties": {"order_id": {"type": "integer"}, "amount": {"type": "number"}},
        "required": ["order_id", "amount"]}),
)
SPEC = AgentSpec(name="support", instructions="You are the support desk.", tools=TOOLS, max_steps=8,
                 deadline_s=60.0, strategy="plan", max_replans=1)
T0 = 1_000.0
TASK = "t-1"
EVENTS = subjects.events("support", TASK)
DECISIONS = subjects.decisions("support", TASK)


def ctx(now: float = T0, spec: AgentSpec = SPEC, **kw: Any) -> Context:
    return Context(spec=spec, now=now, worker="w", **kw)


def task(text: str = "refund order 42") -> TaskSubmitted:
    return TaskSubmitted(agent="support", input=text, task_id=TASK)


def model(step: int, *calls: ToolCall, text: str = "") -> ModelResponded:
    resp = ModelResponse(text=text, tool_calls=calls, finish_reason="tool_calls" if calls else "stop", model="m")
    return ModelResponded(step=step, response=resp, started_at=T0, finished_at=T0)


def planner(step: int, *steps: dict[str, Any], rationale: str = "") -> ModelResponded:
    body = json.dumps({"steps": list(steps), "rationale": rationale})
    return model(step, ToolCall(id=f"plan{step}", name=SUBMIT_PLAN_NAME, arguments=body))


def result(state: SessionState, call_id: str, value: Any = None, *, ok: bool = True,
           error: ToolError | None = None) -> ToolCallCompleted:
    tool = next(p.tool for p in state.pending if p.call_id == call_id)
    return ToolCallCompleted(task_id=TASK, agent="support", step=state.step, call_id=call_id, tool=tool, ok=ok,
                             result=value if ok else None, error=error)


def go(state: SessionState | None, event: Input, c: Context | None = None) -> tuple[SessionState, Decision]:
    d = decide(state, event, c or ctx())
    assert d.state is not None
    # Every state a plan-first session passes through survives the store.
    assert decode_state(encode_state(d.state)) == d.state
    return d.state, d


def published(d: Decision) -> list[PublishToolCall]:
    return [c for c in d.commands if isinstance(c, PublishToolCall)]


def calls_of(d: Decision) -> dict[str, dict[str, Any]]:
    return {c.request.call_id: c.request.arguments for c in published(d)}


def events(d: Decision, kind: type) -> list[Any]:
    return [c.event for c in d.commands if isinstance(c, PublishProgress) and isinstance(c.event, kind)]


def outcome(d: Decision) -> TaskCompleted | TaskFailed | None:
    return next((c.result for c in d.commands if isinstance(c, PublishResult)), None)


DIAMOND = ({"id": "a", "tool": "lookup_order", "args": {"order_id": 42}},
           {"id": "b", "tool": "shipping_status", "args": {"order_id": 42}},
           {"id": "c", "tool": "refund", "args": {"order_id": {"$ref": "a", "path": ["id"]},
                                                 "amount": {"$ref": "a", "path": ["total"]}},
            "depends_on": ["b"]})


# ----------------------------------------------------------------- plan-first, end to end


def test_the_first_turn_is_a_planner_turn_and_react_stays_as_it_was() -> None:
    s, d = go(None, task())
    assert s.planning is not None and s.planning.phase == "planning"
    assert [type(c).__name__ for c in d.commands] == ["SetDeadline", "CallModel"]
    tools, choice = request_shape(s, SPEC)
    assert choice == SUBMIT_PLAN_NAME and [t.name for t in tools] == [*(t.name for t in TOOLS), SUBMIT_PLAN_NAME]
    react = AgentSpec(name="support", instructions="x", tools=TOOLS)
    r, _ = go(None, task(), ctx(spec=react))
    assert r.planning is None and request_shape(r, react) == (TOOLS, None)


def test_a_valid_plan_runs_in_parallel_waves_with_pointers_resolved_then_the_solver_answers() -> None:
    s, _ = go(None, task())
    s, d = go(s, planner(1, *DIAMOND, rationale="look up, then refund"))
    [proposed] = events(d, PlanProposed)
    assert proposed.valid and proposed.attempt == 1 and proposed.digest and proposed.rationale
    assert proposed.steps[2].args == {"order_id": "<output of a['id']>", "amount": "<output of a['total']>"}
    # a and b have no dependencies: both published at once; c waits for both
    assert calls_of(d) == {"p1-a": {"order_id": 42}, "p1-b": {"order_id": 42}}
    assert [e.kind for e in events(d, PlanProgress)] == ["dispatched"]
    req = published(d)[0].request
    assert req.idempotency_key == f"{TASK}:1:p1-a" and req.step == 1

    s, d = go(s, result(s, "p1-a", {"id": 42, "total": 30.5}))
    assert published(d) == []  # c still waits for b
    s, d = go(s, result(s, "p1-b", {"status": "delivered"}))
    assert calls_of(d) == {"p1-c": {"order_id": 42, "amount": 30.5}}  # the pointers, resolved

    s, d = go(s, result(s, "p1-c", {"refunded": True}))
    assert [type(c).__name__ for c in d.commands][-1] == "CallModel"
    assert s.planning is not None and s.planning.phase == "solving" and s.step == 2
    assert request_shape(s, SPEC) == ((), "none")
    # the solver reads the plan's calls and results as a transcript
    assert json.loads(s.messages[3].content) == {"plan": digest(_plan(DIAMOND)), "done": ["a", "b", "c"]}
    assert [c.id for c in s.messages[4].tool_calls] == ["p1-a", "p1-b", "p1-c"]
    assert [m.tool_call_id for m in s.messages[5:]] == ["p1-a", "p1-b", "p1-c"]
    assert json.loads(s.messages[7].content) == {"refunded": True}

    s, d = go(s, model(2, text="Refunded $30.50 for order 42."))
    done = outcome(d)
    assert isinstance(done, TaskCompleted) and done.output.startswith("Refunded") and done.tool_calls == 3


def _plan(steps: tuple[dict[str, Any], ...]) -> Plan:
    return msgspec.json.decode(json.dumps({"steps": list(steps)}), type=Plan)


def test_an_invalid_plan_goes_back_to_the_planner_with_structured_errors() -> None:
    s, _ = go(None, task())
    s, d = go(s, planner(1, {"id": "a", "tool": "cancel_everything", "args": {}},
                         {"id": "b", "tool": "refund", "args": {"order_id": "x"}}))
    assert published(d) == []
    [proposed] = events(d, PlanProposed)
    assert not proposed.valid and {e["kind"] for e in proposed.errors} == {"unknown_tool", "bad_arguments"}
    reply = s.messages[-1]
    assert reply.role == "tool" and reply.name == SUBMIT_PLAN_NAME and reply.tool_call_id == "plan1"
    assert {e["kind"] for e in json.loads(reply.content)["errors"]} == {"unknown_tool", "bad_arguments"}
    assert s.step == 2 and isinstance(d.commands[-1], CallModel) and request_shape(s, SPEC)[1] == SUBMIT_PLAN_NAME


def test_a_cycle_and_a_plan_over_the_tool_call_budget_are_refused_before_anything_runs() -> None:
    s, _ = go(None, task())
    _, d = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": {"$ref": "b"}}},
                         {"id": "b", "tool": "lookup_order", "args": {"order_id": {"$ref": "a"}}}))
    assert published(d) == [] and [e["kind"] for e in events(d, PlanProposed)[0].errors] == ["cycle"]
    small = msgspec.structs.replace(SPEC, max_tool_calls=2)
    s, _ = go(None, task(), ctx(spec=small))
    _, d = go(s, planner(1, *DIAMOND), ctx(spec=small))
    assert published(d) == [] and [e["kind"] for e in events(d, PlanProposed)[0].errors] == ["over_budget"]


def test_a_failed_step_replans_with_what_failed_and_what_was_done() -> None:
    s, _ = go(None, task())
    s, _ = go(s, planner(1, *DIAMOND))
    s, _ = go(s, result(s, "p1-a", {"id": 42, "total": 30.5}))
    s, d = go(s, result(s, "p1-b", ok=False, error=ToolError(kind="execution_error", message="carrier down")))
    assert published(d) == []  # c depends on b: never run
    assert [e.kind for e in events(d, PlanProgress)] == ["failed", "replanned"]
    reply = json.loads(s.messages[-1].content)
    assert reply["failed"]["b"]["tool"] == "shipping_status"
    assert reply["failed"]["b"]["error"]["error"]["message"] == "carrier down"
    assert reply["done"] == {"a": {"id": 42, "total": 30.5}} and reply["not_run"] == ["c"]
    assert s.planning is not None and s.planning.phase == "planning" and s.step == 2

    # the second plan runs under attempt 2's call ids
    s, d = go(s, planner(2, {"id": "a", "tool": "lookup_order", "args": {"order_id": 42}}))
    assert list(calls_of(d)) == ["p2-a"]


def test_replanning_is_bounded_and_then_the_task_falls_back_to_react() -> None:
    s, _ = go(None, task())
    bad = {"id": "a", "tool": "nope", "args": {}}
    s, _ = go(s, planner(1, bad))  # attempt 1 invalid: replan (max_replans=1)
    s, d = go(s, planner(2, bad))  # attempt 2 invalid: no replans left
    assert [e.kind for e in events(d, PlanProgress)] == ["fallback"]
    audits = [c.record for c in d.commands if isinstance(c, PublishAudit)]
    assert [a.kind for a in audits] == ["plan.fallback"]
    assert s.planning is not None and s.planning.phase == "react" and "invalid plan" in s.planning.fallback
    assert request_shape(s, SPEC) == (TOOLS, None)  # a ReAct turn: the agent's tools, no forced plan
    # ReAct from here: the model calls a tool itself, then answers
    s, d = go(s, model(3, ToolCall(id="r1", name="lookup_order", arguments='{"order_id": 42}')))
    assert calls_of(d) == {"r1": {"order_id": 42}}
    s, d = go(s, ToolCallCompleted(task_id=TASK, agent="support", step=3, call_id="r1", tool="lookup_order",
                                   ok=True, result={"id": 42}))
    s, d = go(s, model(4, text="Order 42 found."))
    assert isinstance(outcome(d), TaskCompleted)


def test_a_pointer_the_output_cannot_satisfy_fails_the_step_not_the_tool() -> None:
    s, _ = go(None, task())
    s, _ = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": 42}},
                         {"id": "c", "tool": "refund", "args": {"order_id": 42,
                                                                "amount": {"$ref": "a", "path": ["total"]}}}))
    s, d = go(s, result(s, "p1-a", {"id": 42}))  # no "total"
    assert published(d) == []
    assert [e.kind for e in events(d, PlanProgress)] == ["failed", "replanned"]
    assert json.loads(s.messages[-1].content)["failed"]["c"]["error"]["error"]["kind"] == "unresolved"


def test_an_empty_plan_means_nothing_to_run_and_the_solver_answers_at_once() -> None:
    s, _ = go(None, task("Hello!"))
    s, d = go(s, planner(1, rationale="a greeting: nothing to look up"))
    [proposed] = events(d, PlanProposed)
    assert proposed.valid and proposed.steps == ()
    assert published(d) == [] and [e.kind for e in events(d, PlanProgress)] == ["solving"]
    # no replan, no fallback: the next turn is the solver's
    assert s.planning is not None and s.planning.phase == "solving" and s.step == 2
    assert request_shape(s, SPEC) == ((), "none")
    # the planner's call is answered, and no assistant turn with neither text nor calls follows
    assert s.messages[-1].role == "tool" and s.messages[-1].tool_call_id == "plan1"
    assert all(m.content or m.tool_calls for m in s.messages if m.role == "assistant")
    s, d = go(s, model(2, text="Hello! How can I help?"))
    done = outcome(d)
    assert isinstance(done, TaskCompleted) and done.output.startswith("Hello") and done.tool_calls == 0


def test_a_replan_with_nothing_left_to_run_goes_to_the_solver_not_to_react() -> None:
    s, _ = go(None, task())
    s, _ = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": 42}}))
    s, _ = go(s, result(s, "p1-a", ok=False, error=ToolError(kind="not_found", message="no order 42")))
    assert s.planning is not None and s.planning.phase == "planning" and s.planning.attempt == 1
    # max_replans=1: an invalid second plan would fall back to ReAct; an empty one is the answer
    s, d = go(s, planner(2))
    assert [e.kind for e in events(d, PlanProgress)] == ["solving"]
    assert s.planning is not None and s.planning.phase == "solving" and not s.planning.fallback
    s, d = go(s, model(3, text="I could not find order 42."))
    assert isinstance(outcome(d), TaskCompleted)


def test_an_empty_plan_beside_direct_calls_is_an_error_not_an_answer() -> None:
    s, _ = go(None, task())
    body = json.dumps({"steps": []})
    s, d = go(s, model(1, ToolCall(id="plan1", name=SUBMIT_PLAN_NAME, arguments=body),
                       ToolCall(id="x", name="lookup_order", arguments='{"order_id": 42}')))
    assert published(d) == []
    [proposed] = events(d, PlanProposed)
    assert not proposed.valid and [e["kind"] for e in proposed.errors] == ["empty"]
    assert "lookup_order" in proposed.errors[0]["message"]
    assert s.planning is not None and s.planning.phase == "planning"


def test_a_planner_that_calls_tools_directly_is_told_to_plan_and_nothing_runs() -> None:
    s, _ = go(None, task())
    s, d = go(s, model(1, ToolCall(id="x", name="refund", arguments='{"order_id": 1, "amount": 5}')))
    assert published(d) == []
    # the call is answered (never run), and the planner is told to plan
    assert s.messages[-2].role == "tool" and s.messages[-2].tool_call_id == "x"
    assert "not run" in json.loads(s.messages[-2].content)["errors"][0]["message"]
    assert s.messages[-1].role == "user"
    assert "submit_plan" in json.loads(s.messages[-1].content)["errors"][0]["message"]
    assert s.planning is not None and s.planning.phase == "planning"


def test_budgets_still_bind_a_plan_first_task() -> None:
    s, _ = go(None, task())
    s, _ = go(s, planner(1, *DIAMOND))
    # the deadline passes while steps run: the task fails, as a ReAct task would
    _, d = go(s, result(s, "p1-a", {"id": 42, "total": 1.0}), ctx(now=T0 + 61))
    failed = outcome(d)
    assert isinstance(failed, TaskFailed) and failed.reason == "deadline"
    # no room for the solver: max_steps is counted in model turns
    one = msgspec.structs.replace(SPEC, max_steps=1)
    s, _ = go(None, task(), ctx(spec=one))
    s, _ = go(s, planner(1, DIAMOND[0]), ctx(spec=one))
    _, d = go(s, result(s, "p1-a", {"id": 42}), ctx(spec=one))
    failed = outcome(d)
    assert isinstance(failed, TaskFailed) and failed.reason == "max_steps"


def test_results_for_plan_calls_are_admitted_and_forged_ones_refused() -> None:
    s, _ = go(None, task())
    s, _ = go(s, planner(1, *DIAMOND))
    assert check_inbox(s, result(s, "p1-a", {"id": 1}), EVENTS) is None
    forged = ToolCallCompleted(task_id=TASK, agent="support", step=1, call_id="p1-c", tool="refund", ok=True)
    assert "not dispatched" in (check_inbox(s, forged, EVENTS) or "")
    wrong_tool = msgspec.structs.replace(result(s, "p1-a", {"id": 1}), tool="refund")
    assert check_inbox(s, wrong_tool, EVENTS) is not None
    # after a replan, a late duplicate of attempt 1's result is a no-op, not a forgery
    s, _ = go(s, result(s, "p1-a", {"id": 42, "total": 1.0}))
    late = result(s, "p1-b", ok=False, error=ToolError(kind="execution_error", message="x"))
    s, _ = go(s, late)
    assert s.step == 2
    assert check_inbox(s, late, EVENTS) is None
    d = decide(s, late, ctx())
    assert not d.changed and published(d) == []


def test_a_replayed_result_republishes_every_call_still_in_flight() -> None:
    s, _ = go(None, task())
    s, first = go(s, planner(1, *DIAMOND))
    s, _ = go(s, result(s, "p1-a", {"id": 1, "total": 2.0}))
    # the step that published a and b may have crashed half way: a redelivered
    # input re-emits the outbox, which still holds b (same message id)
    again = decide(s, result(s, "p1-a", {"id": 1, "total": 2.0}), ctx())
    assert "p1-b" in calls_of(again)


# ----------------------------------------------------------------- the schedule, as a property


@st.composite
def dags(draw: st.DrawFn) -> tuple[tuple[dict[str, Any], ...], list[int]]:
    n = draw(st.integers(1, 8))
    steps: list[dict[str, Any]] = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        args: dict[str, Any] = {"order_id": {"$ref": f"s{deps[0]}", "path": ["n"]}} if deps else {"order_id": i}
        steps.append({"id": f"s{i}", "tool": "lookup_order", "args": args, "depends_on": [f"s{d}" for d in deps[1:]]})
    shuffled = draw(st.permutations(steps))
    picks = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n))
    return tuple(shuffled), picks


@settings(max_examples=80)
@given(dags())
def test_every_step_of_a_random_dag_is_dispatched_once_and_never_before_its_dependencies(
        case: tuple[tuple[dict[str, Any], ...], list[int]]) -> None:
    steps, picks = case
    deps = {s["id"]: ({r["$ref"] for r in s["args"].values() if isinstance(r, dict)} | set(s["depends_on"]))
            for s in steps}
    # (steps pointing at the same output send the same arguments: not a loop here)
    spec = msgspec.structs.replace(SPEC, max_steps=3, loop_limit=100)
    s, _ = go(None, task(), ctx(spec=spec))
    s, d = go(s, planner(1, *steps), ctx(spec=spec))
    dispatched: list[str] = []
    finished: set[str] = set()
    in_flight: list[str] = []
    for pick in picks:
        for call_id in calls_of(d):
            sid = call_id.removeprefix("p1-")
            assert sid not in dispatched, f"{sid} dispatched twice"
            assert deps[sid] <= finished, f"{sid} dispatched before {deps[sid] - finished}"
            dispatched.append(sid)
            in_flight.append(call_id)
        if not in_flight:
            break
        # results arrive in any order
        call_id = in_flight.pop(pick % len(in_flight))
        s, d = go(s, result(s, call_id, {"n": len(finished)}), ctx(spec=spec))
        finished.add(call_id.removeprefix("p1-"))
    assert sorted(dispatched) == sorted(deps) and finished == set(deps)
    assert s.planning is not None and s.planning.phase == "solving"


# ----------------------------------------------------------------- routed


def test_each_routing_decision_is_an_event_and_kept_in_the_session() -> None:
    routed = msgspec.structs.replace(SPEC, strategy="routed", router_threshold=2.5)
    s, d = go(None, task("Where is my order 42?"), ctx(spec=routed))
    [ev] = events(d, RouteDecided)
    assert ev.strategy == "react" and ev.score < ev.threshold and "complexity" in ev.reason
    assert 0.5 <= ev.confidence <= 1 and ev.features["words"] == 5
    assert s.planning is not None and s.planning.route is not None and s.planning.phase == "react"
    assert request_shape(s, routed) == (TOOLS, None)

    hard = ("Look up orders 42, 43 and 44, then check shipping for each, compare the totals "
            "and refund the cheapest one, and also cancel order 45?")
    s, d = go(None, task(hard), ctx(spec=routed))
    [ev] = events(d, RouteDecided)
    assert ev.strategy == "plan" and ev.score >= ev.threshold
    assert s.planning is not None and s.planning.phase == "planning"
    assert request_shape(s, routed)[1] == SUBMIT_PLAN_NAME

    # as wide, but the refund depends on a check nobody has seen: ReAct, and the event says why
    s, d = go(None, task(hard.replace("refund the cheapest one", "refund the cheapest one if it is eligible")),
              ctx(spec=routed))
    [ev] = events(d, RouteDecided)
    assert ev.strategy == "react" and ev.features["conditionals"] == 1 and "cannot branch" in ev.reason
    assert s.planning is not None and s.planning.phase == "react"


# ----------------------------------------------------------------- plan-level approval


def refunds_need_approval(tool: str, args: dict[str, Any]) -> bool:
    return tool == "refund"


def approving(**kw: Any) -> Context:
    return ctx(needs_approval=refunds_need_approval, **kw)


def decision_for(s: SessionState, *, approved: bool = True, plan: dict[str, Any] | None = None,
                 approver: str = "alice") -> ApprovalDecided:
    [pend] = [p for p in s.pending if p.approval == "pending"]
    shown = pend.arguments if plan is None else plan
    return ApprovalDecided(approval_id=pend.approval_id, task_id=TASK, agent="support", step=s.step,
                           call_id=pend.call_id, approved=approved, approver=approver, tool=pend.tool,
                           arguments_digest=codec.arguments_digest(shown), plan=shown)


def test_a_plan_with_gated_steps_asks_once_for_the_whole_plan_with_every_argument_shown() -> None:
    s, _ = go(None, task(), approving())
    s, d = go(s, planner(1, *DIAMOND), approving())
    assert published(d) == []  # nothing runs before the human decides
    [ask] = [c.request for c in d.commands if isinstance(c, PublishApproval)]
    assert ask.tool == SUBMIT_PLAN_NAME and ask.call_id == "plan-1"
    assert ask.arguments["plan_digest"] == digest(_plan(DIAMOND))
    assert [st["id"] for st in ask.arguments["shown"]] == ["a", "b", "c"]
    assert ask.arguments["shown"][2]["args"]["amount"] == "<output of a['total']>"
    assert s.planning is not None and s.planning.phase == "approval"

    ok = decision_for(s)
    assert check_inbox(s, ok, DECISIONS) is None
    s, d = go(s, ok, approving(decision_seq=77))
    assert set(calls_of(d)) == {"p1-a", "p1-b"}
    s, _ = go(s, result(s, "p1-a", {"id": 42, "total": 30.5}), approving())
    s, d = go(s, result(s, "p1-b", {"status": "x"}), approving())
    # the gated step runs under the plan's decision: no second approval
    [refund] = published(d)
    assert refund.request.call_id == "p1-c" and refund.request.approval_seq == 77
    assert not [c for c in d.commands if isinstance(c, PublishApproval)]


def test_a_plan_approval_is_bound_to_its_plan() -> None:
    s, _ = go(None, task(), approving())
    s, _ = go(s, planner(1, *DIAMOND), approving())
    # a decision on another plan's digest
    other = decision_for(s, plan={"plan_digest": "0" * 16, "steps": []})
    assert "other arguments" in (check_inbox(s, other, DECISIONS) or "")
    # the right digest, but the plan it carries (what workers check calls against) is another
    [pend] = s.pending
    swapped = msgspec.structs.replace(decision_for(s), plan={**pend.arguments, "steps": []})
    assert "not the plan" in (check_inbox(s, swapped, DECISIONS) or "")
    # only on the decisions subject
    assert check_inbox(s, decision_for(s), EVENTS) is not None


def test_calls_outside_the_approved_plan_need_their_own_approval() -> None:
    s, _ = go(None, task(), approving())
    s, _ = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": 42}},
                         {"id": "r", "tool": "refund", "args": {"order_id": 42, "amount": 10}},
                         {"id": "s", "tool": "shipping_status", "args": {"order_id": 42}}), approving())
    s, d = go(s, decision_for(s), approving(decision_seq=5))
    assert set(calls_of(d)) == {"p1-a", "p1-r", "p1-s"}
    s, _ = go(s, result(s, "p1-a", {"id": 42}), approving())
    s, _ = go(s, result(s, "p1-r", {"ok": True}), approving())
    s, d = go(s, result(s, "p1-s", ok=False, error=ToolError(kind="execution_error", message="down")), approving())
    assert s.planning is not None and s.planning.phase == "planning"  # replanning
    # the new plan's refund is not the approved plan's: it asks on its own (per call)
    s, d = go(s, planner(2, {"id": "r2", "tool": "refund", "args": {"order_id": 42, "amount": 10}}), approving())
    [ask] = [c.request for c in d.commands if isinstance(c, PublishApproval)]
    assert ask.tool == SUBMIT_PLAN_NAME  # a new plan: a new plan-level approval, for attempt 2
    assert s.planning is not None and s.planning.approval_seq == 0
    # and denying it sends the planner the denial; with no replans left: ReAct
    s, d = go(s, decision_for(s, approved=False), approving())
    assert s.planning is not None and s.planning.phase == "react"
    assert json.loads(s.messages[-1].content)["denied"]["by"] == "alice"
    # ReAct's own refund call asks per call, under no plan
    s, d = go(s, model(s.step, ToolCall(id="r9", name="refund", arguments='{"order_id": 42, "amount": 10}')),
              approving())
    [ask] = [c.request for c in d.commands if isinstance(c, PublishApproval)]
    assert ask.tool == "refund" and ask.call_id == "r9" and published(d) == []


def test_a_step_gated_only_once_its_pointers_resolve_asks_per_call() -> None:
    def big_refunds(tool: str, args: dict[str, Any]) -> bool:
        return tool == "refund" and float(args["amount"]) > 100  # raises on a pointer: asks for the plan

    c = ctx(needs_approval=big_refunds)
    s, _ = go(None, task(), c)
    s, d = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": 42}},
                         {"id": "r", "tool": "refund", "args": {"order_id": 42, "amount": 5}}), c)
    assert [c2.request.call_id for c2 in published(d)] == ["p1-a", "p1-r"]  # nothing gated: no approval
    s, _ = go(None, task(), c)
    s, d = go(s, planner(1, *DIAMOND), c)
    assert [x.request.tool for x in d.commands if isinstance(x, PublishApproval)] == [SUBMIT_PLAN_NAME]

    # A rule that cannot judge a pointer says no (as Tool.needs_approval does for
    # arguments that do not validate): the tool has a rule, so the plan asks.
    def quiet_big_refunds(tool: str, args: dict[str, Any]) -> bool:
        return tool == "refund" and isinstance(args["amount"], (int, float)) and args["amount"] > 100

    c = ctx(needs_approval=quiet_big_refunds, may_need_approval=lambda t: t == "refund")
    s, _ = go(None, task(), c)
    s, d = go(s, planner(1, *DIAMOND), c)
    assert [x.request.tool for x in d.commands if isinstance(x, PublishApproval)] == [SUBMIT_PLAN_NAME]
    s, d = go(s, decision_for(s), dataclasses.replace(c, decision_seq=3))
    s, _ = go(s, result(s, "p1-a", {"id": 42, "total": 30.5}), c)
    s, d = go(s, result(s, "p1-b", {}), c)
    # resolved, the refund is small: it needs no approval, and runs without one
    assert [(x.request.call_id, x.request.approval_seq) for x in published(d)] == [("p1-c", 0)]


def test_a_denied_step_approval_fails_the_step_and_the_planner_hears_it() -> None:
    # no identity may approve both tools: no plan-level approval, each gated call asks on its own
    def gated(tool: str, args: dict[str, Any]) -> bool:
        return tool in ("refund", "shipping_status")

    c = ctx(needs_approval=gated, approvers_for=lambda t: ("bob",) if t == "refund" else ("carol",))
    s, _ = go(None, task(), c)
    s, d = go(s, planner(1, {"id": "s", "tool": "shipping_status", "args": {"order_id": 1}},
                         {"id": "r", "tool": "refund", "args": {"order_id": 1, "amount": 1}}), c)
    asks = [x.request for x in d.commands if isinstance(x, PublishApproval)]
    assert sorted(a.call_id for a in asks) == ["p1-r", "p1-s"] and published(d) == []
    s, d = go(s, decision_for_call(s, "p1-s", approver="carol"), dataclasses.replace(c, decision_seq=9))
    assert [x.request.approval_seq for x in published(d)] == [9]
    s, d = go(s, decision_for_call(s, "p1-r", approver="bob", approved=False), c)
    s, d = go(s, result(s, "p1-s", {"where": "x"}), c)
    assert s.planning is not None and s.planning.phase == "planning"
    assert "r" in json.loads(s.messages[-1].content)["failed"]


def decision_for_call(s: SessionState, call_id: str, *, approver: str, approved: bool = True) -> ApprovalDecided:
    pend = next(p for p in s.pending if p.call_id == call_id)
    return ApprovalDecided(approval_id=pend.approval_id, task_id=TASK, agent="support", step=s.step,
                           call_id=call_id, approved=approved, approver=approver, tool=pend.tool,
                           arguments_digest=codec.arguments_digest(pend.arguments))


def test_a_failed_step_cancels_the_approvals_its_plan_still_waits_for() -> None:
    c = ctx(needs_approval=refunds_need_approval, approvers_for=lambda t: ("bob",))
    # one gated step among ungated ones; bob may approve it, so the plan asks as a whole
    s, _ = go(None, task(), c)
    s, d = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": 1}},
                         {"id": "r", "tool": "refund", "args": {"order_id": 1, "amount": 1}}), c)
    assert [x.request.call_id for x in d.commands if isinstance(x, PublishApproval)] == ["plan-1"]
    # without a plan-level approval (nobody may approve it all), the step asks on its own ...
    c2 = ctx(needs_approval=lambda t, a: t in ("refund", "shipping_status"),
             approvers_for=lambda t: ("bob",) if t == "refund" else ("carol",))
    s, _ = go(None, task(), c2)
    s, d = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": 1}},
                         {"id": "s", "tool": "shipping_status", "args": {"order_id": 1}},
                         {"id": "r", "tool": "refund", "args": {"order_id": 1, "amount": 1}}), c2)
    assert sorted(x.request.call_id for x in d.commands if isinstance(x, PublishApproval)) == ["p1-r", "p1-s"]
    # ... and when another step fails, nobody is asked any longer: the planner hears it at once
    s, d = go(s, result(s, "p1-a", ok=False, error=ToolError(kind="execution_error", message="down")), c2)
    cancelled = [x for x in d.commands if isinstance(x, RecordApproval)]
    assert sorted(x.approval_id for x in cancelled) == [f"{TASK}-1-p1-r", f"{TASK}-1-p1-s"]
    assert {x.status for x in cancelled} == {"cancelled"}
    assert s.planning is not None and s.planning.phase == "planning"
    reply = json.loads(s.messages[-1].content)
    assert list(reply["failed"]) == ["a"] and reply["not_run"] == ["s", "r"]


_json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 50) | st.text(max_size=6),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=12)
_steps = st.lists(st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c", "", "a b"]), "tool": st.sampled_from([t.name for t in TOOLS] + ["nope"]),
     "args": st.dictionaries(st.sampled_from(["order_id", "amount", "x"]),
                             _json_values | st.fixed_dictionaries({"$ref": st.sampled_from(["a", "b", "z"]),
                                                                   "path": st.lists(st.text(max_size=3), max_size=2)}),
                             max_size=3)},
    optional={"depends_on": st.lists(st.sampled_from(["a", "b", "c", "q"]), max_size=2)}), max_size=4)


@settings(max_examples=150)
@given(st.one_of(st.text(max_size=40), _steps.map(lambda s: json.dumps({"steps": s})),
                 _json_values.map(json.dumps)))
def test_whatever_a_planner_submits_nothing_runs_unless_the_plan_is_valid(arguments: str) -> None:
    """The planner's output is untrusted: garbage, half plans, unknown tools,
    bad pointers. decide never raises; a tool call is published only for a
    plan that validated, and only for its ready steps with literal arguments."""
    s, _ = go(None, task())
    s, d = go(s, model(1, ToolCall(id="x", name=SUBMIT_PLAN_NAME, arguments=arguments)))
    [proposed] = events(d, PlanProposed)
    if not proposed.valid:
        assert published(d) == [] and proposed.errors
        reply = json.loads(s.messages[-1].content)
        assert reply["errors"] and all("kind" in e and "message" in e for e in reply["errors"])
        return
    names = {t.name for t in TOOLS}
    for c in published(d):
        assert c.request.tool in names
        assert not any(isinstance(v, dict) and "$ref" in v for v in c.request.arguments.values())


def test_a_call_approved_on_its_own_keeps_the_other_calls_in_flight_in_the_outbox() -> None:
    c = ctx(needs_approval=lambda t, a: t in ("refund", "shipping_status"),
            approvers_for=lambda t: ("bob",) if t == "refund" else ("carol",))
    s, _ = go(None, task(), c)
    s, d = go(s, planner(1, {"id": "a", "tool": "lookup_order", "args": {"order_id": 1}},
                         {"id": "s", "tool": "shipping_status", "args": {"order_id": 1}},
                         {"id": "r", "tool": "refund", "args": {"order_id": 1, "amount": 1}}), c)
    assert list(calls_of(d)) == ["p1-a"]
    s, d = go(s, decision_for_call(s, "p1-s", approver="carol"), dataclasses.replace(c, decision_seq=4))
    assert list(calls_of(d)) == ["p1-s"]
    # a redelivered input re-publishes the stored outbox: both calls still in flight, not only the approved one
    again = {x.request.call_id for x in s.outbox if isinstance(x, PublishToolCall)}
    assert again == {"p1-a", "p1-s"}
