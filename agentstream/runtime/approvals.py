"""Human-in-the-loop decisions from the outside: list pending approvals and
publish decisions. Used by the CLI and the HTTP API; any NATS client can do
the same by publishing ``ApprovalDecided`` to the task's inbox subject.

The engine is the authority on who may decide (it ignores and audits a
decision by an identity not allowed); the checks here only fail early with a
clear message.
"""

from __future__ import annotations

import os
import time
import weakref

import msgspec
import nats.js.errors as jse
from aiohttp import web

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import ApprovalDecided
from agentstream.runtime.client import AgentClient
from agentstream.runtime.errors import AgentstreamError
from agentstream.runtime.nats_adapters import NatsKV, bucket
from agentstream.runtime.policy import ApprovalRecord, decode_record, parse_approvers


class ApprovalError(AgentstreamError):
    """``status``: the HTTP status code the decide route answers with."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


# The approvals bucket of each client, once looked up: one round trip per
# client, not per call. Weak keys: a client's entry goes with the client.
_buckets: weakref.WeakKeyDictionary[AgentClient, NatsKV] = weakref.WeakKeyDictionary()


async def _bucket(client: AgentClient) -> NatsKV:
    kv = _buckets.get(client)
    if kv is not None:
        return kv
    try:
        kv = await bucket(client.js, subjects.APPROVALS.name)
    except jse.NotFoundError:
        raise ApprovalError("no approvals bucket: no agent has run on this broker yet", status=404) from None
    _buckets[client] = kv
    return kv


async def list_approvals(client: AgentClient, *, status: str | None = "pending") -> list[ApprovalRecord]:
    kv = await _bucket(client)
    records = [decode_record(e.value) for _, e in await kv.items() if e.value]
    out = [r for r in records if status is None or r.status == status]
    out.sort(key=lambda r: r.request.requested_at)
    return out


async def get_approval(client: AgentClient, approval_id: str) -> ApprovalRecord:
    kv = await _bucket(client)
    try:
        entry = await kv.get(approval_id)
    except (jse.BadRequestError, jse.InvalidKeyError):
        raise ApprovalError(f"invalid approval id {approval_id!r}", status=409) from None
    if entry is None:
        raise ApprovalError(f"no approval {approval_id!r} (see `agentstream approvals`)", status=404)
    return decode_record(entry.value)


def default_identity() -> str:
    return os.environ.get("AGENTSTREAM_APPROVER") or os.environ.get("USER") or ""


async def decide(client: AgentClient, approval_id: str, *, approved: bool, approver: str,
                 reason: str = "") -> ApprovalDecided:
    if not approver:
        raise ApprovalError("say who decides: --as NAME (or set AGENTSTREAM_APPROVER)", status=409)
    rec = await get_approval(client, approval_id)
    if rec.status != "pending":
        raise ApprovalError(f"approval {approval_id} is already {rec.status}", status=409)
    req = rec.request
    allowed = req.approvers or parse_approvers(os.environ)
    if allowed and approver not in allowed:
        raise ApprovalError(f"{approver} may not decide on {req.tool}; allowed: {', '.join(allowed)}",
                            status=403)
    decision = ApprovalDecided(approval_id=req.approval_id, task_id=req.task_id, agent=req.agent, step=req.step,
                               call_id=req.call_id, approved=approved, approver=approver, reason=reason,
                               decided_at=time.time())
    # One decision per approval: the first one published wins (deduplicated).
    await client.js.publish(subjects.events(req.agent, req.task_id), codec.encode(decision),
                            headers={"Nats-Msg-Id": f"{req.approval_id}:decision"}, timeout=10)
    return decision


# ----------------------------------------------------------------- HTTP routes


class DecisionBody(msgspec.Struct, kw_only=True):
    approver: str
    reason: str = ""


def add_routes(app: web.Application, client: AgentClient) -> None:
    """``GET /v1/approvals`` (``?status=all``), ``POST /v1/approvals/{id}/approve``
    and ``/deny`` with ``{"approver": "...", "reason": "..."}``.

    The approver's identity is taken from the body as given: put the API behind
    your authenticating proxy and let it set the body (or restrict who reaches it).
    """

    # http_api's JSON response (same bytes and headers). Not its _error, which
    # squeezes and truncates the message: these errors are sent verbatim.
    from agentstream.runtime.http_api import _json  # late: http_api imports this module in create_app

    async def list_route(request: web.Request) -> web.Response:
        status = request.query.get("status", "pending")
        try:
            records = await list_approvals(client, status=None if status == "all" else status)
        except ApprovalError as exc:
            return _json({"error": str(exc)}, 503)
        return _json({"approvals": records})

    async def decide_route(request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read(), type=DecisionBody)
        except msgspec.DecodeError as exc:
            return _json({"error": f"invalid body: {exc}"}, 400)
        approved = request.match_info["verb"] == "approve"
        try:
            d = await decide(client, request.match_info["approval_id"], approved=approved,
                             approver=body.approver, reason=body.reason)
        except ApprovalError as exc:
            return _json({"error": str(exc)}, exc.status)
        return _json(d, 202)

    app.router.add_get("/v1/approvals", list_route)
    app.router.add_post(r"/v1/approvals/{approval_id}/{verb:approve|deny}", decide_route)
