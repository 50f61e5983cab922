"""The circuit breaker: the pure state machine on a fake clock, the shared
adapter over compare-and-set (in memory and on a real JetStream KV), and the
runner's use of it (fail fast, fallback, half-open probe).

Timing is a number passed in (or a fake clock); nothing here sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats
import pytest

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import ToolCallCompleted, ToolCallRequested
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryKV
from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.ports import Entry
from agentstream.runtime.core.tools import NO_RETRY, BreakerPolicy, Tool, tool
from agentstream.runtime.execution.breaker import (
    CLOSED,
    BreakerState,
    SharedBreaker,
    admit,
    on_failure,
    on_success,
)
from agentstream.runtime.execution.tool_runner import ToolRunner

P = BreakerPolicy(failure_threshold=3, window_s=10.0, open_s=30.0)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- pure state machine


def fail(s: BreakerState, now: float, owner: str = "w", probe: bool = False) -> BreakerState:
    new = on_failure(s, P, now, owner, probe)
    return s if new is None else new


def test_opens_after_threshold_failures_within_the_window() -> None:
    s = CLOSED
    s = fail(s, 0.0)
    s = fail(s, 1.0)
    assert s.state == "closed" and s.failures == (0.0, 1.0)
    assert admit(s, P, 2.0, "w")[0].action == "run"
    s = fail(s, 2.0)
    assert s.state == "open" and s.opened_at == 2.0 and s.failures == ()
    adm, write = admit(s, P, 3.0, "w")
    assert adm.action == "reject" and adm.retry_after_s == pytest.approx(29.0) and write is None


def test_failures_outside_the_window_do_not_count() -> None:
    s = CLOSED
    for t in (0.0, 5.0, 10.5, 16.0):  # never 3 within 10 s
        s = fail(s, t)
    assert s.state == "closed" and s.failures == (10.5, 16.0)
    s = fail(s, 19.0)
    assert s.state == "open"


def test_success_while_closed_writes_nothing() -> None:
    s = fail(CLOSED, 0.0)
    assert on_success(s, P, 1.0, "w", False) is None


def test_half_open_probe_success_closes() -> None:
    s = BreakerState(state="open", opened_at=100.0)
    assert admit(s, P, 129.9, "a")[0].action == "reject"
    adm, claimed = admit(s, P, 130.0, "a")
    assert adm.action == "probe" and claimed is not None
    assert claimed.state == "half_open" and claimed.probe_owner == "a" and claimed.probe_started_at == 130.0
    # Everyone else fails fast while the probe runs.
    other, write = admit(claimed, P, 131.0, "b")
    assert other.action == "reject" and write is None
    # A straggler's success (not the probe) changes nothing; the probe's closes.
    assert on_success(claimed, P, 132.0, "b", False) is None
    assert on_success(claimed, P, 132.0, "a", True) == CLOSED


def test_half_open_probe_failure_reopens() -> None:
    claimed = BreakerState(state="half_open", opened_at=100.0, probe_owner="a", probe_started_at=130.0)
    assert on_failure(claimed, P, 135.0, "b", False) is None  # a straggler
    again = on_failure(claimed, P, 135.0, "a", True)
    assert again == BreakerState(state="open", opened_at=135.0)
    assert admit(again, P, 164.0, "a")[0].action == "reject"
    assert admit(again, P, 165.0, "a")[0].action == "probe"


def test_stale_probe_can_be_reclaimed() -> None:
    claimed = BreakerState(state="half_open", opened_at=100.0, probe_owner="dead", probe_started_at=130.0)
    assert admit(claimed, P, 130.0 + P.probe_lease_s - 0.1, "b")[0].action == "reject"
    adm, new = admit(claimed, P, 130.0 + P.probe_lease_s, "b")
    assert adm.action == "probe" and new is not None and new.probe_owner == "b"


# --------------------------------------------------------------------------- shared adapter


class CountingKV(InMemoryKV):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.writes = 0

    async def get(self, key: str) -> Entry | None:
        self.gets += 1
        return await super().get(key)

    async def create(self, key: str, value: bytes) -> int:
        self.writes += 1
        return await super().create(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        self.writes += 1
        return await super().update(key, value, revision)


async def test_shared_breaker_reads_once_and_writes_only_on_failure() -> None:
    kv, clock = CountingKV(), Clock()
    b = SharedBreaker(kv, clock=clock)
    adm, seen = await b.admit("t", P, "w/1")
    assert adm.action == "run" and (kv.gets, kv.writes) == (1, 0)
    await b.record("t", P, "w/1", ok=True, probe=False, seen=seen)
    assert (kv.gets, kv.writes) == (1, 0)
    adm, seen = await b.admit("t", P, "w/2")
    await b.record("t", P, "w/2", ok=False, probe=False, seen=seen)
    assert (kv.gets, kv.writes) == (2, 1)
    assert (await b.state("t")).failures == (1000.0,)


async def test_shared_breaker_records_through_conflicts() -> None:
    """Two replicas admitted under the same revision both fail: both failures count."""
    kv, clock = InMemoryKV(), Clock()
    a, b = SharedBreaker(kv, clock=clock), SharedBreaker(kv, clock=clock)
    _, seen_a = await a.admit("t", P, "a/1")
    _, seen_b = await b.admit("t", P, "b/1")
    await a.record("t", P, "a/1", ok=False, probe=False, seen=seen_a)
    await b.record("t", P, "b/1", ok=False, probe=False, seen=seen_b)  # stale revision: conflict, re-read
    assert len((await a.state("t")).failures) == 2


class YieldingKV(InMemoryKV):
    """Yields to the loop between reading and returning, so concurrent admits all
    read the same revision before any of them writes: the CAS really races."""

    async def get(self, key: str) -> Entry | None:
        e = await super().get(key)
        await asyncio.sleep(0)
        return e


async def test_only_one_replica_claims_the_probe() -> None:
    kv, clock = YieldingKV(), Clock()
    await kv.create("t", codec.encode(BreakerState(state="open", opened_at=clock.now - 31)))
    replicas = [SharedBreaker(kv, clock=clock) for _ in range(5)]
    outcomes = await asyncio.gather(*(r.admit("t", P, f"r{i}/1") for i, r in enumerate(replicas)))
    assert sorted(adm.action for adm, _ in outcomes) == ["probe"] + ["reject"] * 4


async def test_unreadable_state_counts_as_closed() -> None:
    kv = InMemoryKV()
    await kv.create("t", b"not json")
    b = SharedBreaker(kv)
    adm, seen = await b.admit("t", P, "w/1")
    assert adm.action == "run" and seen.revision > 0
    await b.record("t", P, "w/1", ok=False, probe=False, seen=seen)
    assert len((await b.state("t")).failures) == 1  # counted from closed, written over the bad value


# --------------------------------------------------------------------------- the runner


class Switch:
    """A downstream that is up or down; counts executions."""

    def __init__(self) -> None:
        self.up = False
        self.runs = 0


def make_tools(switch: Switch, *, fallback: str | None = "backup") -> dict[str, Tool]:
    @tool(read_only=True, retry=NO_RETRY, breaker=P, fallback=fallback)
    async def primary(city: str) -> str:
        """Today's weather for a city, from the primary provider.

        Args:
            city: City name.
        """
        switch.runs += 1
        if not switch.up:
            raise ConnectionError("primary provider down")
        return f"sunny in {city}"

    @tool(read_only=True)
    async def backup(city: str, units: str = "metric") -> str:
        """Yesterday's cached weather for a city.

        Args:
            city: City name.
            units: metric or imperial.
        """
        return f"cached: mild in {city} ({units})"

    @tool(read_only=True, retry=NO_RETRY, breaker=P, fallback="narrow")
    async def picky(city: str) -> str:
        """A tool whose fallback takes other arguments.

        Args:
            city: City name.
        """
        raise ConnectionError("down")

    @tool(read_only=True)
    async def narrow(zip_code: str) -> str:
        """Weather by zip code.

        Args:
            zip_code: Postal code.
        """
        return zip_code

    return {t.name: t for t in (primary, backup, picky, narrow)}


def req(tool_name: str, n: int, arguments: dict[str, Any] | None = None) -> ToolCallRequested:
    return ToolCallRequested(
        task_id="t1", agent="weather", step=1, call_id=f"c{n}", tool=tool_name,
        arguments=arguments if arguments is not None else {"city": "Oslo"}, idempotency_key=f"t1:1:c{n}",
        reply_subject=subjects.events("weather", "t1"), requested_at=0.0, timeout_s=5.0)


async def test_runner_fails_fast_when_open_then_probe_closes() -> None:
    switch, clock, kv = Switch(), Clock(), InMemoryKV()
    tools = make_tools(switch, fallback=None)
    a = ToolRunner(tools, InMemoryBus(), worker="a", breakers=kv, clock=clock)
    b = ToolRunner(tools, InMemoryBus(), worker="b", breakers=kv, clock=clock)
    for n in range(3):
        out = await (a if n % 2 else b).run(req("primary", n))
        assert out.error is not None and out.error.kind == "unavailable" and out.attempts == 1
    assert switch.runs == 3
    for runner in (a, b):
        out = await runner.run(req("primary", 10))
        assert out.error is not None and out.error.kind == "circuit_open" and out.attempts == 0
        assert out.error.hint == "retry after 30s, or do without this tool" and not out.error.retryable
    assert switch.runs == 3  # failed fast: the tool did not run

    clock.now += 30.0
    switch.up = True
    out = await b.run(req("primary", 11))  # the half-open probe
    assert out.error is None and out.result == "sunny in Oslo"
    assert (await b.breaker.state("primary")) == CLOSED
    assert (await a.run(req("primary", 12))).result == "sunny in Oslo"


async def test_probe_failure_reopens_for_another_open_period() -> None:
    switch, clock, kv = Switch(), Clock(), InMemoryKV()
    runner = ToolRunner(make_tools(switch, fallback=None), InMemoryBus(), worker="a", breakers=kv, clock=clock)
    for n in range(3):
        await runner.run(req("primary", n))
    clock.now += 30.0
    out = await runner.run(req("primary", 3))  # probe, still down
    assert out.error is not None and out.error.kind == "unavailable"
    state = await runner.breaker.state("primary")
    assert state.state == "open" and state.opened_at == clock.now
    clock.now += 29.0
    assert (await runner.run(req("primary", 4))).error.kind == "circuit_open"  # type: ignore[union-attr]
    assert switch.runs == 4


async def test_fallback_serves_while_open() -> None:
    switch, clock, bus = Switch(), Clock(), InMemoryBus()
    runner = ToolRunner(make_tools(switch), bus, worker="a", breakers=InMemoryKV(), clock=clock)
    for n in range(3):
        out = await runner.run(req("primary", n))
        assert out.served_by == ""
    await runner.on_call(req("primary", 3))
    done = codec.agent_inbox.decode(bus.published[-1].payload)
    assert isinstance(done, ToolCallCompleted)
    assert done.ok and done.tool == "primary" and done.served_by == "backup"
    assert done.result == "cached: mild in Oslo (metric)" and done.attempts == 1
    assert switch.runs == 3


async def test_fallback_that_rejects_the_arguments_leaves_circuit_open() -> None:
    runner = ToolRunner(make_tools(Switch()), InMemoryBus(), worker="a", breakers=InMemoryKV(), clock=Clock())
    for n in range(3):
        await runner.run(req("picky", n))
    out = await runner.run(req("picky", 3))
    assert out.error is not None and out.error.kind == "circuit_open" and out.served_by == ""


async def test_invalid_arguments_do_not_count_against_the_tool() -> None:
    switch = Switch()
    runner = ToolRunner(make_tools(switch), InMemoryBus(), worker="a", breakers=InMemoryKV(), clock=Clock())
    for n in range(10):
        out = await runner.run(req("primary", n, {"town": "Oslo"}))
        assert out.error is not None and out.error.kind == "invalid_arguments"
    assert (await runner.breaker.state("primary")) == CLOSED and switch.runs == 0


class BrokenKV(InMemoryKV):
    async def get(self, key: str) -> Entry | None:
        raise ConnectionError("kv down")


async def test_breaker_store_outage_runs_the_call_unguarded() -> None:
    switch = Switch()
    switch.up = True
    runner = ToolRunner(make_tools(switch), InMemoryBus(), worker="a", breakers=BrokenKV())
    assert (await runner.run(req("primary", 1))).result == "sunny in Oslo"


# --------------------------------------------------------------------------- real JetStream KV


async def test_breaker_on_a_real_kv_is_shared_and_probe_claimed_once(nats_url: str) -> None:
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        await nats_adapters.provision(nc_a.jetstream())
        kv_a = await nats_adapters.bucket(nc_a.jetstream(), subjects.TOOL_BREAKERS.name)
        kv_b = await nats_adapters.bucket(nc_b.jetstream(), subjects.TOOL_BREAKERS.name)
        switch, clock = Switch(), Clock()
        tools = make_tools(switch, fallback=None)
        a = ToolRunner(tools, InMemoryBus(), worker="a", breakers=kv_a, clock=clock)
        b = ToolRunner(tools, InMemoryBus(), worker="b", breakers=kv_b, clock=clock)
        for n in range(3):
            await a.run(req("primary", n))
        out = await b.run(req("primary", 3))  # replica b sees a's breaker
        assert out.error is not None and out.error.kind == "circuit_open" and switch.runs == 3
        entry = await kv_b.get("primary")
        assert entry is not None and msgspec.json.decode(entry.value)["state"] == "open"

        clock.now += 30.0
        claims = await asyncio.gather(*(SharedBreaker(kv, clock=clock).admit("primary", P, f"{w}/x")
                                        for w, kv in (("a", kv_a), ("b", kv_b), ("a2", kv_a), ("b2", kv_b))))
        assert sorted(adm.action for adm, _ in claims) == ["probe", "reject", "reject", "reject"]
        [(_, seen)] = [c for c in claims if c[0].action == "probe"]
        owner = seen.state.probe_owner
        switch.up = True
        await SharedBreaker(kv_a, clock=clock).record("primary", P, owner, ok=True, probe=True, seen=seen)
        assert (await b.breaker.state("primary")) == CLOSED
        assert (await b.run(req("primary", 5))).result == "sunny in Oslo"
        with pytest.raises(Conflict):
            await kv_a.update("primary", b"{}", seen.revision)  # the close bumped the revision
    finally:
        await nc_a.close()
        await nc_b.close()
