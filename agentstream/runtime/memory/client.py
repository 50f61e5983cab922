"""Reaching the memory service: over the bus (request-reply), or in process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import nats.errors
from nats.aio.client import Client as NatsClient

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    MemoryAdminRequested,
    MemoryQueryRequested,
    MemoryReplied,
    MemoryRequest,
    MemoryWriteRequested,
)
from agentstream.runtime.memory.errors import MemoryError_
from agentstream.runtime.memory.store import MemoryStore


class MemoryApi(Protocol):
    async def request(self, tenant: str, req: MemoryRequest) -> MemoryReplied: ...


def verb_of(req: MemoryRequest) -> str:
    match req:
        case MemoryQueryRequested():
            return "query"
        case MemoryWriteRequested():
            return "write"
        case MemoryAdminRequested():
            return "admin"


class BusMemory:
    """Request-reply on ``memory.<verb>.<tenant>``, bounded by ``timeout_s``.
    ``inject`` adds trace context to the request's headers (telemetry)."""

    def __init__(self, nc: NatsClient, *, timeout_s: float = 5.0,
                 inject: Callable[[dict[str, str]], None] | None = None) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.inject = inject

    async def request(self, tenant: str, req: MemoryRequest, *, verb: str | None = None) -> MemoryReplied:
        """``verb="admin"`` sends a write as an operator's (ingestion)."""
        if not subjects.is_token(tenant):
            raise MemoryError_(f"invalid tenant {tenant[:64]!r}: use 1-128 letters, digits, '_' or '-'")
        subject = subjects.memory(verb or verb_of(req), tenant)
        headers: dict[str, str] = {}
        if self.inject is not None:
            self.inject(headers)
        try:
            msg = await self.nc.request(subject, codec.encode(req), timeout=self.timeout_s, headers=headers or None)
        except nats.errors.NoRespondersError:
            raise MemoryError_(f"no memory service answers on {subject} (start one: agentstream memory serve)") \
                from None
        except nats.errors.TimeoutError:
            raise MemoryError_(f"the memory service did not answer on {subject} within {self.timeout_s:g}s") from None
        try:
            return codec.memory_reply.decode(msg.data)
        except codec.DecodeError as exc:
            raise MemoryError_(f"the memory service sent an unreadable reply: {exc}") from None


class LocalMemory:
    """The store in this process, same contract (tests, the bench, an
    embedded single-process deployment)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def request(self, tenant: str, req: MemoryRequest) -> MemoryReplied:
        return await self.store.handle(tenant, req)
