"""Worker processes against a real nats-server: crash safety (SIGKILL mid-task),
load split across replicas, the any-language path (plain nats-py), the CLI,
dead letters, graceful shutdown and a 3-node cluster losing a node.

Synchronisation is by polling files and streams with deadlines, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors as jse
import pytest
from apps.crash_app import TOOLS, expected_output
from cluster import NatsCluster
from conftest import SpawnWorker, WorkerPool, broker_with_workers, one_line_error, run_cli, until, worker_env
from nats.aio.client import Client as NatsClient

from agentstream.contracts import subjects
from agentstream.contracts.events import TaskCompleted
from agentstream.runtime.adapters.embedded_broker import free_port
from agentstream.runtime.interfaces.client import AgentClient

pytestmark = pytest.mark.slow

CRASH_APP = "crash_app:app"
RESULT_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- helpers


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def model_lines(path: Path, task: str, step: int | None = None) -> list[tuple[int, str, int]]:
    """(step, worker id, pid) of each model turn logged for ``task``."""
    out = []
    for line in lines(path):
        _, s, worker, pid, t = line.split(" ", 4)
        if t == task and (step is None or int(s) == step):
            out.append((int(s), worker, int(pid)))
    return out


def tool_runs(path: Path, task: str) -> dict[str, int]:
    counts = dict.fromkeys(TOOLS, 0)
    for line in lines(path):
        name, _, t = line.partition(" ")
        if t == task:
            counts[name] += 1
    return counts


async def result_count(client: AgentClient, agent: str, task_id: str) -> int:
    subject = f"agents.{agent}.results.{task_id}"
    info = await client.js.stream_info("RESULTS", subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


def crash_env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"AGENTSTREAM_NATS_URL": url, "AGENTSTREAM_APP": CRASH_APP,
            "CRASH_APP_LOG": str(tmp_path / "tools.log"), "CRASH_APP_MODEL_LOG": str(tmp_path / "model.log"),
            **extra}


async def retry(fn: Callable[[], Awaitable[str]], timeout: float) -> str:
    """Retry a call through a broker fail-over (a retried submit is deduplicated by task id)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except Exception:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.25)


async def result_through_failover(client: AgentClient, task_id: str, timeout: float = RESULT_TIMEOUT_S) -> object:
    """client.result(), retried while the cluster elects new leaders: its stored-result
    lookup (a direct get) can fail with NoRespondersError right after a node dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.result(task_id, timeout=max(0.1, deadline - time.monotonic()), agent="support")
        except (nats.errors.Error, jse.Error):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.25)


# --------------------------------------------------------------------------- a. SIGKILL mid-task


async def test_sigkill_mid_task_another_replica_finishes(nats_url: str, worker_pool: WorkerPool,
                                                         tmp_path: Path) -> None:
    tools_log, model_log = tmp_path / "tools.log", tmp_path / "model.log"
    agents = worker_pool.spawn_all([
        (["--tools", "all"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="tools", CRASH_APP_TOOL_S="0.3")),
        (["--agent", "crashy"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="agent-1", CRASH_APP_MODEL_S="3")),
        (["--agent", "crashy"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="agent-2", CRASH_APP_MODEL_S="3")),
    ])[1:]
    by_pid = {p.pid: p for p in agents}

    async with await AgentClient.connect(nats_url) as client:
        task = "crash-1"
        task_id = await client.submit("crashy", task)
        await until(lambda: model_lines(model_log, task, step=2), 20, "the second model turn to start")
        [(_, victim_id, victim_pid)] = model_lines(model_log, task, step=2)
        victim = by_pid[victim_pid]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        survivor = next(p for p in agents if p is not victim)
        assert survivor.poll() is None

        res = await client.result(task_id, timeout=RESULT_TIMEOUT_S)
        assert isinstance(res, TaskCompleted), res
        assert res.output == expected_output(task)
        assert res.steps == 2 and res.tool_calls == 3

        # Tools ran exactly once: the crash was after their results were recorded.
        assert tool_runs(tools_log, task) == dict.fromkeys(TOOLS, 1), lines(tools_log)
        # One result on the stream, although two replicas worked on the last step.
        assert await result_count(client, "crashy", task_id) == 1
        # The second turn was re-run by the survivor, which finished the task.
        turns2 = model_lines(model_log, task, step=2)
        assert [w for _, w, _ in turns2] == [victim_id, next(w for w in ("agent-1", "agent-2") if w != victim_id)]
        assert turns2[-1][2] == survivor.pid


# --------------------------------------------------------------------------- b. load split


async def test_two_agent_replicas_split_the_load(nats_url: str, worker_pool: WorkerPool,
                                                 tmp_path: Path) -> None:
    model_log = tmp_path / "model.log"
    worker_pool.spawn_all([
        (["--tools", "all"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="tools", CRASH_APP_TOOL_S="0.05")),
        (["--agent", "crashy"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="agent-1",
                                          AGENTSTREAM_MAX_IN_FLIGHT="8")),
        (["--agent", "crashy"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="agent-2",
                                          AGENTSTREAM_MAX_IN_FLIGHT="8")),
    ])
    async with await AgentClient.connect(nats_url) as client:
        tasks = [f"load-{i}" for i in range(40)]
        ids = await asyncio.gather(*(client.submit("crashy", t) for t in tasks))
        results = await asyncio.wait_for(
            asyncio.gather(*(client.result(i, timeout=RESULT_TIMEOUT_S) for i in ids)), RESULT_TIMEOUT_S + 5)
    for t, res in zip(tasks, results):
        assert isinstance(res, TaskCompleted), res
        assert res.output == expected_output(t)
    workers = {line.split()[2] for line in lines(model_log)}
    assert workers == {"agent-1", "agent-2"}, workers


# --------------------------------------------------------------------------- support desk (c, d, e)


@pytest.fixture(scope="module")
def support_desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One broker with a support agent worker and a tool worker for the whole module."""
    env = {"AGENTSTREAM_MAX_EVENT_BYTES": "2048"}
    with broker_with_workers(tmp_path_factory.mktemp("support"), [
            (["--agent", "support"], {**env, "AGENTSTREAM_WORKER_ID": "support-agent"}),
            (["--tools", "all"], {**env, "AGENTSTREAM_WORKER_ID": "support-tools"})]) as url:
        yield url


async def test_plain_nats_client_submits_and_reads_results(support_desk: str) -> None:
    nc = await nats.connect(support_desk)
    try:
        js = nc.jetstream()
        # With a task id: read the result with an ordered consumer, whenever it lands.
        sub = await js.subscribe("agents.support.results.plain-1", ordered_consumer=True)
        await js.publish("agents.support.tasks", b'{"type":"agentstream.task.submitted.v1","agent":"support",'
                                                 b'"input":"Where is my order 42?","task_id":"plain-1"}')
        msg = await sub.next_msg(timeout=RESULT_TIMEOUT_S)
        body = json.loads(msg.data)
        assert body["type"] == "agentstream.task.completed.v1", body
        assert body["task_id"] == "plain-1" and "42" in body["output"]
        await sub.unsubscribe()

        # Without a task id: the runtime derives seq-<stream sequence>.
        live = await nc.subscribe("agents.support.results.>")
        ack = await js.publish("agents.support.tasks", b'{"type":"agentstream.task.submitted.v1",'
                                                       b'"agent":"support","input":"Where is my order 7?"}')
        msg = await live.next_msg(timeout=RESULT_TIMEOUT_S)
        body = json.loads(msg.data)
        assert body["type"] == "agentstream.task.completed.v1", body
        assert body["task_id"].startswith("seq-") and body["task_id"] == f"seq-{ack.seq}"
        assert msg.subject == f"agents.support.results.{body['task_id']}"
        assert "7" in body["output"]
    finally:
        await nc.close()


def _cli(args: list[str], url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli(args, worker_env({"AGENTSTREAM_NATS_URL": url}), timeout=timeout)


def test_cli_submit_watch_and_errors(support_desk: str) -> None:
    sub = _cli(["submit", "support", "where is my order 42?", "--wait", "--timeout", "30"], support_desk)
    assert sub.returncode == 0, sub.stderr
    out = sub.stdout.strip().splitlines()
    assert len(out) == 2, sub.stdout
    task_id, result = out
    assert task_id and " " not in task_id
    assert "42" in result

    watch = _cli(["watch", task_id, "--timeout", "20"], support_desk)
    assert watch.returncode == 0, watch.stderr
    names = [line.split()[1] for line in watch.stdout.strip().splitlines()]
    assert "ToolCallCompleted" in names and names[-1] == "TaskCompleted", watch.stdout

    closed = f"nats://127.0.0.1:{free_port()}"
    one_line_error(_cli(["submit", "support", "hello"], closed, timeout=30))
    one_line_error(_cli(["submit", "bad.agent", "x"], support_desk))


async def test_bad_messages_are_dead_lettered_and_consumers_keep_going(support_desk: str) -> None:
    nc = await nats.connect(support_desk)
    try:
        js = nc.jetstream()
        marker = f"dlq-{time.monotonic_ns()}"
        bad = [
            ("agents.support.tasks", b"\x00\xff garbage " + marker.encode()),
            ("agents.support.tasks", json.dumps({"type": "agentstream.no.such.event.v1", "agent": "support",
                                                 "input": marker}).encode()),
            ("agents.support.tasks", json.dumps({"type": "agentstream.task.submitted.v1", "agent": "support",
                                                 "input": marker + "x" * 4000}).encode()),
            ("tools.lookup_order.calls", b"not json " + marker.encode()),
            ("agents.support.events.x1", b"{garbage " + marker.encode()),
        ]
        for subject, payload in bad:
            await js.publish(subject, payload)

        sub = await js.subscribe("deadletter.>", ordered_consumer=True)
        found: dict[str, list[dict[str, object]]] = {}
        deadline = time.monotonic() + 20
        while sum(map(len, found.values())) < len(bad):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"dead letters so far: {found}"
            try:
                msg = await sub.next_msg(timeout=remaining)
            except nats.errors.TimeoutError:
                continue
            body = json.loads(msg.data)
            if marker in str(body.get("payload", "")):
                found.setdefault(msg.subject, []).append(body)
        await sub.unsubscribe()
        assert {s: len(v) for s, v in found.items()} == {
            "deadletter.agents.support.tasks": 3,
            "deadletter.tools.lookup_order.calls": 1,
            "deadletter.agents.support.events.x1": 1,
        }
        for subject, bodies in found.items():
            for b in bodies:
                assert b["type"] == "agentstream.dead.lettered.v1"
                assert b["subject"] == subject.removeprefix("deadletter.")
                assert isinstance(b["reason"], str) and b["reason"].strip(), b
        oversized = [b for b in found["deadletter.agents.support.tasks"] if int(b["payload_bytes"]) > 2048]  # type: ignore[call-overload]
        assert len(oversized) == 1 and "2048" in str(oversized[0]["reason"])
    finally:
        await nc.close()

    async with await AgentClient.connect(support_desk) as client:
        task_id = await client.submit("support", "Where is my order 42?")
        res = await client.result(task_id, timeout=RESULT_TIMEOUT_S)
        assert isinstance(res, TaskCompleted) and "42" in res.output


# --------------------------------------------------------------------------- f. graceful shutdown


async def test_sigterm_tool_worker_finishes_or_hands_over(nats_url: str, worker_pool: WorkerPool,
                                                          spawn_worker: SpawnWorker, tmp_path: Path) -> None:
    tools_log = tmp_path / "tools.log"
    tools1, _agent = worker_pool.spawn_all([
        (["--tools", "all"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="tools-1", CRASH_APP_TOOL_S="1.5")),
        (["--agent", "crashy"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="agent-1")),
    ])
    async with await AgentClient.connect(nats_url) as client:
        task = "graceful-1"
        task_id = await client.submit("crashy", task)
        await until(lambda: sum(tool_runs(tools_log, task).values()), 20, "a tool call to start")
        t0 = time.monotonic()
        tools1.send_signal(signal.SIGTERM)
        # A replacement, as an orchestrator would start one: takes whatever tools-1 left.
        spawn_worker(["--tools", "all"], crash_env(nats_url, tmp_path, AGENTSTREAM_WORKER_ID="tools-2",
                                                   CRASH_APP_TOOL_S="1.5"), wait=False)
        code = await asyncio.to_thread(tools1.wait, 5 + 10)
        assert code == 0, worker_pool.output(tools1)
        assert time.monotonic() - t0 < 5 + 5, "shutdown took longer than its timeout"

        res = await client.result(task_id, timeout=RESULT_TIMEOUT_S)
        assert isinstance(res, TaskCompleted), res
        assert res.output == expected_output(task)
        runs = tool_runs(tools_log, task)
        assert all(1 <= n <= 2 for n in runs.values()), runs
        assert await result_count(client, "crashy", task_id) == 1


# --------------------------------------------------------------------------- g. cluster


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(base_dir=tmp_path / "cluster") as c:
        yield c


@pytest.mark.cluster
@pytest.mark.timeout(240)
async def test_cluster_survives_a_killed_node(nats_cluster: NatsCluster, worker_pool: WorkerPool) -> None:
    env = {"AGENTSTREAM_NATS_URL": nats_cluster.urls, "AGENTSTREAM_REPLICAS": "3"}
    worker_pool.spawn_all([
        (["--agent", "support"], {**env, "AGENTSTREAM_WORKER_ID": "c-agent"}),
        (["--tools", "all"], {**env, "AGENTSTREAM_WORKER_ID": "c-tools"}),
    ])
    client = await AgentClient.connect(nats_cluster.urls)
    try:
        # A client provisions with the default of 1 replica; it must not shrink the R3 streams.
        for stream in ("TASKS", "EVENTS", "TOOLS", "RESULTS"):
            assert (await client.js.stream_info(stream)).config.num_replicas == 3
        async def batch(prefix: str, wait_s: float = RESULT_TIMEOUT_S) -> None:
            ids = [await retry(lambda i=i: client.submit("support", f"Where is my order {i}?",  # type: ignore[misc]
                                                         task_id=f"{prefix}-{i}"), RESULT_TIMEOUT_S)
                   for i in range(1, 11)]
            results = await asyncio.gather(*(result_through_failover(client, t, wait_s) for t in ids))
            for i, res in zip(range(1, 11), results):
                assert isinstance(res, TaskCompleted), res
                assert f"Order {i} " in res.output, res.output

        await batch("before")
        # The worst node to lose: the one leading EVENTS, where tool results
        # are stored and the agents' partition consumers live. (With the
        # inbox as a second stream sourcing EVENTS, this stalled results for
        # 9-45 s until the server re-created its source consumer; a durable
        # on EVENTS fails over with the stream: docs/scaling.md.)
        cluster = (await client.js.stream_info("EVENTS")).cluster
        assert cluster is not None and cluster.leader, cluster
        leader = cluster.leader
        victim = next(n.index for n in nats_cluster.nodes if n.name == leader)
        nats_cluster.kill(victim)
        began = time.monotonic()
        await batch("after")
        print(f"\n10 tasks after killing EVENTS' leader {leader}: {time.monotonic() - began:.1f} s")
    finally:
        await client.close()


@pytest.mark.cluster
@pytest.mark.timeout(120)
async def test_provisioning_waits_for_a_cluster_still_forming(tmp_path: Path) -> None:
    """Replicas started together with their cluster (docker compose up) meet
    'no suitable peers for placement' until the meta leader has seen every
    peer: provisioning R3 assets waits for that instead of failing start-up."""
    from agentstream.runtime.adapters import jetstream as nats_adapters

    cluster = NatsCluster(base_dir=tmp_path / "forming").start(wait=False)
    try:
        nc = await _connect_within(cluster.urls, 30.0)
        try:
            await nats_adapters.provision(nc.jetstream(), replicas=3)
            js = nc.jetstream()
            for stream in ("TASKS", "EVENTS", "TOOLS", "RESULTS"):
                assert (await js.stream_info(stream)).config.num_replicas == 3
            kv = await nats_adapters.bucket(js, subjects.SESSIONS.name)
            await kv.put("k", b"v")
            assert (await kv.get("k")).value == b"v"  # type: ignore[union-attr]
        finally:
            await nc.close()
    finally:
        cluster.stop()


async def _connect_within(urls: str, timeout: float) -> NatsClient:
    from agentstream.runtime.adapters import jetstream as nats_adapters
    from agentstream.runtime.core.errors import BrokerUnavailable

    deadline = time.monotonic() + timeout
    while True:
        try:
            return await nats_adapters.connect(urls, connect_timeout=1.0)
        except BrokerUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)  # polling a port that is not listening yet
