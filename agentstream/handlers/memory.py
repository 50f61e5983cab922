"""The memory service's subscriptions: request-reply on ``memory.<verb>.*``
in one queue group, so several replicas share the load.

The tenant is the subject's last token (what subject permissions grant the
caller), never a body field or model output. Every request gets a reply:
a body that does not decode, names the wrong verb, or fails in the store
gets ``ok=false`` with the reason (a malformed one is also dead-lettered on
``deadletter.memory.<verb>.<tenant>``), and the subscription keeps serving.
Retrieval is its own span (``retrieval memory``) with its hits and scores,
a child of the caller's span when the request carries trace context.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import SpanKind

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    AuditRecord,
    DeadLettered,
    MemoryQueryRequested,
    MemoryReplied,
    MemoryWriteRequested,
)
from agentstream.runtime.core.errors import AgentstreamError
from agentstream.runtime.core.ports import Bus
from agentstream.runtime.execution.engine import audit_msg_id
from agentstream.runtime.memory.client import verb_of
from agentstream.runtime.memory.store import MemoryStore
from agentstream.runtime.observability.telemetry import Telemetry

log = logging.getLogger("agentstream.memory.service")

MAX_REQUEST_BYTES = 1 << 20


def audit_sink(bus: Bus) -> Any:
    async def sink(rec: AuditRecord) -> None:
        await bus.publish(subjects.audit(rec.kind, rec.agent), codec.encode(rec), msg_id=audit_msg_id(rec))
    return sink


async def answer(store: MemoryStore, subject: str, data: bytes, headers: dict[str, str] | None,
                 tel: Telemetry | None = None) -> MemoryReplied:
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "memory" or parts[1] not in subjects.MEMORY_VERBS:
        return MemoryReplied(ok=False, error=f"not a memory subject: {subject[:100]}")
    verb, tenant = parts[1], parts[2]
    if len(data) > MAX_REQUEST_BYTES:
        return MemoryReplied(ok=False, error=f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        req = codec.memory_request.decode(data)
    except codec.DecodeError as exc:
        return MemoryReplied(ok=False, error=f"bad request: {exc}")
    # Operators (whose credentials grant memory.admin.*) may also write there:
    # ingestion, exempt from the per-source rate limit agents' writes meet.
    operator_write = verb == "admin" and isinstance(req, MemoryWriteRequested)
    if verb_of(req) != verb and not operator_write:
        return MemoryReplied(ok=False, error=f"a {type(req).__name__} does not belong on {subject}")
    if operator_write:
        assert isinstance(req, MemoryWriteRequested)
        if req.tenant_id and req.tenant_id != tenant:
            return MemoryReplied(ok=False, error="tenant_id in the body differs from the subject's tenant")
        if not subjects.is_token(tenant):
            return MemoryReplied(ok=False, error="invalid tenant")
        return await store.write(tenant, req.writes, actor=req.actor, operator=True)
    if tel is None or not tel.tracing or not isinstance(req, MemoryQueryRequested):
        return await store.handle(tenant, req)
    attrs: dict[str, Any] = {"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": store.index.name,
                             "agentstream.tenant_id": tenant, "agentstream.memory.limit": req.limit}
    if req.task_id:
        attrs["agentstream.task_id"] = req.task_id
    sp = tel.start_span("retrieval memory", SpanKind.SERVER, parent=tel.extract(headers), attributes=attrs)
    try:
        reply = await store.handle(tenant, req)
    except BaseException as exc:
        sp.set_error(type(exc).__name__, str(exc))
        sp.end()
        raise
    sp.set_attribute("agentstream.memory.hits", len(reply.hits))
    sp.set_attribute("agentstream.memory.scores", [round(h.score, 4) for h in reply.hits])
    sp.set_attribute("agentstream.memory.sources", [h.source for h in reply.hits])
    if not reply.ok:
        sp.set_error("memory_refused", reply.error)
    sp.end()
    return reply


# Replies that mean the request itself was malformed: also dead-lettered, so an
# operator sees a misbehaving client even if it ignores its replies.
_MALFORMED = ("bad request", "not a memory subject", "a Memory", "request larger")


async def serve_memory(nc: NatsClient, store: MemoryStore, *, tel: Telemetry | None = None,
                       bus: Bus | None = None) -> list[Subscription]:
    async def on_request(msg: Msg) -> None:
        try:
            reply = await answer(store, msg.subject, msg.data or b"", msg.headers, tel)
            if bus is not None and not reply.ok and reply.error.startswith(_MALFORMED):
                body = msg.data or b""
                ev = DeadLettered(subject=msg.subject, consumer=subjects.MEMORY_QUEUE, reason=reply.error[:2000],
                                  payload=body[:4096].decode("utf-8", errors="replace"), payload_bytes=len(body),
                                  deliveries=1, at=time.time())
                await bus.publish(subjects.dead_letter(msg.subject), codec.encode(ev))
        except AgentstreamError as exc:
            reply = MemoryReplied(ok=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the service
            log.exception("memory request on %s failed", msg.subject)
            reply = MemoryReplied(ok=False, error=f"internal error: {type(exc).__name__}")
        if msg.reply:
            await msg.respond(codec.encode(reply))

    return [await nc.subscribe(subjects.memory(verb, "*"), queue=subjects.MEMORY_QUEUE, cb=on_request)
            for verb in subjects.MEMORY_VERBS]
