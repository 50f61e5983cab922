"""Canary state in KV, routing with it, and the analysis loop every replica runs.

Any replica serving the agent may analyse a window; compare-and-set on the
state decides which one's result counts, so the rollout needs no coordinator
and survives any replica dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import AuditRecord, EvaluationScored, TaskCompleted, TaskFailed
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.ports import Bus, SessionStore
from agentstream.runtime.execution.consumer import refilter
from agentstream.runtime.execution.pull import Outage
from agentstream.runtime.rollout import canary as C

log = logging.getLogger("agentstream.canary")


def state_key(agent: str) -> str:
    return f"canary.{agent}"


def candidate_durables(agent: str, label: str) -> tuple[str, str]:
    """The candidate's own consumers on production's task and inbox subjects."""
    return (f"canary_{label}_{subjects.agent_durable(agent, 'tasks')}",
            f"canary_{label}_{subjects.agent_durable(agent, 'events')}")


class CanaryStore:
    def __init__(self, kv: SessionStore) -> None:
        self.kv = kv

    async def load(self, agent: str) -> tuple[C.CanaryState, int] | None:
        entry = await self.kv.get(state_key(agent))
        if entry is None or not entry.value:
            return None
        return C.decode(entry.value), entry.revision

    async def create(self, state: C.CanaryState) -> None:
        await self.kv.create(state_key(state.agent), C.encode(state))

    async def replace(self, state: C.CanaryState, revision: int) -> None:
        await self.kv.update(state_key(state.agent), C.encode(state), revision)

    async def clear(self, agent: str) -> None:
        await self.kv.delete(state_key(agent))


class Router:
    """Which version handles a task, from a copy of the state at most REFRESH_S old."""

    def __init__(self, store: CanaryStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._cache: dict[str, tuple[float, C.CanaryState | None]] = {}

    async def state(self, agent: str) -> C.CanaryState | None:
        hit = self._cache.get(agent)
        now = self.clock()
        if hit is not None and now - hit[0] < C.REFRESH_S:
            return hit[1]
        loaded = await self.store.load(agent)
        state = loaded[0] if loaded is not None else None
        self._cache[agent] = (now, state)
        return state

    async def route(self, agent: str, key: str, at: float) -> str:
        return C.route(await self.state(agent), key, at)


async def ensure_candidate_consumers(js: JetStreamContext, agent: str, label: str, since: float) -> None:
    """Created when the canary starts, so every task routed to the candidate
    waits for it even before a candidate replica is up."""
    import datetime

    tasks, inbox = candidate_durables(agent, label)
    for durable, subject in ((tasks, subjects.tasks(agent)), (inbox, subjects.stored(subjects.events(agent, "*")))):
        cfg = ConsumerConfig(durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                             deliver_policy=DeliverPolicy.BY_START_TIME, max_ack_pending=-1,
                             opt_start_time=datetime.datetime.fromtimestamp(since, tz=datetime.UTC))
        stream = "TASKS" if subject.endswith(".tasks") else "EVENTS"
        try:
            info = await js.consumer_info(stream, durable)
        except Exception:  # noqa: BLE001 - not there (or not visible): create it
            await js.add_consumer(stream, config=cfg)
        else:
            await refilter(js, stream, info, cfg.filter_subject)


async def _window_events(js: JetStreamContext, stream: str, subject: str, start: float, end: float) -> list[object]:
    """The events stored on ``stream`` under ``subject`` in [start, end), decoded;
    a message that does not decode (a foreign one) is skipped."""
    events: list[object] = []
    for raw in await scan(js, stream, subject, start_time=start):
        if raw.time >= end:
            break
        try:
            events.append(codec.any_event.decode(raw.data))
        except Exception:  # noqa: BLE001 - a foreign message is not an event
            continue
    return events


async def window_outcomes(js: JetStreamContext, agent: str, start: float, end: float,
                          labels: Iterable[str]) -> dict[str, list[tuple[bool, str, float, float]]]:
    """(failed, reason, latency, cost) of every result stored in [start, end), by version label."""
    out: dict[str, list[tuple[bool, str, float, float]]] = {label: [] for label in labels}
    for ev in await _window_events(js, "RESULTS", subjects.results(agent, "*"), start, end):
        if isinstance(ev, (TaskCompleted, TaskFailed)) and ev.agent_version in out:
            failed = isinstance(ev, TaskFailed)
            out[ev.agent_version].append((failed, ev.reason if failed else "",  # type: ignore[union-attr]
                                          max(0.0, ev.finished_at - ev.started_at), ev.usage.cost_usd))
    return out


def score_of(ev: EvaluationScored) -> float:
    """One number per scored task for the canary: the judge's score when a judge
    ran, else groundedness; 0 when the answer was unsafe."""
    if not ev.safety:
        return 0.0
    return ev.judge if ev.judge is not None else ev.groundedness


async def window_scores(js: JetStreamContext, agent: str, start: float, end: float,
                        labels: Iterable[str]) -> dict[str, list[float]]:
    """Online evaluators' scores (stream EVALS) of tasks scored in [start, end), by version label."""
    out: dict[str, list[float]] = {label: [] for label in labels}
    for ev in await _window_events(js, "EVALS", subjects.eval_scores(agent, "*"), start, end):
        if isinstance(ev, EvaluationScored) and ev.agent_version in out:
            out[ev.agent_version].append(score_of(ev))
    return out


def audit_for(before: C.CanaryState, after: C.CanaryState, actor: str, now: float) -> AuditRecord:
    kind = {"running": "canary.window", "promoted": "canary.promoted", "rolled_back": "canary.rolled_back",
            "inconclusive": "canary.inconclusive"}[after.status]
    if after.status == "running" and after.step != before.step:
        kind = "canary.step"
    last = after.windows[-1] if after.windows else None
    details: dict[str, object] = {"candidate": after.candidate, "baseline": after.baseline, "weight": after.weight,
                                  "step": after.step, "note": after.note}
    if last is not None:
        details.update(verdict=last.verdict, why=list(last.why), window_start=last.start, window_end=last.end,
                       baseline_tasks=last.baseline.tasks, candidate_tasks=last.candidate.tasks)
    return AuditRecord(kind=kind, at=now, actor=actor, agent=after.agent, task_id="", details=details)


async def publish_audit(bus: Bus, rec: AuditRecord, revision: int) -> None:
    await bus.publish(subjects.audit(rec.kind, rec.agent), codec.encode(rec),
                      msg_id=f"canary:{rec.agent}:{revision}:{rec.kind}")


class Controller:
    """Analyses due windows for the agents this replica serves."""

    def __init__(self, js: JetStreamContext, store: CanaryStore, bus: Bus, agents: Iterable[str], *,
                 actor: str, clock: Callable[[], float] = time.time) -> None:
        self.js = js
        self.store = store
        self.bus = bus
        self.agents = list(agents)
        self.actor = actor
        self.clock = clock

    async def tick(self) -> None:
        for agent in self.agents:
            loaded = await self.store.load(agent)
            if loaded is None:
                continue
            state, rev = loaded
            now = self.clock()
            if not C.due(state, now):
                continue
            start, end = state.window_start, state.window_start + state.policy.interval_s
            labels = (state.baseline, state.candidate)
            by = await window_outcomes(self.js, agent, start, end, labels)
            scores = await window_scores(self.js, agent, start, end, labels)  # empty unless evaluators run
            cand = C.window_stats(by[state.candidate], scores[state.candidate])
            base = C.window_stats(by[state.baseline], scores[state.baseline])
            if state.weight_at(start) >= 100.0:
                base = C.reference(state, base)
            verdict, why = C.judge(base, cand, state.policy)
            result = C.WindowResult(start=start, end=end, weight=state.weight_at(start), baseline=base,
                                    candidate=cand, verdict=verdict, why=why)
            new = C.advance(state, result, now)
            try:
                await self.store.replace(new, rev)
            except Conflict:
                continue  # another replica analysed this window first
            await publish_audit(self.bus, audit_for(state, new, self.actor, now), rev + 1)
            log.warning("canary %s: window %s -> %s, candidate %s at %.0f%%: %s", agent, verdict, new.status,
                        new.candidate, new.weight, "; ".join(why))

    async def run(self, stop: asyncio.Event) -> None:
        outage = Outage("canary analysis", log)
        while not stop.is_set():
            try:
                await self.tick()
                outage.recovered()
            except Exception as exc:  # noqa: BLE001 - analysis must outlive a broker hiccup
                outage.failed(f"{type(exc).__name__}: {exc}")  # one line per outage, not one a second
            wait = 1.0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
