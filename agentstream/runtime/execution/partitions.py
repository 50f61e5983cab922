"""The agent inbox, partitioned by task, each partition pulled by one replica.

Why: a task's tool results used to reach any replica (one shared durable
consumer), and each replica's step is a compare-and-set on the task's session,
so with 2-4 agent replicas a task cost 1.6-2.9 extra session reads and 0.8-1.2
compare-and-set conflicts (docs/scaling.md). With the inbox partitioned by task
id (EVENTS' own subject transform, ``subjects.events_transform``) and each
partition pulled by one replica, all of a task's results reach one replica,
whose per-task lock and session cache (``AgentEngine``) make its steps
conflict-free. Tasks still go to any replica: the first step may run on
another replica than the one owning the task's partition, which costs that
owner one session read.

Who pulls which partition, without a coordinator: every replica puts a
heartbeat key every second (``subjects.REPLICAS``; a key not refreshed within
the bucket's max age disappears), reads the live members, and computes the
same assignment from the same list (:func:`assign`: balanced, at most
``ceil(P / members)`` each, and few moves when a member joins or leaves). A
replica that leaves gracefully deletes its key, so its partitions move at
once; one that is killed loses them when its key expires, and whatever it had
taken and not acknowledged is redelivered after the ack wait, to the new owner.

Ownership is a matter of speed, never of correctness: while two replicas
disagree about the members (for a beat after a change) both may pull a
partition, and the session's compare-and-set still decides, as it did with
one shared consumer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from agentstream.contracts import subjects
from agentstream.runtime.execution.consumer import ConsumerSettings, DeadLetterHook, Handler, PullConsumer
from agentstream.runtime.execution.pull import Backoff, ContinuousPull, Outage, sleep_unless

log = logging.getLogger("agentstream.consumer")

BEAT_S = 1.0


class Membership(Protocol):
    async def beat(self, member: str) -> None: ...

    async def leave(self, member: str) -> None: ...

    async def live(self) -> list[str]: ...


def _weight(member: str, partition: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest(), "big")


def assign(partitions: int, members: Sequence[str]) -> dict[int, str]:
    """Partition -> member, the same on every replica given the same members.
    Rendezvous hashing (each partition goes to the member that ranks it
    highest) bounded to ``ceil(partitions / members)`` each, so the split is
    even and a member joining or leaving moves few partitions."""
    ms = sorted(set(members))
    if not ms:
        return {}
    cap = math.ceil(partitions / len(ms))
    load = dict.fromkeys(ms, 0)
    out: dict[int, str] = {}
    for p in range(partitions):
        for m in sorted(ms, key=lambda m: (_weight(m, p), m), reverse=True):
            if load[m] < cap:
                out[p] = m
                load[m] += 1
                break
    return out


_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_\-]")


def member_id(worker_id: str, nonce: str) -> str:
    """A KV-key-safe member name, unique per process (two replicas given the
    same worker id must still count as two)."""
    return f"{_NOT_TOKEN.sub('_', worker_id)[:64]}-{nonce}"


class PartitionedConsumer(PullConsumer):
    """An agent's inbox: one durable consumer per partition on EVENTS, pulled
    for the partitions this replica owns. Handling, acks, dead letters and the
    drain at shutdown are :class:`PullConsumer`'s; ``settings.durable`` is the
    logical name (``agent_<a>_events``) dead letters and logs use, and
    ``settings.max_in_flight`` bounds the steps running at once over all
    partitions."""

    def __init__(self, js: JetStreamContext, settings: ConsumerSettings, handler: Handler, *, agent: str,
                 member: str, membership: Membership, partitions: Callable[[], Awaitable[int]],
                 on_dead_letter: DeadLetterHook | None = None, beat_s: float = BEAT_S) -> None:
        super().__init__(js, settings, handler, on_dead_letter=on_dead_letter)
        self.agent = agent
        self.member = member
        self.membership = membership
        self._partitions = partitions
        self.beat_s = beat_s
        self.partitions = 0
        self.owned: dict[int, tuple[ContinuousPull, asyncio.Event, asyncio.Task[None]]] = {}
        self._sem = asyncio.Semaphore(settings.max_in_flight)
        self._pstops: set[asyncio.Event] = set()
        # One line per outage for the whole inbox (its partitions' pulls and the
        # membership), not one per partition.
        self._outage = Outage(f"consumer {settings.durable} on stream {subjects.EVENTS_STREAM} (every partition)")

    async def ensure_partition(self, p: int) -> ConsumerInfo:
        # From the start of EVENTS (settings.deliver_new is off for the inbox):
        # a task's first results may be stored before its partition's consumer
        # exists (the first replica still starting). The cost: a partition
        # consumer deleted and made again reads its partition's retained events
        # again (each handed to the engine again, a session read at least), so
        # delete them only drained and purged (docs/scaling.md, changing P).
        return await self._ensure_durable(subjects.inbox_partition_durable(self.agent, p),
                                          subjects.inbox_partition_filter(self.agent, p))

    async def run(self, stop: asyncio.Event, drain_timeout_s: float = 10.0) -> None:
        self._stop = stop
        backoff = Backoff(self.s.backoff_base_s, self.s.backoff_cap_s)
        while not stop.is_set():
            try:
                self.partitions = await self._partitions()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker may be away at start: retry
                self._outage.failed(f"cannot set up the inbox stream: {type(exc).__name__}: {exc}")
                await sleep_unless(stop, backoff.next_delay())
        if stop.is_set():
            return
        beat = asyncio.create_task(self._heartbeat(stop))
        stopper = asyncio.create_task(self._stop_all(stop))
        try:
            await self._join(stop)
            await self._rebalance(stop)
            self.started.set()
            while not stop.is_set():
                await sleep_unless(stop, self.beat_s)
                if not stop.is_set():
                    await self._rebalance(stop)
        finally:
            # Others take this replica's partitions now, not when its key expires.
            try:
                await self.membership.leave(self.member)
            except Exception as exc:  # noqa: BLE001 - then they take them when it expires
                log.debug("%s: could not leave the inbox membership: %s", self.s.durable, exc)
            # Closed before the drain: an open pull would keep receiving
            # messages only to hand them back.
            await asyncio.gather(*(self._release(p) for p in list(self.owned)))
            await self._drain(drain_timeout_s)
            beat.cancel()
            stopper.cancel()

    async def _join(self, stop: asyncio.Event) -> None:
        """Announce this replica, and when others already run, give them a beat
        and a half to see it and let go of its share before pulling it: both
        pulling a partition for a while costs session reads and conflicts."""
        try:
            await self.membership.beat(self.member)
            others = [m for m in await self.membership.live() if m != self.member]
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - _rebalance reports it
            return
        if others:
            await sleep_unless(stop, 1.5 * self.beat_s)

    async def _rebalance(self, stop: asyncio.Event) -> None:
        try:
            await self.membership.beat(self.member)
            members = await self.membership.live()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep what it owns until the broker is back
            self._outage.failed(f"{type(exc).__name__}: {exc}")
            if self.owned:
                return
            members = []  # none owned yet (first start): take them all rather than nothing
        else:
            self._outage.recovered()
        # Always itself: a replica whose beat was late still serves what it had.
        mine = {p for p, m in assign(self.partitions, [*members, self.member]).items() if m == self.member}
        if mine == set(self.owned):
            return
        gone = [p for p in self.owned if p not in mine]
        new = sorted(mine - set(self.owned))
        log.info("%s: member %s of %d pulls partitions %s of %d", self.s.durable, self.member,
                 len(set(members) | {self.member}), _ranges(sorted(mine)), self.partitions)
        await asyncio.gather(*(self._release(p) for p in gone))
        for p in new:
            if stop.is_set():
                return
            await self._claim(p, stop)

    async def _claim(self, p: int, stop: asyncio.Event) -> None:
        # Set when the partition is released or the consumer stops.
        pstop = asyncio.Event()
        self._pstops.add(pstop)
        if stop.is_set():
            pstop.set()
        pull = self._new_pull(subjects.inbox_partition_durable(self.agent, p), lambda: self.ensure_partition(p))
        pull.outage = self._outage
        if not await pull.start(pstop):
            self._pstops.discard(pstop)
            await pull.close()
            return
        self.owned[p] = (pull, pstop, asyncio.create_task(self._pull(pull, pstop)))
        if self.pull is None:
            self.pull = pull

    async def _pull(self, pull: ContinuousPull, pstop: asyncio.Event) -> None:
        try:
            await pull.run(pstop)
        finally:
            await pull.close()
            self._pstops.discard(pstop)

    async def _release(self, p: int) -> None:
        entry = self.owned.pop(p, None)
        if entry is None:
            return
        pull, pstop, task = entry
        pstop.set()
        pull.wake()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=5)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        if self.pull is pull:
            self.pull = next((e[0] for e in self.owned.values()), None)

    async def _stop_all(self, stop: asyncio.Event) -> None:
        await stop.wait()
        for e in list(self._pstops):
            e.set()

    def _done(self, t: asyncio.Task[None]) -> None:
        self._inflight.pop(t, None)
        # Only the pulls that would ask for more: waking every partition's loop
        # on every finished step cost ~7 % CPU a task with 16 partitions.
        for pull, _, _ in self.owned.values():
            if pull.wants():
                pull.wake()

    async def _process(self, msg: Msg) -> None:
        # Each owned partition asks for as many messages as there are free
        # slots (a share of them would mean a pull request every message or
        # two: measured, it cost more CPU than the partitions saved), so more
        # may arrive than run: the semaphore keeps the steps running at once
        # within max_in_flight, which latency-bound deployments size on. What
        # waits is this replica's own partitions' work, which nobody else would take.
        async with self._sem:
            await super()._process(msg)


def _ranges(ps: Sequence[int]) -> str:
    out: list[str] = []
    for p in ps:
        if out and out[-1].split("-")[-1] == str(p - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out) or "none"
