"""The pure decision core: ``decide(state, input, ctx) -> Decision``.

No broker, no I/O, no clock: every input and the time arrive as arguments.
Property tests are deterministic (``derandomize=True``) so a failure
reproduces on every run.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.contracts import subjects
from agentstream.contracts.events import (
    Message,
    ModelResponse,
    ModelTurnCompleted,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolError,
    ToolSpec,
    Usage,
)
from agentstream.runtime.core.decide import DEDUPE_WINDOW_S, Context, Decision, decide
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.core.state import (
    CallModel,
    ClearDeadline,
    DeadlineReached,
    Input,
    ModelFailed,
    ModelResponded,
    PublishProgress,
    PublishResult,
    PublishToolCall,
    RecordTurn,
    SessionState,
    SetDeadline,
    Turn,
    decode_state,
    encode_state,
)

DETERMINISTIC = settings(max_examples=60)  # on top of conftest's deterministic profile

_OBJ = {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}
TOOLS = (
    ToolSpec(name="lookup_order", description="Look up an order.", parameters=_OBJ),
    ToolSpec(name="shipping_status", description="Where an order is.", parameters=_OBJ),
    ToolSpec(name="refund_eligibility", description="Whether it can be refunded.", parameters=_OBJ),
)
TOOL_NAMES = tuple(t.name for t in TOOLS)
SPEC = AgentSpec(name="support", instructions="You are the support desk.", tools=TOOLS, max_steps=4,
                 deadline_s=60.0, history_turns=2, tool_timeout_s=7.0)
T0 = 1_000.0
TASK_ID = "t-1"


# ----------------------------------------------------------------- helpers


def ctx(now: float = T0, *, history: tuple[Turn, ...] = (), spec: AgentSpec = SPEC) -> Context:
    return Context(spec=spec, now=now, history=history, worker="w-test")


def submitted(**kw: Any) -> TaskSubmitted:
    base: dict[str, Any] = {"agent": "support", "input": "refund order 42?", "task_id": TASK_ID}
    base.update(kw)
    return TaskSubmitted(**base)


def call(call_id: str, name: str, args: dict[str, Any] | str | None = None) -> ToolCall:
    text = args if isinstance(args, str) else json.dumps(args if args is not None else {"order_id": 42})
    return ToolCall(id=call_id, name=name, arguments=text)


def responded(step: int, *calls: ToolCall, text: str = "", finish: str | None = None,
              usage: Usage = Usage()) -> ModelResponded:
    resp = ModelResponse(text=text, tool_calls=tuple(calls), finish_reason=finish or ("tool_calls" if calls else "stop"),
                         model="m-test", usage=usage)
    return ModelResponded(step=step, response=resp, started_at=T0, finished_at=T0)


def completed(step: int, call_id: str, tool: str = "lookup_order", *, ok: bool = True,
              result: Any = None, error: ToolError | None = None) -> ToolCallCompleted:
    return ToolCallCompleted(task_id=TASK_ID, agent="support", step=step, call_id=call_id, tool=tool, ok=ok,
                             result=result if result is not None else ({"id": call_id} if ok else None),
                             error=error)


def advance(state: SessionState | None, event: Input, c: Context) -> SessionState:
    """Decide and return the new state (which must exist)."""
    d = decide(state, event, c)
    assert d.state is not None
    return d.state


def start(now: float = T0, **task_kw: Any) -> SessionState:
    d = decide(None, submitted(**task_kw), ctx(now))
    assert d.state is not None
    return d.state


THREE = (call("call_a", "lookup_order"), call("call_b", "shipping_status"), call("call_c", "refund_eligibility"))


def awaiting_three(now: float = T0) -> tuple[SessionState, Decision]:
    d = decide(start(now), responded(1, *THREE), ctx(now + 1))
    assert d.state is not None
    return d.state, d


def of(cmds: tuple[Any, ...], kind: type) -> list[Any]:
    return [c for c in cmds if isinstance(c, kind)]


def result_of(d: Decision) -> TaskCompleted | TaskFailed:
    (pub,) = of(d.commands, PublishResult)
    return pub.result


def tool_error(content: str) -> dict[str, Any]:
    return json.loads(content)["error"]


def assert_paired(messages: tuple[Message, ...]) -> None:
    """Every assistant tool call is followed by exactly its tool messages, in the call order."""
    for i, m in enumerate(messages):
        if m.role == "assistant" and m.tool_calls:
            ids = [c.id for c in m.tool_calls]
            assert len(set(ids)) == len(ids), f"duplicate tool call ids {ids}"
            following = [x.tool_call_id for x in messages[i + 1:i + 1 + len(ids)] if x.role == "tool"]
            if following:  # the results of the last turn may still be pending
                assert following == ids


# ----------------------------------------------------------------- start


def test_start_calls_the_model_with_prompt_bounded_history_and_input() -> None:
    history = tuple(Turn(task_id=f"old{i}", user=f"q{i}", assistant=f"a{i}") for i in range(5))
    d = decide(None, submitted(), ctx(T0, history=history))
    assert d.changed
    state = d.state
    assert state is not None
    assert (state.status, state.step, state.max_steps) == ("awaiting_model", 1, SPEC.max_steps)
    assert d.commands == (SetDeadline(deadline_at=T0 + SPEC.deadline_s), CallModel(step=1, max_tokens=SPEC.max_output_tokens))
    assert state.outbox == d.commands
    assert state.deadline_at == T0 + SPEC.deadline_s
    assert state.agent_version == SPEC.version
    # system prompt, the last ``history_turns`` turns (oldest first), then the input
    assert [(m.role, m.content) for m in state.messages] == [
        ("system", SPEC.instructions),
        ("user", "q3"), ("assistant", "a3"),
        ("user", "q4"), ("assistant", "a4"),
        ("user", "refund order 42?"),
    ]


def test_start_without_history_turns_ignores_history() -> None:
    history = (Turn(task_id="old", user="q", assistant="a"),)
    spec = msgspec.structs.replace(SPEC, history_turns=0)
    d = decide(None, submitted(), ctx(T0, history=history, spec=spec))
    assert d.state is not None
    assert [m.role for m in d.state.messages] == ["system", "user"]


@pytest.mark.parametrize("event", [
    completed(1, "call_a"),
    responded(1, text="hi"),
    ModelFailed(step=1, message="x"),
    DeadlineReached(),
])
def test_input_for_unknown_task_is_a_no_op(event: Input) -> None:
    assert decide(None, event, ctx()) == Decision(state=None, commands=(), changed=False)


def test_state_round_trips_through_json() -> None:
    state, _ = awaiting_three()
    assert decode_state(encode_state(state)) == state


# ----------------------------------------------------------------- parallel tool calls


def test_three_tool_calls_are_published_with_idempotency_keys() -> None:
    state, d = awaiting_three()
    assert d.changed
    assert state.status == "awaiting_tools"
    publishes = of(d.commands, PublishToolCall)
    assert [p.request.idempotency_key for p in publishes] == [
        f"{TASK_ID}:1:call_a", f"{TASK_ID}:1:call_b", f"{TASK_ID}:1:call_c"]
    for p, c in zip(publishes, THREE):
        req = p.request
        assert (req.call_id, req.tool, req.step) == (c.id, c.name, 1)
        assert req.arguments == {"order_id": 42}
        assert req.reply_subject == subjects.events("support", TASK_ID)
        assert req.timeout_s == SPEC.tool_timeout_s
    assert [p.call_id for p in state.pending] == ["call_a", "call_b", "call_c"]
    assert state.tool_calls_total == 3
    progress = [c.event for c in of(d.commands, PublishProgress)]
    assert isinstance(progress[0], ModelTurnCompleted) and progress[0].tool_calls == TOOL_NAMES
    assert isinstance(progress[1], ToolCallDispatched) and [c.id for c in progress[1].calls] == [
        "call_a", "call_b", "call_c"]
    assert of(d.commands, CallModel) == []
    assert state.outbox == d.commands


@DETERMINISTIC
@given(order=st.permutations([0, 1, 2]),
       dups=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 6)), max_size=6))
def test_tool_results_in_any_order_with_duplicates_call_the_model_once(
        order: list[int], dups: list[tuple[int, int]]) -> None:
    state, _ = awaiting_three()
    ids = [c.id for c in THREE]
    deliveries = [ids[i] for i in order]
    for which, pos in dups:  # redeliveries interleaved anywhere, including after the last result
        deliveries.insert(min(pos, len(deliveries)), ids[which])
    changed_calls: list[CallModel] = []
    now = T0 + 2
    for cid in deliveries:
        tool = THREE[ids.index(cid)].name
        d = decide(state, completed(1, cid, tool, result={"from": cid}), ctx(now))
        assert d.state is not None
        if d.changed:
            changed_calls += of(d.commands, CallModel)
        else:
            # a duplicate only ever re-emits what the state already recorded
            assert d.state == state
            assert all(c in state.outbox for c in d.commands)
        state = d.state
        now += 0.5
    assert changed_calls == [CallModel(step=2, max_tokens=SPEC.max_output_tokens)]
    assert (state.status, state.step) == ("awaiting_model", 2)
    assert state.pending == () and state.results == ()
    tool_msgs = [m for m in state.messages if m.role == "tool"]
    assert [m.tool_call_id for m in tool_msgs] == ids  # the model's order, not the arrival order
    assert [m.name for m in tool_msgs] == list(TOOL_NAMES)
    assert [json.loads(m.content) for m in tool_msgs] == [{"from": i} for i in ids]
    assert_paired(state.messages)


def test_a_partial_result_emits_nothing() -> None:
    state, _ = awaiting_three()
    d = decide(state, completed(1, "call_b", "shipping_status"), ctx(T0 + 2))
    assert d.changed and d.commands == ()
    assert d.state is not None and [r.call_id for r in d.state.results] == ["call_b"]


def test_failed_tool_result_is_fed_back_as_structured_error() -> None:
    state, _ = awaiting_three()
    err = ToolError(kind="not_found", message="no order 42", hint="check the number")
    for cid, tool in (("call_a", "lookup_order"), ("call_b", "shipping_status")):
        state = advance(state, completed(1, cid, tool), ctx(T0 + 2))
    d = decide(state, completed(1, "call_c", "refund_eligibility", ok=False, error=err), ctx(T0 + 2))
    assert d.state is not None
    last = d.state.messages[-1]
    assert last.role == "tool" and last.tool_call_id == "call_c"
    assert tool_error(last.content) == {"kind": "not_found", "message": "no order 42", "hint": "check the number"}


def test_results_of_unknown_calls_or_other_steps_are_ignored() -> None:
    state, _ = awaiting_three()
    for ev in (completed(1, "call_zzz"), completed(2, "call_a"), completed(0, "call_a")):
        d = decide(state, ev, ctx(T0 + 2))
        assert not d.changed and d.state == state


# ----------------------------------------------------------------- duplicates


def test_redelivered_task_reemits_the_outbox_within_the_dedupe_window_only() -> None:
    spec = msgspec.structs.replace(SPEC, deadline_s=10 * DEDUPE_WINDOW_S)
    state = advance(None, submitted(), ctx(T0, spec=spec))
    first = decide(state, responded(1, *THREE), ctx(T0 + 1, spec=spec))
    assert first.state is not None
    state = first.state
    updated = state.updated_at
    d = decide(state, submitted(), ctx(updated + DEDUPE_WINDOW_S - 1, spec=spec))
    assert not d.changed and d.state == state
    assert d.commands == first.commands and len(of(d.commands, PublishToolCall)) == 3
    late = decide(state, submitted(), ctx(updated + DEDUPE_WINDOW_S + 1, spec=spec))
    assert not late.changed and late.commands == ()


def test_redelivered_task_always_reemits_a_pending_model_call() -> None:
    state = start(T0)
    d = decide(state, submitted(), ctx(T0 + 5))
    assert not d.changed and d.commands == (SetDeadline(deadline_at=T0 + SPEC.deadline_s), CallModel(step=1, max_tokens=SPEC.max_output_tokens))
    spec = msgspec.structs.replace(SPEC, deadline_s=10 * DEDUPE_WINDOW_S)
    state = advance(None, submitted(), ctx(T0, spec=spec))
    assert state is not None
    late = decide(state, submitted(), ctx(T0 + DEDUPE_WINDOW_S + 1, spec=spec))
    assert late.commands == (CallModel(step=1, max_tokens=SPEC.max_output_tokens),)  # the deadline is not re-set, the model call is re-issued


def test_redelivered_tool_result_reemits_the_outbox_within_the_window_only() -> None:
    spec = msgspec.structs.replace(SPEC, deadline_s=10 * DEDUPE_WINDOW_S)
    state = advance(None, submitted(), ctx(T0, spec=spec))
    state = advance(state, responded(1, call("call_a", "lookup_order")), ctx(T0 + 1, spec=spec))
    d = decide(state, completed(1, "call_a"), ctx(T0 + 2, spec=spec))
    assert d.changed and d.commands == (CallModel(step=2, max_tokens=SPEC.max_output_tokens),)
    assert d.state is not None
    state = d.state
    # while the model call is pending, a redelivery re-issues it, even late
    for dt in (1, DEDUPE_WINDOW_S + 1):
        dup = decide(state, completed(1, "call_a"), ctx(state.updated_at + dt, spec=spec))
        assert not dup.changed and dup.state == state and dup.commands == (CallModel(step=2, max_tokens=SPEC.max_output_tokens),)
    # once terminal: the result is re-emitted inside the window, nothing after it
    done = decide(state, responded(2, text="Refunded."), ctx(T0 + 3, spec=spec))
    assert done.state is not None and done.state.status == "completed"
    fresh = decide(done.state, completed(1, "call_a"), ctx(T0 + 4, spec=spec))
    assert not fresh.changed and fresh.state == done.state
    assert of(fresh.commands, PublishResult) == of(done.commands, PublishResult)
    late = decide(done.state, completed(1, "call_a"), ctx(done.state.updated_at + DEDUPE_WINDOW_S + 1, spec=spec))
    assert not late.changed and late.commands == ()


def test_stale_model_response_is_ignored() -> None:
    state = start()
    for ev in (responded(2, text="from the future"), responded(0, text="from the past"),
               ModelFailed(step=3, message="late failure")):
        d = decide(state, ev, ctx(T0 + 1))
        assert d == Decision(state=state, commands=(), changed=False)
    # a response for a step already answered (a second replica's call) is dropped too
    state, _ = awaiting_three()
    d = decide(state, responded(1, text="a second answer"), ctx(T0 + 2))
    assert d == Decision(state=state, commands=(), changed=False)


# ----------------------------------------------------------------- malformed model output


def test_unknown_tool_is_fed_back_not_published() -> None:
    d = decide(start(), responded(1, call("call_a", "lookup_order"), call("call_x", "launch_rockets")), ctx(T0 + 1))
    state = d.state
    assert state is not None and state.status == "awaiting_tools"
    assert [p.request.tool for p in of(d.commands, PublishToolCall)] == ["lookup_order"]
    assert [p.call_id for p in state.pending] == ["call_a"]
    (early,) = state.results
    err = tool_error(early.content)
    assert err["kind"] == "unknown_tool" and "launch_rockets" in err["message"]
    for name in TOOL_NAMES:
        assert name in err["hint"]
    d = decide(state, completed(1, "call_a"), ctx(T0 + 2))
    assert d.state is not None and d.commands == (CallModel(step=2, max_tokens=SPEC.max_output_tokens),)
    assert [m.tool_call_id for m in d.state.messages if m.role == "tool"] == ["call_a", "call_x"]
    assert tool_error(d.state.messages[-1].content)["kind"] == "unknown_tool"


@pytest.mark.parametrize("arguments", ['{"order_id": 4', "not json", "[1, 2]", '"a string"', "42", "null"])
def test_bad_arguments_are_invalid_arguments(arguments: str) -> None:
    d = decide(start(), responded(1, call("call_a", "lookup_order", arguments),
                                  call("call_b", "shipping_status")), ctx(T0 + 1))
    state = d.state
    assert state is not None
    assert [p.request.call_id for p in of(d.commands, PublishToolCall)] == ["call_b"]
    (early,) = state.results
    assert early.call_id == "call_a" and not early.ok
    err = tool_error(early.content)
    assert err["kind"] == "invalid_arguments" and err["hint"]


def test_truncated_arguments_get_a_cut_off_hint() -> None:
    d = decide(start(), responded(1, call("call_a", "lookup_order", '{"order_id": 4'), finish="length"),
               ctx(T0 + 1))
    assert d.state is not None
    err = tool_error(d.state.messages[-1].content)
    assert err["kind"] == "invalid_arguments" and "cut off" in err["hint"]


def test_empty_arguments_mean_an_empty_object() -> None:
    d = decide(start(), responded(1, call("call_a", "lookup_order", "")), ctx(T0 + 1))
    (pub,) = of(d.commands, PublishToolCall)
    assert pub.request.arguments == {}


def test_all_calls_invalid_goes_straight_to_the_next_model_turn() -> None:
    d = decide(start(), responded(1, call("call_a", "nope"), call("call_b", "lookup_order", "{bad")), ctx(T0 + 1))
    state = d.state
    assert state is not None
    assert of(d.commands, PublishToolCall) == []
    assert of(d.commands, CallModel) == [CallModel(step=2, max_tokens=SPEC.max_output_tokens)]
    assert isinstance(d.commands[0], PublishProgress) and isinstance(d.commands[0].event, ModelTurnCompleted)
    assert (state.status, state.step, state.pending, state.results) == ("awaiting_model", 2, (), ())
    assert [(m.role, m.tool_call_id) for m in state.messages[-3:]] == [
        ("assistant", None), ("tool", "call_a"), ("tool", "call_b")]
    assert [tool_error(m.content)["kind"] for m in state.messages[-2:]] == ["unknown_tool", "invalid_arguments"]
    assert state.tool_calls_total == 2


def test_finish_reason_length_without_calls_fails_with_model_output() -> None:
    d = decide(start(), responded(1, text="The refund is", finish="length"), ctx(T0 + 1))
    assert d.state is not None and d.state.status == "failed"
    res = result_of(d)
    assert isinstance(res, TaskFailed) and res.reason == "model_output" and "length" in res.message
    assert of(d.commands, ClearDeadline) == [ClearDeadline()]


@pytest.mark.parametrize("text", ["", "   \n"])
def test_no_text_and_no_calls_fails_with_model_output(text: str) -> None:
    d = decide(start(), responded(1, text=text), ctx(T0 + 1))
    res = result_of(d)
    assert isinstance(res, TaskFailed) and res.reason == "model_output"
    assert d.state is not None and d.state.outcome == res


def test_duplicate_and_invalid_call_ids_are_replaced_deterministically() -> None:
    calls = (call("dup", "lookup_order"), call("dup", "shipping_status"), call("bad id.x", "refund_eligibility"),
             call("", "lookup_order", {"order_id": 7}), call("x" * 200, "nope"))
    first = decide(start(), responded(1, *calls), ctx(T0 + 1))
    again = decide(start(), responded(1, *calls), ctx(T0 + 1))
    assert first == again  # a replayed step decides the same ids
    state = first.state
    assert state is not None
    assistant = state.messages[-1]
    ids = [c.id for c in assistant.tool_calls]
    assert ids == ["dup", "c1_1", "c1_2", "c1_3", "c1_4"]
    assert [c.name for c in assistant.tool_calls] == [c.name for c in calls]
    published = [p.request for p in of(first.commands, PublishToolCall)]
    assert [r.call_id for r in published] == ["dup", "c1_1", "c1_2", "c1_3"]
    assert all(subjects.is_token(r.call_id) for r in published)
    assert len({r.idempotency_key for r in published}) == 4
    for r in published:
        state = advance(state, completed(1, r.call_id, r.tool), ctx(T0 + 2))
        assert state is not None
    assert state.step == 2
    assert [m.tool_call_id for m in state.messages if m.role == "tool"] == ids
    assert_paired(state.messages)


def test_generated_call_ids_do_not_collide_with_ids_the_model_chose() -> None:
    # The model names its first call "c1_1"; the second has no id and gets the
    # generated "c1_1" too: both calls share a pending id, one result is then
    # taken for a duplicate and the task waits for its deadline.
    d = decide(start(), responded(1, call("c1_1", "lookup_order"), call("", "shipping_status")), ctx(T0 + 1))
    assert d.state is not None
    ids = [c.id for c in d.state.messages[-1].tool_calls]
    assert len(set(ids)) == 2, ids
    state = d.state
    for p in of(d.commands, PublishToolCall):
        state = advance(state, completed(1, p.request.call_id, p.request.tool), ctx(T0 + 2))
    assert state is not None and state.step == 2


# ----------------------------------------------------------------- limits


def test_max_steps_fails_with_the_limit_in_the_message() -> None:
    spec = msgspec.structs.replace(SPEC, max_steps=2)
    state = advance(None, submitted(), ctx(T0, spec=spec))
    for step in (1, 2):
        state = advance(state, responded(step, call(f"call_{step}", "lookup_order")), ctx(T0 + step, spec=spec))
        d = decide(state, completed(step, f"call_{step}"), ctx(T0 + step, spec=spec))
        assert d.state is not None
        state = d.state
    assert state.status == "failed"
    res = result_of(d)
    assert isinstance(res, TaskFailed) and res.reason == "max_steps"
    assert "2" in res.message and "limit" in res.message
    assert res.steps == 2 and res.tool_calls == 2
    assert of(d.commands, CallModel) == []


def test_passed_deadline_fails_on_any_input() -> None:
    state, _ = awaiting_three(T0)
    d = decide(state, completed(1, "call_a"), ctx(state.deadline_at + 0.001))
    res = result_of(d)
    assert isinstance(res, TaskFailed) and res.reason == "deadline"
    assert d.state is not None and d.state.status == "failed" and d.state.pending == ()
    # even a stale model response after the deadline ends the task
    d = decide(start(T0), responded(9, text="late"), ctx(T0 + SPEC.deadline_s))
    assert result_of(d).reason == "deadline"  # type: ignore[union-attr]


@pytest.mark.parametrize("status", ["awaiting_model", "awaiting_tools"])
def test_deadline_reached_input_fails_the_task(status: str) -> None:
    state = start() if status == "awaiting_model" else awaiting_three()[0]
    # The sweeper's DeadlineReached is a hint: before the stored deadline it changes nothing.
    early = decide(state, DeadlineReached(), ctx(T0 + 2))
    assert not early.changed and of(early.commands, PublishResult) == []
    d = decide(state, DeadlineReached(), ctx(state.deadline_at))
    assert d.changed and d.state is not None and d.state.status == "failed"
    res = result_of(d)
    assert isinstance(res, TaskFailed) and res.reason == "deadline"
    assert d.commands[-1] == ClearDeadline()


def test_model_failed_fails_with_model_error() -> None:
    d = decide(start(), ModelFailed(step=1, message="model call failed: 401"), ctx(T0 + 1))
    res = result_of(d)
    assert isinstance(res, TaskFailed) and res.reason == "model_error" and "401" in res.message


def _terminal_states() -> list[SessionState]:
    done = decide(start(), responded(1, text="All good."), ctx(T0 + 1)).state
    failed = decide(start(), DeadlineReached(), ctx(T0 + SPEC.deadline_s)).state
    assert done is not None and failed is not None
    return [done, failed]


@pytest.mark.parametrize("terminal", _terminal_states(), ids=["completed", "failed"])
@pytest.mark.parametrize("event", [
    submitted(), completed(1, "call_a"), responded(1, text="again"), responded(2, call("c", "lookup_order")),
    ModelFailed(step=1, message="x"), DeadlineReached(),
])
def test_terminal_states_ignore_further_input(terminal: SessionState, event: Input) -> None:
    for now in (T0 + 2, T0 + 10_000):
        d = decide(terminal, event, ctx(now))
        assert not d.changed and d.state == terminal
        assert of(d.commands, CallModel) == [] and of(d.commands, PublishToolCall) == []
        assert all(p.result == terminal.outcome for p in of(d.commands, PublishResult))


# ----------------------------------------------------------------- task overrides, turns, usage


def test_task_limits_override_the_spec() -> None:
    state = start(T0, max_steps=1, deadline_s=5.0)
    assert state.max_steps == 1 and state.deadline_at == T0 + 5.0
    state = advance(state, responded(1, call("call_a", "lookup_order")), ctx(T0 + 1))
    d = decide(state, completed(1, "call_a"), ctx(T0 + 2))
    assert result_of(d).reason == "max_steps"  # type: ignore[union-attr]
    d = decide(start(T0, deadline_s=5.0), completed(1, "call_a"), ctx(T0 + 5.0))
    assert result_of(d).reason == "deadline"  # type: ignore[union-attr]


@pytest.mark.parametrize("max_steps,deadline_s", [(None, None), (0, 0.0), (-3, -1.0)])
def test_missing_or_nonpositive_overrides_fall_back_to_the_spec(max_steps: int | None,
                                                                 deadline_s: float | None) -> None:
    state = start(T0, max_steps=max_steps, deadline_s=deadline_s)
    assert state.max_steps == SPEC.max_steps and state.deadline_at == T0 + SPEC.deadline_s


def test_completed_task_with_a_conversation_records_the_turn() -> None:
    state = start(T0, conversation_id="conv-9", tenant_id="acme")
    d = decide(state, responded(1, text="Refund approved."), ctx(T0 + 1))
    res = result_of(d)
    assert isinstance(res, TaskCompleted) and res.output == "Refund approved." and res.conversation_id == "conv-9"
    assert of(d.commands, RecordTurn) == [RecordTurn(conversation_key="acme.conv-9", task_id=TASK_ID,
                                                     user="refund order 42?", assistant="Refund approved.")]
    plain = decide(start(T0), responded(1, text="Refund approved."), ctx(T0 + 1))
    assert of(plain.commands, RecordTurn) == []
    failed = decide(state, responded(1, text=""), ctx(T0 + 1))
    assert of(failed.commands, RecordTurn) == []


def test_usage_accumulates_across_turns_into_the_result() -> None:
    state = start()
    state = advance(state, responded(1, call("call_a", "lookup_order"),
                                    usage=Usage(input_tokens=100, output_tokens=10, cost_usd=0.25)), ctx(T0 + 1))
    state = advance(state, completed(1, "call_a"), ctx(T0 + 2))
    state = advance(state, responded(2, call("call_b", "shipping_status"),
                                    usage=Usage(input_tokens=150, output_tokens=20, cost_usd=0.5)), ctx(T0 + 3))
    state = advance(state, completed(2, "call_b", "shipping_status"), ctx(T0 + 4))
    d = decide(state, responded(3, text="Done.", usage=Usage(input_tokens=200, output_tokens=30, cost_usd=0.125)),
               ctx(T0 + 5))
    res = result_of(d)
    assert isinstance(res, TaskCompleted)
    assert res.usage == Usage(input_tokens=450, output_tokens=60, cost_usd=0.875)
    assert (res.steps, res.tool_calls, res.started_at, res.finished_at) == (3, 2, T0, T0 + 5)
    turns = [c.event for c in of(d.commands, PublishProgress)]
    assert [t.usage for t in turns] == [Usage(input_tokens=200, output_tokens=30, cost_usd=0.125)]


# ----------------------------------------------------------------- random sequences

_IDS = ["call_a", "call_b", "call_c", "c1_0", "c2_1", "", "bad id", "dup"]
_NAMES = [*TOOL_NAMES, *TOOL_NAMES, "nope", ""]
_ARGS = st.sampled_from(['{"order_id": 1}', '{"order_id": 1}', "{}", "{bad", "[1]", "", "null", '{"order_id": "x"}'])


@st.composite
def _tool_calls(draw: st.DrawFn) -> ToolCall:
    return ToolCall(id=draw(st.sampled_from(_IDS)), name=draw(st.sampled_from(_NAMES)), arguments=draw(_ARGS))


_MODEL = st.builds(
    lambda calls, text, finish, tokens: ModelResponse(
        text=text, tool_calls=tuple(calls), finish_reason=finish,
        usage=Usage(input_tokens=tokens, output_tokens=tokens)),
    st.lists(_tool_calls(), max_size=4),
    st.sampled_from(["", " ", "answer"]),
    st.sampled_from(["stop", "tool_calls", "tool_calls", "length"]),
    st.integers(0, 50),
)
_TASKS = st.builds(submitted, max_steps=st.sampled_from([None, 0, 1, 3]),
                   deadline_s=st.sampled_from([None, 0.0, 30.0, 500.0]),
                   conversation_id=st.sampled_from(["", "c"]))
# A step: the current one most of the time, else any (stale or from the future).
_STEP = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 5))
# Which pending call a result answers, else an arbitrary id.
_CALL = st.one_of(st.integers(0, 3), st.sampled_from(_IDS))
_KIND = st.sampled_from(["model"] * 4 + ["result"] * 8 + ["answer", "task", "failed", "deadline"])
_ANSWER = st.builds(lambda text, finish: ModelResponse(text=text, finish_reason=finish),
                    st.sampled_from(["The answer.", "ok", " "]), st.sampled_from(["stop", "stop", "length"]))


def _draw_input(data: st.DataObject, state: SessionState | None) -> Input:
    kind = data.draw(_KIND, label="kind")
    if kind == "task":
        return data.draw(_TASKS, label="task")
    if kind == "deadline":
        return DeadlineReached()
    step = data.draw(_STEP, label="step")
    if step is None:
        step = state.step if state is not None else 1
    if kind in ("model", "answer"):
        response = data.draw(_MODEL if kind == "model" else _ANSWER, label="response")
        return ModelResponded(step=step, response=response, started_at=T0, finished_at=T0)
    if kind == "failed":
        return ModelFailed(step=step, message="boom")
    which = data.draw(_CALL, label="call")
    pending = [p.call_id for p in state.pending] if state is not None else []
    if isinstance(which, int):
        which = pending[which % len(pending)] if pending else "call_a"
    ok = data.draw(st.booleans(), label="ok")
    return completed(step, which, ok=ok, error=None if ok else ToolError(kind="x", message="y"))


@settings(DETERMINISTIC, max_examples=200)
@given(data=st.data())
def test_random_input_sequences_never_raise_and_terminal_is_final(data: st.DataObject) -> None:
    state: SessionState | None = None
    terminal: SessionState | None = None
    now = T0
    for _ in range(data.draw(st.integers(1, 40), label="length")):
        event = _draw_input(data, state)
        now += data.draw(st.sampled_from([0.0, 0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0, 5.0, 10.0, 200.0]), label="dt")
        d = decide(state, event, ctx(now))
        if terminal is not None:
            assert not d.changed and d.state == terminal
            assert of(d.commands, CallModel) == [] and of(d.commands, PublishToolCall) == []
            continue
        if d.changed:
            # what a changed decision emits is in its stored outbox, for a redelivery to re-emit
            assert d.state is not None and all(c in d.state.outbox for c in d.commands)
            assert decode_state(encode_state(d.state)) == d.state
            results = of(d.commands, PublishResult)
            assert len(results) == (1 if d.state.terminal else 0)
        else:
            assert d.state == state
        state = d.state
        if state is not None:
            assert state.step <= state.max_steps
            assert {r.call_id for r in state.results} <= {c.id for c in state.messages[-1].tool_calls}
            assert_paired(state.messages)
            if state.terminal:
                assert state.outcome is not None and state.pending == ()
                terminal = state


def test_the_core_imports_no_broker() -> None:
    """The decision core stays pure (DESIGN.md): importing it loads no NATS client."""
    import subprocess
    import sys

    probe = "import sys, agentstream.runtime.core.decide; print(sorted(m for m in sys.modules if m.split('.')[0] == 'nats'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
