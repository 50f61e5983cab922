"""Human in the loop and budgets against a real nats-server: approvals parked
in the session survive a restart of every worker, are decided through the CLI
by allowed identities only, and are audited; a budget stops a task mid-way."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import run_cli

from agentstream.contracts import codec
from agentstream.contracts.events import AuditRecord, TaskCompleted, TaskFailed
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import load_app
from agentstream.runtime.core.errors import ResultTimeout
from agentstream.runtime.core.policy import ApprovalRecord
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.service.runtime import Runtime

WAIT_S = 30.0


async def wait_pending(client: AgentClient, n: int, timeout: float = WAIT_S) -> list[ApprovalRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pending = await approvals.list_approvals(client)
        except approvals.ApprovalError:
            pending = []
        if len(pending) >= n:
            return pending
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{n} pending approvals did not appear within {timeout}s")


def cli(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_cli(args, env, timeout=timeout)


async def audit_records(client: AgentClient) -> list[AuditRecord]:
    sub = await client.js.subscribe("audit.>", ordered_consumer=True)
    out: list[AuditRecord] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except Exception:  # noqa: BLE001 - nats TimeoutError: the stream is drained
                return out
            ev = codec.any_event.decode(msg.data)
            assert isinstance(ev, AuditRecord)
            out.append(ev)
    finally:
        await sub.unsubscribe()


@pytest.mark.slow
async def test_approval_round_trip_through_the_cli_across_a_worker_restart(
        nats_url: str, spawn_worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "tools.log"
    env = {"AGENTSTREAM_NATS_URL": nats_url, "AGENTSTREAM_APP": "approval_app:app", "APPROVAL_APP_LOG": str(log)}
    agent = spawn_worker(["--agent", "refunds"], {**env, "AGENTSTREAM_WORKER_ID": "agent-1"})
    tools = spawn_worker(["--tools", "all"], {**env, "AGENTSTREAM_WORKER_ID": "tools-1"})
    async with await AgentClient.connect(nats_url) as client:
        task_id = await client.submit("refunds", "please refund 150 for order 7")
        (pending,) = await wait_pending(client, 1)
        assert pending.request.tool == "issue_refund" and pending.request.arguments == {"order_id": 7,
                                                                                         "amount": 150.0}
        # Every worker goes away while the call waits: nothing holds the task in memory.
        for proc in (agent, tools):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        assert not log.exists()

        cli_env = {**os.environ, "AGENTSTREAM_NATS_URL": nats_url}
        cli_env.pop("AGENTSTREAM_APPROVER", None)
        listed = cli(["approvals"], cli_env)
        assert listed.returncode == 0 and pending.request.approval_id in listed.stdout
        refused = cli(["approve", pending.request.approval_id, "--as", "mallory"], cli_env)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert refused.stderr.strip().count("\n") == 0 and "may not decide" in refused.stderr

        spawn_worker(["--agent", "refunds"], {**env, "AGENTSTREAM_WORKER_ID": "agent-2"})
        spawn_worker(["--tools", "all"], {**env, "AGENTSTREAM_WORKER_ID": "tools-2"})
        ok = cli(["approve", pending.request.approval_id, "--as", "alice"], cli_env)
        assert ok.returncode == 0, ok.stderr
        res = await client.result(task_id, timeout=WAIT_S)
        assert isinstance(res, TaskCompleted) and res.output == "refunded 150.0 on order 7"
        assert log.read_text().splitlines() == ["issue_refund 7 150.0"]
        again = cli(["approve", pending.request.approval_id, "--as", "bob"], cli_env)
        assert again.returncode != 0 and "already approved" in again.stderr

        records = await audit_records(client)
        kinds = [(r.kind, r.actor) for r in records]
        assert ("approval.requested", "agent:refunds") in kinds and ("approval.decided", "alice") in kinds


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[Runtime, AgentClient, Path]]:
    broker = await EmbeddedNats(store_dir=tmp_path / "nats").astart()
    log = tmp_path / "tools.log"
    os.environ["APPROVAL_APP_LOG"] = str(log)
    settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url, app="approval_app:app")
    rt = Runtime(settings=settings, app=load_app("approval_app:app"), agents=["refunds", "spendy"], tools="all")
    await rt.start()
    client = await AgentClient.connect(broker.url)
    try:
        yield rt, client, log
    finally:
        os.environ.pop("APPROVAL_APP_LOG", None)
        await client.close()
        await rt.stop()
        broker.stop()


async def test_two_parallel_calls_needing_approval_one_approved_one_denied(
        runtime: tuple[Runtime, AgentClient, Path]) -> None:
    _, client, log = runtime
    task_id = await client.submit("refunds", "two refunds please")
    pending = await wait_pending(client, 2)
    by_order = {p.request.arguments["order_id"]: p.request for p in pending}
    assert {p.request.call_id for p in pending} == {by_order[1].call_id, by_order[2].call_id}
    await approvals.decide(client, by_order[2].approval_id, approved=False, approver="bob", reason="too much")
    # The turn waits for the second decision: nothing has run or answered yet.
    with pytest.raises(ResultTimeout):
        await client.result(task_id, timeout=0.5)
    await approvals.decide(client, by_order[1].approval_id, approved=True, approver="alice")
    res = await client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted)
    assert res.output == "refunded 150.0 on order 1; approval_denied: bob denied this call: too much"
    assert log.read_text().splitlines() == ["issue_refund 1 150.0"]
    assert {r.status for r in await approvals.list_approvals(client, status=None)} == {"approved", "denied"}


async def test_a_budget_stops_a_task_mid_way_before_the_next_model_call(
        runtime: tuple[Runtime, AgentClient, Path]) -> None:
    rt, client, log = runtime
    task_id = await client.submit("spendy", "go", max_tokens=2_000)
    res = await client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskFailed) and res.reason == "budget_exceeded"
    assert "2000" in res.message and "1500" in res.message
    assert rt.engines["spendy"].model_calls == 1  # the call that would exceed the budget was not made
    assert log.read_text().splitlines() == ["lookup_order 5"]
    assert (res.usage.input_tokens, res.usage.output_tokens) == (1_200, 300)


async def test_every_event_the_runtime_publishes_is_documented_on_its_asyncapi_channel(
        runtime: tuple[Runtime, AgentClient, Path]) -> None:
    """A client in another language learns the protocol from docs/asyncapi.json:
    every message on every stream after a task with tools, approvals, a result
    and a dead letter must match a channel listing its event type."""
    import json
    import re

    from agentstream.contracts import subjects
    from agentstream.handlers.protocol import asyncapi_document
    from agentstream.runtime.adapters.scan import scan

    _, client, _ = runtime
    task_id = await client.submit("refunds", "two refunds please")
    for p in await wait_pending(client, 2):
        await approvals.decide(client, p.request.approval_id, approved=True, approver="alice")
    assert isinstance(await client.result(task_id, timeout=WAIT_S), TaskCompleted)
    await client.js.publish("agents.refunds.tasks", b"{not json")
    deadline = time.monotonic() + WAIT_S
    while not (await client.js.stream_info("DEADLETTER")).state.messages:
        assert time.monotonic() < deadline, "the malformed task was not dead-lettered"
        await asyncio.sleep(0.05)

    doc = asyncapi_document()
    schemas = doc["components"]["schemas"]
    documented: list[tuple[re.Pattern[str], set[str]]] = []
    for channel in doc["channels"].values():
        pattern = re.escape(channel["address"]).replace(r"\{subject\}", ".+")
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^.]+", pattern)
        tags: set[str] = set()
        for message in channel["messages"].values():
            payload = doc["components"]["messages"][message["$ref"].rsplit("/", 1)[1]]["payload"]
            for ref in payload.get("oneOf", [payload]):
                tags.add(schemas[ref["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["enum"][0])
        documented.append((re.compile(pattern), tags))

    seen: set[tuple[str, str]] = set()
    for sd in subjects.STREAMS:
        for raw in await scan(client.js, sd.name, ">"):
            try:
                tag = json.loads(raw.data)["type"]
            except (ValueError, KeyError, TypeError):
                assert sd.name == "TASKS", (raw.subject, raw.data[:80])  # the garbage we sent
                continue
            seen.add((raw.subject.split(".")[0], tag))
            # (EVENTS stores a partition in the subject; the channel is the published subject)
            subject = subjects.published(raw.subject)
            assert any(p.fullmatch(subject) and tag in tags for p, tags in documented), \
                f"{tag} on {raw.subject} is not in the AsyncAPI document"
    for needed in ("approval.requested", "approval.decided", "audit.record", "task.completed", "dead.lettered"):
        assert any(needed in tag for _, tag in seen), (needed, sorted(seen))
