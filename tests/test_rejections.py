"""What the runtime refuses, it says so: against a real nats-server.

- a task the agent's task consumer dead-letters (too big, wrong types, wrong
  agent) is answered at once with a failed result, exactly once; a body with
  no usable task id, or reusing the id of a task in progress, is not;
- the client refuses wrong argument types before publishing anything;
- the HTTP API refuses a task for an agent the serving app does not define;
- a decision refused by the approvals front end (not allowed, already decided)
  is on the AUDIT stream, from the CLI and from HTTP;
- with the broker down, the approval endpoints answer 503, not 500 (and the
  result and event endpoints say so too).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import run_cli, until

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import AuditRecord, TaskCompleted, TaskFailed
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import load_app
from agentstream.runtime.core.errors import ResultTimeout
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.http_api import HttpServer
from agentstream.runtime.service.runtime import Runtime

WAIT_S = 20.0
MAX_EVENT_BYTES = 4096
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)
TASKS_DURABLE = subjects.agent_durable("refunds", "tasks")


@pytest.fixture
async def runtime(nats_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    """The approval test app's ``refunds`` agent and its tools, in process, with
    a small event size limit."""
    settings = dataclasses.replace(Settings.from_env({"AGENTSTREAM_MAX_EVENT_BYTES": str(MAX_EVENT_BYTES)}),
                                   nats_url=nats_url, data_dir=tmp_path / "data", app="approval_app:app")
    rt = Runtime(settings=settings, app=load_app("approval_app:app"), agents=["refunds"], tools="all")
    await asyncio.wait_for(rt.start(), timeout=30)
    try:
        yield rt
    finally:
        await asyncio.wait_for(rt.stop(), timeout=60)


@contextlib.asynccontextmanager
async def http(client: AgentClient, headers: dict[str, str] | None = None,
               **kwargs: Any) -> AsyncIterator[aiohttp.ClientSession]:
    server = HttpServer(client, **kwargs)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=server.url, timeout=HTTP_TIMEOUT, headers=headers) as session:
            yield session
    finally:
        await asyncio.wait_for(server.stop(), timeout=30)


async def publish_raw(client: AgentClient, body: bytes | dict[str, Any]) -> int:
    """A task body as a plain nats-py user would publish it: no msg id, no checks.
    Returns its stream sequence."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ack = await client.js.publish(subjects.tasks("refunds"), raw)
    return int(ack.seq)


async def settled(client: AgentClient, seq: int) -> None:
    """Wait until the task consumer has acked everything up to ``seq`` (a
    rejected body is acked only after its dead letter and its answer)."""
    async def acked() -> bool:
        info = await client.js.consumer_info("TASKS", TASKS_DURABLE)
        return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq
    deadline = time.monotonic() + WAIT_S
    while not await acked():
        assert time.monotonic() < deadline, f"the task consumer did not ack seq {seq} within {WAIT_S}s"
        await asyncio.sleep(0.05)


async def count(client: AgentClient, stream: str, subject: str) -> int:
    info = await client.js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def audit_rejections(client: AgentClient, n: int) -> list[AuditRecord]:
    """The first ``n`` approval.rejected audit records (fails if fewer arrive in time)."""
    sub = await client.js.subscribe("audit.approval_rejected.>", ordered_consumer=True)
    out: list[AuditRecord] = []
    deadline = time.monotonic() + WAIT_S
    try:
        while len(out) < n:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(out)} of {n} rejection audit records: {out}"
            with contextlib.suppress(Exception):  # nats TimeoutError: look again until the deadline
                msg = await sub.next_msg(timeout=min(remaining, 1.0))
                ev = codec.any_event.decode(msg.data)
                assert isinstance(ev, AuditRecord)
                out.append(ev)
    finally:
        await sub.unsubscribe()
    return out


# ----------------------------------------------------------------- 1a: rejected tasks get a failed result


@pytest.mark.usefixtures("runtime")
@pytest.mark.parametrize("case", ["oversized", "wrong_type", "wrong_agent", "no_task_id", "malformed_json"])
async def test_a_rejected_task_gets_a_failed_result_at_once_and_once(client: AgentClient, case: str) -> None:
    task_id = f"t-{uuid.uuid4().hex}"
    body: dict[str, Any] = {"agent": "refunds", "input": "please refund 5 for order 1", "task_id": task_id}
    expect = ""
    if case == "oversized":
        body["input"] = "x" * (MAX_EVENT_BYTES + 100)
        expect = f"exceeds the {MAX_EVENT_BYTES}-byte limit"
    elif case == "wrong_type":
        body["input"] = 5
        expect = "Expected `str`, got `int`"
    elif case == "wrong_agent":
        body["agent"] = "billing"
        expect = "task for agent 'billing'"
    elif case == "no_task_id":
        del body["task_id"]
        body["input"] = 5
        expect = "Expected `str`, got `int`"
    else:
        expect = "truncated"
    raw: bytes | dict[str, Any] = b'{"agent": "refunds", "input": ' if case == "malformed_json" else body
    seq = await publish_raw(client, raw)
    if case in ("no_task_id", "malformed_json"):
        task_id = f"seq-{seq}"  # the id the runtime gives a task published without one

    started = time.monotonic()
    res = await client.result(task_id, timeout=WAIT_S)
    assert time.monotonic() - started < 10, "the failed result should come at once, not after a timeout"
    assert isinstance(res, TaskFailed), res
    assert (res.task_id, res.agent, res.reason) == (task_id, "refunds", "rejected")
    assert expect in res.message, res.message
    # Dead-lettered as before, with the same reason.
    assert await count(client, "DEADLETTER", f"deadletter.{subjects.tasks('refunds')}") == 1

    # The same body again (a plain publish: not deduplicated as a task) is
    # rejected again, but the task keeps its one result.
    seq2 = await publish_raw(client, raw)
    await settled(client, seq2)
    assert await count(client, "DEADLETTER", f"deadletter.{subjects.tasks('refunds')}") == 2
    if case not in ("no_task_id", "malformed_json"):  # a second id-less body is a second task (seq-<n>)
        assert await count(client, "RESULTS", subjects.results("refunds", task_id)) == 1


@pytest.mark.usefixtures("runtime")
async def test_a_body_with_no_usable_task_id_is_only_dead_lettered(client: AgentClient) -> None:
    # (Malformed JSON is answered under seq-<n>: see the test above.)
    bodies: list[bytes | dict[str, Any]] = [
        {"agent": "refunds", "input": 5, "task_id": 7},
        # A forged id that is not a subject token must not steer a result anywhere.
        {"agent": "refunds", "input": 5, "task_id": "x.>"},
        {"agent": "refunds", "input": 5, "task_id": "x y"},
    ]
    last = 0
    for body in bodies:
        last = await publish_raw(client, body)
    await settled(client, last)
    assert await count(client, "DEADLETTER", "deadletter.>") == len(bodies)
    assert await count(client, "RESULTS", ">") == 0


@pytest.mark.usefixtures("runtime")
async def test_a_bad_body_reusing_a_running_tasks_id_does_not_answer_for_it(client: AgentClient) -> None:
    task_id = await client.submit("refunds", "please refund 150 for order 7")
    (pending,) = await until_pending(client)
    seq = await publish_raw(client, {"agent": "refunds", "input": 5, "task_id": task_id})
    await settled(client, seq)
    with pytest.raises(ResultTimeout):
        await client.result(task_id, timeout=0.5)
    # The real task goes on and gets its own result.
    await approvals.decide(client, pending.request.approval_id, approved=True, approver="alice")
    res = await client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted) and res.output == "refunded 150.0 on order 7"


async def until_pending(client: AgentClient, n: int = 1) -> list[approvals.ApprovalRecord]:
    async def pending() -> list[approvals.ApprovalRecord]:
        with contextlib.suppress(approvals.ApprovalError):
            return await approvals.list_approvals(client)
        return []
    deadline = time.monotonic() + WAIT_S
    while len(found := await pending()) < n:
        assert time.monotonic() < deadline, f"{n} pending approvals did not appear within {WAIT_S}s"
        await asyncio.sleep(0.05)
    return found


# ----------------------------------------------------------------- 1b: client-side argument types


async def test_submit_refuses_wrong_argument_types_before_publishing(client: AgentClient) -> None:
    with pytest.raises(TypeError, match="input must be a str, got int"):
        await client.submit("refunds", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="agent must be a str"):
        await client.submit(None, "hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metadata"):
        await client.submit("refunds", "hi", metadata={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"max_steps"):
        await client.submit("refunds", "hi", max_steps="3")  # type: ignore[arg-type]
    assert await count(client, "TASKS", ">") == 0
    # A well-typed task still goes out.
    await client.submit("refunds", "hi")
    assert await count(client, "TASKS", ">") == 1


# ----------------------------------------------------------------- 1c: HTTP, unknown agent


async def test_http_refuses_a_task_for_an_agent_the_app_does_not_define(client: AgentClient) -> None:
    async with http(client, agents=["support"]) as session:
        async with session.post("/v1/tasks", json={"agent": "nope", "input": "hi"}) as resp:
            assert resp.status == 404
            assert resp.content_type == "application/json"
            assert await resp.json() == {"error": "unknown agent 'nope'; this service runs: support"}
        assert await count(client, "TASKS", ">") == 0
        async with session.post("/v1/tasks", json={"agent": "support", "input": "hi"}) as resp:
            assert resp.status == 202, await resp.text()
    # An API that does not know the app's agents (run on its own) accepts any.
    async with http(client) as session:
        async with session.post("/v1/tasks", json={"agent": "nope", "input": "hi"}) as resp:
            assert resp.status == 202, await resp.text()


# ----------------------------------------------------------------- 2: refused decisions are audited


@pytest.mark.usefixtures("runtime")
async def test_refused_decisions_are_audited_from_the_cli_and_http(client: AgentClient, nats_url: str) -> None:
    task_id = await client.submit("refunds", "please refund 150 for order 7")
    (pending,) = await until_pending(client)
    approval_id = pending.request.approval_id
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update({"AGENTSTREAM_NATS_URL": nats_url, "PYTHONPATH": os.pathsep.join(sys.path)})

    refused = await asyncio.to_thread(
        run_cli, ["approve", approval_id, "--as", "mallory"], env)
    assert refused.returncode != 0 and "may not decide" in refused.stderr, refused.stderr
    tokens = approvals.ApproverAuth(tokens={"eve-token-0123456789": "eve", "bob-token-0123456789": "bob"})
    async with http(client, approver_auth=tokens) as session:
        async with session.post(f"/v1/approvals/{approval_id}/approve",
                                headers={"Authorization": "Bearer eve-token-0123456789"}) as resp:
            assert resp.status == 403, await resp.text()
        await approvals.decide(client, approval_id, approved=True, approver="alice")
        res = await client.result(task_id, timeout=WAIT_S)
        assert isinstance(res, TaskCompleted)
        async with session.post(f"/v1/approvals/{approval_id}/deny", json={"approver": "bob"},
                                headers={"Authorization": "Bearer bob-token-0123456789"}) as resp:
            assert resp.status == 409, await resp.text()

    records = await audit_rejections(client, 3)
    by_actor = {r.actor: r for r in records}
    assert set(by_actor) == {"mallory", "eve", "bob"}, records
    for who in ("mallory", "eve"):
        r = by_actor[who]
        assert (r.kind, r.agent, r.task_id) == ("approval.rejected", "refunds", task_id)
        assert r.details["approval_id"] == approval_id and r.details["approved"] is True
        assert f"{who} may not decide on issue_refund" in r.details["reason"]
    bob = by_actor["bob"]
    assert bob.details["approved"] is False and bob.details["status"] == "approved"
    assert "already approved" in bob.details["reason"]


# ----------------------------------------------------------------- 3: broker down, approval endpoints 503


async def test_approval_endpoints_answer_503_when_the_broker_is_down(
        client: AgentClient, nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture) -> None:
    tokens = approvals.ApproverAuth(tokens={"alice-token-0123456789": "alice"})
    bearer = {"Authorization": "Bearer alice-token-0123456789"}
    async with http(client, approver_auth=tokens, headers=bearer) as session:
        async with session.get("/v1/approvals") as resp:
            assert resp.status == 200, await resp.text()
        await asyncio.to_thread(nats_server.stop)
        await until(lambda: not client.nc.is_connected, 10, "the client to notice the broker is gone")
        caplog.set_level(logging.WARNING, logger="agentstream")
        for method, path, body in (("GET", "/v1/approvals", None),
                                   ("POST", "/v1/approvals/a-1-c1/approve", {"approver": "alice"}),
                                   ("GET", "/api/stats", None)):
            async with session.request(method, path, json=body) as resp:
                assert resp.status == 503, (path, await resp.text())
                assert resp.content_type == "application/json"
                error = (await resp.json())["error"]
                assert error.startswith("broker unavailable") and "\n" not in error, error
        # Nor does the result endpoint guess "no result yet" (404), nor the event stream report an internal error.
        async with session.get("/v1/tasks/abc/result") as resp:
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["error"].startswith("broker unavailable")
        async with session.get("/v1/tasks/abc/events", params={"timeout": "2"}) as resp:
            assert resp.status == 200  # headers go out first; the error comes in-band
            text = await resp.text()
            assert "event: error" in text and "broker unavailable" in text and "internal error" not in text, text
    # Expected while the broker is away: no traceback in the log.
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
