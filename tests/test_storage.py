"""Bounded storage: byte limits and discard policies on every store, what a
full store does to submitters and workers, finished sessions trimmed, and the
audited admin commands (``agentstream admin storage`` / ``purge``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import one_line_error, run_cli, until, worker_env
from hypothesis import given
from hypothesis import strategies as st
from nats.js.api import DiscardPolicy, StoreCompression

from agentstream import App, FunctionModel, ModelRequest, TaskCompleted, answer, calls, tool, tool_results
from agentstream.contracts import codec, subjects
from agentstream.contracts.events import AuditRecord
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters import storage
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.settings import Settings, parse_duration, parse_size, parse_store_limits
from agentstream.runtime.core.errors import ConfigError, StoreFull
from agentstream.runtime.core.state import decode_state
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability.telemetry import TelemetryConfig
from agentstream.runtime.service.runtime import Runtime

AGENT = "store"
CALLS: dict[int, int] = {}


@tool
async def count(n: int) -> dict[str, int]:
    """Counts how often it ran for ``n``.

    Args:
        n: Any number.
    """
    CALLS[n] = CALLS.get(n, 0) + 1
    return {"n": n}


def _script(request: ModelRequest) -> Any:
    if tool_results(request):
        return answer("counted")
    n = int(request.messages[-1].content.split()[1])
    return calls(("count", {"n": n}))


def build_app() -> App:
    app = App()
    app.agent(AGENT, "Call count once, then answer.", tools=[count],
              scripted=lambda: FunctionModel(_script, name="count-scripted"))
    return app


@contextlib.asynccontextmanager
async def running(url: str, tmp_path: Path, limits: str, room_interval_s: float = 3600.0,
                  **extra: str) -> AsyncIterator[Runtime]:
    env = {**extra, "AGENTSTREAM_NATS_URL": url, "AGENTSTREAM_DATA_DIR": str(tmp_path), "AGENTSTREAM_WORKER_ID": "st-1",
           "AGENTSTREAM_SHUTDOWN_TIMEOUT": "1", "AGENTSTREAM_ACK_WAIT": "2", "AGENTSTREAM_STORE_LIMITS": limits}
    rt = Runtime(settings=Settings.from_env(env), app=build_app(), agents=[AGENT], tools="all",
                 telemetry_config=TelemetryConfig.disabled(), room_interval_s=room_interval_s)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


def alive(rt: Runtime) -> bool:
    return all(not t.done() for t in rt._tasks)


async def results_of(client: AgentClient, ids: list[str], timeout: float = 30.0) -> list[Any]:
    return list(await asyncio.gather(*(client.result(t, timeout=timeout, agent=AGENT) for t in ids)))


async def messages(client: AgentClient, stream: str) -> int:
    return int((await client.js.stream_info(stream)).state.messages)


def full_warning(caplog: pytest.LogCaptureFixture, store: str) -> Callable[[], bool]:
    return lambda: any(f"{store} is full" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------- configuration


@given(st.integers(min_value=1, max_value=10**6),
       st.sampled_from([("", 1), ("B", 1), ("KiB", 1024), ("kb", 1000), ("MiB", 1024**2), ("GB", 1000**3),
                        ("gib", 1024**3), ("T", 1000**4)]))
def test_sizes_parse_with_any_unit(n: int, unit: tuple[str, int]) -> None:
    assert parse_size(f"{n}{unit[0]}") == n * unit[1]
    assert parse_size(f" {n} {unit[0]} ") == n * unit[1]


@given(st.text(max_size=12))
def test_a_malformed_size_is_a_value_error_never_a_crash(text: str) -> None:
    try:
        value = parse_size(text)
    except ValueError as exc:
        assert "invalid size" in str(exc)
    else:
        assert value == -1 or value >= 1


def test_store_limits_from_the_environment() -> None:
    s = Settings.from_env({"AGENTSTREAM_STORE_LIMITS": "TASKS=1MiB, agent_sessions=unlimited"})
    assert s.store_limits == {"TASKS": 1024**2, "agent_sessions": -1}
    assert Settings.from_env({}).store_limits == {}
    with pytest.raises(ConfigError, match="AGENTSTREAM_STORE_LIMITS.*TASK=1MiB.*one of TASKS"):
        Settings.from_env({"AGENTSTREAM_STORE_LIMITS": "TASK=1MiB"})
    with pytest.raises(ConfigError, match="invalid size"):
        Settings.from_env({"AGENTSTREAM_STORE_LIMITS": "TASKS=lots"})
    with pytest.raises(ConfigError, match="AGENTSTREAM_STORE_COMPRESSION"):
        Settings.from_env({"AGENTSTREAM_STORE_COMPRESSION": "zstd"})
    with pytest.raises(ConfigError, match="AGENTSTREAM_FINISHED_SESSION_TTL"):
        Settings.from_env({"AGENTSTREAM_FINISHED_SESSION_TTL": "soon"})
    assert Settings.from_env({"AGENTSTREAM_FINISHED_SESSION_TTL": "2h"}).finished_session_ttl_s == 7200
    assert parse_store_limits("", subjects.store_names()) == {}
    assert parse_duration("7d") == 7 * 86400


def test_every_store_has_a_byte_limit_and_a_reasoned_discard_policy() -> None:
    for sd in subjects.STREAMS:
        assert sd.max_bytes > 0, sd.name
    for bd in subjects.BUCKETS:
        assert bd.max_bytes > 0, bd.name
    policy = {sd.name: sd.discard for sd in subjects.STREAMS}
    # work not yet done refuses new messages; records read afterwards drop the oldest
    assert policy["TASKS"] == policy["EVENTS"] == policy["TOOLS"] == policy["AUDIT"] == "new"
    assert policy["TELEMETRY"] == policy["RESULTS"] == policy["DEADLETTER"] == "old"
    assert subjects.stream_of("agents.a.tasks") == "TASKS"
    assert subjects.stream_of("agents.a.events.t1") == "EVENTS"
    assert subjects.stream_of("$KV.agent_sessions.t1") == "agent_sessions"
    assert subjects.stream_of("nowhere") == ""


async def test_provisioning_applies_limits_and_brings_drifted_ones_back(client: AgentClient) -> None:
    js = client.js
    # The client fixture provisioned the defaults.
    for sd in subjects.STREAMS:
        cfg = (await js.stream_info(sd.name)).config
        assert cfg.max_bytes == sd.max_bytes, sd.name
        assert cfg.discard == (DiscardPolicy.NEW if sd.discard == "new" else DiscardPolicy.OLD), sd.name
        assert (cfg.compression == StoreCompression.S2) == sd.compress, sd.name
    for bd in subjects.BUCKETS:
        cfg = (await js.stream_info(bd.stream)).config
        assert cfg.max_bytes == bd.max_bytes and (cfg.compression == StoreCompression.S2) == bd.compress, bd.name
    # The operator's limits win, on streams and buckets.
    await nats_adapters.provision(js, limits={"TASKS": 1024**2, "agent_sessions": 2 * 1024**2})
    assert (await js.stream_info("TASKS")).config.max_bytes == 1024**2
    assert (await js.stream_info("KV_agent_sessions")).config.max_bytes == 2 * 1024**2
    # Someone changed a stream by hand: provisioning puts it back.
    cfg = (await js.stream_info("TELEMETRY")).config
    cfg.max_bytes, cfg.discard, cfg.compression = 4096, DiscardPolicy.NEW, StoreCompression.NONE
    await js.update_stream(cfg)
    await nats_adapters.provision(js, compression="none")
    cfg = (await js.stream_info("TELEMETRY")).config
    assert (cfg.max_bytes, cfg.discard, cfg.compression) == (2 * 1024**3, DiscardPolicy.OLD, StoreCompression.NONE)
    assert (await js.stream_info("TASKS")).config.max_bytes == subjects.STREAMS[0].max_bytes


async def test_limits_larger_than_the_server_can_hold_are_one_clear_error(nats_url: str) -> None:
    nc = await nats_adapters.connect(nats_url)
    try:
        with pytest.raises(ConfigError, match="AGENTSTREAM_STORE_LIMITS"):
            await nats_adapters.provision(nc.jetstream(), limits={"TASKS": 1000**5})
    finally:
        await nc.close()


# ----------------------------------------------------------------- a full store


async def test_full_tasks_stream_refuses_submitters_and_recovers_when_space_returns(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with running(nats_server.url, tmp_path, "TASKS=12KiB") as rt, \
            await AgentClient.connect(nats_server.url, telemetry=False) as client:
        accepted: list[str] = []
        refused: StoreFull | None = None
        for i in range(1000):
            try:
                accepted.append(await client.submit(AGENT, f"count {i}"))
            except StoreFull as exc:
                refused = exc
                break
        assert refused is not None and accepted, "TASKS never filled up"
        assert refused.store == "TASKS"
        assert "TASKS is full" in str(refused) and "AGENTSTREAM_STORE_LIMITS=TASKS=" in str(refused)
        assert "agentstream admin purge" in str(refused)
        # Everything accepted runs to completion; the workers run on.
        done = await results_of(client, accepted)
        assert all(isinstance(r, TaskCompleted) for r in done)
        assert alive(rt) and await messages(client, "DEADLETTER") == 0
        # The CLI says it in one line.
        proc = await asyncio.to_thread(run_cli, ["submit", AGENT, "count 5000"],
                                       worker_env({"AGENTSTREAM_NATS_URL": nats_server.url}))
        assert "TASKS is full" in one_line_error(proc)
        # Make room: everything in TASKS has been processed, so a purge takes it all.
        purged = await storage.purge(client.nc, client.js, "TASKS", time.time() + 1)
        assert purged.removed == len(accepted) and purged.bytes_after < purged.bytes_before
        again = await client.submit(AGENT, "count 9999")
        assert isinstance((await results_of(client, [again]))[0], TaskCompleted)


async def test_processed_tasks_make_room_so_only_a_backlog_fills_tasks(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    limit = 12 * 1024
    async with running(nats_server.url, tmp_path, f"TASKS={limit}", room_interval_s=0.1) as rt, \
            await AgentClient.connect(nats_server.url, telemetry=False) as client:
        # Ten times what TASKS holds, one after another: each is processed
        # before the next, so processed ones make room and none is refused for long.
        for i in range(250):
            async def submitted(i: int = i) -> str:
                with contextlib.suppress(StoreFull):
                    return await client.submit(AGENT, f"count {500_000 + i}")
                return ""

            task_id = await until(submitted, 30, "room in TASKS")
            assert isinstance((await results_of(client, [task_id]))[0], TaskCompleted)
        info = await client.js.stream_info("TASKS")
        assert info.state.bytes <= limit and info.state.last_seq == 250 and info.state.messages < 250
        assert alive(rt) and await messages(client, "DEADLETTER") == 0


async def test_tasks_for_an_agent_nobody_serves_yet_are_never_trimmed(client: AgentClient) -> None:
    await nats_adapters.provision(client.js, limits={"TASKS": 8192})
    n = 0
    with contextlib.suppress(StoreFull):
        for i in range(1000):
            await client.submit("nobody", f"count {i}")
            n += 1
    assert 0 < n < 1000
    removed, held = await storage.trim_acknowledged(client.js, "TASKS")
    assert (removed, held) == (0, "no consumer for agents.nobody.tasks")
    assert await messages(client, "TASKS") == n


async def test_a_full_inbox_holds_workers_without_losing_or_dead_lettering(
        nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentstream")
    base = 100_000
    async with running(nats_server.url, tmp_path, "EVENTS=10KiB") as rt, \
            await AgentClient.connect(nats_server.url, telemetry=False) as client:
        ids = [await client.submit(AGENT, f"count {base + i}") for i in range(12)]
        await until(full_warning(caplog, "EVENTS"), 30, "a worker to find EVENTS full")
        # A step waiting for room has not finished, so neither has its task.
        assert await messages(client, "RESULTS") < len(ids)
        assert alive(rt) and await messages(client, "DEADLETTER") == 0
        # Space returns (the operator raises the limit): every task finishes,
        # each tool call having run once, nothing dead-lettered.
        await nats_adapters.provision(client.js, limits={"EVENTS": 4 * 1024**2})
        done = await results_of(client, ids)
        assert all(isinstance(r, TaskCompleted) for r in done), done
        assert [CALLS.get(base + i) for i in range(12)] == [1] * 12
        assert alive(rt) and await messages(client, "DEADLETTER") == 0


async def test_a_full_session_bucket_holds_tasks_until_finished_sessions_are_purged(
        nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentstream")
    base = 200_000
    full = full_warning(caplog, "agent_sessions")
    async with running(nats_server.url, tmp_path, "agent_sessions=6KiB") as rt, \
            await AgentClient.connect(nats_server.url, telemetry=False) as client:
        # One task at a time until the bucket, filled with finished sessions,
        # refuses the next step: that task is held, not failed.
        ids: list[str] = []

        async def finished_or_held() -> str:
            if full():
                return "held"
            return "finished" if await messages(client, "RESULTS") == len(ids) else ""

        for i in range(100):
            ids.append(await client.submit(AGENT, f"count {base + i}"))
            if await until(finished_or_held, 30, "a result or a full bucket") == "held":
                break
        assert full(), "agent_sessions never filled up"
        assert alive(rt) and await messages(client, "DEADLETTER") == 0
        # Make room as an operator would: finished sessions go, the running one stays.
        purged = await storage.purge(client.nc, client.js, subjects.SESSIONS.name, time.time() + 1)
        # (the held task has a session if its first step got in, none if not)
        assert purged.removed == len(ids) - 1 and purged.note in ("", "1 old key(s) kept as live state")
        done = await results_of(client, ids)
        assert all(isinstance(r, TaskCompleted) for r in done)
        assert [CALLS.get(base + i) for i in range(len(ids))] == [1] * len(ids)
        assert await messages(client, "DEADLETTER") == 0


# ----------------------------------------------------------------- less data per task


async def test_a_finished_session_keeps_only_what_a_retry_needs_and_expires(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with running(nats_server.url, tmp_path, "") as rt, \
            await AgentClient.connect(nats_server.url, telemetry=False) as client:
        task_id = await client.submit(AGENT, "count 300000 " + "x" * 20_000)
        first = (await results_of(client, [task_id]))[0]
        entry = await rt.engines[AGENT].sessions.get(task_id)
        # neither the input nor the conversation that repeated it
        assert entry is not None and b"x" * 100 not in entry.value and len(entry.value) < 5000
        state = decode_state(entry.value)
        assert state.terminal and state.outcome == first and state.messages == () and state.task.input == ""
        # Its entry carries a TTL (AGENTSTREAM_FINISHED_SESSION_TTL, 1 hour by default).
        raw = await client.js.get_last_msg(subjects.SESSIONS.stream, f"$KV.{subjects.SESSIONS.name}.{task_id}")
        assert raw.headers is not None and raw.headers.get("Nats-TTL") == "3600"
        # A retry of the task id still gets the same result, not a second run.
        await client.submit(AGENT, "count 300000", task_id=task_id)
        assert (await results_of(client, [task_id]))[0] == first and CALLS[300000] == 1
        # The finished task's deadline timer left nothing behind (no delete marker either).
        assert int((await client.js.stream_info(subjects.DEADLINES.stream)).state.messages) == 0


async def test_finished_sessions_leave_the_store_after_their_ttl(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with running(nats_server.url, tmp_path, "", AGENTSTREAM_FINISHED_SESSION_TTL="1s") as rt, \
            await AgentClient.connect(nats_server.url, telemetry=False) as client:
        task_id = await client.submit(AGENT, "count 300001")
        await results_of(client, [task_id])
        sessions = rt.engines[AGENT].sessions

        async def gone() -> bool:
            return await sessions.get(task_id) is None

        await until(gone, 15, "the finished session to expire")


# ----------------------------------------------------------------- admin commands


async def _audit_records(client: AgentClient) -> list[AuditRecord]:
    out = []
    info = await client.js.stream_info("AUDIT")
    for seq in range(int(info.state.first_seq or 1), int(info.state.last_seq or 0) + 1):
        msg = await client.js.get_msg("AUDIT", seq)
        ev = codec.any_event.decode(msg.data or b"")
        assert isinstance(ev, AuditRecord)
        out.append(ev)
    return out


async def test_admin_storage_and_purge_are_audited(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with running(nats_server.url, tmp_path, "") as rt, \
            await AgentClient.connect(nats_server.url, telemetry=False) as client:
        ids = [await client.submit(AGENT, f"count {400_000 + i}") for i in range(3)]
        await results_of(client, ids)
        env = worker_env({"AGENTSTREAM_NATS_URL": nats_server.url})
        proc = await asyncio.to_thread(run_cli, ["admin", "storage", "--as", "ops-ann"], env)
        assert proc.returncode == 0, proc.stderr
        lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines() if ln.strip()}
        for name in subjects.store_names():
            assert name in lines, proc.stdout
        assert "1.0 GiB" in lines["TASKS"] and " new " in lines["TASKS"] and " old " in lines["TELEMETRY"]
        proc = await asyncio.to_thread(run_cli, ["admin", "storage", "--json"], env)
        rows = {r["name"]: r for r in json.loads(proc.stdout)}
        assert rows["RESULTS"]["messages"] == 3 and rows["RESULTS"]["oldest_age_s"] >= 0
        # The replica heartbeats are shown too, bounded.
        assert rows["agent_replicas"]["max_bytes"] > 0
        # Nothing is older than a day: a purge removes nothing, and says so.
        proc = await asyncio.to_thread(run_cli, ["admin", "purge", "--older-than", "1d", "--as", "ops-bob"], env)
        assert proc.returncode == 0, proc.stderr
        assert "RESULTS: removed 0 message(s)" in proc.stdout
        assert "agent_deadlines: removed 0 message(s), freed 0 B (not purged by age: live task timers)" in proc.stdout
        proc = await asyncio.to_thread(run_cli, ["admin", "purge", "--older-than", "1s", "--store", "RESULTS",
                                                 "--as", "ops-bob", "--json"], env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["store"] == "RESULTS"
        kinds = [(r.kind, r.actor, r.agent) for r in await _audit_records(client)]
        assert kinds == [("storage.inspected", "ops-ann", "admin"), ("storage.inspected", kinds[1][1], "admin"),
                         ("storage.purged", "ops-bob", "admin"), ("storage.purged", "ops-bob", "admin")]
        assert alive(rt)


@pytest.mark.parametrize("args", [["admin", "purge", "--older-than", "soon"],
                                  ["admin", "purge", "--older-than", "1d", "--store", "NOPE"],
                                  ["admin", "purge"], ["admin"]])
def test_admin_usage_errors_are_one_line(args: list[str]) -> None:
    proc = run_cli(args, worker_env({"AGENTSTREAM_NATS_URL": "nats://127.0.0.1:1"}))
    one_line_error(proc, code=2)


async def test_the_http_api_answers_507_when_tasks_is_full(client: AgentClient) -> None:
    import aiohttp

    from agentstream.runtime.interfaces.http_api import HttpServer

    await nats_adapters.provision(client.js, limits={"TASKS": 4096})
    server = HttpServer(client)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=server.url, timeout=aiohttp.ClientTimeout(total=30)) as http:
            for i in range(100):
                async with http.post("/v1/tasks", json={"agent": AGENT, "input": f"count {i}"}) as resp:
                    body = await resp.json()
                    if resp.status != 202:
                        break
            assert resp.status == 507, body
            assert body["store"] == "TASKS" and body["error"].startswith("TASKS is full")
    finally:
        await server.stop()
