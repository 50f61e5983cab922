"""Long-term memory: what the memory service does with each request, over a
``VectorIndex``. No bus here (handlers/memory.py answers the requests), so
the behaviour suite runs it directly against both adapters.

Rules it enforces: the tenant is an argument from the caller's subject,
never a body field, and every index call carries it; writes are typed and
idempotent by ``write_id``; UPDATE and DELETE invalidate with a time rather
than delete; ``forget`` removes everything from a source; every write,
invalidation, quarantine and forget is an audit record; the poisoning gate
and per-source rate limits run before anything is stored.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from agentstream.contracts import subjects
from agentstream.contracts.events import (
    AuditRecord,
    MemoryAdminRequested,
    MemoryHit,
    MemoryQueryRequested,
    MemoryReplied,
    MemoryRequest,
    MemoryWrite,
    MemoryWriteRequested,
    MemoryWriteResult,
    QuarantinedWrite,
)
from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.ports import SessionStore
from agentstream.runtime.memory.embed import Embedder, Lexical
from agentstream.runtime.memory.gate import RateLimiter, cap_per_source, screen_write
from agentstream.runtime.memory.index import TENANT_FIELD, IndexPoint, IndexRecord, VectorIndex, Where

_NS = uuid.UUID("6f1d4c1e-9a57-4f0e-8b8a-2f5c0d7e9a11")
MAX_TEXT = 8000
MAX_WRITES = 256

AuditSink = Callable[[AuditRecord], Awaitable[None]]


def memory_id(tenant: str, write_id: str) -> str:
    """Deterministic: the same write applied twice targets the same point."""
    return str(uuid.uuid5(_NS, f"{tenant}\x00{write_id}"))


def quarantine_key(tenant: str, write_id: str) -> str:
    return f"{tenant}.{hashlib.sha256(write_id.encode()).hexdigest()[:24]}"


@dataclass
class StoreLimits:
    write_rate: float = 1.0  # writes a second per (tenant, source), sustained
    write_burst: int = 30
    hits_per_source: int = 2  # at most this many hits from one source in one retrieval


class MemoryStore:
    def __init__(self, index: VectorIndex, *, lexical: Lexical, quarantine: SessionStore,
                 embedder: Embedder | None = None, audit: AuditSink | None = None,
                 limits: StoreLimits | None = None, clock: Callable[[], float] = time.time) -> None:
        self.index = index
        self.lexical = lexical
        self.embedder = embedder
        self.quarantine = quarantine
        self.audit = audit
        self.limits = limits or StoreLimits()
        self.clock = clock
        self.rate = RateLimiter(self.limits.write_rate, self.limits.write_burst, clock)

    async def open(self) -> None:
        await self.index.open(self.embedder.dim if self.embedder is not None else None)

    async def close(self) -> None:
        await self.index.close()
        if self.embedder is not None:
            await self.embedder.close()

    # ------------------------------------------------------------ dispatch

    async def handle(self, tenant: str, request: MemoryRequest) -> MemoryReplied:
        """``tenant`` is the authenticated one (the request's subject token)."""
        if not subjects.is_token(tenant):
            return MemoryReplied(ok=False, error=f"invalid tenant {tenant[:64]!r}")
        if request.tenant_id and request.tenant_id != tenant:
            return MemoryReplied(ok=False, error="tenant_id in the body differs from the subject's tenant")
        match request:
            case MemoryWriteRequested():
                return await self.write(tenant, request.writes, actor=request.actor)
            case MemoryQueryRequested():
                return await self.query(tenant, request)
            case MemoryAdminRequested():
                return await self.admin(tenant, request)

    # ------------------------------------------------------------ writes

    async def write(self, tenant: str, writes: Sequence[MemoryWrite], *, actor: str = "",
                    reviewed: bool = False, operator: bool = False) -> MemoryReplied:
        """``reviewed``: approved from quarantine (no gate, no limit);
        ``operator``: arrived on the operators' subject (gated, not rate-limited)."""
        if len(writes) > MAX_WRITES:
            return MemoryReplied(ok=False, error=f"at most {MAX_WRITES} writes a request")
        results = [await self._write_one(tenant, w, actor, reviewed, operator) for w in writes]
        return MemoryReplied(ok=True, results=tuple(results), count=len(results))

    async def _write_one(self, tenant: str, w: MemoryWrite, actor: str, reviewed: bool,
                         operator: bool = False) -> MemoryWriteResult:
        def result(status: str, mid: str = "", reason: str = "") -> MemoryWriteResult:
            return MemoryWriteResult(write_id=w.write_id, op=w.op, status=status, memory_id=mid, reason=reason)

        bad = _invalid(w)
        if bad:
            return result("rejected", reason=bad)
        if w.op == "NOOP":
            return result("noop")
        mid = memory_id(tenant, w.write_id)
        if w.op in ("ADD", "UPDATE") and await self.index.get(tenant, [mid]):
            return result("duplicate", mid)
        if w.op == "DELETE" and (await self._audited_delete_done(tenant, w)):
            return result("duplicate", reason="already applied")
        if not reviewed:
            qkey = quarantine_key(tenant, w.write_id)
            if await self.quarantine.get(qkey) is not None:
                return result("quarantined", reason="already held for review")
            if not operator and not self.rate.allow(f"{tenant}\x00{w.source}"):
                return result("rate_limited", reason=f"source {w.source!r} writes faster than "
                                                     f"{self.limits.write_rate:g}/s")
            reasons = screen_write(w)
            if reasons:
                item = QuarantinedWrite(item_id=qkey.split(".", 1)[1], write=w, reasons=reasons, at=self.clock())
                try:
                    await self.quarantine.create(qkey, msgspec.json.encode(item))
                except Conflict:
                    pass
                await self._audit("memory.quarantined", tenant, w, actor, item_id=item.item_id,
                                  reasons=list(reasons))
                return result("quarantined", reason="; ".join(reasons))
        now = self.clock()
        if w.op == "ADD":
            await self._add(tenant, w, mid, now)
            await self._audit("memory.write", tenant, w, actor, memory_id=mid)
            return result("applied", mid)
        targets = await self._targets(tenant, w)
        if w.op == "UPDATE":
            await self._add(tenant, w, mid, now)
            if targets:
                await self.index.set_fields(tenant, [t.id for t in targets],
                                            {"state": "invalidated", "invalid_at": now, "invalidated_by": mid})
            await self._audit("memory.write", tenant, w, actor, memory_id=mid, invalidated=[t.id for t in targets])
            return result("applied", mid, "" if targets else "nothing current to update: added")
        # DELETE
        if not targets:
            return result("not_found", reason="no current memory matches")
        await self.index.set_fields(tenant, [t.id for t in targets],
                                    {"state": "invalidated", "invalid_at": now, "invalidated_by": f"delete:{w.write_id}"})
        await self._audit("memory.delete", tenant, w, actor, invalidated=[t.id for t in targets])
        return result("applied", targets[0].id)

    async def _audited_delete_done(self, tenant: str, w: MemoryWrite) -> bool:
        if not w.memory_id:
            return False
        recs = await self.index.get(tenant, [w.memory_id])
        return bool(recs) and recs[0].payload.get("invalidated_by") == f"delete:{w.write_id}"

    async def _targets(self, tenant: str, w: MemoryWrite) -> list[IndexRecord]:
        if w.memory_id:
            recs = await self.index.get(tenant, [w.memory_id])
            return [r for r in recs if r.payload.get("state") == "current"]
        if w.slot:
            equals = {"slot": w.slot, "kind": w.kind, "scope": w.scope}
            if w.scope == "user":
                equals["user_id"] = w.user_id
            return await self.index.scroll(tenant, Where(equals=equals), limit=100)
        return []

    async def _add(self, tenant: str, w: MemoryWrite, mid: str, now: float) -> None:
        payload: dict[str, Any] = {
            TENANT_FIELD: tenant, "scope": w.scope, "user_id": w.user_id if w.scope == "user" else "",
            "kind": w.kind, "slot": w.slot, "text": w.text, "source": w.source, "task_id": w.task_id,
            "trust": w.trust, "write_id": w.write_id, "created_at": now, "valid_from": now, "state": "current",
            "invalid_at": None, "invalidated_by": "", "metadata": dict(w.metadata)}
        dense = (await self.embedder.embed([w.text]))[0] if self.embedder is not None else None
        await self.index.upsert(tenant, [IndexPoint(id=mid, payload=payload, sparse=self.lexical.document(w.text),
                                                    dense=dense)])

    async def _audit(self, kind: str, tenant: str, w: MemoryWrite | None, actor: str, **details: Any) -> None:
        if self.audit is None:
            return
        d: dict[str, Any] = {"tenant": tenant, **details}
        if w is not None:
            d.update(write_id=w.write_id, op=w.op, source=w.source, trust=w.trust, user_id=w.user_id, kind=w.kind)
        await self.audit(AuditRecord(kind=kind, at=self.clock(), actor=actor or "memory-service", agent="memory",
                                     task_id=w.task_id if w is not None else "", details=d))

    # ------------------------------------------------------------ reads

    async def query(self, tenant: str, q: MemoryQueryRequested) -> MemoryReplied:
        limit = max(1, min(q.limit, 50))
        any_of: list[tuple[str, str]] = []
        if q.user_id:
            any_of.append(("user_id", q.user_id))
        if q.include_system:
            any_of.append(("scope", "system"))
        if not any_of or not q.query.strip():
            return MemoryReplied(ok=True)
        dense = (await self.embedder.embed([q.query]))[0] if self.embedder is not None else None
        recs = await self.index.search(tenant, where=Where(any_of=tuple(any_of)), limit=max(limit * 4, 20),
                                       sparse=self.lexical.query(q.query), dense=dense)
        hits = [_hit(r) for r in recs if r.payload.get(TENANT_FIELD) == tenant and r.score >= q.min_score]
        hits = cap_per_source(hits, self.limits.hits_per_source, limit)
        return MemoryReplied(ok=True, hits=tuple(hits), count=len(hits))

    # ------------------------------------------------------------ operators

    async def admin(self, tenant: str, req: MemoryAdminRequested) -> MemoryReplied:
        match req.action:
            case "forget":
                if not req.source:
                    return MemoryReplied(ok=False, error="forget needs a source")
                return await self.forget(tenant, req.source, actor=req.actor)
            case "quarantine_list":
                items = await self.quarantined(tenant)
                return MemoryReplied(ok=True, quarantine=tuple(items), count=len(items))
            case "quarantine_approve" | "quarantine_reject":
                return await self.review(tenant, req.item_id, approve=req.action == "quarantine_approve",
                                         actor=req.actor, reason=req.reason)
            case "stats":
                return MemoryReplied(ok=True, count=await self.index.count(tenant))
        return MemoryReplied(ok=False, error=f"unknown action {req.action!r}")

    async def forget(self, tenant: str, source: str, *, actor: str = "") -> MemoryReplied:
        """Revoke everything derived from ``source``: removed, not just invalidated."""
        recs = await self.index.scroll(tenant, Where(equals={"source": source}, valid_only=False))
        ids = [r.id for r in recs]
        if ids:
            await self.index.delete(tenant, ids)
        dropped = 0
        for item in await self.quarantined(tenant):
            if item.write.source == source and item.status == "pending":
                await self.quarantine.delete(f"{tenant}.{item.item_id}")
                dropped += 1
        await self._audit("memory.forget", tenant, None, actor, source=source, removed=len(ids),
                          quarantine_dropped=dropped)
        return MemoryReplied(ok=True, count=len(ids))

    async def quarantined(self, tenant: str) -> list[QuarantinedWrite]:
        out = []
        for key, entry in await self.quarantine.items():
            if key.startswith(f"{tenant}."):
                out.append(msgspec.json.decode(entry.value, type=QuarantinedWrite))
        return sorted(out, key=lambda i: i.at)

    async def review(self, tenant: str, item_id: str, *, approve: bool, actor: str = "",
                     reason: str = "") -> MemoryReplied:
        if not subjects.is_token(item_id):
            return MemoryReplied(ok=False, error="invalid item id")
        key = f"{tenant}.{item_id}"
        entry = await self.quarantine.get(key)
        if entry is None:
            return MemoryReplied(ok=False, error=f"no quarantined item {item_id}")
        item = msgspec.json.decode(entry.value, type=QuarantinedWrite)
        if item.status != "pending":
            return MemoryReplied(ok=True, quarantine=(item,), count=0)
        results: tuple[MemoryWriteResult, ...] = ()
        if approve:
            results = (await self.write(tenant, [item.write], actor=actor, reviewed=True)).results
        item = msgspec.structs.replace(item, status="approved" if approve else "rejected")
        try:
            await self.quarantine.update(key, msgspec.json.encode(item), entry.revision)
        except Conflict:
            return MemoryReplied(ok=False, error="the item changed during review; list it again")
        await self._audit("memory.approved" if approve else "memory.rejected", tenant, item.write, actor,
                          item_id=item_id, reason=reason)
        return MemoryReplied(ok=True, quarantine=(item,), results=results, count=1)


def _invalid(w: MemoryWrite) -> str:
    if not w.write_id or len(w.write_id) > 200:
        return "write_id must be 1-200 characters"
    if w.op in ("ADD", "UPDATE") and not w.text.strip():
        return f"{w.op} needs text"
    if len(w.text) > MAX_TEXT:
        return f"text longer than {MAX_TEXT} characters"
    if w.scope == "user" and not w.user_id and w.op != "NOOP":
        return "a user memory needs user_id"
    if w.op == "DELETE" and not (w.memory_id or w.slot):
        return "DELETE needs memory_id or slot"
    if w.memory_id:
        try:
            uuid.UUID(w.memory_id)
        except ValueError:
            return "memory_id is not a memory id"
    return ""


def _hit(r: IndexRecord) -> MemoryHit:
    p = r.payload
    trust = p.get("trust")
    return MemoryHit(memory_id=r.id, text=str(p.get("text", "")), score=r.score, kind=str(p.get("kind", "fact")),
                     scope=str(p.get("scope", "user")), user_id=str(p.get("user_id", "")),
                     source=str(p.get("source", "")), task_id=str(p.get("task_id", "")),
                     trust=trust if trust in ("high", "medium", "low") else "low",
                     created_at=float(p.get("created_at") or 0.0))
