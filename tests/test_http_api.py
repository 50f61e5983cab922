"""Integration tests for the HTTP API: a real nats-server, a real Runtime
serving the example ``support`` agent and its tools, and the HTTP server on a
free port, driven with aiohttp's client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentstream.contracts.events import TaskResult
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.http_api import HttpServer
from agentstream.runtime.service.runtime import Runtime

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)

# --------------------------------------------------------------------------- fixtures (local, http_ prefix)


@pytest.fixture
async def http_broker(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    broker = EmbeddedNats(store_dir=tmp_path / "nats")
    await broker.astart()
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


@pytest.fixture
async def http_client(http_broker: EmbeddedNats) -> AsyncIterator[AgentClient]:
    client = await AgentClient.connect(http_broker.url)  # provisions the streams
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), timeout=5)
        if not client.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.nc.close(), timeout=5)


@pytest.fixture
async def http_runtime(http_broker: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = dataclasses.replace(Settings.from_env({}), nats_url=http_broker.url, data_dir=tmp_path / "data")
    runtime = Runtime.from_settings(settings, agents=["support"], tools="all")
    await asyncio.wait_for(runtime.start(), timeout=30)
    try:
        yield runtime
    finally:
        await asyncio.wait_for(runtime.stop(), timeout=60)


@pytest.fixture
async def http_server(http_client: AgentClient) -> AsyncIterator[HttpServer]:
    server = HttpServer(http_client)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), timeout=30)


@pytest.fixture
async def http_session(http_server: HttpServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=http_server.url, timeout=HTTP_TIMEOUT) as session:
        yield session


# --------------------------------------------------------------------------- helpers


async def submit(session: aiohttp.ClientSession, body: dict[str, Any], **params: str) -> tuple[int, Any]:
    async with session.post("/v1/tasks", json=body, params=params) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def read_sse(resp: aiohttp.ClientResponse) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Parse an event stream to its end: (events as (type, data)), comment lines."""
    events: list[tuple[str, dict[str, Any]]] = []
    comments: list[str] = []
    kind, data = "message", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line == "":
            if data:
                events.append((kind, json.loads(data)))
            kind, data = "message", ""
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        elif line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            data += line[len("data: "):]
    return events, comments


def assert_one_line_error(body: Any) -> str:
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert body["error"] and "\n" not in body["error"], body
    return body["error"]


# --------------------------------------------------------------------------- tests


@pytest.mark.usefixtures("http_runtime")
async def test_submit_then_poll_result(http_session: aiohttp.ClientSession) -> None:
    status, body = await submit(http_session, {"agent": "support", "input": "Where is my order 42?",
                                               "metadata": {"channel": "web"}, "unknown_field": 1})
    assert status == 202, body
    task_id = body["task_id"]
    assert body["result_url"] == f"/v1/tasks/{task_id}/result"
    assert body["events_url"] == f"/v1/tasks/{task_id}/events"

    async with http_session.get(body["result_url"], params={"wait": "10"}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        result = await resp.json()
    assert result["type"] == "agentstream.task.completed.v1"
    assert result["task_id"] == task_id
    assert "42" in result["output"] and "order" in result["output"].lower()

    # Once stored, wait=0 finds it at once.
    async with http_session.get(body["result_url"]) as resp:
        assert resp.status == 200
        assert (await resp.json())["task_id"] == task_id


@pytest.mark.usefixtures("http_runtime")
async def test_submit_with_wait_returns_result(http_session: aiohttp.ClientSession) -> None:
    task_id = f"t-{uuid.uuid4().hex[:12]}"
    status, body = await submit(http_session, {"agent": "support", "input": "Where is my order 42?",
                                               "task_id": task_id}, wait="10")
    assert status == 200, body
    assert body["type"] == "agentstream.task.completed.v1"
    assert body["task_id"] == task_id
    assert "42" in body["output"]


async def test_submit_with_wait_times_out_to_202(http_session: aiohttp.ClientSession) -> None:
    # No runtime serves the agent: the task is accepted but cannot finish in time.
    status, body = await submit(http_session, {"agent": "support", "input": "hello"}, wait="0.3")
    assert status == 202, body
    assert body["result_url"] == f"/v1/tasks/{body['task_id']}/result"


@pytest.mark.usefixtures("http_runtime")
async def test_events_stream_in_order_and_ends(http_session: aiohttp.ClientSession) -> None:
    status, body = await submit(http_session, {"agent": "support", "input": "Where is my order 42?"})
    assert status == 202, body
    async with http_session.get(body["events_url"], params={"timeout": "20"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events, _ = await asyncio.wait_for(read_sse(resp), timeout=25)  # returns only if the stream ends
    types = [t for t, _ in events]
    assert types == [
        "agentstream.model.turn.completed.v1",
        "agentstream.tool.call.dispatched.v1",
        "agentstream.tool.call.completed.v1",
        "agentstream.model.turn.completed.v1",
        "agentstream.task.completed.v1",
    ], types
    for t, data in events:
        assert data["type"] == t
        assert data["task_id"] == body["task_id"]
    assert events[0][1]["step"] == 1 and events[3][1]["step"] == 2
    assert events[2][1]["ok"] is True
    assert "42" in events[-1][1]["output"]


async def test_events_stream_heartbeat_and_timeout(http_client: AgentClient) -> None:
    # No runtime: nothing happens to the task, so the stream only heartbeats, then times out in-band.
    server = HttpServer(http_client, heartbeat_s=0.1)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=server.url, timeout=HTTP_TIMEOUT) as session:
            async with session.get("/v1/tasks/never-runs/events", params={"timeout": "1"}) as resp:
                assert resp.status == 200
                events, comments = await asyncio.wait_for(read_sse(resp), timeout=10)
        assert "keep-alive" in comments
        assert [t for t, _ in events] == ["error"]
        assert_one_line_error(events[0][1])
    finally:
        await server.stop()


async def test_events_stream_client_disconnect(http_client: AgentClient) -> None:
    server = HttpServer(http_client, heartbeat_s=0.1)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=server.url, timeout=HTTP_TIMEOUT) as session:
            resp = await session.get("/v1/tasks/never-runs/events")
            assert resp.status == 200
            await asyncio.wait_for(resp.content.readline(), timeout=5)
            resp.close()  # drop the connection mid-stream
        # The handler notices and ends, so stopping the server does not wait out its shutdown timeout.
        started = time.monotonic()
        await asyncio.wait_for(server.stop(), timeout=10)
        assert time.monotonic() - started < 4
    finally:
        await server.stop()


async def test_bad_requests_are_400_with_one_line_error(http_session: aiohttp.ClientSession) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "invalid JSON"),
        (b"", "JSON object"),
        (b"[1, 2]", "invalid task"),
        (b'{"input": "hi"}', "agent"),
        (b'{"agent": "support"}', "input"),
        (b'{"agent": "sup.port", "input": "hi"}', "invalid agent"),
        (b'{"agent": "support", "input": "hi", "task_id": "a b"}', "invalid task id"),
        (b'{"agent": "support", "input": "hi", "max_steps": 0}', "max_steps"),
        (b'{"agent": "support", "input": "hi", "metadata": {"k": 1}}', "metadata"),
    ]
    for payload, fragment in cases:
        async with http_session.post("/v1/tasks", data=payload,
                                     headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400, (payload, await resp.text())
            assert resp.content_type == "application/json"
            error = assert_one_line_error(await resp.json())
            assert fragment in error, (payload, error)
    async with http_session.post("/v1/tasks", params={"wait": "soon"},
                                 json={"agent": "support", "input": "hi"}) as resp:
        assert resp.status == 400
        assert "wait" in assert_one_line_error(await resp.json())


async def test_unknown_result_is_404(http_session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    async with http_session.get("/v1/tasks/does-not-exist/result", params={"wait": "0"}) as resp:
        assert resp.status == 404
        body = await resp.json()
    assert body == {"error": "no result yet", "task_id": "does-not-exist"}
    assert time.monotonic() - started < 5
    async with http_session.get("/v1/tasks/bad.id/result") as resp:
        assert resp.status == 400
        assert_one_line_error(await resp.json())
    async with http_session.get("/v1/tasks/x/result", params={"wait": "301"}) as resp:
        assert resp.status == 400


async def test_errors_are_json_not_html(http_session: aiohttp.ClientSession) -> None:
    async with http_session.get("/no/such/route") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert_one_line_error(await resp.json())
    async with http_session.get("/v1/tasks") as resp:
        assert resp.status == 405
        assert resp.content_type == "application/json"
        assert_one_line_error(await resp.json())


async def test_unexpected_exception_is_json_500(http_client: AgentClient) -> None:
    async def broken_ready() -> tuple[bool, str]:
        raise RuntimeError("probe exploded")

    server = HttpServer(http_client, ready=broken_ready)
    await server.start("127.0.0.1", 0)
    try:
        # A failing readiness probe means "not ready".
        async with aiohttp.ClientSession(base_url=server.url, timeout=HTTP_TIMEOUT) as session:
            async with session.get("/readyz") as resp:
                assert resp.status == 503
                assert "probe exploded" in assert_one_line_error(await resp.json())
        # Any other unexpected exception inside a handler becomes a JSON 500.
        original = http_client.result

        async def exploding_result(task_id: str, timeout: float = 60.0, *, agent: str | None = None) -> TaskResult:
            raise KeyError("kaboom\nsecond line")

        http_client.result = exploding_result  # type: ignore[method-assign]
        try:
            async with aiohttp.ClientSession(base_url=server.url, timeout=HTTP_TIMEOUT) as session:
                async with session.get("/v1/tasks/abc/result") as resp:
                    assert resp.status == 500
                    assert resp.content_type == "application/json"
                    error = assert_one_line_error(await resp.json())
                    assert "Traceback" not in error
        finally:
            http_client.result = original  # type: ignore[method-assign]
    finally:
        await server.stop()


async def test_index_and_healthz(http_session: aiohttp.ClientSession, http_server: HttpServer) -> None:
    assert http_server.port > 0
    assert http_server.url == f"http://127.0.0.1:{http_server.port}"
    async with http_session.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with http_session.get("/") as resp:
        assert resp.status == 200
        routes = (await resp.json())["routes"]
    assert "POST /v1/tasks" in routes and "GET /readyz" in routes


async def test_readyz_ok_then_503_when_broker_stops(http_session: aiohttp.ClientSession,
                                                    http_broker: EmbeddedNats) -> None:
    async with http_session.get("/readyz") as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "ready"

    await asyncio.to_thread(http_broker.stop)
    deadline = time.monotonic() + 15
    last: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        async with http_session.get("/readyz") as resp:
            last = (resp.status, await resp.json())
        if last[0] == 503:
            break
        await asyncio.sleep(0.1)  # polling interval, not synchronisation
    assert last[0] == 503, last
    assert last[1]["status"] == "unavailable"
    assert_one_line_error(last[1])
    # Liveness is unaffected.
    async with http_session.get("/healthz") as resp:
        assert resp.status == 200


async def test_readyz_uses_custom_check(http_client: AgentClient) -> None:
    async def not_ready() -> tuple[bool, str]:
        return False, "warming up"

    server = HttpServer(http_client, ready=not_ready)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=server.url, timeout=HTTP_TIMEOUT) as session:
            async with session.get("/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["error"] == "warming up"
    finally:
        await server.stop()


@pytest.mark.usefixtures("http_runtime")
async def test_prometheus_metrics_after_a_task(http_session: aiohttp.ClientSession) -> None:
    status, body = await submit(http_session, {"agent": "support", "input": "Where is my order 42?"})
    assert status == 202
    async with http_session.get(body["result_url"], params={"wait": "10"}) as resp:
        assert resp.status == 200
    async with http_session.get("/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
    # The runtime runs in this process, so its model and tool metrics are here.
    assert "gen_ai_client_operation_duration_seconds_bucket" in text
    assert 'gen_ai_tool_name="lookup_order"' in text
