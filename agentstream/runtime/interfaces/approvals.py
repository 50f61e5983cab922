"""Human-in-the-loop decisions from the outside: list pending approvals and
publish decisions. Used by the CLI and the HTTP API, which play the approval
service: a decision is accepted only from ``agents.<agent>.decisions.<task>``,
which only the approver role may publish to (see docs/security.md).
A decision carries the ``traceparent`` of the approval's wait span, so it joins
the task's trace.

The engine is the authority on who may decide (it ignores and audits a
decision by an identity not allowed); the checks here only fail early with a
clear message. A decision refused here never reaches the engine, so it is
audited here, as the engine would (``approval.rejected``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats.js.errors as jse
from aiohttp import web

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import ApprovalDecided, ApprovalRequested, AuditRecord
from agentstream.runtime.adapters.jetstream import MSG_ID, NatsKV, bucket
from agentstream.runtime.core.errors import AgentstreamError, ConfigError
from agentstream.runtime.core.policy import ApprovalRecord, decode_record, parse_approvers
from agentstream.runtime.execution.engine import audit_msg_id
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.http_common import _json
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME

log = logging.getLogger("agentstream.approvals")

# How long decide() waits for the agent to take the decision before saying so.
DECISION_WAIT_S = 15.0


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
                 reason: str = "", wait_s: float = DECISION_WAIT_S) -> ApprovalDecided:
    """Publish a decision and return it once the agent has taken it; an
    ApprovalError if it was refused, a duplicate, or overtaken by another."""
    if not approver:
        raise ApprovalError("say who decides: --as NAME (or set AGENTSTREAM_APPROVER)", status=409)
    rec = await get_approval(client, approval_id)
    req = rec.request
    refusal: ApprovalError | None = None
    if rec.status != "pending":
        refusal = ApprovalError(f"approval {approval_id} is already {rec.status}", status=409)
    else:
        allowed = req.approvers or parse_approvers(os.environ)
        if allowed and approver not in allowed:
            refusal = ApprovalError(f"{approver} may not decide on {req.tool}; allowed: {', '.join(allowed)}",
                                    status=403)
    if refusal is not None:
        await _audit_refusal(client, req, approver=approver, approved=approved, status=rec.status,
                             reason=str(refusal))
        raise refusal
    decision = ApprovalDecided(approval_id=req.approval_id, task_id=req.task_id, agent=req.agent, step=req.step,
                               call_id=req.call_id, approved=approved, approver=approver, reason=reason,
                               decided_at=time.time(), tool=req.tool,
                               arguments_digest=codec.arguments_digest(req.arguments),
                               # A whole plan: the decision carries it, so a tool worker can check a
                               # gated call against the step it claims to be (docs/planning.md).
                               plan=req.arguments if req.tool == SUBMIT_PLAN_NAME else {})
    body = codec.encode(decision)
    # The dedupe id comes from the decision's own content: nobody can claim it
    # ahead of this decision (squatting) without publishing this very decision.
    # The first decision the agent takes wins; the others change nothing.
    headers = {MSG_ID: decision_msg_id(decision, body)}
    if rec.trace_parent:
        # Trace context of the approval's wait span: the decision continues the task's trace.
        headers["traceparent"] = rec.trace_parent
    ack = await client.js.publish(subjects.decisions(req.agent, req.task_id), body, headers=headers, timeout=10)
    if ack.duplicate:
        raise ApprovalError(f"this decision on {approval_id} was already submitted", status=409)
    await _outcome(client, decision, wait_s)
    return decision


def plan_lines(req: ApprovalRequested) -> list[str]:
    """A plan-level approval as a human reads it: one line per step, its tool
    and arguments with pointers spelled out (``<output of look['order']>``),
    and what it waits for. Empty for a per-call approval."""
    if req.tool != SUBMIT_PLAN_NAME:
        return []
    shown = {s.get("id"): s for s in req.arguments.get("shown") or () if isinstance(s, dict)}
    out = []
    for step in req.arguments.get("steps") or ():
        if not isinstance(step, dict):
            continue
        sid = step.get("id")
        args = shown.get(sid, {}).get("args", step.get("args"))
        after = f"  (after {', '.join(step['depends_on'])})" if step.get("depends_on") else ""
        out.append(f"    {sid}: {step.get('tool')} {msgspec.json.encode(args).decode()}{after}")
    return out


def decision_msg_id(decision: ApprovalDecided, body: bytes) -> str:
    return f"{decision.approval_id}:decision:{hashlib.sha256(body).hexdigest()[:32]}"


async def _outcome(client: AgentClient, decision: ApprovalDecided, wait_s: float) -> None:
    """Wait (bounded) until the agent has taken a decision on the approval and
    say truthfully whether it was this one: another decision that got there
    first, or none within ``wait_s`` (no agent running?), is an error."""
    deadline = time.monotonic() + wait_s
    while True:
        rec = await get_approval(client, decision.approval_id)
        if rec.status != "pending":
            d = rec.decision
            if d is not None and d.approver == decision.approver and d.decided_at == decision.decided_at:
                return
            by = f" by {d.approver}" if d is not None else ""
            raise ApprovalError(f"approval {decision.approval_id} was {rec.status}{by} before this decision "
                                "was taken; it changed nothing", status=409)
        if time.monotonic() >= deadline:
            raise ApprovalError(f"the decision on {decision.approval_id} was sent, but no agent took it within "
                                f"{wait_s:g}s (is an agent running? see `agentstream approvals`)", status=504)
        await asyncio.sleep(0.05)


async def _audit_refusal(client: AgentClient, req: ApprovalRequested, *, approver: str, approved: bool,
                         status: str, reason: str) -> None:
    """Record a refused decision on the AUDIT stream: who tried, on which
    approval, what they tried, why it was refused. Same kind and subject as
    the engine's own ``approval.rejected`` records."""
    rec = AuditRecord(kind="approval.rejected", at=time.time(), actor=approver, agent=req.agent,
                      task_id=req.task_id, details={"approval_id": req.approval_id, "tool": req.tool,
                                                    "approved": approved, "status": status, "reason": reason})
    try:
        await client.js.publish(subjects.audit(rec.kind, req.agent), codec.encode(rec),
                                headers={MSG_ID: audit_msg_id(rec)}, timeout=10)
    except Exception as exc:  # noqa: BLE001 - the refusal stands and is what the caller must hear
        log.warning("could not audit the refused decision of %s on %s: %s: %s", approver, req.approval_id,
                    type(exc).__name__, exc)


# ----------------------------------------------------------------- HTTP routes


class DecisionBody(msgspec.Struct, kw_only=True):
    approver: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ApproverAuth:
    """How the HTTP API knows who is deciding (docs/security.md).

    - ``tokens``: bearer token -> approver name (``Authorization: Bearer <token>``),
      from ``AGENTSTREAM_APPROVER_TOKENS`` (``alice:TOKEN,bob:TOKEN``) or
      ``AGENTSTREAM_APPROVER_TOKENS_FILE`` (one ``name:token`` a line);
    - ``header``: reverse-proxy mode, ``AGENTSTREAM_APPROVER_HEADER`` (e.g.
      ``X-Forwarded-User``): the proxy in front authenticated the user and set
      this header. Only safe if nothing but the proxy can reach the API.

    Neither configured: the API refuses to decide (401) rather than believe a
    name in the request body. Listing pending approvals needs the same.
    """

    tokens: Mapping[str, str] = field(default_factory=dict)
    header: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApproverAuth:
        env = os.environ if env is None else env
        lines: list[str] = [p for p in (env.get("AGENTSTREAM_APPROVER_TOKENS") or "").split(",") if p.strip()]
        path = env.get("AGENTSTREAM_APPROVER_TOKENS_FILE")
        if path:
            try:
                lines += [ln for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            except OSError as exc:
                raise ConfigError(f"AGENTSTREAM_APPROVER_TOKENS_FILE={path!r}: {exc.strerror}") from None
        tokens: dict[str, str] = {}
        for line in lines:
            name, sep, token = line.strip().partition(":")
            if not sep or not name or len(token) < 16:
                raise ConfigError("approver tokens are name:token pairs with tokens of 16+ characters "
                                  "(AGENTSTREAM_APPROVER_TOKENS / AGENTSTREAM_APPROVER_TOKENS_FILE)")
            tokens[token] = name
        return cls(tokens=tokens, header=(env.get("AGENTSTREAM_APPROVER_HEADER") or "").strip())

    @property
    def configured(self) -> bool:
        return bool(self.tokens or self.header)

    def identify(self, request: web.Request) -> str:
        """The authenticated approver, or an ApprovalError (401)."""
        if not self.configured:
            raise ApprovalError("approver authentication is not configured: set AGENTSTREAM_APPROVER_TOKENS "
                                "(or _FILE) or AGENTSTREAM_APPROVER_HEADER behind a proxy", status=401)
        auth = request.headers.get("Authorization", "")
        if self.tokens and auth.startswith("Bearer "):
            given = auth[len("Bearer "):].strip()
            for token, name in self.tokens.items():
                if hmac.compare_digest(token.encode(), given.encode()):
                    return name
            raise ApprovalError("unknown approver token", status=401)
        if self.header and request.headers.get(self.header, "").strip():
            return request.headers[self.header].strip()
        raise ApprovalError("who is deciding? send Authorization: Bearer <token>"
                            + (f" (or come through the proxy that sets {self.header})" if self.header else ""),
                            status=401)


def add_routes(app: web.Application, client: AgentClient, auth: ApproverAuth | None = None) -> None:
    """``GET /v1/approvals`` (``?status=all``), ``POST /v1/approvals/{id}/approve``
    and ``/deny`` with ``{"reason": "..."}``.

    The approver is who ``auth`` (default: from the environment) authenticated;
    an ``approver`` in the body, if any, must be that same name.
    """
    auth = auth if auth is not None else ApproverAuth.from_env()

    # The shared JSON response. Not _error, which squeezes and truncates the
    # message: these errors are sent verbatim.
    async def list_route(request: web.Request) -> web.Response:
        status = request.query.get("status", "pending")
        try:
            auth.identify(request)
        except ApprovalError as exc:
            return _json({"error": str(exc)}, exc.status)
        try:
            records = await list_approvals(client, status=None if status == "all" else status)
        except ApprovalError as exc:
            return _json({"error": str(exc)}, 503)
        return _json({"approvals": records})

    async def decide_route(request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read() or b"{}", type=DecisionBody)
        except msgspec.DecodeError as exc:
            return _json({"error": f"invalid body: {exc}"}, 400)
        approved = request.match_info["verb"] == "approve"
        try:
            who = auth.identify(request)
            if body.approver and body.approver != who:
                raise ApprovalError(f"authenticated as {who}, not {body.approver}", status=403)
            d = await decide(client, request.match_info["approval_id"], approved=approved,
                             approver=who, reason=body.reason)
        except ApprovalError as exc:
            return _json({"error": str(exc)}, exc.status)
        return _json(d, 202)

    app.router.add_get("/v1/approvals", list_route)
    app.router.add_post(r"/v1/approvals/{approval_id}/{verb:approve|deny}", decide_route)
