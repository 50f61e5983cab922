"""Runs one tool call and publishes its result to the agent's inbox.

Every failure becomes a structured ``ToolError`` in the result: a tool error
is something the model should see and react to, never a crashed step.

Per call, in order:

1. the request is checked (the reply goes only to the named task's inbox; a
   call that needs a human's approval runs only under a decision approving
   exactly it, read from the stream by the worker itself, or under a whole
   plan's approval that holds exactly this step and arguments (its pointers
   resolved from results the worker reads itself, docs/planning.md); else it
   is dead-lettered and audited as ``tool.refused``);
   a call this process is still running (a redelivery after a broker
   restart) waits for that run; a call whose result this process computed
   before (kept in memory, bounded) publishes that result again;
2. an ``idempotent`` or ``at_most_once`` tool whose result for this
   idempotency key is already stored (bucket ``tool_results``) publishes that
   result again instead of running: a redelivered call returns the first
   result. An ``at_most_once`` tool then records its start by
   compare-and-set (``<key>.started``); if a start is already recorded and no
   result, an earlier run was cut off (its worker died): the call is not run
   again but answered ``outcome_unknown``, audited (``audit.tool_outcome_unknown.<agent>``);
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
6. the outcome is recorded in the breaker, stored (idempotent and
   at-most-once tools, create-only), kept in memory, and published as
   ``ToolCallCompleted`` with its ``attempts`` (0 = the tool did not run) and
   ``served_by`` (the fallback's name, if one served it). A result larger than
   ``claim_check_bytes`` goes to the object store and the event carries its
   name (``result_ref``). The publish (and the store) is retried with the same
   msg id while the broker is away, up to ``publish_retry_s``: a computed
   result is not thrown away because a publish failed. The consumer's
   heartbeat (``in_progress``) keeps the call's message meanwhile.

Guarantees per tool mode and crash: ``docs/effects.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

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
from agentstream.runtime.adapters.jetstream import BROKER_ERRORS
from agentstream.runtime.core import plan_turns
from agentstream.runtime.core.errors import Conflict, PayloadTooLarge
from agentstream.runtime.core.plan_approval import approval_arguments
from agentstream.runtime.core.ports import BlobStore, Bus, Entry, SessionStore
from agentstream.runtime.core.tools import RateLimited, RetryPolicy, Tool, ToolContext, ToolFailure
from agentstream.runtime.execution.breaker import Admission, SharedBreaker
from agentstream.runtime.execution.consumer import Reject
from agentstream.runtime.execution.engine import RESULT_REF_PREFIX
from agentstream.runtime.planning.plan import (
    REF_KEY,
    Plan,
    PlanStep,
    Unresolved,
    refs_in,
    resolve,
    topological_order,
)
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME

log = logging.getLogger("agentstream.toolrunner")

_R = TypeVar("_R")
# The broker is away (down, restarting, electing a leader): worth retrying.
_TRANSIENT = BROKER_ERRORS
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
                 blobs: BlobStore | None = None, claim_check_bytes: int = 256 * 1024,
                 publish_retry_s: float = 120.0, keep_results: int = 10_000,
                 decisions: DecisionReader | None = None, approvers: tuple[str, ...] = ()) -> None:
        self.tools = tools
        self.bus = bus
        self.worker = worker
        self.default_timeout_s = default_timeout_s
        self.registry: Mapping[str, Tool] = registry if registry is not None else tools
        self.breaker = SharedBreaker(breakers if breakers is not None else InMemoryKV(), clock=clock)
        self.results = results
        self.sleep = sleep
        # Large results go to the blob store (claim-check) above this size.
        self.blobs = blobs
        self.claim_check_bytes = claim_check_bytes
        # How long a result (or an at-most-once start mark) is retried while
        # the broker is away, before the call's message is let go (redelivered).
        self.publish_retry_s = publish_retry_s
        # The last results this process computed, by idempotency key: a
        # redelivered call (a lost ack, a publish given up on) is answered
        # from here instead of running its tool again.
        self.keep_results = keep_results
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._kept_bytes = 0
        self.keep_results_bytes = 64 * 1024 * 1024
        self._running: dict[str, asyncio.Future[BaseException | None]] = {}
        self._local = InMemoryKV()  # at-most-once marks when no KV is given
        # Reads a decision by its EVENTS sequence, for calls that need a human;
        # without one, such calls never run (fail closed).
        self.decisions = decisions
        self.approvers = approvers  # the deployment's approvers (AGENTSTREAM_APPROVERS)
        self.refused = 0  # calls refused for want of a valid approval
        self.executions = 0  # calls whose tool ran
        self.replayed = 0  # calls answered from a stored or kept result
        self.delivered = 0  # results the broker took
        self.publish_retries = 0  # attempts repeated while the broker was away
        self.outcome_unknown = 0  # at-most-once calls found started and unfinished

    async def on_call(self, req: ToolCallRequested) -> None:
        # The reply goes only to the inbox of the task named in the request, so a
        # forged request cannot make a tool worker publish anywhere else.
        if req.reply_subject != subjects.events(req.agent, req.task_id) or not subjects.is_token(req.agent) \
                or not subjects.is_token(req.task_id):
            raise Reject(f"reply_subject {req.reply_subject!r} is not the inbox of task {req.task_id!r}")
        key = req.idempotency_key
        running = self._running.get(key)
        if running is not None:
            # A redelivery while this process still runs (or re-publishes) the
            # call, e.g. after a broker restart: wait for that one, run nothing.
            # If that one failed, so does this delivery (acking it would ack
            # the message whose result was never published).
            failed = await asyncio.shield(running)
            if failed is not None:
                raise RuntimeError(f"the first delivery of {key} failed: {failed}")
            return
        fut: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._running[key] = fut
        outcome: BaseException | None = None
        try:
            await self._on_call(req)
        except _Replay as replay:
            self.replayed += 1
            await self._deliver(req.reply_subject, replay.payload, f"{req.idempotency_key}:result")
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            self._running.pop(key, None)
            fut.set_result(outcome)

    async def _on_call(self, req: ToolCallRequested) -> None:
        msg_id = f"{req.idempotency_key}:result"
        gated = self.tools.get(req.tool)
        if gated is not None and gated.needs_approval(req.arguments):
            why = await self._check_approval(req, gated)
            if why is not None:
                # No result is published: its msg id is the real call's, which a
                # forged request must not take. Dead-lettered and audited instead.
                self.refused += 1
                await self._audit_refusal(req, why)
                raise Reject(why)
        kept = self._kept.get(req.idempotency_key)
        if kept is not None:
            # Computed here before and possibly never delivered (a publish
            # that failed, an ack lost with the broker): publish it, not a rerun.
            self.replayed += 1
            await self._deliver(req.reply_subject, kept, msg_id)
            return
        tool = self.tools.get(req.tool)
        store = self._store_for(tool)
        key = result_key(req) if store is not None else None
        if key is not None and store is not None:
            stored = await self._stored(store, key, must=tool is not None and tool.at_most_once)
            if stored is not None:
                self.replayed += 1
                await self._deliver(req.reply_subject, stored.value, msg_id)
                return
        started = time.time()
        if tool is not None and tool.at_most_once and key is not None and store is not None:
            unknown = await self._claim_start(store, key, req)
            if unknown is not None:
                payload = await self._store(store, key, self._encode(req, Outcome(error=unknown), started),
                                            must=True)
                self._keep(req.idempotency_key, payload)
                await self._deliver(req.reply_subject, payload, msg_id)
                return
        out = await self.run(req)
        payload = await self._claim_check(self._encode(req, out, started))
        if key is not None and store is not None and (out.attempts > 0 or (tool is not None and tool.at_most_once)):
            payload = await self._store(store, key, payload, must=tool is not None and tool.at_most_once)
        self._keep(req.idempotency_key, payload)
        try:
            await self._deliver(req.reply_subject, payload, msg_id)
        except PayloadTooLarge as exc:
            # No object store to put it in: the model learns, the task goes on.
            small = self._encode(req, Outcome(error=ToolError(
                kind="result_too_large", message=f"{req.tool} returned a result too large to deliver: {exc}",
                hint="ask for less (a narrower query, a summary)")), started)
            self._keep(req.idempotency_key, small)
            await self._deliver(req.reply_subject, small, msg_id)

    def _store_for(self, tool: Tool | None) -> SessionStore | None:
        """Where this tool's results (and at-most-once start marks) live."""
        if tool is None:
            return None
        if tool.at_most_once:
            # Never without a record of the start: process-local if there is no KV.
            return self.results if self.results is not None else self._local
        return self.results if tool.idempotent else None

    def _keep(self, idem_key: str, payload: bytes) -> None:
        old = self._kept.pop(idem_key, None)
        self._kept_bytes += len(payload) - (len(old) if old is not None else 0)
        self._kept[idem_key] = payload
        while len(self._kept) > self.keep_results or self._kept_bytes > self.keep_results_bytes:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped)

    async def _claim_start(self, store: SessionStore, key: str, req: ToolCallRequested) -> ToolError | None:
        """Record the start of an at-most-once call by compare-and-set before it
        runs. None: ours, run it. A ToolError: someone started it before and
        never stored an outcome (a worker killed mid-call): it must not run again."""
        nonce = uuid.uuid4().hex
        mark = msgspec.json.encode({"worker": self.worker, "at": time.time(), "key": req.idempotency_key,
                                    "nonce": nonce})
        try:
            await self._with_broker(lambda: store.create(start_key(key), mark), "record the start of", req)
            return None
        except Conflict:
            pass
        first = await self._stored(store, key, must=True)
        if first is not None:  # finished meanwhile: the redelivery publishes that result
            raise _Replay(first.value)
        prior = await self._stored(store, start_key(key), must=True)
        who = ""
        if prior is not None:
            try:
                info = msgspec.json.decode(prior.value)
            except msgspec.DecodeError:
                info = {}
            if isinstance(info, dict) and info.get("nonce") == nonce:
                # Our own create: it landed, but its answer was lost (a timeout), and the retry conflicted.
                return None
            if isinstance(info, dict) and isinstance(info.get("at"), (int, float)):
                who = f" by worker {info.get('worker', '?')} at {time.strftime('%H:%M:%S', time.gmtime(info['at']))} UTC"
        self.outcome_unknown += 1
        log.warning("at-most-once call %s of %s started before%s and never finished; not run again",
                    req.idempotency_key, req.tool, who)
        await self._audit_unknown(req, who)
        tool = self.tools.get(req.tool)
        return ToolError(kind="outcome_unknown",
                         message=f"{req.tool} was started{who} but its outcome was never recorded "
                                 "(its worker stopped mid-call); it may or may not have taken effect, "
                                 "and it is not run again",
                         hint="do not call it again blindly; check its effect first or ask a human",
                         escalate=tool is not None and tool.on_unknown == "escalate")

    async def _audit_unknown(self, req: ToolCallRequested, who: str) -> None:
        tool = self.tools.get(req.tool)
        rec = AuditRecord(kind="tool.outcome_unknown", at=time.time(), actor=f"tool-worker:{self.worker}",
                          agent=req.agent, task_id=req.task_id,
                          details={"tool": req.tool, "call_id": req.call_id, "step": req.step,
                                   "idempotency_key": req.idempotency_key, "started": who.strip(),
                                   "escalated": tool is not None and tool.on_unknown == "escalate"})
        try:
            await self._with_broker(lambda: self.bus.publish(
                subjects.audit(rec.kind, req.agent), codec.encode(rec),
                msg_id=f"audit:tool.outcome_unknown:{req.idempotency_key}"), "audit", req)
        except Exception as exc:  # noqa: BLE001 - the answer to the model matters more than the audit
            log.warning("could not audit the unknown outcome of %s: %s", req.idempotency_key, exc)

    async def _deliver(self, subject: str, payload: bytes, msg_id: str) -> None:
        """Publish a result until the broker takes it (same msg id: a publish
        that did land is deduplicated), bounded by ``publish_retry_s``; the
        consumer's heartbeat keeps the call's message ours meanwhile. Past the
        bound it raises: the message is redelivered, and this process
        answers it from ``_kept`` instead of running the tool again."""
        await self._with_broker(lambda: self.bus.publish(subject, payload, msg_id=msg_id), "publish", None,
                                what_id=msg_id)
        self.delivered += 1

    async def _claim_check(self, payload: bytes) -> bytes:
        """A result larger than ``claim_check_bytes`` goes to the blob store;
        the event carries its reference (``result_ref``)."""
        if self.blobs is None or len(payload) <= self.claim_check_bytes:
            return payload
        done = msgspec.json.decode(payload, type=ToolCallCompleted)
        raw = msgspec.json.encode(done.result)
        name = f"{RESULT_REF_PREFIX}{hashlib.sha256(raw).hexdigest()}"
        await self._with_broker(lambda: self.blobs.put(name, raw), "store the large result of",  # type: ignore[union-attr]
                                None, what_id=done.call_id)
        return codec.encode(msgspec.structs.replace(done, result=None, result_ref=name))

    async def _with_broker(self, op: Callable[[], Awaitable[_R]], what: str, req: ToolCallRequested | None, *,
                           what_id: str = "") -> _R:
        """``op()``, retried with backoff while the broker is away, for at most
        ``publish_retry_s``. Other errors (``Conflict``, too large) pass through."""
        deadline = time.monotonic() + self.publish_retry_s
        wait = 0.05
        failures = 0
        while True:
            try:
                result = await op()
            except _TRANSIENT as exc:
                failures += 1
                ident = what_id or (req.idempotency_key if req is not None else "")
                if time.monotonic() + wait >= deadline:
                    log.warning("gave up trying to %s %s after %d attempts: %s", what, ident, failures, exc)
                    raise
                if failures == 1:  # one line per outage, not per attempt
                    log.warning("cannot %s %s (%s: %s); retrying for up to %gs", what, ident,
                                type(exc).__name__, exc, self.publish_retry_s)
                self.publish_retries += 1
                await self.sleep(wait + random.uniform(0, wait))
                wait = min(wait * 2, 2.0)
                continue
            if failures:
                log.info("could %s %s after %d failed attempts", what, what_id or "", failures)
            return result

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
        if d.tool == SUBMIT_PLAN_NAME:
            return await self._check_plan_approval(req, d, tool) or _once(req)
        if (d.task_id, d.agent, d.step, d.call_id, d.tool) != (req.task_id, req.agent, req.step, req.call_id,
                                                                 req.tool):
            return f"the decision {d.approval_id} is for another call"
        if d.arguments_digest != codec.arguments_digest(req.arguments):
            return f"the decision {d.approval_id} approved other arguments"
        if not d.approved:
            return f"the decision {d.approval_id} denied this call"
        return self._approver_refused(req, d, tool) or _once(req)

    async def _check_plan_approval(self, req: ToolCallRequested, d: ApprovalDecided, tool: Tool) -> str | None:
        """A gated call under a whole plan's approval: the decision (already
        known to come from the decisions subject of this task) must approve a
        plan, carry that very plan (its digest), and that plan must have the
        step this call claims to be (its call id ``p<attempt>-<step>``, same
        turn), to this tool, with exactly these arguments once its pointers
        are resolved from the results of the steps they name, which this
        worker reads from the stream itself (``req.plan_inputs``): results only
        tool workers may publish, for those very steps."""
        if (d.task_id, d.agent, d.step) != (req.task_id, req.agent, req.step):
            return f"the plan decision {d.approval_id} is for another task or turn"
        attempt = d.call_id.removeprefix("plan-")
        step_id = plan_turns.step_of(req.call_id, int(attempt)) if attempt.isdigit() else None
        if not step_id:
            return f"call {req.call_id} is not a step of the plan approved by {d.approval_id}"
        if codec.arguments_digest(d.plan) != d.arguments_digest:
            return f"the plan in decision {d.approval_id} is not the plan it approved"
        plan = _decided_plan(d.plan)
        if plan is None or codec.arguments_digest(approval_arguments(plan)) != d.arguments_digest:
            # What a human reads (the steps as shown, the digest) must be what
            # this check runs on: the listing is written by the agent role.
            return f"the plan in decision {d.approval_id} is not shown as it runs"
        approved = {s.id: s for s in plan.steps}
        target = approved.get(step_id)
        if target is None or target.tool != req.tool:
            return f"the plan approved by {d.approval_id} has no step {step_id!r} calling {req.tool}"
        order = topological_order(plan.steps)
        if order is None:
            return f"the plan approved by {d.approval_id} is not a valid plan"
        # Every step the call's pointers lead to, directly or through other
        # steps' pointers: each result must answer its step as approved.
        needed: set[str] = set()
        todo = [target]
        while todo:
            for ref in {str(r[REF_KEY]) for r in refs_in(todo.pop().args)} - needed:
                needed.add(ref)
                if ref in approved:
                    todo.append(approved[ref])
        outputs: dict[str, Any] = {}
        try:
            for sid in (s for s in order if s in needed):
                want = codec.arguments_digest(resolve(approved[sid].args, outputs))
                got = await self._plan_input(req, d, attempt, approved[sid], want)
                if isinstance(got, str):
                    return got
                outputs[sid] = got[0]
            approved_args = resolve(target.args, outputs)
        except Unresolved as exc:
            return f"step {step_id!r} of the plan approved by {d.approval_id} does not resolve: {exc}"
        if approved_args != req.arguments:
            return f"the decision {d.approval_id} approved other arguments for step {step_id!r}"
        if not d.approved:
            return f"the decision {d.approval_id} denied this plan"
        return self._approver_refused(req, d, tool)

    def _approver_refused(self, req: ToolCallRequested, d: ApprovalDecided, tool: Tool) -> str | None:
        allowed = tool.approvers or self.approvers
        if allowed and d.approver not in allowed:
            return f"{d.approver} may not approve {req.tool}"
        return None

    async def _plan_input(self, req: ToolCallRequested, d: ApprovalDecided, attempt: str, step: PlanStep,
                          want: str) -> tuple[Any] | str:
        """The output of an earlier step of an approved plan, read at the
        sequence the call names: a successful result for that step's call, on
        this task's inbox, at the same turn, of the step's approved arguments
        (digest ``want``). Else why not."""
        call_id = plan_turns.call_id(int(attempt), step.id)
        seq = req.plan_inputs.get(step.id, 0)
        if seq <= 0 or self.decisions is None:
            return f"call {req.call_id} names no result for the step {call_id} its arguments come from"
        found = await self.decisions(seq)
        if found is None or found[0] != subjects.events(req.agent, req.task_id):
            return f"EVENTS sequence {seq} is not a result on task {req.task_id}"
        try:
            ev = codec.agent_inbox.decode(found[1])
        except codec.DecodeError as exc:
            return f"the result at EVENTS sequence {seq} is not readable: {exc}"
        if not isinstance(ev, ToolCallCompleted) or (ev.call_id, ev.step, ev.tool) != (call_id, d.step, step.tool) \
                or not ev.ok:
            return f"EVENTS sequence {seq} is not a successful result of {call_id} of the approved plan"
        if ev.arguments_digest != want:
            return f"EVENTS sequence {seq} is not the result of step {step.id!r} as approved (other arguments)"
        if not ev.result_ref:
            return (ev.result,)
        if self.blobs is None or not ev.result_ref.startswith(RESULT_REF_PREFIX):
            return f"the result of {call_id} is stored by reference and this worker cannot read it"
        try:
            raw = await self.blobs.get(ev.result_ref)
        except KeyError:
            return f"the result of {call_id} is no longer in the object store"
        if hashlib.sha256(raw).hexdigest() != ev.result_ref[len(RESULT_REF_PREFIX):]:
            return f"the stored result of {call_id} does not match its content hash"
        return (msgspec.json.decode(raw),)

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
                    ctx = None if not tool.context_params else ToolContext(
                        idempotency_key=req.idempotency_key, task_id=req.task_id, call_id=req.call_id,
                        step=req.step, tool=req.tool, attempt=attempts, tenant_id=req.tenant_id,
                        user_id=req.user_id)
                    return Outcome(result=await tool(args, ctx), attempts=attempts)
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
                served_by=out.served_by, arguments_digest=codec.arguments_digest(req.arguments))

        try:
            return codec.encode(done(out.result, out.error))
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            return codec.encode(done(None, ToolError(
                kind="execution_error", message=f"{req.tool} returned a value that is not JSON: {exc}")))

    async def _stored(self, store: SessionStore, key: str, *, must: bool = False) -> Entry | None:
        """The stored result. ``must`` (at-most-once): the store must answer
        (retried while the broker is away); else a failed read is a miss, and an
        idempotent tool may run again: that is what idempotent means."""
        if must:
            return await self._with_broker(lambda: store.get(key), "read the stored result", None, what_id=key)
        try:
            return await store.get(key)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot read stored result %s: %s", key, exc)
            return None

    async def _store(self, store: SessionStore, key: str, payload: bytes, *, must: bool = False) -> bytes:
        """Create-only: if another delivery stored first, publish its result.
        Retried while the broker is away (bounded); a result that still cannot
        be stored is kept in this process and published anyway."""
        try:
            await self._with_broker(lambda: store.create(key, payload), "store the result", None, what_id=key)
        except Conflict:
            first = await self._stored(store, key, must=must)
            if first is not None:
                return first.value
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot store result %s: %s", key, exc)
        return payload


def _once(req: ToolCallRequested) -> str | None:
    """An approved call runs once: under the idempotency key the agent gives
    it (``task:turn:call``, core.common), which this worker's stored results
    and the tool itself dedupe on. Another key would make the same approved
    call new work, as often as the agent role liked."""
    key = f"{req.task_id}:{req.step}:{req.call_id}"
    if req.idempotency_key != key:
        return f"an approved call runs under its own idempotency key {key!r}, not {req.idempotency_key!r}"
    return None


def _decided_plan(shown: dict[str, Any]) -> Plan | None:
    """The plan a plan-level decision carries (the approval's arguments,
    core.plan_approval.approval_arguments), or None if it holds no plan."""
    try:
        return msgspec.convert({"steps": shown.get("steps"), "rationale": shown.get("rationale", "")}, Plan)
    except msgspec.ValidationError:
        return None


class _Replay(Exception):
    """An at-most-once call found finished while claiming its start."""

    def __init__(self, payload: bytes) -> None:
        super().__init__("stored result")
        self.payload = payload


def start_key(key: str) -> str:
    """KV key of an at-most-once call's start mark, beside its result's."""
    return f"{key}.started"
