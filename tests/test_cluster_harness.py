"""The 3-node cluster from ops/nats-cluster keeps an R3 stream writable and readable
when a node is SIGKILLed, and the node catches up when it comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import nats
import nats.errors
import pytest
from cluster import NatsCluster  # tests/ is on sys.path (pytest rootdir-less "prepend" import mode)
from conftest import until
from nats.js import JetStreamContext, api

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

STREAM = "CLUSTER_HARNESS"
SUBJECT = "harness.msgs"


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster() as c:
        yield c


async def _publish(js: JetStreamContext, i: int, deadline: float) -> api.PubAck:
    """Publish message ``i``, retrying transient failures (leader election, client
    reconnecting) until ``deadline``. Nats-Msg-Id makes a retry after a lost ack a
    no-op on the server, so the stream holds each message exactly once."""
    while True:
        try:
            return await js.publish(SUBJECT, f"m{i}".encode(), stream=STREAM, timeout=2.0,
                                    headers={"Nats-Msg-Id": f"m{i}"})
        except (TimeoutError, nats.errors.Error):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)


async def test_r3_stream_survives_a_killed_node(cluster: NatsCluster) -> None:
    nc = await nats.connect(servers=cluster.urls.split(","), connect_timeout=2,
                            reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=5.0)
        await js.add_stream(name=STREAM, subjects=[SUBJECT], num_replicas=3,
                            duplicate_window=120.0)
        info = await js.stream_info(STREAM)
        assert info.config.num_replicas == 3

        deadline = time.monotonic() + 30
        for i in range(50):
            ack = await _publish(js, i, deadline)
            assert ack.stream == STREAM

        # Wait until the stream has a leader and two current replicas, then kill the
        # stream leader: the hardest single-node failure for a writer.
        async def placed() -> api.StreamInfo | None:
            si = await js.stream_info(STREAM)
            c = si.cluster
            if c and c.leader and c.replicas and len(c.replicas) == 2 and all(r.current for r in c.replicas):
                return si
            return None

        si = await until(placed, 20, "stream leader and current replicas")
        victim = cluster.index_of(si.cluster.leader)
        cluster.kill(victim)

        deadline = time.monotonic() + 30
        for i in range(50, 100):
            await _publish(js, i, deadline)

        async def new_leader() -> api.StreamInfo | None:
            try:
                si = await js.stream_info(STREAM)
            except nats.errors.Error:
                return None
            return si if si.cluster and si.cluster.leader and si.cluster.leader != cluster.nodes[victim].name else None

        si = await until(new_leader, 20, "a new stream leader")
        assert si.state.messages == 100

        # Creating a consumer goes through the meta leader, which may have been the
        # killed node: wait for the survivors to agree on one, then retry the create
        # (idempotent for the same config) until a deadline.
        await asyncio.to_thread(cluster.wait_ready, 20)
        deadline = time.monotonic() + 30
        while True:
            try:
                psub = await js.pull_subscribe(SUBJECT, durable="reader", stream=STREAM)
                break
            except nats.errors.Error:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while len(seen) < 100:
            try:
                msgs = await psub.fetch(batch=100, timeout=2.0)
            except nats.errors.TimeoutError:
                msgs = []
            for m in msgs:
                seen.append(m.data.decode())
                await m.ack()
            if time.monotonic() >= deadline:
                break
        assert seen == [f"m{i}" for i in range(100)]

        # The killed node rejoins from its store dir and catches up to 100 messages.
        cluster.restart(victim)

        async def caught_up() -> bool:
            jsz = await asyncio.to_thread(cluster.monitor, victim, "/jsz?accounts=true&streams=true")
            for acc in jsz.get("account_details") or []:
                for sd in acc.get("stream_detail") or []:
                    if sd.get("name") == STREAM:
                        return sd["state"]["messages"] == 100
            return False

        await until(caught_up, 20, f"{cluster.nodes[victim].name} to catch up")
    finally:
        await nc.close()
