"""Tools that hold up in production: options on ``@tool``, error classification
and bounded retries, idempotent results, fuzzing the validator, and — against
a real nats-server — a flaky tool retried inside a running task and a dead tool
opening its breaker on two worker processes.

Synchronisation is by polling with deadlines; retries use tiny backoffs or a
recording fake ``sleep``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import nats
import pytest
from apps import flaky_app
from conftest import SpawnWorker, WorkerPool, until
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskCompleted, ToolCallCompleted, ToolCallRequested, ToolSpec
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryKV
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.tools import (
    NO_RETRY,
    BreakerPolicy,
    RateLimited,
    RetryableToolError,
    RetryPolicy,
    Tool,
    ToolFailure,
    tool,
)
from agentstream.runtime.execution.tool_runner import ToolRunner, result_key
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.service.runtime import Runtime

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)


def call(tool_name: str, arguments: dict[str, Any], n: int = 1, *, agent: str = "a", task: str = "t1",
         timeout_s: float | None = 5.0) -> ToolCallRequested:
    return ToolCallRequested(
        task_id=task, agent=agent, step=1, call_id=f"c{n}", tool=tool_name, arguments=arguments,
        idempotency_key=f"{task}:1:c{n}", reply_subject=subjects.events(agent, task), requested_at=time.time(),
        timeout_s=timeout_s)


class Sleeps:
    """A fake ``sleep`` for the runner: records the backoffs, waits for nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, s: float) -> None:
        self.waits.append(s)


def runner_for(*tools: Tool, sleeps: Sleeps | None = None, **kw: Any) -> ToolRunner:
    return ToolRunner({t.name: t for t in tools}, kw.pop("bus", InMemoryBus()), worker="w",
                      sleep=sleeps or Sleeps(), **kw)


# --------------------------------------------------------------------------- options


def test_options_live_on_the_tool_not_in_what_the_model_sees() -> None:
    @tool(timeout_s=2, retry=NO_RETRY, idempotent=True, read_only=True, approvers=("ops",),
          requires_approval=lambda a: a.amount > 100, fallback="other", breaker=True)
    def refund(order_id: int, amount: float) -> str:
        """Refund part of an order.

        Args:
            order_id: The order.
            amount: How much, in dollars.
        """
        return "ok"

    assert set(msgspec.structs.asdict(refund.spec)) == {"name", "description", "parameters"}
    assert isinstance(refund.spec, ToolSpec) and "fallback" not in json.dumps(refund.spec.parameters)
    assert set(refund.spec.parameters["properties"]) == {"order_id", "amount"}
    shown = json.dumps(msgspec.structs.asdict(refund.spec)).lower()
    assert not any(opt in shown for opt in ("timeout", "retry", "idempotent", "read_only", "approv", "ops",
                                            "other", "breaker"))
    assert refund.timeout_s == 2 and refund.retry.max_attempts == 1 and refund.idempotent
    assert refund.read_only and not refund.side_effects and refund.approvers == ("ops",)
    assert refund.fallback == "other" and refund.breaker == BreakerPolicy()
    assert refund.needs_approval({"order_id": 1, "amount": 150.0})
    assert not refund.needs_approval({"order_id": 1, "amount": 50})
    assert not refund.needs_approval({"order_id": "x", "amount": 500})  # invalid: fails validation anyway


def test_defaults_are_the_safe_ones() -> None:
    @tool
    def send_email(to: str) -> str:
        """Send an email.

        Args:
            to: Address.
        """
        return to

    assert send_email.side_effects and not send_email.idempotent and not send_email.retry_ambiguous
    assert not send_email.read_only and send_email.timeout_s is None and send_email.fallback is None
    assert send_email.requires_approval is False and send_email.approvers == ()
    assert send_email.breaker is None and send_email.retry == RetryPolicy() and send_email.retry.max_attempts == 3
    assert not send_email.needs_approval({"to": "x"})


def test_approval_policy_that_raises_requires_approval() -> None:
    def policy(args: Any) -> bool:
        raise RuntimeError("bug in the policy")

    @tool(requires_approval=policy)
    def wire(amount: float) -> str:
        """Wire money.

        Args:
            amount: Dollars.
        """
        return "sent"

    assert wire.needs_approval({"amount": 1.0})


def test_bad_options_are_rejected() -> None:
    def f() -> None:
        """Nothing."""

    with pytest.raises(ValueError):
        Tool(f, fallback="f")
    with pytest.raises(ValueError):
        Tool(f, timeout_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        BreakerPolicy(failure_threshold=0)
    with pytest.raises(TypeError):
        Tool(f, requires_approval="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- classification and retries


def scripted_tool(failures: list[BaseException], *, name: str = "svc", **opts: Any) -> tuple[Tool, list[int]]:
    runs: list[int] = []

    async def svc(x: int = 0) -> str:
        """A downstream service.

        Args:
            x: Anything.
        """
        runs.append(x)
        if failures:
            raise failures.pop(0)
        return f"ok {x}"

    return Tool(svc, name=name, **opts), runs


async def test_transient_errors_are_retried_then_succeed() -> None:
    t, runs = scripted_tool([RetryableToolError("blip"), RateLimited(retry_after_s=0.5)], retry=FAST)
    sleeps = Sleeps()
    out = await runner_for(t, sleeps=sleeps).run(call("svc", {}))
    assert out.result == "ok 0" and out.error is None and out.attempts == 3 and len(runs) == 3
    assert len(sleeps.waits) == 2 and sleeps.waits[1] >= 0.5  # honours RateLimited.retry_after_s
    assert 0.001 <= sleeps.waits[0] <= FAST.max_backoff_s  # exponential with jitter, capped


async def test_retries_are_bounded_and_report_the_last_error() -> None:
    t, runs = scripted_tool([ToolFailure("busy", kind="busy", retryable=True)] * 5, retry=FAST)
    sleeps = Sleeps()
    out = await runner_for(t, sleeps=sleeps).run(call("svc", {}))
    assert out.attempts == 3 and len(runs) == 3 and len(sleeps.waits) == 2  # no wait after the last attempt
    assert out.error is not None and out.error.kind == "busy" and out.error.retryable


async def test_permanent_errors_return_at_once() -> None:
    for exc, kind in [(ToolFailure("no such order", kind="not_found"), "not_found"),
                      (ValueError("bug"), "execution_error"),
                      (FileNotFoundError("config.yaml"), "execution_error")]:
        t, runs = scripted_tool([exc], retry=FAST, read_only=True)
        out = await runner_for(t).run(call("svc", {}))
        assert out.attempts == 1 and len(runs) == 1 and out.error is not None and out.error.kind == kind


async def test_ambiguous_failures_retry_only_when_safe() -> None:
    """A timeout or a dropped connection may have taken effect: retried for
    read-only and idempotent tools, not for a tool with side effects."""
    cases: list[tuple[dict[str, Any], int]] = [
        ({}, 1), ({"read_only": True}, 2), ({"idempotent": True}, 2),
        ({"retry": RetryPolicy(max_attempts=3, initial_backoff_s=0.001, retry_ambiguous=True)}, 2)]
    for opts, attempts in cases:
        opts.setdefault("retry", FAST)
        t, runs = scripted_tool([ConnectionResetError("reset")], **opts)
        out = await runner_for(t).run(call("svc", {}))
        assert out.attempts == attempts, opts
        if attempts == 1:
            assert out.error is not None and out.error.kind == "unavailable" and out.error.retryable
        else:
            assert out.result == "ok 0"


async def test_timeouts_are_per_attempt_and_bounded_in_total() -> None:
    async def slow() -> str:
        """Never answers in time."""
        await asyncio.sleep(10)
        return "late"

    t = Tool(slow, timeout_s=0.05, read_only=True,
             retry=RetryPolicy(max_attempts=10, initial_backoff_s=0.001, max_backoff_s=0.001, max_total_s=0.3))
    started = time.monotonic()
    out = await ToolRunner({"slow": t}, InMemoryBus()).run(call("slow", {}))
    elapsed = time.monotonic() - started
    assert out.error is not None and out.error.kind == "timeout"
    assert 2 <= out.attempts < 10 and elapsed < 1.0


async def test_invalid_arguments_never_run_the_tool() -> None:
    t, runs = scripted_tool([], retry=FAST)
    out = await runner_for(t).run(call("svc", {"x": "seven"}))
    assert out.error is not None and out.error.kind == "invalid_arguments" and out.attempts == 0 and runs == []
    assert out.error.field == "x" and not out.fault


async def test_a_result_that_is_not_json_becomes_an_error() -> None:
    @tool
    def weird() -> object:
        """Returns something JSON cannot hold."""
        return object()

    bus = InMemoryBus()
    await runner_for(weird, bus=bus).on_call(call("weird", {}))
    done = codec.agent_inbox.decode(bus.published[0].payload)
    assert isinstance(done, ToolCallCompleted) and not done.ok
    assert done.error is not None and "not JSON" in done.error.message


# --------------------------------------------------------------------------- idempotent tools


def counting_tool(idempotent: bool = True) -> tuple[Tool, list[str]]:
    runs: list[str] = []

    async def charge(order_id: int) -> dict[str, object]:
        """Charge an order (safe to repeat: the payment provider dedupes).

        Args:
            order_id: The order.
        """
        runs.append(f"charge {order_id}")
        return {"charged": order_id, "run": len(runs)}

    return Tool(charge, idempotent=idempotent), runs


async def test_idempotent_tool_redelivered_runs_once_and_returns_the_first_result() -> None:
    t, runs = counting_tool()
    store = InMemoryKV()
    bus_a, bus_b = InMemoryBus(), InMemoryBus()
    a = runner_for(t, bus=bus_a, results=store)
    b = runner_for(t, bus=bus_b, results=store)  # another replica gets the redelivery
    req = call("charge", {"order_id": 7})
    await a.on_call(req)
    await a.on_call(req)
    await b.on_call(req)
    assert runs == ["charge 7"] and a.replayed == 1 and b.replayed == 1
    first = bus_a.published[0]
    assert bus_a.duplicates == 1  # same msg id: JetStream would drop it within its window
    assert bus_b.published[0].payload == first.payload and bus_b.published[0].msg_id == first.msg_id
    done = codec.agent_inbox.decode(first.payload)
    assert isinstance(done, ToolCallCompleted)
    assert done.result == {"charged": 7, "run": 1}
    assert (await store.get(result_key(req))) is not None
    # A different call (another call id) runs again.
    await a.on_call(call("charge", {"order_id": 7}, n=2))
    assert len(runs) == 2


async def test_non_idempotent_tool_is_not_stored() -> None:
    """A plain tool's result is not in KV: another process given the call
    runs it again. The process that ran it answers a redelivery (a lost ack)
    from the result it kept, without running the tool again."""
    t, runs = counting_tool(idempotent=False)
    store = InMemoryKV()
    r = runner_for(t, results=store)
    req = call("charge", {"order_id": 7})
    await r.on_call(req)
    await r.on_call(req)
    assert len(runs) == 1 and await store.keys() == []
    await runner_for(t, results=store).on_call(req)
    assert len(runs) == 2


async def test_idempotent_results_on_a_real_kv(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await nats_adapters.provision(js)
        store = await nats_adapters.bucket(js, subjects.TOOL_RESULTS.name)
        t, runs = counting_tool()
        bus = nats_adapters.NatsBus(js)
        req = call("charge", {"order_id": 9}, agent="billing", task="idem-1")
        sub = await nc.subscribe(req.reply_subject)
        for worker in ("w1", "w2"):
            await ToolRunner({"charge": t}, bus, worker=worker, results=store).on_call(req)
        assert runs == ["charge 9"]
        stored = await store.get(result_key(req))
        assert stored is not None
        msg = await sub.next_msg(timeout=5)
        assert msg.data == stored.value  # the published result is the stored one
        done = codec.agent_inbox.decode(stored.value)
        assert isinstance(done, ToolCallCompleted)
        assert done.worker == "w1" and done.result == {"charged": 9, "run": 1}
        info = await js.stream_info("EVENTS", subjects_filter=subjects.stored(req.reply_subject))
        assert sum((info.state.subjects or {}).values()) == 1  # the second publish was deduplicated
    finally:
        await nc.close()


# --------------------------------------------------------------------------- fuzzing the validator

PARAM_TYPES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "int": (int, st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)),
    "float": (float, st.floats(allow_nan=False, allow_infinity=False)),
    "str": (str, st.text(max_size=20)),
    "bool": (bool, st.booleans()),
    "list_int": (list[int], st.lists(st.integers(min_value=-1000, max_value=1000), max_size=5)),
    "opt_int": (int | None, st.none() | st.integers(min_value=-1000, max_value=1000)),
}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)

Signature = list[tuple[str, str, bool]]  # (name, type key, has a default)

signatures: st.SearchStrategy[Signature] = st.lists(
    st.tuples(st.sampled_from(sorted(PARAM_TYPES)), st.booleans()), max_size=5,
).map(lambda ps: [(f"p{i}", kind, opt) for i, (kind, opt) in enumerate(ps)])

FUZZ = settings(max_examples=150)


def build_tool(sig: Signature) -> Tool:
    """A tool whose signature is ``sig``; it echoes its arguments."""
    async def echo(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    params, annotations = [], {}
    for name, kind, optional in sig:
        ann = PARAM_TYPES[kind][0]
        default = None if kind == "opt_int" else {"int": 0, "float": 0.0, "str": "", "bool": False,
                                                   "list_int": []}[kind]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann,
                                        default=default if optional else inspect.Parameter.empty))
        annotations[name] = ann
    echo.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    echo.__annotations__ = annotations
    echo.__doc__ = "Echo.\n\nArgs:\n" + "".join(f"    {n}: parameter {n}.\n" for n, _, _ in sig)
    return Tool(echo, name="echo", retry=NO_RETRY)


def valid_arguments(sig: Signature) -> st.SearchStrategy[dict[str, Any]]:
    required = {n: PARAM_TYPES[k][1] for n, k, opt in sig if not opt}
    optional = {n: PARAM_TYPES[k][1] for n, k, opt in sig if opt}
    return st.fixed_dictionaries(required, optional=optional)


@FUZZ
@given(sig=signatures, data=st.data())
async def test_random_json_never_raises_from_the_runner(sig: Signature, data: st.DataObject) -> None:
    t = build_tool(sig)
    names = [n for n, _, _ in sig]
    keys = st.sampled_from(names) | st.text(max_size=6) if names else st.text(max_size=6)
    arguments = data.draw(st.dictionaries(keys, JSON, max_size=6))
    result, error = await ToolRunner({"echo": t}, InMemoryBus()).execute(call("echo", arguments))
    assert (result is None) != (error is None)
    if error is not None:
        assert error.kind == "invalid_arguments"


@FUZZ
@given(sig=signatures, data=st.data())
async def test_valid_arguments_always_pass_and_match_the_schema(sig: Signature, data: st.DataObject) -> None:
    t = build_tool(sig)
    arguments = data.draw(valid_arguments(sig))
    jsonschema.validate(arguments, t.spec.parameters)  # what the model is shown accepts them
    result, error = await ToolRunner({"echo": t}, InMemoryBus()).execute(call("echo", arguments))
    assert error is None, (arguments, error)
    assert isinstance(result, dict), result
    assert {k: result[k] for k in arguments} == arguments


# --------------------------------------------------------------------------- a real broker



async def test_flaky_tool_retried_inside_a_running_task(nats_url: str, tmp_path: Path) -> None:
    key = f"k-{time.monotonic_ns()}"
    env = {"AGENTSTREAM_NATS_URL": nats_url, "AGENTSTREAM_WORKER_ID": "rt-1", "AGENTSTREAM_SHUTDOWN_TIMEOUT": "1",
           "AGENTSTREAM_DATA_DIR": str(tmp_path)}
    rt = Runtime(settings=Settings.from_env(env), app=flaky_app.app, agents=["flaky"], tools="all")
    await rt.start()
    try:
        async with await AgentClient.connect(nats_url) as client:
            task_id = await client.submit("flaky", key)
            res = await client.result(task_id, timeout=20)
            assert isinstance(res, TaskCompleted), res
            assert res.output == f"got value-{key}"
            msg = await client.js.get_last_msg("EVENTS", subjects.stored(subjects.events("flaky", task_id)))
            assert msg.data is not None
            done = codec.agent_inbox.decode(msg.data)
            assert isinstance(done, ToolCallCompleted) and done.ok and done.worker == "rt-1"
            assert done.attempts == 3 and flaky_app.ATTEMPTS[key] == 3
    finally:
        await rt.stop()


@pytest.mark.slow
async def test_dead_tool_opens_the_breaker_on_every_replica(nats_url: str, worker_pool: WorkerPool,
                                                             spawn_worker: SpawnWorker, tmp_path: Path) -> None:
    counter = tmp_path / "dead.count"
    base = {"AGENTSTREAM_NATS_URL": nats_url, "AGENTSTREAM_APP": "flaky_app:app",
            "AGENTSTREAM_MAX_IN_FLIGHT": "1", "FLAKY_APP_COUNTER": str(counter)}
    procs = [spawn_worker(["--tools", "dead_tool"], {**base, "AGENTSTREAM_WORKER_ID": w}, wait=False)
             for w in ("dead-1", "dead-2")]
    for p in procs:
        worker_pool.wait_ready(p)

    def executions() -> int:
        return len(counter.read_text().splitlines()) if counter.exists() else 0

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        task = "dead-task"
        done: dict[str, ToolCallCompleted] = {}

        async def on_msg(msg: Any) -> None:
            ev = codec.agent_inbox.decode(msg.data)
            if isinstance(ev, ToolCallCompleted):
                done[ev.call_id] = ev

        await nc.subscribe(subjects.events("flaky", task), cb=on_msg)

        async def send(first: int, count: int) -> list[ToolCallCompleted]:
            reqs = [call("dead_tool", {"n": n}, n, agent="flaky", task=task, timeout_s=2.0)
                    for n in range(first, first + count)]
            for r in reqs:
                await js.publish(subjects.tool_calls("dead_tool"), codec.encode(r),
                                 headers={"Nats-Msg-Id": r.idempotency_key})
            await until(lambda: all(r.call_id in done for r in reqs), 15, f"results of calls {first}..")
            return [done[r.call_id] for r in reqs]

        # Until both replicas have failed fast at least once (bounded).
        n = 0
        while {d.worker for d in done.values() if d.error and d.error.kind == "circuit_open"} != {"dead-1", "dead-2"}:
            assert n < 60, [(d.worker, d.error.kind if d.error else None) for d in done.values()]
            await send(n, 4)
            n += 4
        kinds = [d.error.kind for d in done.values() if d.error]
        assert len(kinds) == n and set(kinds) == {"unavailable", "circuit_open"}
        threshold = flaky_app.DEAD_BREAKER.failure_threshold
        ran = executions()
        # At most one straggler (admitted on the other replica before the breaker opened).
        assert threshold <= ran <= threshold + 1 and kinds.count("unavailable") == ran
        assert {line.split()[0] for line in counter.read_text().splitlines()} <= {"dead-1", "dead-2"}

        # Open on every replica: nothing runs any more.
        later = await send(n, 10)
        assert all(d.error is not None and d.error.kind == "circuit_open" and d.attempts == 0 for d in later)
        assert executions() == ran
        kv = await nats_adapters.bucket(js, subjects.TOOL_BREAKERS.name)
        entry = await kv.get("dead_tool")
        assert entry is not None and msgspec.json.decode(entry.value)["state"] == "open"
    finally:
        await nc.close()
