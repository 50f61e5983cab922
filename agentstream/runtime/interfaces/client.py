"""The Python client: submit tasks, await results, stream a task's events.

Works against any NATS server the runtime uses; it needs no agent code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import TypeVar

import nats.errors
import nats.js.errors as jse
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskCompleted, TaskEvent, TaskFailed, TaskResult, TaskSubmitted
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters import js_ack
from agentstream.runtime.adapters.scan import RESULTS_STREAM, stored_result
from agentstream.runtime.config.auth import NatsAuth
from agentstream.runtime.config.settings import inbox_partitions
from agentstream.runtime.core.errors import PayloadTooLarge, ResultTimeout, SubmitFailed
from agentstream.runtime.observability.telemetry import Telemetry, setup_telemetry
from agentstream.runtime.observability.trace_context import format_traceparent

# Errors that mean "no stored result readable right now" (a node just died,
# leader election): result() then waits on its live subscription instead.
_NOT_YET = (jse.NotFoundError, jse.ServiceUnavailableError, nats.errors.NoRespondersError,
            nats.errors.TimeoutError)


_T = TypeVar("_T")


# What a submit meets and retries while the broker is away; APIError too, to
# tell a full store (not retried) from an outage.
_RETRIED: tuple[type[BaseException], ...] = (jse.APIError, *nats_adapters.BROKER_ERRORS)


def new_task_id() -> str:
    return uuid.uuid4().hex


# Room a session needs beside the task's input (instructions, tool schemas,
# the state's own fields): an input larger than max_payload minus this can
# never fit a session, and is refused at submit time.
SESSION_OVERHEAD_BYTES = 64 * 1024
# Inputs larger than this travel by claim-check (the object store).
CLAIM_CHECK_BYTES = 256 * 1024
# A submit that timed out is retried (same msg id) for up to this long.
SUBMIT_RETRY_S = 30.0


class AgentClient:
    def __init__(self, nc: NatsClient, *, telemetry: Telemetry | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        # Submits and result lookups wait for their answers on one multiplexed
        # inbox subscription (js_ack): the same requests, less CPU each.
        self._acks = js_ack.for_connection(nc)
        # Telemetry: with tracing on, submit() starts the task's trace (or
        # continues the caller's current span) and sends its context along.
        self.telemetry = telemetry if telemetry is not None and telemetry.tracing else None
        self._owns_telemetry = False
        # task id -> agent, for tasks submitted here: lets result() read the
        # exact result subject directly.
        self._agents: dict[str, str] = {}
        self.max_remembered = 10_000
        # task id -> the one-message result subscription submit() made before
        # publishing the task (so the result cannot come before it) and its
        # future: result() then needs no stored-result lookup first. Bounded:
        # a client that never asks for most results (the HTTP API's) keeps
        # at most this many; older tasks fall back to result()'s own lookup.
        self._early: dict[str, tuple[Subscription, asyncio.Future[Msg]]] = {}
        self.max_early_results = 1024
        self.claim_check_bytes = CLAIM_CHECK_BYTES
        self.submit_retry_s = SUBMIT_RETRY_S
        # Whether the last successful submit was a retry the broker had
        # already stored (its ack said duplicate): for the curious; either way it is one task.
        self.last_submit_duplicate = False

    @classmethod
    async def connect(cls, url: str, *, provision: bool = True, telemetry: Telemetry | bool = True,
                      auth: NatsAuth | None = None) -> AgentClient:
        """``telemetry``: True, tracing as the environment says (OTEL_*,
        AGENTSTREAM_TRACING; spans exported on this connection); False, none;
        or a Telemetry to share (not shut down by close()). ``auth``: the
        credentials of the role this client plays (config.auth.nats_auth);
        None, whatever the URL carries."""
        nc = await nats_adapters.connect(url, name="agentstream-client", reconnect=True, auth=auth)
        tel: Telemetry | None = None
        if telemetry is True:
            tel = setup_telemetry(os.environ, nc=nc, worker_id=f"client-{socket.gethostname()}-{os.getpid()}",
                                  metrics=False)
        elif isinstance(telemetry, Telemetry):
            tel = telemetry
        client = cls(nc, telemetry=tel)
        client._owns_telemetry = telemetry is True
        if provision:
            # Idempotent; lets a client submit before any worker has started.
            await nats_adapters.provision(client.js, update=False, partitions=inbox_partitions(os.environ))
        return client

    async def close(self) -> None:
        if self._owns_telemetry and self.telemetry is not None:
            with contextlib.suppress(Exception):
                await self.telemetry.shutdown()
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def submit(self, agent: str, input: str, *, task_id: str | None = None, tenant_id: str = "default",
                     user_id: str = "anonymous", conversation_id: str = "", agent_version: str = "",
                     metadata: Mapping[str, str] | None = None, max_steps: int | None = None,
                     deadline_s: float | None = None, max_tokens: int | None = None,
                     max_cost_usd: float | None = None) -> str:
        # Wrong types are caught here, not by the worker: there the task would
        # only be dead-lettered, far from the caller's mistake.
        for name, value in (("agent", agent), ("input", input), ("task_id", task_id or ""),
                            ("conversation_id", conversation_id)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}: {value!r:.80}")
        subjects.check_token("agent", agent)
        task_id = subjects.check_token("task id", task_id or new_task_id())
        if conversation_id:
            subjects.check_token("conversation id", conversation_id)
        input_ref = ""
        size = len(input.encode())
        limit = self.nc.max_payload - SESSION_OVERHEAD_BYTES
        if size > limit:
            raise PayloadTooLarge(
                f"task input of {size} bytes is too large: a session must fit the broker's max payload "
                f"({self.nc.max_payload} bytes), so inputs are limited to {limit} bytes")
        if size > self.claim_check_bytes:
            input_ref = f"input-{task_id}"  # the one name the agent accepts for this task (engine.input_ref)
            await self._retrying(lambda t: self._put_blob(input_ref, input.encode(), t), task_id, stored=False,
                                 store=subjects.PAYLOADS.name)
        task = TaskSubmitted(agent=agent, input="" if input_ref else input, task_id=task_id, tenant_id=tenant_id,
                             user_id=user_id, conversation_id=conversation_id, agent_version=agent_version,
                             metadata=dict(metadata or {}), submitted_at=time.time(), max_steps=max_steps,
                             deadline_s=deadline_s, max_tokens=max_tokens, max_cost_usd=max_cost_usd,
                             input_ref=input_ref)
        body = codec.encode(task)
        if len(body) > self.nc.max_payload:
            raise PayloadTooLarge(f"task of {len(body)} bytes exceeds the broker's max payload "
                                  f"({self.nc.max_payload} bytes); its metadata is too large")
        try:
            # The rest (ids, metadata, limits) checked as the worker will decode them.
            codec.task_submitted.decode(body)
        except codec.DecodeError as exc:
            raise TypeError(f"invalid task: {exc}") from None
        # The task id doubles as the dedupe id: a retried submit is one task.
        headers = {"Nats-Msg-Id": task_id}
        subject = subjects.tasks(agent)
        tel = self.telemetry
        # telemetry: with no span current, the task starts its trace, whose root is
        # the worker's invoke_agent span (see Telemetry.task_context); under a span
        # of the caller's, a `send` span continues the caller's trace.
        root = None if tel is None else tel.task_context(task_id)
        if root is not None:
            headers["traceparent"] = format_traceparent(root)
        span = None if tel is None or root is not None else tel.producer_span(subject, headers, task_id, {
            "gen_ai.agent.name": agent, "agentstream.task_id": task_id, "agentstream.tenant_id": tenant_id,
            "agentstream.user_id": user_id, **({"gen_ai.conversation.id": conversation_id}
                                               if conversation_id else {})})
        await self._watch_result(task_id)
        try:
            ack = await self._retrying(lambda t: self._acks.publish(subject, body, headers=headers, timeout=t),
                                       task_id, stored=None, store=subjects.stream_of(subject))
            self.last_submit_duplicate = ack.duplicate
            if ack.duplicate:
                # Submitted before: its result may be out already, so result() looks it up first.
                await self._unwatch(task_id)
        except BaseException as exc:
            await self._unwatch(task_id)
            if span is not None:
                span.set_error(type(exc).__name__, str(exc))
            raise
        finally:
            if span is not None:
                span.end()
        # Only a shortcut for result(): bounded, the oldest entry going first, so
        # a long-lived client (the HTTP API's) that is never asked for most
        # results does not grow with every task it submits.
        self._agents[task_id] = agent
        if len(self._agents) > self.max_remembered:
            self._agents.pop(next(iter(self._agents)))
        return task_id

    async def _watch_result(self, task_id: str) -> None:
        """Subscribe to the task's result before the task is published (see
        ``_early``). nats-py sets the future from its read loop and drops the
        subscription after its one message."""
        if task_id in self._early:
            return  # a retried submit of the same task: the first watch stands
        while len(self._early) >= self.max_early_results:
            await self._unwatch(next(iter(self._early)))
        arrived: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        try:
            sub = await self.nc.subscribe(subjects.any_results(task_id), future=arrived, max_msgs=1)
        except Exception:  # noqa: BLE001 - only a shortcut: the submit decides, result() can look it up
            return
        self._early[task_id] = (sub, arrived)

    async def _unwatch(self, task_id: str) -> None:
        early = self._early.pop(task_id, None)
        if early is not None:
            with contextlib.suppress(Exception):
                await early[0].unsubscribe()

    async def _put_blob(self, name: str, data: bytes, timeout: float = 10.0) -> None:
        store = await nats_adapters.blob_store(self.js)
        await asyncio.wait_for(store.put(name, data), timeout=timeout)

    async def _retrying(self, op: Callable[[float], Awaitable[_T]], task_id: str, *, stored: bool | None,
                        store: str = "") -> _T:
        """``op(timeout)`` retried with backoff while the broker is away (a
        leader election, a restart), for at most ``submit_retry_s``. Safe: the
        task id is the msg id, so a retry of a stored task is deduplicated.
        On giving up, says whether the task may have been stored."""
        deadline = time.monotonic() + self.submit_retry_s
        wait = 0.1
        maybe_stored = False
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await op(max(min(5.0, remaining), 0.5))
            except nats.errors.MaxPayloadError as exc:
                raise PayloadTooLarge(f"task {task_id}: {exc}") from None
            except _RETRIED as exc:
                # A full store (TASKS refuses new work rather than drop tasks not
                # yet run) is the caller's answer at once, not something to retry.
                full = nats_adapters.store_full(exc, store)
                if full is not None:
                    raise full from None
                if not isinstance(exc, nats_adapters.BROKER_ERRORS):
                    raise
                # A timeout means the request went out and no ack came back:
                # the stream may have stored it.
                if isinstance(exc, TimeoutError):
                    maybe_stored = True
                if time.monotonic() + wait >= deadline:
                    if stored is False or not maybe_stored:
                        raise SubmitFailed(
                            f"could not submit task {task_id} within {self.submit_retry_s:g}s: the task was "
                            f"not stored ({type(exc).__name__}: {exc or 'no answer'})",
                            task_id=task_id, stored=False) from None
                    raise SubmitFailed(
                        f"could not confirm task {task_id} within {self.submit_retry_s:g}s: it may have been "
                        f"stored; submitting again with task id {task_id} is safe (deduplicated)",
                        task_id=task_id, stored=None) from None
                await asyncio.sleep(wait)
                wait = min(wait * 2, 2.0)

    async def resolve_input(self, task: TaskSubmitted) -> str:
        """A task's input, read from the object store when it was claim-checked."""
        if not task.input_ref:
            return task.input
        store = await nats_adapters.blob_store(self.js)
        return (await store.get(task.input_ref)).decode()

    async def result(self, task_id: str, timeout: float = 60.0, *, agent: str | None = None) -> TaskResult:
        """The task's result, whether it arrived before or after this call.

        A plain subscription catches a result published from now on (for a task
        submitted here, the one submit() made before publishing it); a direct
        get reads one already stored. No JetStream consumer is created, so a
        client awaiting thousands of results costs the server nothing lasting.
        """
        agent = agent or self._agents.get(task_id)
        early = self._early.pop(task_id, None)
        if early is not None:
            # Subscribed before the task was published: the result comes on it,
            # unless the connection dropped meanwhile (core messages are not
            # replayed), which the stored-result lookups below still cover.
            sub, arrived = early
            look = False
        else:
            # nats-py hands the one message this subscription takes to ``arrived``
            # straight from its read loop (no queue, no callback task) and drops
            # the subscription after it, so a second message cannot reach it.
            arrived = asyncio.get_running_loop().create_future()
            sub = await self.nc.subscribe(subjects.any_results(task_id), future=arrived, max_msgs=1)
            look = True
        deadline = time.monotonic() + timeout
        poll = 0.1
        try:
            while True:
                if look:
                    stored = await self._stored_result(task_id, agent)
                    if stored is not None:
                        return codec.task_result.decode(stored)
                look = True
                # A result published just before our subscription reached the
                # server, but not yet stored when we looked, is seen by neither;
                # so wait on the subscription a little, then look again.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ResultTimeout(f"no result for task {task_id} within {timeout:g}s")
                done, _ = await asyncio.wait((arrived,), timeout=min(poll, remaining))
                if not done:
                    poll = min(poll * 2, 2.0)
                    continue
                return codec.task_result.decode(arrived.result().data)
        finally:
            self._agents.pop(task_id, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _stored_result(self, task_id: str, agent: str | None) -> bytes | None:
        try:
            if agent is None:
                return await stored_result(self.js, task_id, direct=True)
            return await self._acks.direct_last(self.js._prefix, RESULTS_STREAM, subjects.results(agent, task_id))
        except _NOT_YET:
            return None

    async def _activity_count(self, task_id: str) -> int:
        try:
            info = await self.js.stream_info(subjects.EVENTS_STREAM,
                                             subjects_filter=subjects.stored(subjects.any_task_activity(task_id)))
        except Exception:  # noqa: BLE001 - best effort; the caller bounds its wait anyway
            return 0
        return sum((info.state.subjects or {}).values())

    async def events(self, task_id: str, *, timeout: float | None = None) -> AsyncIterator[TaskEvent]:
        """Every event of a task from its start, then live, ending with its result."""
        queue: asyncio.Queue[tuple[str, Msg]] = asyncio.Queue()

        async def on_activity(msg: Msg) -> None:
            await queue.put(("activity", msg))

        async def on_result(msg: Msg) -> None:
            await queue.put(("result", msg))

        subs = [
            await self.js.subscribe(subjects.stored(subjects.any_task_activity(task_id)), cb=on_activity,
                                    stream=subjects.EVENTS_STREAM, ordered_consumer=True,
                                    deliver_policy=DeliverPolicy.ALL),
            await self.js.subscribe(subjects.any_results(task_id), cb=on_result, ordered_consumer=True,
                                    deliver_policy=DeliverPolicy.ALL),
        ]
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        result: TaskResult | None = None
        expected = -1
        try:
            while result is None or seen < expected:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if result is not None:
                    # The result came through its own stream; the activity stream may
                    # still be catching up. Wait for it, but not forever.
                    remaining = 2.0 if remaining is None else min(remaining, 2.0)
                try:
                    kind, msg = await asyncio.wait_for(queue.get(), timeout=remaining)
                except TimeoutError:
                    if result is not None:
                        break
                    raise ResultTimeout(f"task {task_id} did not finish within {timeout:g}s") from None
                try:
                    event = codec.task_event.decode(msg.data)
                except codec.DecodeError:
                    seen += kind == "activity"
                    continue  # an event from a newer producer: skip, keep streaming
                if kind == "activity":
                    seen += 1
                    yield event
                elif isinstance(event, (TaskCompleted, TaskFailed)) and result is None:
                    result = event
                    expected = await self._activity_count(task_id)
            if result is not None:
                yield result
        finally:
            for s in subs:
                with contextlib.suppress(Exception):
                    await s.unsubscribe()
