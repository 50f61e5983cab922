"""A durable JetStream pull consumer that runs a handler per message, several
at once, behind a middleware chain. Messages come from a continuous pull
(:mod:`agentstream.runtime.execution.pull`): each is handled the moment it
arrives, never held back waiting for a batch to fill.

Why not FastStream's subscriber here: on this machine its pull subscriber
moves ~600-1,200 msgs/s against ~5,400-7,500 for nats-py fetch+ack (per-message
dependency resolution and worker-thread hops). The hot path (tasks, tool
calls, tool results) runs on this loop; FastStream describes the same
protocol for AsyncAPI (see ``agentstream.handlers.protocol``).

Outcome of a handler:
- returns: ack;
- raises :class:`Reject` (or a decode error): dead-letter with the reason, then ack;
- raises anything else: nak with a delay, redelivered; after ``max_deliver``
  attempts the message is dead-lettered instead of looping forever;
- raises :class:`StoreFull` (a store at its byte limit refused a write): the
  handler is run again after a pause, the message kept in progress meanwhile,
  until there is room or the consumer stops. A full store is transient, and a
  nak would count towards ``max_deliver`` and end in a dead letter.

A consumer may be given an ``on_dead_letter`` hook, run after the dead letter
is published and before the ack (the task consumer answers a task that can
never run with a failed result). If the dead letter or the hook fails, the
message is not acked: its redelivery repeats both, deduplicated by msg id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import nats.js.errors as jse
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import DeadLettered
from agentstream.runtime.adapters.jetstream import MSG_ID
from agentstream.runtime.core.errors import StoreFull
from agentstream.runtime.execution.pull import Backoff, ContinuousPull

log = logging.getLogger("agentstream.consumer")

Handler = Callable[[Msg], Awaitable[None]]
Middleware = Callable[[Msg, Handler], Awaitable[None]]
# Called with the message and the dead-letter reason once it is dead-lettered.
DeadLetterHook = Callable[[Msg, str], Awaitable[None]]

DLQ_PAYLOAD_LIMIT = 64 * 1024
FULL_LOG_EVERY_S = 10.0  # one "store full" warning per consumer this often, not one per held message


class Reject(Exception):
    """The message can never be processed: dead-letter it with this reason."""


@dataclass
class ConsumerSettings:
    stream: str
    durable: str
    filter_subject: str
    max_in_flight: int = 64
    batch: int = 64
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_bytes: int = 1024 * 1024
    nak_delay_s: float = 1.0
    # A consumer that starts today without last week's backlog (a shadow, a comparator).
    deliver_new: bool = False
    middlewares: Sequence[Middleware] = field(default_factory=tuple)
    # Pull requests: how long one stays open on the server, and how often the
    # server proves it is alive while it waits (a lost pull is noticed after
    # three missed heartbeats).
    pull_expires_s: float = 5.0
    pull_heartbeat_s: float = 1.0
    # Backoff while the stream, its consumer or the broker is away.
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 2.0


class PullConsumer:
    def __init__(self, js: JetStreamContext, settings: ConsumerSettings, handler: Handler, *,
                 on_dead_letter: DeadLetterHook | None = None) -> None:
        self.js = js
        self.s = settings
        self._on_dead_letter = on_dead_letter
        self._handler = _chain(handler, [size_limit(settings.max_bytes), *settings.middlewares])
        self._inflight: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        self._stop: asyncio.Event | None = None
        self._handing_back: set[asyncio.Future[None]] = set()
        self.pull: ContinuousPull | None = None
        self.started = asyncio.Event()
        self.full_backoff_max_s = 2.0
        self._full_logged = float("-inf")

    async def ensure(self) -> ConsumerInfo:
        return await self._ensure_durable(self.s.durable, self.s.filter_subject)

    async def _ensure_durable(self, durable: str, filter_subject: str | None) -> ConsumerInfo:
        """A durable consumer on this consumer's stream, created if missing. An
        existing one is used as it is (another replica or version made it), as
        ``pull_subscribe`` does, except for a filter from before EVENTS was
        partitioned (see :func:`refilter`)."""
        try:
            info = await self.js.consumer_info(self.s.stream, durable)
        except jse.NotFoundError:
            pass
        else:
            return await refilter(self.js, self.s.stream, info, filter_subject)
        cfg = ConsumerConfig(
            durable_name=durable, filter_subject=filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW if self.s.deliver_new else DeliverPolicy.ALL,
            ack_wait=self.s.ack_wait_s, max_deliver=self.s.max_deliver, max_ack_pending=-1,
        )
        return await self.js.add_consumer(self.s.stream, cfg)

    def _new_pull(self, durable: str, ensure: Callable[[], Awaitable[object]]) -> ContinuousPull:
        # nats-py exposes neither the connection nor the API prefix of a
        # JetStreamContext; the continuous pull needs both.
        return ContinuousPull(
            self.js._nc, api_prefix=self.js._prefix, stream=self.s.stream, durable=durable,
            capacity=self.s.max_in_flight, deliver=self._deliver, room=self._room, ensure=ensure,
            expires_s=self.s.pull_expires_s, heartbeat_s=self.s.pull_heartbeat_s,
            backoff=Backoff(self.s.backoff_base_s, self.s.backoff_cap_s))

    async def run(self, stop: asyncio.Event, drain_timeout_s: float = 10.0) -> None:
        self.pull = self._new_pull(self.s.durable, self.ensure)
        self._stop = stop
        if not await self.pull.start(stop):
            return  # stopped before the consumer could be created
        self.started.set()
        beat = asyncio.create_task(self._heartbeat(stop))
        try:
            await self.pull.run(stop)
        finally:
            # Heartbeats continue while draining: a step finishing during
            # shutdown must not be redelivered to another replica meanwhile.
            await self._drain(drain_timeout_s)
            beat.cancel()
            await self.pull.close()

    def _room(self) -> int:
        return self.s.max_in_flight - len(self._inflight)

    def _deliver(self, msg: Msg) -> None:
        if self._stop is not None and self._stop.is_set():
            # Arrived on a pull still open at shutdown: back to the stream at
            # once, for another replica, rather than after the ack wait.
            t = asyncio.ensure_future(_nak(msg, 0))
            self._handing_back.add(t)
            t.add_done_callback(self._handing_back.discard)
            return
        t = asyncio.create_task(self._process(msg))
        self._inflight[t] = (msg, time.monotonic())
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task[None]) -> None:
        self._inflight.pop(t, None)
        if self.pull is not None:
            self.pull.wake()

    async def _drain(self, timeout: float) -> None:
        """Let in-flight messages finish; what does not finish stays unacked and
        is redelivered to another replica after ack_wait. Nothing is lost."""
        tasks = list(self._inflight)
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        # Long steps (a slow model call) would otherwise be redelivered to
        # another replica while still running.
        period = max(0.2, self.s.ack_wait_s / 3)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for msg, started in list(self._inflight.values()):
                if now - started >= period:
                    try:
                        await msg.in_progress()
                    except Exception:  # noqa: BLE001
                        pass

    async def _run_until_room(self, msg: Msg) -> bool:
        """The handler, run again while a store is full; False if the consumer
        stopped first (the message is left unacknowledged, for redelivery)."""
        delay = 0.05
        while True:
            try:
                await self._handler(msg)
                return True
            except StoreFull as exc:
                now = time.monotonic()
                if now - self._full_logged >= FULL_LOG_EVERY_S:
                    self._full_logged = now
                    log.warning("%s: %s; holding %s (and any other message meeting it) until there is room",
                                self.s.durable, exc, msg.subject)
            stop = self._stop
            if stop is None or stop.is_set():
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, self.full_backoff_max_s)

    async def _process(self, msg: Msg) -> None:
        try:
            if not await self._run_until_room(msg):
                return
        except (Reject, codec.DecodeError) as exc:
            await self._give_up(msg, str(exc) or type(exc).__name__)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the consumer
            deliveries = _deliveries(msg)
            if deliveries >= self.s.max_deliver:
                await self._give_up(msg, f"failed {deliveries} times; last error: {type(exc).__name__}: {exc}")
                return
            log.warning("%s: %s failed (attempt %d/%d): %s: %s", self.s.durable, msg.subject, deliveries,
                        self.s.max_deliver, type(exc).__name__, exc)
            await _nak(msg, self.s.nak_delay_s * deliveries)
            return
        await _ack(msg)

    async def _give_up(self, msg: Msg, reason: str) -> None:
        """Dead-letter, run the hook, then ack. Not acked if either fails (the
        broker is away, say): the redelivery tries again, and both publishes
        carry deterministic msg ids, so a repeat is deduplicated."""
        try:
            await self.dead_letter(msg, reason)
            if self._on_dead_letter is not None:
                await self._on_dead_letter(msg, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the consumer outlives a broker hiccup
            log.warning("%s: could not dead-letter %s (%s: %s); it will be redelivered", self.s.durable,
                        msg.subject, type(exc).__name__, exc)
            await _nak(msg, self.s.nak_delay_s * _deliveries(msg))
            return
        await _ack(msg)

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        body = msg.data or b""
        # An EVENTS message by the subject it was published on, without its partition.
        subject = subjects.published(msg.subject)
        ev = DeadLettered(subject=subject, consumer=self.s.durable, reason=reason[:2000],
                          payload=body[:DLQ_PAYLOAD_LIMIT].decode("utf-8", errors="replace"),
                          payload_bytes=len(body), deliveries=_deliveries(msg), at=time.time())
        seq = stream_seq(msg)
        log.warning("dead-lettered %s from %s: %s", subject, self.s.durable, reason)
        await self.js.publish(subjects.dead_letter(subject), codec.encode(ev),
                              headers={MSG_ID: f"dlq:{self.s.stream}:{seq}"} if seq is not None else None)


async def refilter(js: JetStreamContext, stream: str, info: ConsumerInfo, want: str | None) -> ConsumerInfo:
    """An existing durable whose filter is ``want`` as it was before EVENTS
    stored a partition in its subjects (``agents.<a>.decisions.*`` for
    ``agents.<a>.decisions.*.*``): made by an earlier build, it would match no
    new message, and a parked approval would never resume. Its filter follows
    (a durable's filter may be changed in place). Any other difference is left
    alone: the durable is someone else's to configure."""
    have = info.config.filter_subject
    if not want or not have or have == want or info.config.filter_subjects or subjects.stored(have) != want:
        return info
    cfg = info.config
    cfg.filter_subject = want
    log.warning("consumer %s on %s: filter %s -> %s (EVENTS is partitioned since this build; docs/scaling.md)",
                info.name, stream, have, want)
    return await js.add_consumer(stream, cfg)


def size_limit(max_bytes: int) -> Middleware:
    async def mw(msg: Msg, nxt: Handler) -> None:
        if len(msg.data or b"") > max_bytes:
            raise Reject(f"event of {len(msg.data)} bytes exceeds the {max_bytes}-byte limit")
        await nxt(msg)
    return mw


def _chain(handler: Handler, middlewares: Sequence[Middleware]) -> Handler:
    h = handler
    for mw in reversed(middlewares):
        h = _bind(mw, h)
    return h


def _bind(mw: Middleware, nxt: Handler) -> Handler:
    # A plain function returning mw's coroutine, not a wrapping coroutine: one
    # coroutine frame less per layer per message.
    return lambda msg: mw(msg, nxt)


def stream_seq(msg: Msg) -> int | None:
    """The message's stream sequence; None for a core NATS message (no JetStream metadata).
    Read from the ack subject as nats-py's ``msg.metadata`` reads it, without
    building the rest (a datetime and three objects a message, on the hot path)."""
    reply = msg.reply
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    n = len(tokens)
    try:
        if n == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
            return int(tokens[5])
        if n >= 11:  # the same after <domain>.<account hash>
            return int(tokens[7])
    except ValueError:
        return None
    return None


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # noqa: BLE001
        return 1


async def _ack(msg: Msg) -> None:
    try:
        await msg.ack()
    except Exception:  # noqa: BLE001 - an ack lost to a closed connection means a redelivery, which is safe
        pass


async def _nak(msg: Msg, delay: float) -> None:
    try:
        await msg.nak(delay=delay)
    except Exception:  # noqa: BLE001 - a lost nak means a redelivery after ack_wait instead, which is safe
        pass
