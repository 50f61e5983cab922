"""Runs one tool call and publishes its result to the agent's inbox.

Every failure becomes a structured ``ToolError`` in the result: a tool error
is something the model should see and react to, never a crashed step.

Per call, in order:

1. the request is checked (the reply goes only to the named task's inbox; a
   call that needs a human's approval runs only under a decision approving
   exactly it, read from the stream by the worker itself, else it is
   dead-lettered and audited as ``tool.refused``);
2. an ``idempotent`` tool whose result for this idempotency key is already
   stored (bucket ``tool_results``) publishes that result again instead of
   running: a redelivered call returns the first result;
3. the arguments are validated (a model mistake: returned at once, never
   retried, never counted by the breaker);
4. the tool's circuit breaker (if it has one) admits the call, or fails it
   fast with ``circuit_open`` / serves it with the tool's ``fallback``;
5. the tool runs, with a timeout per attempt; transient failures are retried
   (exponential backoff with jitter, bounded attempts and total time; see
   ``backoff``). Classification:

   ============================================  =========  ==================
   failure                                       retried    breaker counts it
   ============================================  =========  ==================
   invalid arguments                             no         no
   ``ToolFailure(retryable=False)`` (an answer)  no         no
   ``ToolFailure(retryable=True)``,              yes        yes
   ``RetryableToolError``, ``RateLimited``
   timeout, ``ConnectionError``, other           only read- yes
   transient ``OSError``                         only/idem-
                                                 potent*
   any other exception                           no         yes
   ============================================  =========  ==================

   (*) their effect may already have happened; ``RetryPolicy.retry_ambiguous``
   overrides;
6. the outcome is recorded in the breaker, stored (idempotent tools,
   create-only) and published as ``ToolCallCompleted`` with its ``attempts``
   (0 = the tool did not run) and ``served_by`` (the fallback's name, if one
   served it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    ApprovalDecided,
    AuditRecord,
    ToolCallCompleted,
    ToolCallRequested,
    ToolError,
)
from agentstream.runtime.adapters.in_memory import InMemoryKV
from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.ports import Bus, Entry, SessionStore
from agentstream.runtime.core.tools import RateLimited, RetryPolicy, Tool, ToolFailure
from agentstream.runtime.execution.breaker import Admission, SharedBreaker
from agentstream.runtime.execution.consumer import Reject

log = logging.getLogger("agentstream.toolrunner")

# (subject, body) of the EVENTS message at a sequence, or None if there is none.
DecisionReader = Callable[[int], Awaitable[tuple[str, bytes] | None]]

# OSErrors that are a bug or a configuration problem, not a flaky downstream.
_PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                        NotADirectoryError)


@dataclass(frozen=True)
class Outcome:
    """What running a call produced. ``attempts`` = 0: the tool did not run
    (bad arguments, breaker open, unknown tool)."""

    result: Any = None
    error: ToolError | None = None
    attempts: int = 0
    served_by: str = ""
    fault: bool = False  # a failure that counts against the tool's health


@dataclass(frozen=True)
class Failure:
    error: ToolError
    retry: bool  # worth another attempt (for this tool)
    fault: bool  # counts against the tool's health (breaker)


def classify(exc: BaseException, tool: Tool, timeout_s: float) -> Failure:
    """Transient or permanent, and whether it is the tool's fault."""
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError (3.11+)
        return Failure(ToolError(kind="timeout", message=f"{tool.name} did not finish within {timeout_s:g}s",
                                 retryable=True), retry=tool.retry_ambiguous, fault=True)
    if isinstance(exc, ToolFailure):
        retryable = exc.error.retryable
        return Failure(exc.error, retry=retryable, fault=retryable)
    if isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS):
        return Failure(ToolError(kind="unavailable", message=f"{type(exc).__name__}: {exc}", retryable=True,
                                 hint="a downstream service is unreachable; try again later"),
                       retry=tool.retry_ambiguous, fault=True)
    return Failure(ToolError(kind="execution_error", message=f"{type(exc).__name__}: {exc}"),
                   retry=False, fault=True)


def backoff(p: RetryPolicy, attempt: int, exc: BaseException | None) -> float:
    """The wait after failed attempt ``attempt`` (1-based): exponential with
    jitter (``initial * 2**(n-1) + U(0, initial)``, capped at ``max_backoff_s``),
    and at least a ``RateLimited.retry_after_s``."""
    base = min(p.max_backoff_s, p.initial_backoff_s * 2 ** (attempt - 1))
    wait = min(p.max_backoff_s, base + random.uniform(0, p.initial_backoff_s))
    if isinstance(exc, RateLimited) and exc.retry_after_s:
        wait = max(wait, exc.retry_after_s)
    return wait


def result_key(req: ToolCallRequested) -> str:
    """KV key of an idempotent call's stored result (KV keys cannot hold ``:``)."""
    return f"{req.tool}.{hashlib.sha256(req.idempotency_key.encode()).hexdigest()[:40]}"


class ToolRunner:
    """Executes tool calls for the tools this worker serves.

    ``breakers``: the KV holding every tool's breaker state (bucket
    ``tool_breakers``), shared by all replicas; without one, a process-local
    in-memory store (breakers still work, per process). ``results``: the KV
    for idempotent tools' results (bucket ``tool_results``); without one,
    nothing is stored. ``registry``: where fallbacks are looked up (the whole
    app's tools; a fallback runs in this process even if this worker does not
    serve it); defaults to ``tools``.
    """

    def __init__(self, tools: Mapping[str, Tool], bus: Bus, *, worker: str = "",
                 default_timeout_s: float = 30.0, breakers: SessionStore | None = None,
                 results: SessionStore | None = None, registry: Mapping[str, Tool] | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 decisions: DecisionReader | None = None, approvers: tuple[str, ...] = ()) -> None:
        self.tools = tools
        self.bus = bus
        self.worker = worker
        self.default_timeout_s = default_timeout_s
        self.registry: Mapping[str, Tool] = registry if registry is not None else tools
        self.breaker = SharedBreaker(breakers if breakers is not None else InMemoryKV(), clock=clock)
        self.results = results
        self.sleep = sleep
        # Reads a decision by its EVENTS sequence, for calls that need a human;
        # without one, such calls never run (fail closed).
        self.decisions = decisions
        self.approvers = approvers  # the deployment's approvers (AGENTSTREAM_APPROVERS)
        self.refused = 0  # calls refused for want of a valid approval
        self.executions = 0  # calls whose tool ran
        self.replayed = 0  # idempotent calls answered from the stored result

    async def on_call(self, req: ToolCallRequested) -> None:
        # The reply goes only to the inbox of the task named in the request, so a
        # forged request cannot make a tool worker publish anywhere else.
        if req.reply_subject != subjects.events(req.agent, req.task_id) or not subjects.is_token(req.agent) \
                or not subjects.is_token(req.task_id):
            raise Reject(f"reply_subject {req.reply_subject!r} is not the inbox of task {req.task_id!r}")
        msg_id = f"{req.idempotency_key}:result"
        tool = self.tools.get(req.tool)
        if tool is not None and tool.needs_approval(req.arguments):
            why = await self._check_approval(req, tool)
            if why is not None:
                # No result is published: its msg id is the real call's, which a
                # forged request must not take. Dead-lettered and audited instead.
                self.refused += 1
                await self._audit_refusal(req, why)
                raise Reject(why)
        key = result_key(req) if tool is not None and tool.idempotent and self.results is not None else None
        if key is not None:
            stored = await self._stored(key)
            if stored is not None:
                self.replayed += 1
                await self.bus.publish(req.reply_subject, stored.value, msg_id=msg_id)
                return
        started = time.time()
        out = await self.run(req)
        payload = self._encode(req, out, started)
        if key is not None and out.attempts > 0:
            payload = await self._store(key, payload)
        await self.bus.publish(req.reply_subject, payload, msg_id=msg_id)

    async def _check_approval(self, req: ToolCallRequested, tool: Tool) -> str | None:
        """None if the call runs under a decision that approves exactly it, read
        from the stream and published on the task's decisions subject (which
        only the approval service may publish to); else why not."""
        if req.approval_seq <= 0:
            return f"{req.tool} needs a human's approval and the call carries none"
        if self.decisions is None:
            return f"{req.tool} needs a human's approval and this worker cannot read decisions"
        found = await self.decisions(req.approval_seq)
        if found is None:
            return f"no approval decision at EVENTS sequence {req.approval_seq}"
        subject, data = found
        if subject != subjects.decisions(req.agent, req.task_id):
            return f"the message at EVENTS sequence {req.approval_seq} is not a decision on task {req.task_id}"
        try:
            d = codec.agent_inbox.decode(data)
        except codec.DecodeError as exc:
            return f"the approval decision is not readable: {exc}"
        if not isinstance(d, ApprovalDecided):
            return "the approval reference is not a decision"
        if (d.task_id, d.agent, d.step, d.call_id, d.tool) != (req.task_id, req.agent, req.step, req.call_id,
                                                                 req.tool):
            return f"the decision {d.approval_id} is for another call"
        if d.arguments_digest != codec.arguments_digest(req.arguments):
            return f"the decision {d.approval_id} approved other arguments"
        if not d.approved:
            return f"the decision {d.approval_id} denied this call"
        allowed = tool.approvers or self.approvers
        if allowed and d.approver not in allowed:
            return f"{d.approver} may not approve {req.tool}"
        return None

    async def _audit_refusal(self, req: ToolCallRequested, why: str) -> None:
        rec = AuditRecord(kind="tool.refused", at=time.time(), actor=f"agent:{req.agent}", agent=req.agent,
                          task_id=req.task_id, details={"tool": req.tool, "call_id": req.call_id, "step": req.step,
                                                        "approval_seq": req.approval_seq, "reason": why,
                                                        "worker": self.worker})
        log.warning("refused a call to %s for task %s: %s", req.tool, req.task_id, why)
        try:
            await self.bus.publish(subjects.audit(rec.kind, req.agent), codec.encode(rec),
                                   msg_id=f"audit:tool.refused:{req.idempotency_key}:{rec.at!r}")
        except Exception as exc:  # noqa: BLE001 - the refusal stands; the dead letter records it too
            log.warning("could not audit a refused tool call: %s", exc)

    async def execute(self, req: ToolCallRequested) -> tuple[object, ToolError | None]:
        """(result, None) or (None, error). Never raises for a tool's failure."""
        out = await self.run(req)
        return out.result, out.error

    async def run(self, req: ToolCallRequested) -> Outcome:
        tool = self.tools.get(req.tool)
        if tool is None:
            return Outcome(error=ToolError(kind="unknown_tool", message=f"no worker serves tool {req.tool!r}"))
        args = tool.validate(req.arguments)
        if isinstance(args, ToolError):
            return Outcome(error=args)
        out = await self._guarded(tool, args, req)
        if isinstance(out, Outcome):
            return out
        fb = await self._fallback(tool, req)
        if fb is not None:
            return fb
        return Outcome(error=ToolError(
            kind="circuit_open", message=f"{tool.name} is failing and calls to it are suspended",
            hint=f"retry after {max(out.retry_after_s, 1.0):.0f}s, or do without this tool", retryable=False))

    async def _guarded(self, tool: Tool, args: msgspec.Struct, req: ToolCallRequested) -> Outcome | Admission:
        """Run through the tool's breaker, or return its ``reject`` admission (it is open)."""
        policy = tool.breaker
        if policy is None:
            return await self._attempts(tool, args, req)
        owner = f"{self.worker}/{req.idempotency_key}"
        try:
            adm, seen = await self.breaker.admit(tool.name, policy, owner)
        except Exception as exc:  # noqa: BLE001 - a KV hiccup must not stop the tool: run unguarded
            log.warning("breaker of %r unavailable (%s); running the call unguarded", tool.name, exc)
            return await self._attempts(tool, args, req)
        if adm.action == "reject":
            return adm
        probe = adm.action == "probe"
        out = await self._attempts(tool, args, req)
        try:
            await self.breaker.record(tool.name, policy, owner, ok=not out.fault, probe=probe, seen=seen)
        except Exception as exc:  # noqa: BLE001 - the result matters more than the bookkeeping
            log.warning("could not record the outcome in the breaker of %r: %s", tool.name, exc)
        return out

    async def _fallback(self, tool: Tool, req: ToolCallRequested) -> Outcome | None:
        if not tool.fallback:
            return None
        fb = self.registry.get(tool.fallback)
        if fb is None:
            log.warning("tool %r names fallback %r, which this app does not define", tool.name, tool.fallback)
            return None
        args = fb.validate(req.arguments)
        if isinstance(args, ToolError):
            log.warning("fallback %r of %r rejects the arguments: %s", fb.name, tool.name, args.message)
            return None
        out = await self._guarded(fb, args, req)  # one level: the fallback's own fallback is not chained
        if isinstance(out, Admission):
            return None
        return replace(out, served_by=fb.name)

    async def _attempts(self, tool: Tool, args: msgspec.Struct, req: ToolCallRequested) -> Outcome:
        """Run the tool, retrying what ``classify`` calls transient: stop after
        ``max_attempts``, or when the next wait would end past ``max_total_s``.
        The first attempt gets the full timeout; later ones at most what is
        left of ``max_total_s``."""
        # A plain loop, not tenacity (used for model calls): an AsyncRetrying per
        # call costs ~38 µs on this hot path, several times the rest of the runner.
        timeout = tool.timeout_s or req.timeout_s or self.default_timeout_s
        policy = tool.retry
        start = time.monotonic()
        self.executions += 1
        attempts = 0
        while True:
            attempts += 1
            t = timeout if attempts == 1 else min(timeout, max(policy.max_total_s - (time.monotonic() - start),
                                                                0.001))
            try:
                async with asyncio.timeout(t):  # no extra task, unlike wait_for
                    return Outcome(result=await tool(args), attempts=attempts)
            except Exception as exc:  # noqa: BLE001 - any tool bug becomes a result the model sees
                f = classify(exc, tool, timeout)
                if not f.retry or attempts >= policy.max_attempts:
                    return Outcome(error=f.error, attempts=attempts, fault=f.fault)
                wait = backoff(policy, attempts, exc)
                if time.monotonic() - start + wait >= policy.max_total_s:
                    return Outcome(error=f.error, attempts=attempts, fault=f.fault)
            await self.sleep(wait)

    def _encode(self, req: ToolCallRequested, out: Outcome, started: float) -> bytes:
        def done(result: Any, error: ToolError | None) -> ToolCallCompleted:
            return ToolCallCompleted(
                task_id=req.task_id, agent=req.agent, step=req.step, call_id=req.call_id, tool=req.tool,
                ok=error is None, result=result if error is None else None, error=error,
                started_at=started, finished_at=time.time(), attempts=out.attempts, worker=self.worker,
                served_by=out.served_by)

        try:
            return codec.encode(done(out.result, out.error))
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            return codec.encode(done(None, ToolError(
                kind="execution_error", message=f"{req.tool} returned a value that is not JSON: {exc}")))

    async def _stored(self, key: str) -> Entry | None:
        assert self.results is not None
        try:
            return await self.results.get(key)
        except Exception as exc:  # noqa: BLE001 - idempotent tools may run again; that is what idempotent means
            log.warning("cannot read stored result %s: %s", key, exc)
            return None

    async def _store(self, key: str, payload: bytes) -> bytes:
        """Create-only: if another delivery stored first, publish its result."""
        assert self.results is not None
        try:
            await self.results.create(key, payload)
        except Conflict:
            first = await self._stored(key)
            if first is not None:
                return first.value
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot store result %s: %s", key, exc)
        return payload
