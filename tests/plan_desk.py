"""The plan-first desk on a real nats-server with per-role credentials: the
``planner`` and ``router`` agents of tests/apps/plan_app.py and their tool
workers in process (worker role), an admin, an approver and a client, and
connections with the agent's role for attacks. Shared by test_plan_bus.py,
test_plan_security.py and the replay tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import plan_app  # noqa: E402, F401 - from the apps folder just put on the path; tests use its tools
import pytest
from conftest import until
from nats.aio.client import Client as NatsClient

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import DeadLettered, TaskEvent
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.config.auth import NatsAuth, Role
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import load_app
from agentstream.runtime.core.policy import ApprovalRecord
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.service.runtime import Runtime

WAIT_S = 30.0
AGENT = "planner"


@dataclass
class Desk:
    server: EmbeddedNats
    rt: Runtime
    admin: AgentClient
    approver: AgentClient
    client: AgentClient
    log: Path
    auth: Callable[[Role], NatsAuth]
    conns: list[NatsClient]

    def runs(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    async def events(self, task_id: str) -> list[TaskEvent]:
        return [ev async for ev in self.admin.events(task_id, timeout=WAIT_S)]

    async def agent_role(self, errors: list[str] | None = None) -> NatsClient:
        """A connection with the agent's role (which may publish tool calls),
        its server errors (permission violations) collected in ``errors``."""
        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc))
        nc = await nats.connect(self.server.plain_url, allow_reconnect=False, error_cb=on_error,
                                **nats_adapters.auth_options(self.auth("agent")))
        self.conns.append(nc)
        return nc

    async def parked(self, text: str) -> tuple[str, ApprovalRecord]:
        task_id = await self.client.submit(AGENT, text)

        async def pending() -> ApprovalRecord | None:
            try:
                recs = await approvals.list_approvals(self.admin)
            except approvals.ApprovalError:
                return None
            return next((r for r in recs if r.request.task_id == task_id), None)
        rec: ApprovalRecord = await until(pending, WAIT_S, f"task {task_id} to wait for its plan's approval")
        return task_id, rec

    async def dead_letter(self, subject: str, contains: str) -> DeadLettered:
        async def find() -> DeadLettered | None:
            for raw in await scan(self.admin.js, "DEADLETTER", subjects.dead_letter(subject)):
                ev = codec.any_event.decode(raw.data)
                if isinstance(ev, DeadLettered) and contains in ev.reason:
                    return ev
            return None
        found: DeadLettered = await until(find, WAIT_S, f"a dead letter on {subject} saying {contains!r}")
        return found


@pytest.fixture(name="desk")
async def desk_fixture(nats_server: EmbeddedNats, role_auth: Callable[[Role], NatsAuth], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Desk]:
    """The ``desk`` fixture: a test module imports this to use it."""
    async with open_desk(nats_server, role_auth, tmp_path, monkeypatch) as d:
        yield d


@contextlib.asynccontextmanager
async def open_desk(nats_server: EmbeddedNats, role_auth: Callable[[Role], NatsAuth], tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Desk]:
    """The runtime and its clients."""
    log = tmp_path / "tools.log"
    monkeypatch.setenv("PLAN_APP_LOG", str(log))
    settings = dataclasses.replace(Settings.from_env({}), nats_url=nats_server.plain_url, data_dir=tmp_path,
                                   app="plan_app:app")
    rt = Runtime(settings=settings, app=load_app("plan_app:app"), agents=[AGENT, "router"], tools="all")
    await asyncio.wait_for(rt.start(), timeout=30)
    url = nats_server.plain_url
    admin = await AgentClient.connect(nats_server.url, provision=False, telemetry=False)
    approver = await AgentClient.connect(url, provision=False, telemetry=False, auth=role_auth("approver"))
    client = await AgentClient.connect(url, provision=False, telemetry=False, auth=role_auth("client"))
    d = Desk(nats_server, rt, admin, approver, client, log, role_auth, [])
    try:
        yield d
    finally:
        for nc in d.conns:
            await nc.close()
        for c in (client, approver, admin):
            await c.close()
        await asyncio.wait_for(rt.stop(), timeout=60)


def kinds(evs: list[TaskEvent], *types: type) -> list[Any]:
    return [e for e in evs if isinstance(e, types)]


