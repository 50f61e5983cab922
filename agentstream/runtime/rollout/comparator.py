"""The comparator: joins production's and each shadow's outcome of a task in
KV (bucket ``rollout_outcomes``, key ``<agent>.<task>``), by compare-and-set,
so any number of comparator replicas may run.

Only tasks a shadow ran get a record. The join cannot miss: a shadow result
writes its half and then looks for production's result on the RESULTS
stream; a production result looks for an existing record. Whichever of the
two results is stored second is seen by the other's lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext

from agentstream.contracts.events import TaskCompleted, TaskFailed
from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.ports import SessionStore
from agentstream.runtime.rollout.compare import Outcome, PairRecord, decode_record, encode_record, outcome_of
from agentstream.runtime.rollout.recorded import production_result, task_progress

log = logging.getLogger("agentstream.comparator")

TaskResult = TaskCompleted | TaskFailed


def record_key(agent: str, task_id: str) -> str:
    return f"{agent}.{task_id}"


class Comparator:
    def __init__(self, js: JetStreamContext, outcomes: SessionStore) -> None:
        self.js = js
        self.outcomes = outcomes
        self.joined = 0

    async def _outcome(self, result: TaskResult, label: str) -> Outcome:
        ds, strategy = await task_progress(self.js, result.agent, result.task_id, label=label)
        return outcome_of(result, label=label, dispatches=ds, strategy=strategy)

    async def _modify(self, key: str, change: Callable[[PairRecord | None], PairRecord | None]) -> PairRecord | None:
        for _ in range(50):
            entry = await self.outcomes.get(key)
            current = decode_record(entry.value) if entry is not None else None
            new = change(current)
            if new is None:
                return current
            try:
                if entry is None:
                    await self.outcomes.create(key, encode_record(new))
                else:
                    await self.outcomes.update(key, encode_record(new), entry.revision)
                return new
            except Conflict:
                continue
        raise Conflict(f"outcome record {key}: gave up after 50 compare-and-set conflicts")

    async def on_production(self, result: TaskResult) -> None:
        key = record_key(result.agent, result.task_id)
        if await self.outcomes.get(key) is None:
            return  # no shadow ran this task (yet: its result will look for ours)
        await self._set_production(key, result)

    async def _set_production(self, key: str, result: TaskResult) -> None:
        prod = await self._outcome(result, "")

        def change(rec: PairRecord | None) -> PairRecord | None:
            if rec is None or rec.production is not None:
                return None
            rec.production = prod
            return rec

        if await self._modify(key, change) is not None:
            self.joined += 1

    async def on_shadow(self, label: str, result: TaskResult) -> None:
        key = record_key(result.agent, result.task_id)
        mine = await self._outcome(result, label)

        def change(rec: PairRecord | None) -> PairRecord | None:
            rec = rec or PairRecord(agent=result.agent, task_id=result.task_id)
            if label in rec.shadows:
                return None
            rec.shadows = {**rec.shadows, label: mine}
            return rec

        rec = await self._modify(key, change)
        if rec is not None and rec.production is None:
            prod = await production_result(self.js, result.task_id)
            if prod is not None:
                await self._set_production(key, prod)


async def load_records(outcomes: SessionStore, agent: str) -> list[PairRecord]:
    out = []
    for key, entry in await outcomes.items():
        if key.startswith(agent + "."):
            try:
                out.append(decode_record(entry.value))
            except Exception:  # noqa: BLE001 - a record from a newer version: skip, do not crash the report
                log.warning("unreadable outcome record %s", key)
    return out


async def summary(outcomes: SessionStore, rollout: SessionStore) -> dict[str, list[dict[str, Any]]]:
    """What the dashboard shows: every shadow's agreement and verdict, every canary's state."""
    from agentstream.runtime.rollout import canary as C
    from agentstream.runtime.rollout.compare import noise_label, shadow_report

    by_agent: dict[str, list[PairRecord]] = {}
    for key, entry in await outcomes.items():
        try:
            rec = decode_record(entry.value)
        except Exception:  # noqa: BLE001
            log.warning("unreadable outcome record %s", key)
            continue
        by_agent.setdefault(rec.agent, []).append(rec)
    shadows = []
    for agent, recs in sorted(by_agent.items()):
        for label in sorted({lbl for r in recs for lbl in r.shadows}):
            rep = shadow_report(recs, agent=agent, candidate=label,
                                noise=noise_label(recs, agent=agent, candidate=label))
            shadows.append({"agent": agent, "candidate": label, "noise": rep.noise, "pairs": rep.pairs,
                            "agreement": rep.overall.rate if rep.pairs else None, "low": rep.overall.low,
                            "high": rep.overall.high, "verdict": rep.verdict,
                            "regressions": sum(d.kind == "regression" for d in rep.differences),
                            "differences": len(rep.differences)})
    canaries = []
    for key, entry in await rollout.items():
        if key.startswith("canary.") and entry.value:
            s = C.decode(entry.value)
            last = s.windows[-1] if s.windows else None
            canaries.append({"agent": s.agent, "candidate": s.candidate, "baseline": s.baseline, "status": s.status,
                             "weight": s.weight, "step": s.step + 1, "steps": len(s.policy.steps), "note": s.note,
                             "last_verdict": last.verdict if last else None,
                             "last_why": list(last.why) if last else []})
    return {"shadows": shadows, "canaries": canaries}
