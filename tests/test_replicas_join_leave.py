"""Replicas join and leave under load (real worker processes, graceful
SIGTERM): every task gets exactly one result and every tool call runs exactly
once. Scaling in and out is what an autoscaler on consumer lag does all day."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from apps.crash_app import TOOLS, expected_output
from conftest import WorkerPool, until

from agentstream.contracts import subjects
from agentstream.contracts.events import TaskCompleted
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability.lag import read_lag

N_TASKS = 200


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_replicas_started_and_stopped_mid_run_lose_and_duplicate_nothing(
        nats_server: EmbeddedNats, worker_pool: WorkerPool, tmp_path: Path) -> None:
    tool_log = tmp_path / "tools.log"
    env = {"AGENTSTREAM_NATS_URL": nats_server.url, "AGENTSTREAM_APP": "crash_app:app",
           "CRASH_APP_LOG": str(tool_log), "CRASH_APP_TOOL_S": "0.02",
           # the default ack wait: no redelivery of a step that is merely slow on a busy machine
           "AGENTSTREAM_ACK_WAIT": "30"}

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        return worker_pool.spawn(list(args), {**env, "AGENTSTREAM_WORKER_ID": name})

    def stop(proc: subprocess.Popen[bytes]) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60)

    agent1 = await asyncio.to_thread(spawn, "agent1", "--agent", "crashy")
    tools1 = await asyncio.to_thread(spawn, "tools1", "--tools", "all")
    client = await AgentClient.connect(nats_server.url, telemetry=False)
    results: dict[str, object] = {}
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            tid = f"roll-{i:04d}"
            await client.submit("crashy", tid, task_id=tid)
            results[tid] = await client.result(tid, timeout=240)

    try:
        load = asyncio.gather(*(one(i) for i in range(N_TASKS)))
        await until(lambda: len(results) >= 30, 120, "30 results with one replica each")
        await asyncio.to_thread(spawn, "agent2", "--agent", "crashy")
        await asyncio.to_thread(spawn, "tools2", "--tools", "all")
        await until(lambda: len(results) >= 80, 120, "80 results with two replicas each")
        # the first replicas leave mid-run (graceful), a third agent joins
        assert await asyncio.to_thread(stop, agent1) == 0, worker_pool.output(agent1)
        assert await asyncio.to_thread(stop, tools1) == 0, worker_pool.output(tools1)
        await until(lambda: len(results) >= 120, 120, "120 results after the first replicas left")
        await asyncio.to_thread(spawn, "agent3", "--agent", "crashy")
        await asyncio.wait_for(load, timeout=240)
    finally:
        await client.close()

    await assert_exactly_once(nats_server.url, results, tool_log)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_an_agent_replica_killed_while_owning_inbox_partitions_loses_nothing(
        nats_server: EmbeddedNats, worker_pool: WorkerPool, tmp_path: Path) -> None:
    """SIGKILL, no goodbye: the killed replica's heartbeat expires, the other
    takes its inbox partitions, and what it had taken but not acknowledged is
    redelivered to the new owner after the ack wait."""
    tool_log, model_log = tmp_path / "tools.log", tmp_path / "model.log"
    env = {"AGENTSTREAM_NATS_URL": nats_server.url, "AGENTSTREAM_APP": "crash_app:app",
           "CRASH_APP_LOG": str(tool_log), "CRASH_APP_MODEL_LOG": str(model_log), "CRASH_APP_TOOL_S": "0.02",
           "AGENTSTREAM_ACK_WAIT": "30"}

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        return worker_pool.spawn(list(args), {**env, "AGENTSTREAM_WORKER_ID": name})

    def turns_by(worker: str) -> int:
        lines = model_log.read_text().splitlines() if model_log.exists() else []
        return sum(1 for line in lines if line.split()[2] == worker)

    victim = await asyncio.to_thread(spawn, "victim", "--agent", "crashy")
    await asyncio.to_thread(spawn, "survivor", "--agent", "crashy")
    await asyncio.to_thread(spawn, "tools1", "--tools", "all")
    client = await AgentClient.connect(nats_server.url, telemetry=False)
    results: dict[str, object] = {}
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            tid = f"kill-{i:04d}"
            await client.submit("crashy", tid, task_id=tid)
            results[tid] = await client.result(tid, timeout=240)

    try:
        load = asyncio.gather(*(one(i) for i in range(N_TASKS)))
        # both replicas serving (the inbox split between them), then the kill mid-run
        await until(lambda: turns_by("victim") >= 10 and turns_by("survivor") >= 10, 120, "both replicas working")
        before = len(results)
        victim.kill()
        assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
        assert before < N_TASKS - 50, "the kill came too late to matter"
        await asyncio.wait_for(load, timeout=240)
    finally:
        await client.close()

    await assert_exactly_once(nats_server.url, results, tool_log, inbox_empty=True)


async def assert_exactly_once(url: str, results: dict[str, object], tool_log: Path, *,
                              inbox_empty: bool = False) -> None:
    """Every task one correct result, one stored result per task, every tool
    call run once; with ``inbox_empty``, nothing left unacknowledged in any inbox partition."""
    assert len(results) == N_TASKS
    for tid, res in results.items():
        assert isinstance(res, TaskCompleted), (tid, res)
        assert res.output == expected_output(tid)
    check = await AgentClient.connect(url, telemetry=False, provision=False)
    try:
        info = await check.js.stream_info("RESULTS", subjects_filter="agents.crashy.results.>")
        per_subject = info.state.subjects or {}
        # nothing left behind in the inbox: every partition's events were handled and acknowledged
        inbox = None
        if inbox_empty:
            lag = {c.durable: c for c in await read_lag(check.js) if c.stream == subjects.EVENTS_STREAM}
            inbox = lag[subjects.agent_durable("crashy", "events")]
    finally:
        await check.close()
    assert len(per_subject) == N_TASKS and set(per_subject.values()) == {1}
    if inbox is not None:
        assert inbox.pending == 0 and inbox.ack_pending == 0, inbox
    runs = Counter(tool_log.read_text().splitlines())
    assert len(runs) == N_TASKS * len(TOOLS)
    duplicated = {k: v for k, v in runs.items() if v != 1}
    assert not duplicated, duplicated
