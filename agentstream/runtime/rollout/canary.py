"""Canary releases, decided purely: routing, windowed analysis, the next step.

The state (one record per agent in KV ``rollout_state``, key ``canary.<agent>``)
is written only by compare-and-set, by whichever replica gets there first:
there is no coordinator. Every replica serving the agent routes with the same
rule, so each task is handled by exactly one version:

- a task goes to the candidate when a stable hash of its routing key (the
  conversation, else the user, else the task id, so a user stays on one
  version) falls below the candidate's weight;
- the weight that applies is the one in effect at the task's *stream
  timestamp*, which every replica reads alike; a new weight takes effect
  ``PROPAGATION_S`` after it is written, longer than any replica takes to
  see it (they re-read the state every ``REFRESH_S``), so no task is
  judged by two different weights.

Analysis runs in windows (Argo Rollouts' and Flagger's model): the
candidate's error rate, failure reasons, p95 latency and cost per task are
compared with the baseline's in the same window. Too little traffic is
"inconclusive", never a pass.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import msgspec

PROPAGATION_S = 5.0
REFRESH_S = 1.0

Status = Literal["running", "promoted", "rolled_back", "inconclusive"]
Verdict = Literal["pass", "fail", "inconclusive"]


class CanaryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    steps: tuple[float, ...] = (10.0, 25.0, 50.0, 100.0)  # candidate's share of traffic, %
    interval_s: float = 60.0  # one analysis window
    min_samples: int = 20  # per version per window, else the window is inconclusive
    failure_limit: int = 1  # failed windows before rollback
    max_inconclusive: int = 5  # inconclusive windows in a row before the canary stops
    max_error_rate_increase: float = 0.05  # candidate - baseline, absolute
    max_p95_ratio: float = 1.5
    # ... and at least this much slower: a p95 over a few dozen tasks moves by
    # tens of milliseconds on its own, which must not roll a canary back.
    min_p95_delta_s: float = 0.1
    max_cost_ratio: float = 1.5
    max_score_drop: float = 0.1  # online evaluation score, when scores exist

    def check(self) -> None:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError("canary steps must be increasing percentages in (0, 100]")
        if self.interval_s <= 0 or self.min_samples < 1 or self.failure_limit < 1 or self.max_inconclusive < 1:
            raise ValueError("canary interval, min samples, failure limit and max inconclusive must be positive")


class WeightChange(msgspec.Struct, frozen=True, kw_only=True):
    weight: float
    effective_at: float


class WindowStats(msgspec.Struct, frozen=True, kw_only=True):
    tasks: int = 0
    failed: int = 0
    reasons: dict[str, int] = {}
    p95_s: float | None = None  # None: no tasks
    cost_per_task: float | None = None
    score: float | None = None  # mean online evaluation score, if any evaluator ran

    @property
    def error_rate(self) -> float:
        return self.failed / self.tasks if self.tasks else float("nan")


class WindowResult(msgspec.Struct, frozen=True, kw_only=True):
    start: float
    end: float
    weight: float
    baseline: WindowStats
    candidate: WindowStats
    verdict: Verdict
    why: tuple[str, ...]


class CanaryState(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    baseline: str  # version label
    candidate: str
    policy: CanaryPolicy
    status: Status = "running"
    step: int = 0  # index into policy.steps
    weights: tuple[WeightChange, ...] = ()  # the history routing reads
    window_start: float = 0.0
    failures: int = 0
    inconclusive_run: int = 0
    windows: tuple[WindowResult, ...] = ()  # newest last, bounded
    started_at: float = 0.0
    updated_at: float = 0.0
    note: str = ""

    def weight_at(self, t: float) -> float:
        w = 0.0
        for change in self.weights:
            if change.effective_at <= t:
                w = change.weight
        return w

    @property
    def weight(self) -> float:
        return self.weights[-1].weight if self.weights else 0.0


MAX_WINDOWS_KEPT = 50

_decoder = msgspec.json.Decoder(CanaryState)


def decode(raw: bytes) -> CanaryState:
    return _decoder.decode(raw)


def encode(state: CanaryState) -> bytes:
    return msgspec.json.encode(state)


def start(agent: str, baseline: str, candidate: str, policy: CanaryPolicy, now: float) -> CanaryState:
    policy.check()
    return CanaryState(agent=agent, baseline=baseline, candidate=candidate, policy=policy,
                       weights=(WeightChange(weight=policy.steps[0], effective_at=now + PROPAGATION_S),),
                       window_start=now + PROPAGATION_S, started_at=now, updated_at=now)


def routing_key(conversation_id: str, user_id: str, task_id: str, tenant_id: str = "") -> str:
    if conversation_id:
        return f"c:{tenant_id}:{conversation_id}"
    if user_id and user_id != "anonymous":
        return f"u:{tenant_id}:{user_id}"
    return f"t:{task_id}"


def bucket(key: str) -> float:
    """The key's place in [0, 100), stable across processes and restarts."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 * 100.0


def route(state: CanaryState | None, key: str, at: float) -> Literal["baseline", "candidate"]:
    """Who handles a task whose stream timestamp is ``at``."""
    if state is None:
        return "baseline"
    return "candidate" if bucket(key) < state.weight_at(at) else "baseline"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    idx = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[idx]


def window_stats(outcomes: Sequence[tuple[bool, str, float, float]], scores: Sequence[float] = ()) -> WindowStats:
    """From (failed, reason, latency_s, cost_usd) per task finished in the window."""
    if not outcomes:
        return WindowStats(score=sum(scores) / len(scores) if scores else None)
    reasons = Counter(r for failed, r, _, _ in outcomes if failed)
    return WindowStats(tasks=len(outcomes), failed=sum(1 for o in outcomes if o[0]), reasons=dict(reasons),
                       p95_s=percentile([o[2] for o in outcomes], 0.95),
                       cost_per_task=sum(o[3] for o in outcomes) / len(outcomes),
                       score=sum(scores) / len(scores) if scores else None)


def judge(base: WindowStats, cand: WindowStats, policy: CanaryPolicy) -> tuple[Verdict, tuple[str, ...]]:
    if cand.tasks < policy.min_samples or base.tasks < policy.min_samples:
        return "inconclusive", (f"too little traffic: baseline {base.tasks}, candidate {cand.tasks} tasks "
                                f"(need {policy.min_samples} each)",)
    why: list[str] = []
    if cand.error_rate - base.error_rate > policy.max_error_rate_increase:
        # The failure reasons say what broke, new ones (that the baseline never shows) first.
        new = [r for r in cand.reasons if r not in base.reasons]
        top = ", ".join(f"{r} x{n}{' (new)' if r in new else ''}" for r, n in
                        sorted(cand.reasons.items(), key=lambda rn: (rn[0] not in new, -rn[1]))[:3])
        why.append(f"error rate {cand.error_rate:.1%} vs baseline {base.error_rate:.1%} ({top})")
    if base.p95_s and cand.p95_s is not None and cand.p95_s > policy.max_p95_ratio * base.p95_s \
            and cand.p95_s - base.p95_s > policy.min_p95_delta_s:
        why.append(f"p95 latency {cand.p95_s * 1000:.0f} ms vs baseline {base.p95_s * 1000:.0f} ms")
    if base.cost_per_task and cand.cost_per_task is not None and \
            cand.cost_per_task > policy.max_cost_ratio * base.cost_per_task:
        why.append(f"cost per task ${cand.cost_per_task:.4f} vs baseline ${base.cost_per_task:.4f}")
    if base.score is not None and cand.score is not None and base.score - cand.score > policy.max_score_drop:
        why.append(f"evaluation score {cand.score:.2f} vs baseline {base.score:.2f}")
    return ("fail", tuple(why)) if why else ("pass", ("within every limit",))


def reference(state: CanaryState, base: WindowStats) -> WindowStats:
    """The baseline to judge a window by. At 100 % the baseline gets no traffic
    in the window: the most recent window in which it had enough stands in."""
    if base.tasks >= state.policy.min_samples:
        return base
    for w in reversed(state.windows):
        if w.baseline.tasks >= state.policy.min_samples:
            return w.baseline
    return base


def advance(state: CanaryState, result: WindowResult, now: float) -> CanaryState:
    """The state after one analysed window."""
    p = state.policy
    windows = (*state.windows, result)[-MAX_WINDOWS_KEPT:]
    base = msgspec.structs.replace(state, windows=windows, window_start=result.end, updated_at=now)
    if result.verdict == "fail":
        failures = state.failures + 1
        if failures >= p.failure_limit:
            return _stop(msgspec.structs.replace(base, failures=failures), "rolled_back", now,
                         "rolled back: " + "; ".join(result.why))
        return msgspec.structs.replace(base, failures=failures, inconclusive_run=0)
    if result.verdict == "inconclusive":
        run = state.inconclusive_run + 1
        if run >= p.max_inconclusive:
            return _stop(msgspec.structs.replace(base, inconclusive_run=run), "inconclusive", now,
                         f"stopped: {run} windows in a row without enough traffic to decide")
        return msgspec.structs.replace(base, inconclusive_run=run)
    if state.step + 1 >= len(p.steps):
        weights = state.weights
        if state.weight < 100.0:
            weights = (*weights, WeightChange(weight=100.0, effective_at=now + PROPAGATION_S))
        return msgspec.structs.replace(base, status="promoted", weights=weights, inconclusive_run=0,
                                       note="promoted: every step passed")
    nxt = state.step + 1
    change = WeightChange(weight=p.steps[nxt], effective_at=now + PROPAGATION_S)
    return msgspec.structs.replace(base, step=nxt, weights=(*state.weights, change), inconclusive_run=0,
                                   window_start=now + PROPAGATION_S)


def _stop(state: CanaryState, status: Status, now: float, note: str) -> CanaryState:
    change = WeightChange(weight=0.0, effective_at=now + PROPAGATION_S)
    return msgspec.structs.replace(state, status=status, weights=(*state.weights, change), note=note)


def manual(state: CanaryState, action: Literal["promote", "rollback"], now: float, actor: str) -> CanaryState:
    if action == "rollback":
        return _stop(state, "rolled_back", now, f"rolled back by {actor}")
    change = WeightChange(weight=100.0, effective_at=now + PROPAGATION_S)
    return msgspec.structs.replace(state, status="promoted", weights=(*state.weights, change), updated_at=now,
                                   note=f"promoted by {actor}")


def due(state: CanaryState, now: float) -> bool:
    return state.status == "running" and now >= state.window_start + state.policy.interval_s
