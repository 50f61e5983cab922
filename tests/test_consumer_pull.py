"""The consumer loop against a real nats-server: a message is handled as soon
as it arrives (never held until its pull request ends), and an outage of the
stream or the broker is one log line, however many attempts it takes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from conftest import until
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.execution.consumer import ConsumerSettings, PullConsumer
from agentstream.runtime.execution.pull import Backoff

STREAM = "PULLTEST"


async def _stream(nc: NatsClient) -> None:
    await nc.jetstream().add_stream(StreamConfig(name=STREAM, subjects=["pt.>"]))


@contextlib.asynccontextmanager
async def running(nc: NatsClient, seen: list[bytes], **settings: float) -> AsyncIterator[PullConsumer]:
    async def handler(msg: Msg) -> None:
        seen.append(msg.data)

    cs = ConsumerSettings(stream=STREAM, durable="pt", filter_subject="pt.>", **settings)  # type: ignore[arg-type]
    consumer = PullConsumer(nc.jetstream(), cs, handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, drain_timeout_s=2))
    try:
        await asyncio.wait_for(consumer.started.wait(), timeout=20)
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


def _at_least(seen: list[bytes], n: int) -> bool:
    return len(seen) >= n


def consumer_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("agentstream") and r.levelno >= logging.WARNING]


async def test_each_message_is_handled_while_its_pull_request_is_still_open(nats_url: str) -> None:
    """An idle consumer always has a pull request waiting on the server. The
    last message of a burst landing in it used to wait in nats-py's fetch for
    the batch to fill, until the pull expired (then 0.5 s, here 60 s)."""
    nc = await nats.connect(nats_url)
    try:
        await _stream(nc)
        seen: list[bytes] = []
        async with running(nc, seen, pull_expires_s=60.0, pull_heartbeat_s=20.0) as consumer:
            for i in range(3):
                await nc.jetstream().publish("pt.x", f"m{i}".encode())
                await until(functools.partial(_at_least, seen, i + 1), 20,
                            f"message {i} handled with its pull still open")
            assert seen == [b"m0", b"m1", b"m2"]
            assert consumer.pull is not None and consumer.pull.pulls <= 2  # one open pull served them all
    finally:
        await nc.close()


async def test_a_stream_away_for_many_attempts_is_one_log_line(nats_url: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agentstream")
    nc = await nats.connect(nats_url)
    try:
        await _stream(nc)
        seen: list[bytes] = []
        async with running(nc, seen, backoff_base_s=0.02, backoff_cap_s=0.1, pull_heartbeat_s=0.2) as consumer:
            assert consumer.pull is not None
            pull = consumer.pull
            await nc.jetstream().delete_stream(STREAM)  # the stream, and its consumer, are gone
            await until(lambda: pull.outage.attempts >= 15, 30, "15 attempts during the outage")
            assert len(consumer_warnings(caplog)) == 1, consumer_warnings(caplog)
            assert "unavailable" in consumer_warnings(caplog)[0]
            await _stream(nc)  # back: the consumer re-creates its durable and pulls again
            await until(lambda: not pull.outage.active, 30, "the consumer to notice the stream is back")
            await nc.jetstream().publish("pt.x", b"after")
            await until(lambda: seen == [b"after"], 20, "a message published after the outage")
        assert len(consumer_warnings(caplog)) == 1, consumer_warnings(caplog)
        backoffs = [r for r in caplog.records if "still unavailable" in r.getMessage()]
        assert backoffs and all(r.levelno == logging.DEBUG for r in backoffs)
    finally:
        await nc.close()


async def test_a_broker_restart_is_one_log_line_and_loses_nothing(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agentstream")
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    nc = await nats_adapters.connect(server.url)
    try:
        await _stream(nc)
        seen: list[bytes] = []
        async with running(nc, seen, backoff_base_s=0.02, backoff_cap_s=0.1, pull_heartbeat_s=0.2) as consumer:
            assert consumer.pull is not None
            pull = consumer.pull
            await nc.jetstream().publish("pt.x", b"before")
            await until(lambda: seen == [b"before"], 20, "a message before the outage")
            await asyncio.to_thread(server.stop)
            await until(lambda: pull.outage.attempts >= 5, 30, "5 attempts while the broker is down")
            await asyncio.to_thread(server.start)  # same port, same store: stream and consumer survive
            await until(lambda: nc.is_connected, 30, "the reconnect")
            await nc.jetstream().publish("pt.x", b"after")
            await until(lambda: seen == [b"before", b"after"], 30, "a message published after the restart")
        assert len(consumer_warnings(caplog)) == 1, consumer_warnings(caplog)
    finally:
        await nc.close()
        server.stop()


def test_backoff_is_full_jitter_and_capped() -> None:
    import random

    b = Backoff(base_s=0.1, cap_s=2.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(40)]
    assert all(0 <= d <= 2.0 for d in delays)
    assert max(delays[:3]) <= 0.4  # the first attempts are quick
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not in lockstep
    b.reset()
    assert b.next_delay() <= 0.1


@pytest.mark.slow
async def test_a_runtime_logs_one_line_per_consumer_for_a_broker_outage(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A whole replica (agent and tool consumers, deadline sweep) through a
    broker restart: a bounded number of lines, then it serves tasks again."""
    import dataclasses

    from agentstream.contracts.events import TaskCompleted
    from agentstream.runtime.config.settings import Settings
    from agentstream.runtime.interfaces.client import AgentClient
    from agentstream.runtime.observability.telemetry_config import TelemetryConfig
    from agentstream.runtime.service.runtime import Runtime

    caplog.set_level(logging.INFO, logger="agentstream")
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    settings = dataclasses.replace(Settings.from_env({}), nats_url=server.url, data_dir=tmp_path / "data",
                                   sweep_interval_s=0.2)
    from apps.crash_app import app

    rt = Runtime(settings=settings, app=app, agents=["crashy"], tools="all",
                 telemetry_config=TelemetryConfig.disabled())
    try:
        await rt.start()
        caplog.clear()  # start-up lint warnings are not the outage's
        await asyncio.to_thread(server.stop)
        pulls = [c.pull for c in rt.consumers if c.pull is not None]
        await until(lambda: all(p.outage.attempts >= 3 for p in pulls), 60, "3 attempts on every consumer")
        during = consumer_warnings(caplog)
        # one per consumer (5: tasks, inbox, three tools) and one per background
        # loop (the deadline sweep, the canary analysis), at most
        assert 1 <= len(during) <= len(pulls) + 2, during
        await asyncio.to_thread(server.start)
        async with await AgentClient.connect(server.url, telemetry=False) as client:
            await client.submit("crashy", "after-outage", task_id="after-outage")
            res = await client.result("after-outage", timeout=60)
        assert isinstance(res, TaskCompleted)
        assert len(consumer_warnings(caplog)) == len(during), consumer_warnings(caplog)
        assert any("back after" in r.getMessage() for r in caplog.records)
    finally:
        await rt.stop()
        server.stop()
