"""Continuous pull on a durable JetStream consumer: pull requests stay open for
as many messages as the caller has room for, and each message is handed over
the moment it arrives.

Why not nats-py's ``PullSubscription.fetch(n, timeout)``: it returns only when
the batch is full, a status message ends the pull, or the timeout passes. The
server ends a waiting pull after delivering into it only when it next looks at
that pull, so the last message of a burst that lands in an already-waiting
pull (an idle consumer always has one) sat in ``fetch`` until the pull
expired: 0.1-0.5 s with the 0.5 s timeout the loop used, while the process
idled. A ``408`` of a pull that the client had already timed out on, read by
the next ``fetch`` as its own answer, sent that one into a plain lingering pull
that waits for the whole batch. The more replicas share a consumer, the more
often each one is idle and waiting, so the more often it happened: that was
"adding replicas makes the system slower" (bench/scale.py, docs/scaling.md).

This is the pattern of nats.go's ``Consume()``: credits (messages asked for
and not yet delivered) are topped up when the caller frees room; idle
heartbeats prove the pulls are alive; status messages (``408`` expired,
``409`` conflict, ``503`` no responders) give credits back. While the stream,
its consumer or the broker is away the loop backs off with full jitter and
logs one line per outage (:class:`Outage`), not one per attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentstream.runtime.adapters.js_ack import subscribe_inline

log = logging.getLogger("agentstream.consumer")

STATUS = "Status"
PENDING_MSGS = "Nats-Pending-Messages"


class Backoff:
    """Full-jitter exponential backoff (AWS architecture blog's "full jitter"):
    replicas that lost the same stream leader do not retry in lockstep."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 2.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = self._rng.uniform(0.0, min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30))))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class Outage:
    """One warning when something goes away, one info line when it is back;
    the attempts in between log at debug. Log volume stays flat however long
    an election or a restart takes."""

    def __init__(self, what: str, logger: logging.Logger = log) -> None:
        self.what = what
        self.log = logger
        self.since: float | None = None
        self.attempts = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, reason: str) -> None:
        self.attempts += 1
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s unavailable (%s); retrying, quietly until it is back", self.what,
                             reason)
        else:
            self.log.debug("%s still unavailable (attempt %d): %s", self.what, self.attempts, reason)

    def recovered(self) -> None:
        if self.since is not None:
            self.log.info("%s back after %.1fs (%d attempts)", self.what, time.monotonic() - self.since,
                          self.attempts)
        self.since = None
        self.attempts = 0


class ContinuousPull:
    """Keeps pull requests open on ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``
    with a private inbox, for up to ``room()`` messages, and calls ``deliver``
    with each message as it arrives.

    ``room()`` is how many more messages the caller can take now (its free
    in-flight slots); call :meth:`wake` when it grows. ``ensure`` (re)creates
    the durable consumer; it runs at start and when the consumer turns out to
    be gone (``503``, ``409 Consumer Deleted``).
    """

    def __init__(self, nc: NatsClient, *, api_prefix: str, stream: str, durable: str, capacity: int,
                 deliver: Callable[[Msg], None], room: Callable[[], int], ensure: Callable[[], Awaitable[object]],
                 expires_s: float = 5.0, heartbeat_s: float = 1.0, backoff: Backoff | None = None) -> None:
        if not 0 < heartbeat_s < expires_s:
            raise ValueError("heartbeat_s must be positive and shorter than expires_s")
        self.nc = nc
        self.next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.durable = durable
        self._deliver = deliver
        self._room = room
        # Small top-ups would cost a publish per message at full load: ask again
        # once a quarter of the capacity is free (or nothing is asked for).
        self._threshold = max(1, capacity // 4)
        self._ensure = ensure
        self.expires_s = expires_s
        self.heartbeat_s = heartbeat_s
        self.backoff = backoff or Backoff()
        self.outage = Outage(f"consumer {durable} on stream {stream}")
        # Messages asked for and not yet delivered, over every open pull.
        self.pending = 0
        self._last_seen = time.monotonic()
        self._wake = asyncio.Event()
        self._trouble: str | None = None  # set by a status message: back off, maybe re-create
        self._recreate = False
        self._sub: Subscription | None = None
        self._inbox = ""
        self.pulls = 0  # pull requests sent (tests, diagnostics)

    def wake(self) -> None:
        self._wake.set()

    def wants(self) -> bool:
        """Whether the loop would ask for more now (then :meth:`wake` is worth it)."""
        want = self._room() - self.pending
        return want > 0 and (self.pending == 0 or want >= self._threshold)

    async def start(self, stop: asyncio.Event) -> bool:
        """Create the consumer (retrying with backoff while the stream is away)
        and subscribe the inbox. False if ``stop`` was set first."""
        await self._ensure_until_ok(stop)
        if stop.is_set():
            return False
        self._inbox = self.nc.new_inbox()
        # Handled from the read loop as they arrive (no callback task per message).
        self._sub = await subscribe_inline(self.nc, self._inbox, self._on_msg)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Pull until ``stop`` is set. Never raises for a broker problem."""
        watchdog = asyncio.create_task(self._watchdog(stop))
        try:
            await self._loop(stop)
        finally:
            watchdog.cancel()

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._trouble is not None:
                reason, self._trouble = self._trouble, None
                self.pending = 0
                self.outage.failed(reason)
                await sleep_unless(stop, self.backoff.next_delay())
                if self._recreate and not stop.is_set():
                    self._recreate = False
                    await self._ensure_until_ok(stop)
                continue
            if self.wants():
                await self._pull(self._room() - self.pending)
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _watchdog(self, stop: asyncio.Event) -> None:
        """Open pulls but no message, heartbeat or status for three heartbeats:
        they are gone (broker restarted, leader moved, connection lost). Ask
        again, after a backoff. Also wakes the loop when ``stop`` is set."""
        while not stop.is_set():
            await sleep_unless(stop, self.heartbeat_s)
            if (self.pending > 0 and self._trouble is None
                    and time.monotonic() - self._last_seen > self.heartbeat_s * 3):
                self._trouble = "no heartbeat from the server"
                self._wake.set()
        self._wake.set()

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may already be gone
                pass
            self._sub = None

    async def _pull(self, batch: int) -> None:
        req = {"batch": batch, "expires": int(self.expires_s * 1e9), "idle_heartbeat": int(self.heartbeat_s * 1e9)}
        try:
            await self.nc.publish(self.next_subject, json.dumps(req).encode(), reply=self._inbox)
        except Exception as exc:  # noqa: BLE001 - closed, draining, buffer full: all mean "not now"
            self._trouble = f"cannot send a pull request: {type(exc).__name__}: {exc}"
            return
        self.pulls += 1
        if self.pending == 0:
            self._last_seen = time.monotonic()  # the watchdog counts from the first open pull
        self.pending += batch

    def _on_msg(self, msg: Msg) -> None:
        self._last_seen = time.monotonic()
        status = msg.headers.get(STATUS) if msg.headers else None
        if not status:
            if self.pending > 0:
                self.pending -= 1
            if self.outage.active:
                self.outage.recovered()
            self.backoff.reset()
            self._deliver(msg)
            return
        if status == "100":  # idle heartbeat: the pulls are alive
            if self.outage.active:
                self.outage.recovered()
                self.backoff.reset()
            return
        assert msg.headers is not None
        desc = msg.headers.get("Description", "")
        if status in ("408", "409"):
            # The pull ended (expired, leadership change, ...): its unfilled
            # part is no longer asked for.
            try:
                left = int(msg.headers.get(PENDING_MSGS, ""))
            except ValueError:
                left = self.pending  # unknown: assume none is still open; the next top-up asks again
            self.pending = max(0, self.pending - left)
            if status == "409" and "deleted" in desc.lower():
                self._recreate = True
                self._trouble = f"409 {desc}"
            elif status == "409" and "exceeded" in desc.lower():
                # A limit of the consumer (max waiting pulls, batch, expiry):
                # asking again at once would spin; back off as for an outage.
                self._trouble = f"409 {desc}"
            elif status == "409":
                log.debug("%s: pull ended: %s %s", self.durable, status, desc)
        elif status == "503":
            # No responders on the consumer's next-message subject: no leader for
            # the stream or consumer, or the consumer is gone.
            self._recreate = True
            self._trouble = "503 no responders (no stream or consumer leader, or the consumer is gone)"
        else:
            log.debug("%s: unexpected pull status %s %s", self.durable, status, desc)
        self._wake.set()

    async def _ensure_until_ok(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._ensure()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every API failure here means "not yet"
                self.outage.failed(f"cannot create or look up the consumer: {type(exc).__name__}: {exc}")
                await sleep_unless(stop, self.backoff.next_delay())
                continue
            return


async def sleep_unless(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        pass
