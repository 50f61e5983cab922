"""Applies the core's decisions: load state, decide, compare-and-set, then
carry out the commands (publish with deterministic ids, call the model).

A step that crashes before its compare-and-set is simply redelivered; one
that crashes after it finds its input already applied and re-emits the
stored outbox, which JetStream deduplicates by ``Nats-Msg-Id``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, assert_never

import msgspec

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    ApprovalDecided,
    AuditRecord,
    ModelAttempt,
    ModelResponse,
    ModelTurnCompleted,
    PlanProgress,
    PlanProposed,
    RouteDecided,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCallCompleted,
    ToolCallDispatched,
)
from agentstream.runtime.adapters.jetstream import BROKER_ERRORS
from agentstream.runtime.adapters.retry import complete_with_retry
from agentstream.runtime.core import decide as core
from agentstream.runtime.core import plan_first
from agentstream.runtime.core.errors import Conflict, ModelError
from agentstream.runtime.core.policy import ApprovalRecord, Policy, decode_record, encode_record
from agentstream.runtime.core.ports import LLM, BlobStore, Bus, ExpiringStore, ModelRequest, SessionStore
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.core.state import (
    AnyCommand,
    ApprovalExpired,
    CallModel,
    ClearApprovalTimer,
    ClearDeadline,
    Conversation,
    DeadlineReached,
    Input,
    ModelFailed,
    ModelResponded,
    PublishApproval,
    PublishAudit,
    PublishProgress,
    PublishResult,
    PublishToolCall,
    RecordApproval,
    RecordTurn,
    SessionState,
    SetApprovalTimer,
    SetDeadline,
    Turn,
    decode_conversation,
    decode_state,
    encode_state,
    finished_record,
)
from agentstream.runtime.core.trust import check_inbox
from agentstream.runtime.core.version import fingerprint
from agentstream.runtime.execution.consumer import Reject
from agentstream.runtime.planning.protocol import plan_call

if TYPE_CHECKING:
    from agentstream.runtime.execution.hooks import EngineHooks
    from agentstream.runtime.memory.agent import AgentMemoryPort

log = logging.getLogger("agentstream.engine")

ProgressNotice = ModelTurnCompleted | ToolCallDispatched | PlanProposed | PlanProgress | RouteDecided

MAX_CAS_RETRIES = 50
# Compare-and-set conflicts and broker errors are retried for this long, with
# backoff after the first few: a leader election (seconds) must not make a
# step give up, and a lost race is retried at once.
CAS_RETRY_S = 30.0
CAS_BACKOFF_MAX_S = 0.5
_IMMEDIATE_RETRIES = 5


class AgentEngine:
    model_retry_wait_s = 0.25  # first backoff between attempts of a transient model failure

    def __init__(self, spec: AgentSpec, llm: LLM, *, sessions: SessionStore, conversations: SessionStore,
                 deadlines: SessionStore, bus: Bus, worker: str = "", model_attempts: int = 3,
                 clock: Callable[[], float] = time.time, approvals: SessionStore | None = None,
                 policy: Policy | None = None, blobs: BlobStore | None = None,
                 max_state_bytes: int | None = None, model_timeout_s: float | None = None,
                 finished_ttl_s: float = 0.0) -> None:
        self.spec = spec
        self.llm = llm
        self.sessions = sessions
        self.conversations = conversations
        self.deadlines = deadlines
        self.bus = bus
        self.worker = worker
        self.model_attempts = model_attempts
        # Per model call; each call is also bounded by what is left of the
        # task's deadline. Default: the model adapter's own timeout, if it has one.
        timeout = model_timeout_s if model_timeout_s is not None else getattr(llm, "timeout_s", None)
        self.model_timeout_s: float | None = float(timeout) if isinstance(timeout, (int, float)) else None
        self.clock = clock
        self.approvals = approvals
        self.policy = policy or Policy()
        # Claim-check: where large task inputs and tool results are (object store).
        self.blobs = blobs
        # A session larger than this fails at once (``state_too_large``): the
        # store (KV on the broker) cannot hold it. None: no limit known.
        self.max_state_bytes = max_state_bytes
        self.unknown_task_events = 0  # inbox events for a task with no session (dead-lettered)
        # During a canary both versions' inbox consumers see every inbox event:
        # whether another deployment of this agent holds the task's session (then
        # the event is its to handle, and this engine acks it silently).
        self.owned_elsewhere: Callable[[str], Awaitable[bool]] | None = None
        self.cas_conflicts = 0
        # Session reads of a step (a cache miss: the task's previous step ran on
        # another replica, or long ago). With the partitioned inbox about one a
        # task, for the first step after a task landed elsewhere (docs/scaling.md).
        self.session_reads = 0
        # >0: a finished session expires from the store this long after it
        # finished (AGENTSTREAM_FINISHED_SESSION_TTL), if the store can.
        self.finished_ttl_s = finished_ttl_s
        # Telemetry hooks (the execution.hooks Protocol; observability implements
        # it), set by service.py; None: no telemetry work at all.
        self.telemetry: EngineHooks | None = None
        # Memory (agentstream.runtime.memory.agent.AgentMemory), set by service.py;
        # None: conversation history as before, no retrieval, no memory writes.
        self.memory: AgentMemoryPort | None = None
        self.model_calls = 0  # attempts, retries included
        self._counted = _Counted(self)
        # Per-task serialisation inside one process (parallel tool results of one
        # task would otherwise race each other's compare-and-set), and the last
        # state this process wrote, so the next step skips a read. Across
        # replicas compare-and-set still decides; a stale cache costs one retry.
        self._locks: dict[str, _RefLock] = {}
        # task id -> (state, revision): the decoded state, so a step on a
        # cached session decodes nothing (states are frozen; the core copies).
        self._cache: OrderedDict[str, tuple[SessionState, int]] = OrderedDict()
        self.cache_size = 4096
        self.version_hash = fingerprint(spec, llm.name)

    # ------------------------------------------------------------ entry points

    async def on_task(self, task: TaskSubmitted) -> None:
        if task.input_ref:
            # Only the task's own input: a body naming another object must not read it into this session.
            if task.input_ref != input_ref(task.task_id):
                raise Reject(f"input_ref {task.input_ref!r} is not this task's ({input_ref(task.task_id)!r})")
            task = msgspec.structs.replace(task, input=(await self._blob(task.input_ref, "input")).decode())
        await self.drive(task.task_id, task)

    async def on_event(self, event: ToolCallCompleted | ApprovalDecided, *, subject: str | None = None,
                       seq: int = 0) -> None:
        """An inbox event from ``subject`` (its EVENTS stream sequence ``seq``).
        With a subject, the event must pass ``core.trust.check_inbox`` first:
        one that does not is audited (``inbox.rejected``) and raised as
        ``Reject``, which the consumer dead-letters with the reason."""
        if isinstance(event, ToolCallCompleted) and event.result_ref:
            if not event.result_ref.startswith(RESULT_REF_PREFIX):
                raise Reject(f"result_ref {event.result_ref!r} does not name a tool result")
            raw = await self._blob(event.result_ref, "tool result")
            # The name is the content's hash: an object overwritten by anyone
            # who may write the store no longer matches it.
            if hashlib.sha256(raw).hexdigest() != event.result_ref[len(RESULT_REF_PREFIX):]:
                raise Reject(f"tool result {event.result_ref} does not match its content hash")
            try:
                result = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise Reject(f"tool result {event.result_ref} is not JSON: {exc}") from None
            event = msgspec.structs.replace(event, result=result, result_ref="")
        try:
            known = await self.drive(event.task_id, event, subject=subject, seq=seq)
        except _Refused as exc:
            if exc.no_session and self.owned_elsewhere is not None and await self.owned_elsewhere(event.task_id):
                return  # during a canary the other deployment holds this session: its event, not a forgery
            if exc.no_session:
                self.unknown_task_events += 1
            await self._audit_refusal(event, subject or "", str(exc))
            raise Reject(str(exc)) from None
        if not known:
            if self.owned_elsewhere is not None and await self.owned_elsewhere(event.task_id):
                return
            # No session: nothing can resume. Dead-lettered (and counted), not dropped.
            self.unknown_task_events += 1
            raise Reject(f"no session for task {event.task_id!r} (unknown, or expired)")

    async def _blob(self, name: str, what: str) -> bytes:
        if self.blobs is None:
            raise Reject(f"{what} is stored by reference ({name}) and this worker has no object store")
        try:
            return await self.blobs.get(name)
        except KeyError:
            raise Reject(f"{what} {name!r} is not in the object store (expired, or never stored)") from None

    async def on_deadline(self, task_id: str) -> None:
        await self.drive(task_id, DeadlineReached())

    async def on_approval_expired(self, task_id: str, call_id: str) -> None:
        await self.drive(task_id, ApprovalExpired(call_id=call_id))

    def context(self, history: tuple[Turn, ...] = ()) -> core.Context:
        p = self.policy
        return core.Context(spec=self.spec, now=self.clock(), history=history, worker=self.worker,
                            model=self.llm.name, prices=p.prices, needs_approval=p.needs_approval,
                            may_need_approval=p.may_need_approval,
                            approvers_for=p.approvers_for, default_approvers=p.default_approvers,
                            version_hash=self.version_hash)

    # ------------------------------------------------------------ the loop

    async def drive(self, task_id: str, event: Input, *, subject: str | None = None, seq: int = 0) -> bool:
        """Apply ``event`` and everything it leads to. False: the task has no
        session (nothing was done). ``subject``/``seq``: see ``on_event``."""
        lock = self._locks.get(task_id)
        if lock is None:
            lock = self._locks[task_id] = _RefLock()
        lock.refs += 1
        try:
            async with lock.lock:
                return await self._drive(task_id, event, subject, seq)
        finally:
            lock.refs -= 1
            if lock.refs == 0:
                self._locks.pop(task_id, None)

    async def _drive(self, task_id: str, event: Input, subject: str | None = None, seq: int = 0) -> bool:
        next_input: Input | None = event
        scope = None  # telemetry: one `step` span (under the task's invoke_agent span) over this step's effects
        known = True
        try:
            while next_input is not None:
                decision = await self._apply(task_id, next_input, subject, seq)
                next_input = subject = None
                seq = 0
                state = decision.state
                if state is None:
                    known = False
                if scope is None and self.telemetry is not None and state is not None and decision.commands:
                    scope = self.telemetry.step(state)
                for cmd in decision.commands:
                    follow = await self._execute(task_id, state, cmd)
                    if follow is not None:
                        next_input = follow
        except BaseException as exc:
            if scope is not None:
                scope.close(exc)
            raise
        if scope is not None:
            scope.close()
        return known

    async def _history(self, task: TaskSubmitted) -> tuple[Turn, ...]:
        """The earlier turns of the task's conversation (only a new session needs them)."""
        if self.memory is not None:
            return ()  # memory: the turns come from memory.prepare, summarised under a token budget
        key = core.conversation_key(task)
        entry = await self.conversations.get(key) if key else None
        return decode_conversation(entry.value).turns if entry is not None else ()

    async def _apply(self, task_id: str, event: Input, subject: str | None = None, seq: int = 0) -> core.Decision:
        history: tuple[Turn, ...] | None = None
        # A new task's session almost never exists yet: create it without
        # reading first (one round trip a task less); a redelivered task finds
        # it with the create's conflict and reads it then.
        assume_new = isinstance(event, TaskSubmitted)
        retry = _CasRetry()
        while True:
            hit = self._cache.get(task_id)
            cached = hit is not None
            state: SessionState | None
            rev: int | None
            if hit is not None:
                state, rev = hit
            elif assume_new:
                state, rev = None, None
            else:
                self.session_reads += 1
                try:
                    entry = await self.sessions.get(task_id)
                except BROKER_ERRORS as exc:
                    await retry.wait(exc, f"session {task_id}")
                    continue
                state, rev = (decode_state(entry.value), entry.revision) if entry is not None else (None, None)
            if subject is not None and isinstance(event, (ToolCallCompleted, ApprovalDecided)):
                why = check_inbox(state, event, subject)
                if why is not None and _finished_redelivery(state, event, subject):
                    # The redelivered result whose step finished the task, from a
                    # replica killed after its compare-and-set and before its
                    # outbox went out: the finished record keeps no transcript to
                    # check it against. Nothing can move a finished session;
                    # ``decide`` only re-emits its stored outbox, within the
                    # dedupe window, under the same msg ids. Refusing it left the
                    # task without a result (tests/test_replicas_join_leave.py).
                    why = None
                if why is not None:
                    if cached:
                        # Maybe only this replica's copy is behind: judge on the store's.
                        self._cache.pop(task_id, None)
                        continue
                    raise _Refused(why, no_session=state is None)
            if state is None and isinstance(event, TaskSubmitted) and history is None:
                history = await self._history(event)
            ctx = self.context(history or ())
            if seq and isinstance(event, ApprovalDecided):
                ctx = dataclasses.replace(ctx, decision_seq=seq)
            elif seq and isinstance(event, ToolCallCompleted):
                ctx = dataclasses.replace(ctx, result_seq=seq)  # a plan step's output, provable to tool workers
            if self.memory is not None:
                ctx = self.memory.guard(task_id, state, ctx)  # memory: low-trust recall alone cannot drive a side effect
            decision = core.decide(state, event, ctx)
            if not decision.changed or decision.state is None:
                if cached:
                    # A no-op on cached state may just mean another replica moved
                    # the task on (a newer step's result): decide again on the store's copy.
                    self._cache.pop(task_id, None)
                    continue
                return decision
            if rev is None and self.telemetry is not None:
                decision = self.telemetry.stamp(decision)  # telemetry: the task's trace context into its new state
            assert decision.state is not None
            # A finished session is stored trimmed to what a retry needs.
            raw = encode_state(finished_record(decision.state))
            if self.max_state_bytes is not None and len(raw) > self.max_state_bytes:
                log.warning("session %s would grow to %d bytes (limit %d): failing the task", task_id, len(raw),
                            self.max_state_bytes)
                decision = core.too_large(decision.state, ctx, len(raw), self.max_state_bytes)
                assert decision.state is not None
                raw = encode_state(finished_record(decision.state))
            try:
                if (decision.state is not None and decision.state.terminal and self.finished_ttl_s > 0
                        and isinstance(self.sessions, ExpiringStore)):
                    new_rev = await self.sessions.write_expiring(task_id, raw, rev, self.finished_ttl_s)
                elif rev is None:
                    new_rev = await self.sessions.create(task_id, raw)
                else:
                    new_rev = await self.sessions.update(task_id, raw, rev)
            except Conflict as exc:
                self._cache.pop(task_id, None)
                assume_new = False
                self.cas_conflicts += 1
                await retry.wait(exc, f"session {task_id}")
                continue  # another replica moved the session on: decide again on fresh state
            except BROKER_ERRORS as exc:  # a leader election, a restart: the write may come through later
                self._cache.pop(task_id, None)
                await retry.wait(exc, f"session {task_id}")
                continue
            new_state = decision.state
            assert new_state is not None
            if new_state.terminal:
                self._cache.pop(task_id, None)
            else:
                self._remember(task_id, new_state, new_rev)
            return decision

    async def _audit_refusal(self, event: ToolCallCompleted | ApprovalDecided, subject: str, why: str) -> None:
        """``inbox.rejected``: what arrived where, who it claims to be from, why it was refused."""
        claimed = f"approver:{event.approver}" if isinstance(event, ApprovalDecided) else f"tool-worker:{event.worker}"
        details: dict[str, object] = {"subject": subject, "reason": why, "event": type(event).__name__,
                                      "call_id": event.call_id, "step": event.step}
        if isinstance(event, ApprovalDecided):
            details["approval_id"] = event.approval_id
        rec = AuditRecord(kind="inbox.rejected", at=self.clock(), actor=claimed, agent=self.spec.name,
                          task_id=event.task_id, details=details)
        log.warning("refused %s on %s: %s", type(event).__name__, subject, why)
        try:
            await self.bus.publish(subjects.audit(rec.kind, self.spec.name), codec.encode(rec),
                                   msg_id=audit_msg_id(rec))
        except Exception as exc:  # noqa: BLE001 - the refusal stands; the dead letter still records it
            log.warning("could not audit a refused inbox event: %s", exc)

    def _remember(self, task_id: str, state: SessionState, revision: int) -> None:
        self._cache[task_id] = (state, revision)
        self._cache.move_to_end(task_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _execute(self, task_id: str, state: SessionState | None, cmd: AnyCommand) -> Input | None:
        agent = self.spec.name
        match cmd:
            case CallModel(step=step, max_tokens=max_tokens):
                assert state is not None
                return await self._call_model(state, step, max_tokens)
            case PublishToolCall(request=req):
                await self.bus.publish(subjects.tool_calls(req.tool), codec.encode(req),
                                       msg_id=req.idempotency_key)
            case PublishProgress(event=ev):
                await self.bus.publish(subjects.progress(agent, task_id), codec.encode(ev),
                                       msg_id=progress_msg_id(task_id, ev))
            case PublishResult(result=res):
                await self.bus.publish(subjects.results(agent, task_id), codec.encode(res),
                                       msg_id=f"{task_id}:result")
                if self.telemetry is not None:
                    self.telemetry.finished(state, res)  # telemetry: invoke_agent span, task metrics
                if self.memory is not None:
                    await self._memorise(state, res)
            case SetDeadline(deadline_at=at):
                await self.deadlines.put(_deadline_key(agent, task_id), repr(at).encode())
            case ClearDeadline():
                await self.deadlines.delete(_deadline_key(agent, task_id))
            case RecordTurn():
                await self._record_turn(cmd)
            case PublishApproval(request=req):
                raw = codec.encode(req)
                # telemetry: the request carries its wait span's context, which a decider sends back
                hdrs = self.telemetry.approval_headers(state, req.approval_id) \
                    if self.telemetry is not None and state is not None else None
                await self.bus.publish(subjects.approvals(agent), raw, msg_id=f"{req.approval_id}:requested",
                                       headers=hdrs)
                # Also on the task's progress subject, so `watch` shows what it waits for.
                await self.bus.publish(subjects.progress(agent, task_id), raw,
                                       msg_id=f"{req.approval_id}:progress", headers=hdrs)
            case PublishAudit(record=rec):
                await self.bus.publish(subjects.audit(rec.kind, agent), codec.encode(rec), msg_id=audit_msg_id(rec))
            case SetApprovalTimer(call_id=call_id, at=at):
                await self.deadlines.put(_deadline_key(agent, task_id, call_id), repr(at).encode())
            case ClearApprovalTimer(call_id=call_id):
                await self.deadlines.delete(_deadline_key(agent, task_id, call_id))
            case RecordApproval():
                record = await self._record_approval(cmd, state)
                if record is not None and self.telemetry is not None and state is not None:
                    self.telemetry.approval_resolved(state, record)  # telemetry: the wait span
            case _:
                assert_never(cmd)
        return None

    async def _record_approval(self, cmd: RecordApproval, state: SessionState | None) -> ApprovalRecord | None:
        """Write the approval's listing entry; returns it as written (None:
        no store, or nothing to write: a replayed step finds it done)."""
        if self.approvals is None:
            return None
        written: ApprovalRecord | None = None

        def change(raw: bytes | None) -> bytes | None:
            nonlocal written
            written = None
            if raw is None:
                if cmd.request is None:
                    return None
                tp = ""
                if self.telemetry is not None and state is not None:
                    tp = self.telemetry.approval_headers(state, cmd.approval_id).get("traceparent", "")
                written = ApprovalRecord(request=cmd.request, status=cmd.status, decision=cmd.decision,
                                         trace_parent=tp)
                return encode_record(written)
            record = decode_record(raw)
            if record.status == cmd.status:
                return None
            written = msgspec.structs.replace(record, status=cmd.status, decision=cmd.decision or record.decision)
            return encode_record(written)

        await _cas_modify(self.approvals, cmd.approval_id, change)
        return written

    async def _call_model(self, state: SessionState, step: int, max_tokens: int | None = None) -> Input:
        spec = self.spec
        # A planner turn offers submit_plan and forces it; a solver turn offers nothing (core.plan_first).
        tools, tool_choice = plan_first.request_shape(state, spec)
        request = ModelRequest(model=self.llm.name, messages=state.messages, tools=tools,
                               max_tokens=max_tokens, temperature=spec.temperature, top_p=spec.top_p,
                               seed=spec.seed, tool_choice=tool_choice,
                               parallel_tool_calls=spec.parallel_tool_calls)
        if self.memory is not None:
            try:  # memory: the working context, assembled under the model's token budget
                request = await self.memory.prepare(state, request)
            except Exception as exc:  # noqa: BLE001 - memory must never fail a task; the plain context still works
                log.warning("memory: context assembly failed for %s, using the plain context: %s",
                            state.task.task_id, exc)
        started = self.clock()
        bounded = _Bounded(self, state.deadline_at)
        try:
            resp = await complete_with_retry(bounded, request, attempts=self.model_attempts,
                                             initial_wait_s=self.model_retry_wait_s)
        except ModelError as exc:
            return bounded.failed(step, exc)
        return ModelResponded(step=step, response=resp, started_at=started, finished_at=self.clock())

    async def _memorise(self, state: SessionState | None, res: TaskCompleted | TaskFailed) -> None:
        assert self.memory is not None
        try:
            await self.memory.after_task(state, res)
        except Exception as exc:  # noqa: BLE001 - the result is published; memory is best-effort after it
            log.warning("memory: writes after task %s failed: %s", res.task_id, exc)

    async def _record_turn(self, cmd: RecordTurn) -> None:
        # Bounded, idempotent append: a replayed completion must not add the turn twice.
        limit = max(self.spec.history_turns, 1)

        def change(raw: bytes | None) -> bytes | None:
            conv = decode_conversation(raw) if raw is not None else Conversation()
            if any(t.task_id == cmd.task_id for t in conv.turns):
                return None
            turns = (*conv.turns, Turn(task_id=cmd.task_id, user=cmd.user, assistant=cmd.assistant))[-limit:]
            return encode_state(Conversation(turns=turns))

        await _cas_modify(self.conversations, cmd.conversation_key, change)


async def _cas_modify(store: SessionStore, key: str, change: Callable[[bytes | None], bytes | None]) -> None:
    """Read-modify-write one key by compare-and-set, retried on conflict.
    ``change`` gets the current value (None: absent) and returns the new one,
    or None to leave the key as it is."""
    retry = _CasRetry()
    while True:
        entry = await store.get(key)
        new = change(entry.value if entry is not None else None)
        if new is None:
            return
        try:
            if entry is None:
                await store.create(key, new)
            else:
                await store.update(key, new, entry.revision)
            return
        except Conflict as exc:
            await retry.wait(exc, key)
        except BROKER_ERRORS as exc:
            await retry.wait(exc, key)


class _CasRetry:
    """Bounded in time, not in count: a few immediate retries (a lost race),
    then exponential backoff with jitter (a leader election makes writes fail
    or conflict for seconds). Past ``CAS_RETRY_S`` it raises; the step is then
    redelivered."""

    def __init__(self) -> None:
        self.n = 0
        self.deadline = time.monotonic() + CAS_RETRY_S

    async def wait(self, exc: BaseException, what: str) -> None:
        self.n += 1
        if time.monotonic() >= self.deadline:
            if isinstance(exc, Conflict):
                raise Conflict(f"{what}: gave up after {self.n} compare-and-set conflicts in {CAS_RETRY_S:g}s") \
                    from exc
            raise exc
        if self.n <= _IMMEDIATE_RETRIES and isinstance(exc, Conflict):
            return
        if self.n == _IMMEDIATE_RETRIES + 1:
            log.info("%s: %s; backing off", what, type(exc).__name__)
        base = min(CAS_BACKOFF_MAX_S, 0.005 * 2 ** min(self.n, 10))
        await asyncio.sleep(base / 2 + random.uniform(0, base / 2))


def _deadline_key(agent: str, task_id: str, call_id: str = "") -> str:
    """``agent.task`` is the task's deadline; ``agent.task.call`` an approval's."""
    return f"{agent}.{task_id}.{call_id}" if call_id else f"{agent}.{task_id}"


def parse_deadline_key(key: str) -> tuple[str, str, str]:
    agent, _, rest = key.partition(".")
    task_id, _, call_id = rest.partition(".")
    return agent, task_id, call_id


def progress_msg_id(task_id: str, ev: ProgressNotice) -> str:
    """One progress notice per fact: a replayed step's is deduplicated, two
    different facts never share an id (a plan dispatches several times in
    one model turn, so its notices are keyed by attempt, kind and steps)."""
    match ev:
        case ModelTurnCompleted():
            return f"{task_id}:{ev.step}:turn"
        case ToolCallDispatched():
            if ev.calls and all(plan_call(c.id) for c in ev.calls):
                # A plan dispatches several waves in one model turn: one notice each.
                ids = hashlib.sha256(",".join(c.id for c in ev.calls).encode()).hexdigest()[:16]
                return f"{task_id}:{ev.step}:dispatch:{ids}"
            return f"{task_id}:{ev.step}:dispatch"
        case PlanProposed():
            return f"{task_id}:plan:{ev.attempt}:proposed"
        case PlanProgress():
            steps = hashlib.sha256(",".join(ev.step_ids).encode()).hexdigest()[:16]
            return f"{task_id}:plan:{ev.attempt}:{ev.kind}:{steps}"
        case RouteDecided():
            return f"{task_id}:route"
        case _:
            assert_never(ev)


def audit_msg_id(rec: AuditRecord) -> str:
    """One record per attempt, a retried publish of it deduplicated. The actor
    is hashed: an approver's name is free text from whoever published the
    decision and must not reach a header verbatim."""
    ident = rec.details.get("approval_id") or rec.task_id
    who = hashlib.sha256(rec.actor.encode()).hexdigest()[:16]
    return f"audit:{rec.kind}:{ident}:{who}:{rec.at!r}"


def _finished_redelivery(state: SessionState | None, event: ToolCallCompleted | ApprovalDecided,
                         subject: str) -> bool:
    """A tool result for a finished session of its agent, on that task's own inbox subject."""
    return (state is not None and state.terminal and isinstance(event, ToolCallCompleted)
            and state.task.agent == event.agent and state.task.task_id == event.task_id
            and subjects.parse_inbox(subject) == (event.agent, "events", event.task_id))


class _Refused(Exception):
    """An inbox event ``core.trust.check_inbox`` refused; the message is the reason."""

    def __init__(self, why: str, *, no_session: bool) -> None:
        super().__init__(why)
        self.no_session = no_session


class _RefLock:
    __slots__ = ("lock", "refs")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.refs = 0


class _Counted:
    """The engine's model as the retry helper sees it: every attempt is counted."""

    def __init__(self, engine: AgentEngine) -> None:
        self.engine = engine

    @property
    def name(self) -> str:
        return self.engine.llm.name

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.engine.model_calls += 1
        return await self.engine.llm.complete(request)


# Claim-check object names: a task's input is ``input-<task id>``; a tool
# result is ``result-<sha256 of its JSON>`` (content-addressed: naming one
# takes knowing its content).
RESULT_REF_PREFIX = "result-"


def input_ref(task_id: str) -> str:
    return f"input-{task_id}"
class _Bounded:
    """One model call as the retry helper sees it: each attempt bounded by the
    smaller of the per-call timeout and what is left of the task's deadline
    (a timeout cancels the request, which closes the connection, so a server
    generating past its output cap is stopped too), and every failed attempt
    recorded for the task's failure."""

    def __init__(self, engine: AgentEngine, deadline_at: float) -> None:
        self.engine = engine
        self.deadline_at = deadline_at
        self.attempts: list[ModelAttempt] = []

    @property
    def name(self) -> str:
        return self.engine.llm.name

    async def complete(self, request: ModelRequest) -> ModelResponse:
        engine = self.engine
        left = self.deadline_at - engine.clock()
        if left <= 0:
            # Raised, not recorded: no attempt was made. Timed out if the
            # earlier attempts used the time up.
            raise ModelError("no time left before the task's deadline for another attempt", transient=False,
                             timed_out=bool(self.attempts) and self.attempts[-1].outcome == "timeout")
        limit = left if engine.model_timeout_s is None else min(engine.model_timeout_s, left)
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                return await engine._counted.complete(request)
        except TimeoutError:
            self.attempts.append(ModelAttempt(outcome="timeout", duration_s=round(time.monotonic() - t0, 3),
                                              message=f"no answer within {limit:.1f}s"))
            raise ModelError(f"no answer within {limit:.1f}s", transient=True, timed_out=True) from None
        except ModelError as exc:
            self.attempts.append(ModelAttempt(outcome="timeout" if exc.timed_out else "error",
                                              duration_s=round(time.monotonic() - t0, 3), message=str(exc)[:300]))
            raise

    def failed(self, step: int, exc: ModelError) -> ModelFailed:
        attempts = tuple(self.attempts)
        if not exc.timed_out:
            return ModelFailed(step=step, message=f"model call failed: {exc}", attempts=attempts)
        tries = ", ".join(f"{a.duration_s:.1f}s" + ("" if a.outcome == "timeout" else " (error)") for a in attempts)
        timeout = self.engine.model_timeout_s
        per_call = f"per-call timeout {timeout:g}s" if timeout is not None else "no per-call timeout"
        return ModelFailed(step=step, reason="model_timeout", attempts=attempts,
                           message=f"the model did not answer: {len(attempts)} attempt(s) ({tries}); {per_call}, "
                                   f"bounded by the task's deadline; last: {exc}")


def seq_task_id(stream_seq: int) -> str:
    """The id of a task published without one: its stream sequence, the same on every replica."""
    return f"seq-{stream_seq}"


def decode_task(raw: bytes, stream_seq: int | None) -> TaskSubmitted:
    """Decode a task, filling what a bare client may omit (task id, time)."""
    task = codec.task_submitted.decode(raw)
    changes: dict[str, object] = {}
    if not task.task_id:
        if stream_seq is None:
            raise codec.DecodeError("task has no task_id")
        changes["task_id"] = seq_task_id(stream_seq)
    elif not subjects.is_token(task.task_id):
        raise codec.DecodeError(f"task_id {task.task_id!r} is not a subject token (letters, digits, _ and -)")
    if not task.submitted_at:
        changes["submitted_at"] = time.time()
    return msgspec.structs.replace(task, **changes) if changes else task
