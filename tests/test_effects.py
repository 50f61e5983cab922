"""Effects once, as far as physics allows: against a real nats-server.

- a tool may ask for its idempotency key (never shown to the model);
- an at-most-once call that started and never finished is not run again: the
  model gets ``outcome_unknown``, and it is audited;
- a computed result survives a broker outage: re-published with the same msg
  id until the broker takes it, the tool not run again;
- large task inputs and tool results travel by claim-check (object store); a
  session that still outgrows the broker's limit fails at once, saying so;
  HTTP answers 413 for an input no session can hold;
- a submit that meets a broker restart is retried with the same msg id;
- compare-and-set conflicts beyond the old 50-retry limit do not make a step give up;
- an inbox event for an unknown task is dead-lettered and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from conftest import until

from agentstream import App, FunctionModel, ModelRequest, ModelResponse, ToolContext, answer, calls, last_user, tool
from agentstream import tool_results as results_of
from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    AuditRecord,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCallCompleted,
    ToolCallRequested,
)
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryKV
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.tools import Tool
from agentstream.runtime.execution.tool_runner import ToolRunner, result_key, start_key
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.http_api import HttpServer
from agentstream.runtime.service.runtime import Runtime

WAIT_S = 30.0

# ----------------------------------------------------------------- a test app

BIG = 400 * 1024  # over the claim-check size, under the broker's 1 MB max payload


@tool(read_only=True)
async def big_report(n: int) -> str:
    """A large report.

    Args:
        n: Its size in bytes.
    """
    return "r" * n


@tool(read_only=True)
async def measure(text: str) -> int:
    """The length of a text.

    Args:
        text: The text.
    """
    return len(text)


async def fx_script(request: ModelRequest) -> ModelResponse:
    """``report`` asks for a big tool result; ``copy:<text>`` copies the input
    into three tool calls (a session that outgrows the limit); anything else
    is answered with its length."""
    text = last_user(request)
    done = results_of(request)
    if done:
        return answer(" ".join(f"{m.name}={len(m.content)}" for m in done))
    if text == "report":
        return calls(("big_report", {"n": BIG}))
    if text.startswith("copy:"):
        # Three different calls: identical ones would end the task as a loop
        # first, and a finished session is stored without its messages.
        specs: list[tuple[str, dict[str, object]]] = [("measure", {"text": f"{i}{text}"}) for i in range(3)]
        return calls(*specs)
    return answer(f"len={len(text)}")


def fx_app() -> App:
    app = App()
    app.agent("fx", instructions="test agent", tools=[big_report, measure],
              scripted=lambda: FunctionModel(fx_script, name="scripted-fx"))
    return app


@pytest.fixture
async def runtime(nats_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = dataclasses.replace(Settings.from_env({}), nats_url=nats_url, data_dir=tmp_path / "data")
    rt = Runtime(settings=settings, app=fx_app(), agents=["fx"], tools="all")
    await asyncio.wait_for(rt.start(), timeout=30)
    try:
        yield rt
    finally:
        await asyncio.wait_for(rt.stop(), timeout=60)


def request(tool_name: str, args: dict[str, Any], *, task: str = "t1", call: str = "c1") -> ToolCallRequested:
    return ToolCallRequested(task_id=task, agent="fx", step=1, call_id=call, tool=tool_name, arguments=args,
                             idempotency_key=f"{task}:1:{call}", reply_subject=subjects.events("fx", task),
                             requested_at=time.time())


async def count(js: Any, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


# ----------------------------------------------------------------- the idempotency key


async def test_a_tool_receives_its_idempotency_key_which_the_model_never_sees() -> None:
    seen: list[Any] = []

    @tool
    async def charge(amount: int, idempotency_key: str) -> str:
        """Charge a card.

        Args:
            amount: Cents.
        """
        seen.append(idempotency_key)
        return "ok"

    @tool(at_most_once=True)
    def ship(order: str, ctx: ToolContext) -> str:
        """Ship an order.

        Args:
            order: The order.
        """
        seen.append(ctx)
        return "shipped"

    assert list(charge.spec.parameters["properties"]) == ["amount"]
    assert charge.spec.parameters["required"] == ["amount"]
    assert list(ship.spec.parameters["properties"]) == ["order"]
    # The model cannot set it: it is not an argument.
    assert charge.validate({"amount": 1, "idempotency_key": "forged"}).kind == "invalid_arguments"  # type: ignore[union-attr]
    runner = ToolRunner({"charge": charge, "ship": ship}, InMemoryBus(), worker="w")
    await runner.on_call(request("charge", {"amount": 5}, call="c1"))
    await runner.on_call(request("ship", {"order": "o1"}, call="c2"))
    assert seen[0] == "t1:1:c1"
    assert isinstance(seen[1], ToolContext)
    assert (seen[1].idempotency_key, seen[1].task_id, seen[1].call_id, seen[1].tool) == ("t1:1:c2", "t1", "c2", "ship")


def test_at_most_once_excludes_the_modes_that_may_run_again() -> None:
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="at_most_once excludes"):
        Tool(f, idempotent=True, at_most_once=True)
    assert Tool(f, at_most_once=True).mode == "at_most_once"
    assert Tool(f).mode == "plain" and Tool(f, idempotent=True).mode == "idempotent"


# ----------------------------------------------------------------- at most once


async def test_an_at_most_once_call_cut_off_mid_run_is_not_run_again(nats_url: str) -> None:
    """A worker dies while an at-most-once tool runs (its task cancelled here,
    its start mark left in KV); the call's redelivery, on another worker, does
    not run the tool: the model gets ``outcome_unknown``, the fact is audited,
    and every later delivery gets the same answer."""
    nc = await nats_adapters.connect(nats_url)
    js = nc.jetstream()
    try:
        await nats_adapters.provision(js)
        store = await nats_adapters.bucket(js, subjects.TOOL_RESULTS.name)
        bus = nats_adapters.NatsBus(js)
        runs: list[str] = []
        started = asyncio.Event()

        @tool(at_most_once=True)
        async def pay(amount: int, idempotency_key: str) -> str:
            """Pay.

            Args:
                amount: Cents.
            """
            runs.append(idempotency_key)
            started.set()
            await asyncio.Event().wait()  # never finishes: the worker dies first
            return "paid"

        req = request("pay", {"amount": 100})
        first = asyncio.create_task(ToolRunner({"pay": pay}, bus, worker="w1", results=store).on_call(req))
        await asyncio.wait_for(started.wait(), WAIT_S)
        first.cancel()  # the worker is gone: no result stored, no result published
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert await store.get(start_key(result_key(req))) is not None
        assert await count(js, "EVENTS", subjects.stored(req.reply_subject)) == 0

        second = ToolRunner({"pay": pay}, bus, worker="w2", results=store)
        await asyncio.wait_for(second.on_call(req), WAIT_S)
        assert runs == ["t1:1:c1"]  # not run again
        msg = await js.get_last_msg("EVENTS", subjects.stored(req.reply_subject))
        done = codec.agent_inbox.decode(msg.data or b"")
        assert isinstance(done, ToolCallCompleted) and not done.ok and done.error is not None
        assert done.error.kind == "outcome_unknown" and "w1" in done.error.message
        assert second.outcome_unknown == 1
        audit = await js.get_last_msg("AUDIT", subjects.audit("tool.outcome_unknown", "fx"))
        rec = codec.any_event.decode(audit.data or b"")
        assert isinstance(rec, AuditRecord) and rec.details["idempotency_key"] == "t1:1:c1"

        # A third delivery, on a third worker: the same stored answer, still no run.
        await asyncio.wait_for(ToolRunner({"pay": pay}, bus, worker="w3", results=store).on_call(req), WAIT_S)
        assert runs == ["t1:1:c1"] and await count(js, "EVENTS", subjects.stored(req.reply_subject)) == 1
    finally:
        await nc.close()


async def test_an_at_most_once_call_that_finished_is_answered_from_its_stored_result(nats_url: str) -> None:
    nc = await nats_adapters.connect(nats_url)
    js = nc.jetstream()
    try:
        await nats_adapters.provision(js)
        store = await nats_adapters.bucket(js, subjects.TOOL_RESULTS.name)
        runs: list[int] = []

        @tool(at_most_once=True)
        def pay(amount: int) -> str:
            """Pay.

            Args:
                amount: Cents.
            """
            runs.append(amount)
            return "paid"

        req = request("pay", {"amount": 7})
        for worker in ("w1", "w2"):
            await ToolRunner({"pay": pay}, nats_adapters.NatsBus(js), worker=worker, results=store).on_call(req)
        assert runs == [7]
        done = codec.agent_inbox.decode((await js.get_last_msg("EVENTS", subjects.stored(req.reply_subject))).data or b"")
        assert isinstance(done, ToolCallCompleted) and done.ok and done.result == "paid"
    finally:
        await nc.close()


# ----------------------------------------------------------------- a result survives a broker outage


def _kill(server: EmbeddedNats) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)


@pytest.mark.slow
async def test_a_result_is_republished_until_the_broker_takes_it(nats_server: EmbeddedNats) -> None:
    """The broker dies (SIGKILL) while a side-effecting tool runs. The result
    is kept and re-published with the same msg id once the broker is back:
    exactly one result, and the tool ran once."""
    nc = await nats_adapters.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await nats_adapters.provision(js)
        runs: list[str] = []
        release = asyncio.Event()

        @tool
        async def send_mail(to: str, idempotency_key: str) -> str:
            """Send a mail.

            Args:
                to: The recipient.
            """
            runs.append(idempotency_key)
            await release.wait()
            return f"sent to {to}"

        runner = ToolRunner({"send_mail": send_mail}, nats_adapters.NatsBus(js, timeout_s=1.0), worker="w")
        req = request("send_mail", {"to": "a@b.c"})
        call = asyncio.create_task(runner.on_call(req))
        await until(lambda: runs, WAIT_S, "the tool to start")
        await asyncio.to_thread(_kill, nats_server)
        release.set()
        await until(lambda: runner.publish_retries > 0, WAIT_S, "a failed publish of the result")
        assert not call.done()
        await asyncio.to_thread(nats_server.start)
        await asyncio.wait_for(call, WAIT_S)
        assert runs == ["t1:1:c1"] and runner.delivered == 1
        await until(lambda: count(js, "EVENTS", subjects.stored(req.reply_subject)), WAIT_S, "the result in the stream")
        assert await count(js, "EVENTS", subjects.stored(req.reply_subject)) == 1
        # A redelivery of the call (its ack lost with the broker) does not run the tool again.
        await asyncio.wait_for(runner.on_call(req), WAIT_S)
        assert runs == ["t1:1:c1"] and await count(js, "EVENTS", subjects.stored(req.reply_subject)) == 1
    finally:
        await nc.close()


@pytest.mark.slow
async def test_a_submit_that_meets_a_broker_restart_is_retried_and_stored_once(
        nats_server: EmbeddedNats, client: AgentClient) -> None:
    await asyncio.to_thread(_kill, nats_server)
    client.submit_retry_s = 30.0
    submit = asyncio.create_task(client.submit("fx", "hello", task_id="t-restart"))
    await asyncio.sleep(0)  # the submit is under way before the broker returns
    await asyncio.to_thread(nats_server.start)
    assert await asyncio.wait_for(submit, WAIT_S + 10) == "t-restart"
    assert await count(client.js, "TASKS", subjects.tasks("fx")) == 1


async def test_a_submit_the_broker_never_takes_says_it_was_not_stored(nats_server: EmbeddedNats,
                                                                      client: AgentClient) -> None:
    from agentstream.runtime.core.errors import SubmitFailed

    await asyncio.to_thread(nats_server.stop)
    client.submit_retry_s = 1.0
    with pytest.raises(SubmitFailed) as err:
        await asyncio.wait_for(client.submit("fx", "hello", task_id="t-gone"), WAIT_S)
    assert err.value.task_id == "t-gone" and "t-gone" in str(err.value)
    assert err.value.stored in (False, None)
    assert ("not stored" in str(err.value)) == (err.value.stored is False)


# ----------------------------------------------------------------- claim-check


async def test_a_large_tool_result_travels_by_reference(runtime: Runtime, client: AgentClient) -> None:
    task_id = await client.submit("fx", "report")
    res = await client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted), res
    assert res.output == f"big_report={BIG}"  # the model read the whole result
    raw = await client.js.get_last_msg("EVENTS", subjects.stored(subjects.events("fx", task_id)))
    assert len(raw.data or b"") < 4096
    done = codec.agent_inbox.decode(raw.data or b"")
    assert isinstance(done, ToolCallCompleted) and done.result is None and done.result_ref


async def test_a_large_task_input_travels_by_reference(runtime: Runtime, client: AgentClient) -> None:
    text = "i" * BIG
    task_id = await client.submit("fx", text)
    res = await client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted) and res.output == f"len={BIG}", res
    raw = await client.js.get_last_msg("TASKS", subjects.tasks("fx"))
    task = codec.task_submitted.decode(raw.data or b"")
    assert isinstance(task, TaskSubmitted) and task.input == "" and task.input_ref
    assert await client.resolve_input(task) == text


async def test_a_session_that_outgrows_the_limit_fails_at_once_saying_so(runtime: Runtime,
                                                                         client: AgentClient) -> None:
    """The model copies a 300 KB input into three tool calls: the session would
    pass the broker's 1 MB max payload. The task fails at once with
    ``state_too_large``, not at its deadline."""
    started = time.monotonic()
    task_id = await client.submit("fx", "copy:" + "x" * (300 * 1024), deadline_s=600)
    res = await client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskFailed), res
    assert res.reason == "state_too_large" and "max payload" in res.message, res
    assert time.monotonic() - started < WAIT_S


async def test_http_answers_413_for_an_input_no_session_can_hold(client: AgentClient) -> None:
    server = HttpServer(client)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            body = json.dumps({"agent": "fx", "input": "x" * (1100 * 1024)})
            async with session.post("/v1/tasks", data=body) as resp:
                assert resp.status == 413, await resp.text()
                assert "too large" in (await resp.json())["error"]
    finally:
        await server.stop()


# ----------------------------------------------------------------- compare-and-set, unknown tasks


class _Contended(InMemoryKV):
    """Another writer wins the first ``n`` updates (as during a leader election)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    async def update(self, key: str, value: bytes, revision: int) -> int:
        if self.n > 0:
            self.n -= 1
            raise Conflict("lost the race")
        return await super().update(key, value, revision)


async def test_a_step_survives_more_cas_conflicts_than_the_old_limit_of_50(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentstream.runtime.core.spec import AgentSpec
    from agentstream.runtime.execution import engine as engine_mod
    from agentstream.runtime.execution.engine import AgentEngine

    monkeypatch.setattr(engine_mod, "CAS_BACKOFF_MAX_S", 0.002)  # the count matters here, not the pace
    spec = AgentSpec(name="fx", instructions="", tools=())
    sessions = _Contended(80)
    bus = InMemoryBus()
    engine = AgentEngine(spec, FunctionModel(lambda r: answer("done")), sessions=sessions,
                         conversations=InMemoryKV(), deadlines=InMemoryKV(), bus=bus)
    await asyncio.wait_for(engine.on_task(TaskSubmitted(agent="fx", input="hi", task_id="t1")), WAIT_S)
    assert sessions.n == 0 and engine.cas_conflicts == 80
    (res,) = [codec.task_result.decode(p.payload) for p in bus.on("agents.fx.results.")]
    assert isinstance(res, TaskCompleted) and res.output == "done"


async def test_an_inbox_event_for_an_unknown_task_is_dead_lettered_and_counted(runtime: Runtime,
                                                                             client: AgentClient) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    ev = ToolCallCompleted(task_id=ghost, agent="fx", step=1, call_id="c1", tool="measure", ok=True, result=1)
    await client.js.publish(subjects.events("fx", ghost), msgspec.json.encode(ev))
    await until(lambda: count(client.js, "DEADLETTER", f"deadletter.{subjects.events('fx', ghost)}"), WAIT_S,
                "the dead letter")
    assert runtime.engines["fx"].unknown_task_events == 1


# ----------------------------------------------------------------- at most once across a real SIGKILL


@pytest.mark.slow
async def test_an_at_most_once_tool_never_runs_twice_when_its_worker_is_sigkilled(
        nats_url: str, spawn_worker: Any, client: AgentClient, tmp_path: Path) -> None:
    log = tmp_path / "pay.log"
    env = {"AGENTSTREAM_NATS_URL": nats_url, "AGENTSTREAM_APP": "effects_app:app", "EFFECTS_APP_LOG": str(log)}
    spawn_worker(["--agent", "effects"], env)
    first = spawn_worker(["--tools", "all"], {**env, "AGENTSTREAM_WORKER_ID": "tools-1"})
    task_id = await client.submit("effects", "pay please")
    await until(lambda: log.exists() and log.read_text().strip(), WAIT_S, "the tool to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    spawn_worker(["--tools", "all"], {**env, "AGENTSTREAM_WORKER_ID": "tools-2", "EFFECTS_APP_TOOL_S": "0"})
    res = await client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted), res
    assert "outcome_unknown" in res.output and "tools-1" in res.output, res.output
    assert len(log.read_text().splitlines()) == 1  # started once, never again


async def test_a_reference_to_another_tasks_payload_is_refused(runtime: Runtime, client: AgentClient) -> None:
    """A forged event cannot read someone else's claim-checked input into its
    session: a task may only name its own input, a tool result only a result."""
    secret = await client.submit("fx", "s" * BIG)
    await client.result(secret, timeout=WAIT_S)
    thief = TaskSubmitted(agent="fx", input="", task_id="thief", input_ref=f"input-{secret}")
    await client.js.publish(subjects.tasks("fx"), codec.encode(thief))
    res = await client.result("thief", timeout=WAIT_S)
    assert isinstance(res, TaskFailed) and res.reason == "rejected" and "not this task's" in res.message


async def test_a_result_too_large_for_the_broker_without_an_object_store_is_a_tool_error(nats_url: str) -> None:
    """No object store configured: the 2 MB result cannot be delivered, so the
    model gets ``result_too_large`` rather than the call looping until dead-lettered."""
    nc = await nats_adapters.connect(nats_url)
    js = nc.jetstream()
    try:
        await nats_adapters.provision(js)

        @tool(read_only=True)
        def dump(n: int) -> str:
            """Dump.

            Args:
                n: Bytes.
            """
            return "d" * n

        runner = ToolRunner({"dump": dump}, nats_adapters.NatsBus(js), worker="w")
        req = request("dump", {"n": 2 * 1024 * 1024})
        await asyncio.wait_for(runner.on_call(req), WAIT_S)
        done = codec.agent_inbox.decode((await js.get_last_msg("EVENTS", subjects.stored(req.reply_subject))).data or b"")
        assert isinstance(done, ToolCallCompleted) and done.error is not None
        assert done.error.kind == "result_too_large"
    finally:
        await nc.close()


async def test_an_unknown_outcome_can_escalate_the_task_to_a_human() -> None:
    """``on_unknown="escalate"``: the task fails with reason ``escalated``
    instead of the model deciding what to do about a payment that may have happened."""
    from agentstream.runtime.core.spec import AgentSpec
    from agentstream.runtime.execution.engine import AgentEngine

    @tool(at_most_once=True, on_unknown="escalate")
    def wire(amount: int) -> str:
        """Wire money.

        Args:
            amount: Cents.
        """
        raise AssertionError("must not run: its start is already recorded")

    async def script(req: ModelRequest) -> ModelResponse:
        return calls(("wire", {"amount": 5})) if not results_of(req) else answer("should not get here")

    bus, results = InMemoryBus(), InMemoryKV()
    engine = AgentEngine(AgentSpec(name="fx", instructions="", tools=(wire.spec,)), FunctionModel(script),
                         sessions=InMemoryKV(), conversations=InMemoryKV(), deadlines=InMemoryKV(), bus=bus)
    await engine.on_task(TaskSubmitted(agent="fx", input="pay", task_id="t1"))
    (call,) = [codec.tool_call.decode(p.payload) for p in bus.on("tools.wire.calls")]
    # An earlier delivery started it and its worker died.
    await results.create(start_key(result_key(call)), b'{"worker": "w0", "at": 0}')
    await ToolRunner({"wire": wire}, bus, worker="w1", results=results).on_call(call)
    (done,) = [codec.agent_inbox.decode(p.payload) for p in bus.on("agents.fx.events.t1")]
    assert isinstance(done, ToolCallCompleted) and done.error is not None and done.error.escalate
    await engine.on_event(done)
    (res,) = [codec.task_result.decode(p.payload) for p in bus.on("agents.fx.results.t1")]
    assert isinstance(res, TaskFailed) and res.reason == "escalated" and "outcome was never recorded" in res.message
    assert [p.subject for p in bus.on("audit.tool_outcome_unknown.")] == ["audit.tool_outcome_unknown.fx"]


async def test_a_redelivery_waiting_on_a_failed_first_delivery_is_not_acked() -> None:
    """Two deliveries of one call in one process: the second waits for the
    first. If the first cannot deliver its result, the second must fail too
    (an ack of it would settle the message with no result published)."""
    release = asyncio.Event()

    @tool
    async def slow(x: int) -> int:
        """Slow.

        Args:
            x: A number.
        """
        await release.wait()
        return x

    class DeadBus(InMemoryBus):
        async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                          headers: dict[str, str] | None = None) -> None:
            from agentstream.runtime.core.errors import BrokerUnavailable

            raise BrokerUnavailable("down")

    runner = ToolRunner({"slow": slow}, DeadBus(), worker="w", publish_retry_s=0.05)
    req = request("slow", {"x": 1})
    first = asyncio.create_task(runner.on_call(req))
    await until(lambda: req.idempotency_key in runner._running, WAIT_S, "the first delivery to start")
    second = asyncio.create_task(runner.on_call(req))
    await asyncio.sleep(0)  # one turn of the loop: the second task runs until it blocks on the first
    release.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results), results
    assert runner.executions == 1
