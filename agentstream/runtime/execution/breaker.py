"""Circuit breaker per tool, shared by every replica.

Two layers:

- a **pure state machine**: functions of a :class:`BreakerState`, a
  :class:`~agentstream.runtime.core.tools.BreakerPolicy` and ``now``. No clock, no
  I/O, so timing is tested with plain numbers;
- :class:`SharedBreaker`: the state of each tool in a KV bucket (key = tool
  name, JSON value), every change written with compare-and-set and retried on
  a conflict, so all replicas see one breaker.

Semantics:

- *closed*: calls run. A failed call (an execution error, a timeout, a
  transient error after its retries, not a model mistake such as invalid
  arguments) is recorded with its time; ``failure_threshold`` failures within
  ``window_s`` open the breaker. Successes while closed write nothing.
- *open*: calls fail fast (or go to the tool's fallback) for ``open_s``.
- *half-open*: after ``open_s`` the first caller claims the probe by
  compare-and-set (one replica wins); other callers still fail fast. The probe
  succeeding closes the breaker, failing re-opens it. A probe that never
  reports (its replica died) can be re-claimed after ``probe_lease_s``.

Cost when closed: one KV read per call; a write only on a failure or a state
change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import msgspec

from agentstream.contracts import codec
from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.ports import SessionStore
from agentstream.runtime.core.tools import BreakerPolicy

log = logging.getLogger("agentstream.breaker")

State = Literal["closed", "open", "half_open"]
Action = Literal["run", "probe", "reject"]
_T = TypeVar("_T")


class BreakerState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    state: State = "closed"
    failures: tuple[float, ...] = ()  # times of recent failures (closed only), oldest first
    opened_at: float = 0.0
    probe_owner: str = ""
    probe_started_at: float = 0.0


CLOSED = BreakerState()


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """What to do with one call: ``run`` it, run it as the half-open ``probe``,
    or ``reject`` it (fail fast) for ``retry_after_s``."""

    action: Action
    retry_after_s: float = 0.0


# --------------------------------------------------------------------------- pure


def admit(s: BreakerState, p: BreakerPolicy, now: float, owner: str) -> tuple[Admission, BreakerState | None]:
    """Decide a call; the second value is the state to write (a probe claim), or None."""
    if s.state == "closed":
        return Admission(action="run"), None
    if s.state == "open":
        ready_at = s.opened_at + p.open_s
        if now >= ready_at:
            return Admission(action="probe"), _claim(s, now, owner)
        return Admission(action="reject", retry_after_s=ready_at - now), None
    # half_open: one probe at a time; a stale probe (its replica died) can be re-claimed.
    lease_end = s.probe_started_at + p.probe_lease_s
    if now >= lease_end:
        return Admission(action="probe"), _claim(s, now, owner)
    return Admission(action="reject", retry_after_s=max(lease_end - now, 0.0)), None


def on_success(s: BreakerState, p: BreakerPolicy, now: float, owner: str, probe: bool) -> BreakerState | None:
    """A call succeeded. Only the probe's success changes anything: it closes."""
    if probe and s.state == "half_open" and s.probe_owner == owner:
        return CLOSED
    return None


def on_failure(s: BreakerState, p: BreakerPolicy, now: float, owner: str, probe: bool) -> BreakerState | None:
    """A call failed. While closed, count it in the window (and open at the
    threshold); the probe failing re-opens. Stragglers (calls admitted before
    the breaker opened) change nothing once it is open or half-open."""
    if s.state == "closed":
        recent = tuple(t for t in s.failures if t > now - p.window_s)
        failures = (*recent, now)[-p.failure_threshold:]
        if len(failures) >= p.failure_threshold:
            return BreakerState(state="open", opened_at=now)
        return BreakerState(state="closed", failures=failures)
    if probe and s.state == "half_open" and s.probe_owner == owner:
        return BreakerState(state="open", opened_at=now)
    return None


def _claim(s: BreakerState, now: float, owner: str) -> BreakerState:
    return BreakerState(state="half_open", opened_at=s.opened_at, probe_owner=owner, probe_started_at=now)


# --------------------------------------------------------------------------- shared


_decoder: codec.Decoder[BreakerState] = codec.Decoder(BreakerState)


class Seen(msgspec.Struct, frozen=True):
    """The breaker state a call was admitted under, with its KV revision
    (0 = no key yet), so recording the outcome needs no second read."""

    state: BreakerState
    revision: int


class SharedBreaker:
    """Breakers of all tools in one compare-and-set KV bucket."""

    def __init__(self, store: SessionStore, *, clock: Callable[[], float] = time.time,
                 max_cas_attempts: int = 16) -> None:
        self.store = store
        self.clock = clock
        self.max_cas_attempts = max_cas_attempts

    async def read(self, tool: str) -> Seen:
        entry = await self.store.get(tool)
        if entry is None:
            return Seen(CLOSED, 0)
        try:
            return Seen(_decoder.decode(entry.value), entry.revision)
        except codec.DecodeError:
            log.warning("breaker state of %r is unreadable; treating it as closed", tool)
            return Seen(CLOSED, entry.revision)

    async def admit(self, tool: str, policy: BreakerPolicy, owner: str) -> tuple[Admission, Seen]:
        """One read when closed; a compare-and-set only to claim the probe."""
        adm, seen = await self._cas(tool, await self.read(tool),
                                    lambda s: admit(s, policy, self.clock(), owner))
        if adm is None:
            return Admission(action="reject", retry_after_s=1.0), seen
        return adm, seen

    async def record(self, tool: str, policy: BreakerPolicy, owner: str, *, ok: bool, probe: bool,
                     seen: Seen) -> BreakerState:
        """Apply a call's outcome, starting from the state it was admitted
        under and re-reading only on a conflict."""
        fn = on_success if ok else on_failure

        def decide(s: BreakerState) -> tuple[BreakerState, BreakerState | None]:
            new = fn(s, policy, self.clock(), owner, probe)
            return (s if new is None else new), new

        state, seen = await self._cas(tool, seen, decide)
        if state is None:
            log.warning("breaker of %r: gave up recording an outcome after %d conflicts", tool, self.max_cas_attempts)
            return seen.state
        return state

    async def state(self, tool: str) -> BreakerState:
        return (await self.read(tool)).state

    async def _cas(self, tool: str, seen: Seen,
                   decide: Callable[[BreakerState], tuple[_T, BreakerState | None]]) -> tuple[_T | None, Seen]:
        """Compare-and-set loop: ``decide`` from ``seen`` (a result and the state
        to write, or None to write nothing), write it, and on a conflict re-read
        and decide again, at most ``max_cas_attempts`` times. Returns the result
        with the state it holds for, or (None, the last state read) on giving up."""
        for _ in range(self.max_cas_attempts):
            result, new = decide(seen.state)
            if new is None:
                return result, seen
            try:
                rev = await self._write(tool, new, seen.revision)
            except Conflict:
                seen = await self.read(tool)  # someone else changed it (e.g. claimed the probe): decide again
                continue
            return result, Seen(new, rev)
        return None, seen

    async def _write(self, tool: str, new: BreakerState, revision: int) -> int:
        if revision == 0:
            return await self.store.create(tool, codec.encode(new))
        return await self.store.update(tool, codec.encode(new), revision)

