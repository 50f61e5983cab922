"""The consumer loop through its consumer leader's death on the 3-node cluster
(ops/nats-cluster): it notices the lost pulls, backs off, logs a
bounded number of lines (not one per attempt: 2,000-2,700 warnings a second
per worker before), and handles every message published before and after."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import nats
import nats.errors
import pytest
from cluster import NatsCluster
from conftest import until
from nats.aio.msg import Msg
from nats.js import api

from agentstream.runtime.execution.consumer import ConsumerSettings, PullConsumer

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(180)]

STREAM = "FAILOVER"


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster() as c:
        yield c


async def test_a_killed_consumer_leader_is_a_few_log_lines_and_loses_nothing(
        cluster: NatsCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agentstream")
    nc = await nats.connect(servers=cluster.urls.split(","), connect_timeout=2, reconnect_time_wait=0.1,
                            max_reconnect_attempts=-1)
    js = nc.jetstream(timeout=2)
    await js.add_stream(api.StreamConfig(name=STREAM, subjects=["fo.>"], num_replicas=3))
    seen: set[bytes] = set()

    async def handler(msg: Msg) -> None:
        seen.add(msg.data)

    async def publish(i: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                await js.publish("fo.x", f"m{i}".encode(), timeout=2, headers={"Nats-Msg-Id": f"m{i}"})
                return
            except (TimeoutError, nats.errors.Error):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    cs = ConsumerSettings(stream=STREAM, durable="fo", filter_subject="fo.>", pull_heartbeat_s=0.3,
                          backoff_base_s=0.05, backoff_cap_s=0.5)
    consumer = PullConsumer(js, cs, handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, drain_timeout_s=5))
    try:
        await asyncio.wait_for(consumer.started.wait(), timeout=60)
        for i in range(20):
            await publish(i)
        await until(lambda: len(seen) == 20, 30, "20 messages before the kill")

        async def leader() -> str | None:
            # The node leading the consumer: its death ends every open pull.
            try:
                ci = await js.consumer_info(STREAM, "fo")
            except Exception:  # noqa: BLE001 - an election in progress
                return None
            return ci.cluster.leader if ci.cluster else None

        victim = cluster.index_of(await until(leader, 30, "a consumer leader"))
        caplog.clear()
        cluster.kill(victim)
        for i in range(20, 60):
            await publish(i)
        await until(lambda: len(seen) == 60, 90, "all 60 messages, 40 of them after the kill")
        lines = [r.getMessage() for r in caplog.records
                 if r.name.startswith("agentstream") and r.levelno >= logging.WARNING]
        # its open pulls died with the leader: noticed (one line), then back
        assert 1 <= len(lines) <= 3, lines
        assert any("back after" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await nc.close()
