"""AgentEngine and ToolRunner wired with the real in-memory ports.

A small pump plays the broker: it delivers published tool calls to a
ToolRunner and the results back to one or more engines, in a seeded random
order, optionally twice (redelivery). Deterministic: fixed seeds, and the
property tests use ``derandomize=True``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    AuditRecord,
    ModelResponse,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCallCompleted,
    ToolCallRequested,
    ToolError,
)
from agentstream.examples import support_desk
from agentstream.examples.support_desk import app, support_script
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryKV
from agentstream.runtime.adapters.scripted_models import FunctionModel, answer, calls, tool_results
from agentstream.runtime.core.errors import ModelError
from agentstream.runtime.core.ports import Entry, ModelRequest
from agentstream.runtime.core.state import decode_conversation, decode_state
from agentstream.runtime.core.tools import Tool, ToolFailure, tool
from agentstream.runtime.execution import engine as engine_mod
from agentstream.runtime.execution.consumer import Reject
from agentstream.runtime.execution.engine import AgentEngine
from agentstream.runtime.execution.tool_runner import ToolRunner

DETERMINISTIC = settings(max_examples=80)  # on top of conftest's deterministic profile

SPEC = app.get_agent("support").spec
AGENT = SPEC.name
REFUND_Q = "I want a refund for order 17, and where is it now?"
REFUND_A = ("Order 17 qualifies for a refund of $74.75 (within 30 days). "
            "It is currently in transit; I have noted the request.")


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """No simulated tool latency, no real backoff between model retries."""
    monkeypatch.setattr(support_desk, "LATENCY_S", 0.0)
    monkeypatch.setattr(engine_mod.AgentEngine, "model_retry_wait_s", 0.0)


# ----------------------------------------------------------------- the world


class YieldingKV(InMemoryKV):
    """InMemoryKV that yields to the loop around every operation, so concurrent
    steps really interleave between their read and their compare-and-set."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    async def _pause(self) -> None:
        for _ in range(self._rng.randint(0, 3)):
            await asyncio.sleep(0)

    async def get(self, key: str) -> Entry | None:
        await self._pause()
        return await super().get(key)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        await self._pause()
        return await super().update(key, value, revision)

    async def create(self, key: str, value: bytes) -> int:
        await self._pause()
        return await super().create(key, value)


class CrashingBus:
    """Raises (a process crash) on the ``nth`` publish to a matching subject, once."""

    def __init__(self, inner: InMemoryBus, prefix: str, nth: int = 1) -> None:
        self.inner = inner
        self.prefix = prefix
        self.nth = nth
        self.seen = 0
        self.crashed = False

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        if subject.startswith(self.prefix) and not self.crashed:
            self.seen += 1
            if self.seen == self.nth:
                self.crashed = True
                raise RuntimeError("crash before publishing")
        await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)


class Script:
    """A FunctionModel function with a plan of failures: each entry of ``fail``
    is raised by one call, in order, before the script answers normally."""

    def __init__(self, fn: Callable[[ModelRequest], ModelResponse] = support_script,
                 fail: Sequence[BaseException] = (), delay_s: float = 0.0) -> None:
        self.fn = fn
        self.fail = list(fail)
        self.delay_s = delay_s
        self.requests: list[ModelRequest] = []

    async def __call__(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise self.fail.pop(0)
        return self.fn(request)


@dataclass
class World:
    bus: InMemoryBus = field(default_factory=InMemoryBus)
    sessions: InMemoryKV = field(default_factory=InMemoryKV)
    conversations: InMemoryKV = field(default_factory=InMemoryKV)
    deadlines: InMemoryKV = field(default_factory=InMemoryKV)

    def engine(self, model: FunctionModel, *, bus: Any = None, worker: str = "w1",
               model_attempts: int = 3) -> AgentEngine:
        return AgentEngine(SPEC, model, sessions=self.sessions, conversations=self.conversations,
                           deadlines=self.deadlines, bus=bus or self.bus, worker=worker,
                           model_attempts=model_attempts)

    def runner(self, tools: dict[str, Tool] | None = None) -> ToolRunner:
        return ToolRunner(tools if tools is not None else app.tools, self.bus, worker="tools-1")

    def results(self, task_id: str) -> list[TaskCompleted | TaskFailed]:
        return [codec.task_result.decode(p.payload) for p in self.bus.on(subjects.results(AGENT, task_id))]

    def tool_calls(self) -> list[ToolCallRequested]:
        return [codec.tool_call.decode(p.payload) for p in self.bus.on("tools.")]

    async def state(self, task_id: str) -> Any:
        entry = await self.sessions.get(task_id)
        return decode_state(entry.value) if entry is not None else None


class Pump:
    """Delivers tool calls to a runner and tool results to engines until quiet."""

    def __init__(self, world: World, engines: Sequence[AgentEngine], runner: ToolRunner, *, seed: int = 0,
                 twice: bool = False, concurrent: bool = False) -> None:
        self.world = world
        self.engines = list(engines)
        self.runner = runner
        self.rng = random.Random(seed)
        self.twice = twice
        self.concurrent = concurrent
        self.cursor = 0
        self.delivered_results = 0

    async def run(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            new = self.world.bus.published[self.cursor:]
            self.cursor = len(self.world.bus.published)
            work = [p for p in new if p.subject.startswith("tools.") or ".events." in p.subject]
            if not work:
                return
            if self.twice:
                work = work + work
            self.rng.shuffle(work)
            jobs = [self._deliver(p.subject, p.payload) for p in work]
            if self.concurrent:
                await asyncio.gather(*jobs)
            else:
                for job in jobs:
                    await job
        raise AssertionError("the pump did not go quiet")

    async def _deliver(self, subject: str, payload: bytes) -> None:
        if subject.startswith("tools."):
            await self.runner.on_call(codec.tool_call.decode(payload))
        else:
            event = codec.agent_inbox.decode(payload)
            self.delivered_results += 1
            await self.rng.choice(self.engines).on_event(event)


def task(task_id: str = "t1", text: str = REFUND_Q, **kw: Any) -> TaskSubmitted:
    return TaskSubmitted(agent=AGENT, input=text, task_id=task_id, **kw)


def only_result(world: World, task_id: str = "t1") -> TaskCompleted | TaskFailed:
    (res,) = world.results(task_id)
    return res


# ----------------------------------------------------------------- a full task


@pytest.mark.parametrize("seed,twice,concurrent", [(0, False, False), (1, True, False), (2, True, True),
                                                   (3, False, True)])
async def test_support_desk_task_completes(seed: int, twice: bool, concurrent: bool) -> None:
    world = World()
    model = FunctionModel(Script())
    engine = world.engine(model)
    pump = Pump(world, [engine], world.runner(), seed=seed, twice=twice, concurrent=concurrent)
    await engine.on_task(task())
    await pump.run()
    res = only_result(world)
    assert isinstance(res, TaskCompleted), res
    assert res.output == REFUND_A
    assert (res.steps, res.tool_calls) == (2, 3)
    assert res.usage.input_tokens > 0 and res.usage.output_tokens > 0
    assert model.calls == 2 and engine.model_calls == 2
    assert sorted(r.tool for r in world.tool_calls()) == ["lookup_order", "refund_eligibility", "shipping_status"]
    # a duplicated delivery waits for the running call or gets the result it kept: each tool ran once
    assert pump.runner.executions == 3
    state = await world.state("t1")
    assert state.status == "completed" and state.outcome == res
    assert await world.deadlines.keys() == []  # cleared on completion
    # the model saw the tool results in its own call order, whatever the arrival order
    second = model.fn.requests[1]  # type: ignore[attr-defined]
    assert [m.name for m in tool_results(second)] == ["lookup_order", "shipping_status", "refund_eligibility"]


async def test_a_conversation_carries_history_into_the_next_task() -> None:
    world = World()
    model = FunctionModel(Script())
    engine = world.engine(model)
    pump = Pump(world, [engine], world.runner())
    await engine.on_task(task("t1", "Where is my order 42?", conversation_id="c1"))
    await pump.run()
    await engine.on_task(task("t2", "and can I get a refund?", conversation_id="c1"))
    await pump.run()
    assert isinstance(only_result(world, "t2"), TaskCompleted)
    assert "Order 42 qualifies for a refund" in only_result(world, "t2").output  # type: ignore[union-attr]
    entry = await world.conversations.get("default.c1")
    assert entry is not None
    assert [t.task_id for t in decode_conversation(entry.value).turns] == ["t1", "t2"]
    # replaying the completed task does not append the turn twice
    await engine.on_task(task("t1", "Where is my order 42?", conversation_id="c1"))
    entry = await world.conversations.get("default.c1")
    assert entry is not None and len(decode_conversation(entry.value).turns) == 2


async def test_redelivered_task_after_completion_changes_nothing() -> None:
    world = World()
    model = FunctionModel(Script())
    engine = world.engine(model)
    await engine.on_task(task(text="What are your opening hours?"))
    await Pump(world, [engine], world.runner()).run()
    before = (len(world.bus.published), await world.sessions.get("t1"))
    await engine.on_task(task(text="What are your opening hours?"))
    await engine.on_deadline("t1")
    assert (len(world.bus.published), await world.sessions.get("t1")) == before
    assert model.calls == 2


# ----------------------------------------------------------------- crashes and redelivery


async def test_crash_before_publishing_tool_calls_is_recovered_by_redelivery() -> None:
    world = World()
    model = FunctionModel(Script())
    engine = world.engine(model, bus=CrashingBus(world.bus, "tools.", nth=1))
    with pytest.raises(RuntimeError, match="crash"):
        await engine.on_task(task())
    state = await world.state("t1")
    assert state.status == "awaiting_tools" and len(state.pending) == 3  # the CAS happened
    assert world.bus.on("tools.") == []
    await engine.on_task(task())  # the broker redelivers the unacked task
    assert model.calls == 1  # the recorded response was reused, not paid for again
    assert len(world.bus.on("tools.")) == 3
    assert world.bus.duplicates >= 1  # progress notices re-emitted and dropped by msg id
    await Pump(world, [engine], world.runner()).run()
    assert only_result(world).output == REFUND_A  # type: ignore[union-attr]
    assert model.calls == 2
    keys = [p.msg_id or "" for p in world.bus.on("tools.")]
    assert sorted(keys) == sorted(f"t1:1:call_1_{i}" for i in range(3))


async def test_crash_between_tool_call_publishes_is_recovered_by_redelivery() -> None:
    world = World()
    model = FunctionModel(Script())
    engine = world.engine(model, bus=CrashingBus(world.bus, "tools.", nth=2))
    with pytest.raises(RuntimeError, match="crash"):
        await engine.on_task(task())
    assert len(world.bus.on("tools.")) == 1
    # the first call was published: its result arrives before the task is redelivered (ack wait)
    await Pump(world, [engine], world.runner()).run()
    await engine.on_task(task())
    await Pump(world, [engine], world.runner()).run()
    assert len(world.bus.on("tools.")) == 3
    assert only_result(world).output == REFUND_A  # type: ignore[union-attr]


async def test_crash_during_the_model_call_calls_it_again_on_redelivery() -> None:
    world = World()
    model = FunctionModel(Script(fail=[RuntimeError("worker killed mid-call")]))
    engine = world.engine(model)
    with pytest.raises(RuntimeError, match="killed"):
        await engine.on_task(task())
    state = await world.state("t1")
    assert state.status == "awaiting_model" and state.step == 1
    await engine.on_task(task())
    await Pump(world, [engine], world.runner()).run()
    assert only_result(world).output == REFUND_A  # type: ignore[union-attr]
    assert model.calls == 3  # the crashed call, then two turns


async def test_crash_during_the_second_model_call_is_recovered_by_a_redelivered_result() -> None:
    world = World()
    script = Script()
    model = FunctionModel(script)
    engine = world.engine(model)
    await engine.on_task(task())
    results = await _step1_results(world)
    await engine.on_event(results[0])
    await engine.on_event(results[1])
    script.fail.append(RuntimeError("worker killed mid-call"))
    with pytest.raises(RuntimeError):
        await engine.on_event(results[2])
    assert (await world.state("t1")).step == 2
    await engine.on_event(results[2])  # redelivered: re-issues the pending model call
    assert only_result(world).output == REFUND_A  # type: ignore[union-attr]
    assert model.calls == 3


async def test_transient_model_errors_are_retried() -> None:
    world = World()
    model = FunctionModel(Script(fail=[ModelError("429", transient=True), ModelError("503", transient=True)]))
    engine = world.engine(model, model_attempts=3)
    await engine.on_task(task())
    await Pump(world, [engine], world.runner()).run()
    assert only_result(world).output == REFUND_A  # type: ignore[union-attr]
    assert model.calls == 4 and engine.model_calls == 4  # 3 attempts for turn 1, 1 for turn 2


async def test_transient_model_errors_beyond_the_attempts_fail_the_task() -> None:
    world = World()
    model = FunctionModel(Script(fail=[ModelError("503", transient=True)] * 5))
    engine = world.engine(model, model_attempts=3)
    await engine.on_task(task())
    res = only_result(world)
    assert isinstance(res, TaskFailed) and res.reason == "model_error" and "503" in res.message
    assert model.calls == 3


async def test_permanent_model_error_fails_the_task_without_retry() -> None:
    world = World()
    model = FunctionModel(Script(fail=[ModelError("401 unauthorized", transient=False, status=401)]))
    engine = world.engine(model)
    await engine.on_task(task())
    res = only_result(world)
    assert isinstance(res, TaskFailed) and res.reason == "model_error" and "401" in res.message
    assert model.calls == 1
    assert world.bus.on("tools.") == []
    assert (await world.state("t1")).status == "failed"
    assert await world.deadlines.keys() == []


async def test_deadline_fails_a_waiting_task() -> None:
    world = World()
    engine = world.engine(FunctionModel(Script()))
    await engine.on_task(task())
    assert await world.deadlines.keys() == [f"{AGENT}.t1"]
    await engine.on_deadline("t1")  # a hint before the deadline: nothing happens
    assert not any(".results." in p.subject for p in world.bus.published)
    engine.clock = lambda: 1e12  # far past the deadline
    await engine.on_deadline("t1")
    res = only_result(world)
    assert isinstance(res, TaskFailed) and res.reason == "deadline"
    assert await world.deadlines.keys() == []


# ----------------------------------------------------------------- replicas


async def _step1_results(world: World) -> list[ToolCallCompleted]:
    runner = world.runner()
    out: list[ToolCallCompleted] = []
    for req in world.tool_calls():
        value, err = await runner.execute(req)
        out.append(ToolCallCompleted(task_id=req.task_id, agent=req.agent, step=req.step, call_id=req.call_id,
                                     tool=req.tool, ok=err is None, result=value, error=err))
    return out


@pytest.mark.parametrize("seed", range(8))
async def test_two_replicas_racing_on_one_task_call_the_model_once_per_step(seed: int) -> None:
    world = World(sessions=YieldingKV(seed))
    script = Script(delay_s=0.001)
    model_a, model_b = FunctionModel(script), FunctionModel(script)
    a = world.engine(model_a, worker="a")
    b = world.engine(model_b, worker="b")
    await a.on_task(task())
    results = await _step1_results(world)
    rng = random.Random(seed)
    rng.shuffle(results)
    targets = [a, b, rng.choice([a, b])]
    await asyncio.gather(*(t.on_event(r) for t, r in zip(targets, results)))
    assert model_a.calls + model_b.calls == 2
    assert len(script.requests) == 2 and script.requests[1].messages[-1].role == "tool"
    res = only_result(world)
    assert isinstance(res, TaskCompleted) and res.output == REFUND_A and res.steps == 2
    # redeliveries after the fact change nothing and call nobody
    for r in results:
        await rng.choice([a, b]).on_event(r)
    assert model_a.calls + model_b.calls == 2 and len(world.results("t1")) == 1


async def test_a_result_redelivered_while_the_next_model_call_runs_records_one_answer() -> None:
    """A duplicate that lands on replica b while replica a's step-2 model call
    is in flight re-issues that call (by design: it is also the crash-recovery
    path, so it costs a second paid call); the later response loses the
    compare-and-set, so exactly one answer is recorded and published."""
    gate, entered = asyncio.Event(), asyncio.Event()

    class Gated(Script):
        async def __call__(self, request: ModelRequest) -> ModelResponse:
            if tool_results(request) and not any(len(tool_results(r)) for r in self.requests):
                self.requests.append(request)
                entered.set()
                await gate.wait()  # a's step-2 call hangs until released
                return self.fn(request)
            return await super().__call__(request)

    world = World()
    script = Gated()
    model_a, model_b = FunctionModel(script), FunctionModel(script)
    a = world.engine(model_a, worker="a")
    b = world.engine(model_b, worker="b")
    await a.on_task(task())
    results = await _step1_results(world)
    await a.on_event(results[0])
    await a.on_event(results[1])
    in_flight = asyncio.create_task(a.on_event(results[2]))
    await asyncio.wait_for(entered.wait(), 5)
    assert len(script.requests) == 2
    await b.on_event(results[2])  # redelivered to the other replica
    gate.set()
    await in_flight
    # a: step 1 and the gated step 2; b: the re-issued step-2 call
    assert (model_a.calls, model_b.calls) == (2, 1)
    res = only_result(world)
    assert isinstance(res, TaskCompleted) and res.output == REFUND_A
    notices = [p.msg_id or "" for p in world.bus.on(subjects.progress(AGENT, "t1"))]
    assert sorted(notices) == ["t1:1:dispatch", "t1:1:turn", "t1:2:turn"]
    assert (await world.state("t1")).status == "completed"


def _two_turns(request: ModelRequest) -> ModelResponse:
    """lookup_order, then shipping_status, then an answer: two tool turns."""
    done = [m.name for m in request.messages if m.role == "tool"]
    if not done:
        return calls(("lookup_order", {"order_id": 17}), step=1)
    if done == ["lookup_order"]:
        return calls(("shipping_status", {"order_id": 17}), step=2)
    return answer("Order 17 is in transit.")


class Broker:
    """Step-by-step delivery: run the tool calls published since last time,
    then hand their results to one chosen engine."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.runner = world.runner()
        self.cursor = 0

    async def results_to(self, engine: AgentEngine) -> None:
        published = self.world.bus.published
        new, self.cursor = published[self.cursor:], len(published)
        for p in new:
            if p.subject.startswith("tools."):
                await self.runner.on_call(codec.tool_call.decode(p.payload))
        new, self.cursor = published[self.cursor:], len(published)
        for p in new:
            if ".events." in p.subject:
                await engine.on_event(codec.agent_inbox.decode(p.payload))


async def test_one_replica_running_every_step_of_a_multi_turn_task() -> None:
    world = World()
    script = Script(_two_turns)
    a = world.engine(FunctionModel(script), worker="a")
    broker = Broker(world)
    await a.on_task(task())
    await broker.results_to(a)
    await broker.results_to(a)
    assert len(script.requests) == 3
    assert only_result(world).output == "Order 17 is in transit."  # type: ignore[union-attr]


async def test_a_stale_replica_cache_does_not_drop_a_newer_result() -> None:
    world = World()
    script = Script(_two_turns)
    a = world.engine(FunctionModel(script), worker="a")
    b = world.engine(FunctionModel(script), worker="b")
    broker = Broker(world)
    await a.on_task(task())  # a caches the session at step 1
    await broker.results_to(b)  # step 1's result: b moves the task on to step 2
    assert (await world.state("t1")).step == 2
    await broker.results_to(a)  # step 2's result reaches a, whose cache still says step 1
    assert len(script.requests) == 3
    assert only_result(world).output == "Order 17 is in transit."  # type: ignore[union-attr]


def test_audit_msg_ids_are_deterministic_and_keep_the_actor_out_of_the_header() -> None:
    rec = AuditRecord(kind="approval.rejected", at=1.5, actor="eve\r\nNats-Msg-Id: x", agent=AGENT, task_id="t1",
                      details={"approval_id": "t1-1-c1"})
    msg_id = engine_mod.audit_msg_id(rec)
    assert msg_id == engine_mod.audit_msg_id(rec)  # a retried publish is deduplicated
    assert msg_id.startswith("audit:approval.rejected:t1-1-c1:") and "eve" not in msg_id
    assert msg_id.isprintable()
    other = msgspec.structs.replace(rec, actor="mallory")
    assert engine_mod.audit_msg_id(other) != msg_id  # one record per actor
    assert subjects.audit(rec.kind, AGENT) == f"audit.approval_rejected.{AGENT}"


# ----------------------------------------------------------------- ToolRunner


def _request(tool_name: str, arguments: dict[str, Any], **kw: Any) -> ToolCallRequested:
    base: dict[str, Any] = dict(
        task_id="t1", agent=AGENT, step=1, call_id="call_1", tool=tool_name, arguments=arguments,
        idempotency_key="t1:1:call_1", reply_subject=subjects.events(AGENT, "t1"), requested_at=0.0,
        timeout_s=5.0)
    base.update(kw)
    return ToolCallRequested(**base)


async def _run(req: ToolCallRequested, tools: dict[str, Tool] | None = None) -> ToolCallCompleted:
    world = World()
    runner = world.runner(tools)
    await runner.on_call(req)
    (pub,) = world.bus.published
    assert pub.subject == req.reply_subject and pub.msg_id == f"{req.idempotency_key}:result"
    done = codec.agent_inbox.decode(pub.payload)
    assert isinstance(done, ToolCallCompleted)
    assert (done.task_id, done.step, done.call_id, done.tool) == (req.task_id, req.step, req.call_id, req.tool)
    return done


async def test_runner_returns_the_tool_result() -> None:
    done = await _run(_request("lookup_order", {"order_id": 17}))
    assert done.ok and done.error is None and done.result["order_id"] == 17
    done = await _run(_request("store_hours", {}))  # a sync tool runs in a thread
    assert done.ok and done.result["timezone"] == "CET"


@pytest.mark.parametrize("arguments,fld", [
    ({"order_id": "seventeen"}, "order_id"),
    ({}, "order_id"),
    ({"order_id": 17, "extra": True}, "extra"),
    ({"order_id": 1.5}, "order_id"),
])
async def test_runner_invalid_arguments(arguments: dict[str, Any], fld: str) -> None:
    done = await _run(_request("lookup_order", arguments))
    assert not done.ok and done.result is None
    assert done.error is not None and done.error.kind == "invalid_arguments" and done.error.field == fld
    assert done.error.hint and "lookup_order" in done.error.hint


async def test_runner_tool_failure_keeps_its_kind() -> None:
    done = await _run(_request("lookup_order", {"order_id": 5000}))
    assert not done.ok and done.error is not None
    assert (done.error.kind, done.error.hint) == ("not_found", "ask the customer to check the number")


@tool
async def _broken(n: int) -> int:
    """Always broken.

    Args:
        n: anything.
    """
    raise ValueError(f"cannot handle {n}")


@tool(timeout_s=0.05)
async def _sleepy() -> str:
    """Takes too long."""
    await asyncio.sleep(5)
    return "late"


@tool
def _retry_me() -> str:
    """Fails with a retryable structured error."""
    raise ToolFailure("upstream busy", kind="rate_limited", retryable=True)


async def test_runner_tool_exception_becomes_execution_error() -> None:
    done = await _run(_request("_broken", {"n": 3}), {"_broken": _broken})
    assert done.error is not None and done.error.kind == "execution_error"
    assert "ValueError" in done.error.message and "cannot handle 3" in done.error.message


async def test_runner_sync_tool_failure() -> None:
    done = await _run(_request("_retry_me", {}), {"_retry_me": _retry_me})
    assert done.error == ToolError(kind="rate_limited", message="upstream busy", retryable=True)


async def test_runner_timeout() -> None:
    done = await _run(_request("_sleepy", {}), {"_sleepy": _sleepy})
    assert done.error is not None and done.error.kind == "timeout" and done.error.retryable


async def test_runner_unknown_tool() -> None:
    done = await _run(_request("launch_rockets", {}))
    assert done.error is not None and done.error.kind == "unknown_tool"


@pytest.mark.parametrize("changes", [
    {"reply_subject": "agents.support.results.t1"},
    {"reply_subject": "agents.other.events.t1"},
    {"reply_subject": "agents.support.events.t2"},
    {"reply_subject": "agents.support.events.t1.x", "task_id": "t1.x"},
    {"reply_subject": "agents.*.events.t1", "agent": "*"},
    {"reply_subject": "$JS.API.STREAM.DELETE.TASKS"},
])
async def test_runner_rejects_a_forged_reply_subject(changes: dict[str, str]) -> None:
    world = World()
    runner = world.runner()
    with pytest.raises(Reject):
        await runner.on_call(_request("lookup_order", {"order_id": 1}, **changes))
    assert world.bus.published == [] and runner.executions == 0


# ----------------------------------------------------------------- validators


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_TOOLS = sorted(app.tools)


@DETERMINISTIC
@given(name=st.sampled_from(_TOOLS), arguments=st.dictionaries(
    st.one_of(st.sampled_from(["order_id", "customer_id", "query", "limit", "subject", "priority"]),
              st.text(max_size=6)), _JSON, max_size=4))
def test_validators_never_raise_on_random_json(name: str, arguments: dict[str, Any]) -> None:
    t = app.tools[name]
    out = t.validate(arguments)
    if isinstance(out, ToolError):
        assert out.kind == "invalid_arguments" and out.message
        if out.field is not None:
            assert out.field in arguments or out.field in t.parameters.get("properties", {})
    else:
        assert isinstance(out, t.args_type)


def _value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    kind = schema.get("type")
    if kind == "integer":
        return st.integers()  # the schema sets no bounds, nor does the validator
    if kind == "string":
        return st.text(max_size=20)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"unexpected schema {schema}")


@st.composite
def _valid_call(draw: st.DrawFn) -> tuple[Tool, dict[str, Any]]:
    t = app.tools[draw(st.sampled_from(_TOOLS))]
    params = t.parameters
    assert params["type"] == "object"
    required = set(params.get("required", ()))
    args: dict[str, Any] = {}
    for pname, pschema in params.get("properties", {}).items():
        if pname in required or draw(st.booleans()):
            args[pname] = draw(_value(pschema))
    return t, args


@DETERMINISTIC
@given(_valid_call())
def test_arguments_built_from_the_schema_always_validate(case: tuple[Tool, dict[str, Any]]) -> None:
    t, args = case
    out = t.validate(args)
    assert not isinstance(out, ToolError), out
    values = msgspec.structs.asdict(out)
    for k, v in args.items():
        assert values[k] == v
