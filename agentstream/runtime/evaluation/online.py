"""Online evaluation: score live results as they arrive, watch for drift.

Pure logic, driven by the evaluator handler (``agentstream.handlers.evaluator``):

- sampling is a hash of the task id and a seed, not a coin flip: every
  replica and every redelivery makes the same choice for a task;
- a task is scored without a case (no expected answer exists for live
  traffic): safety, groundedness, latency, tokens and cost (``score``
  takes a judge's verdict too, for callers that run one);
- drift: per agent and metric, the first ``baseline_size`` scores form the
  baseline window, the latest ``window`` the moving one; an alarm is raised
  when the moving window's mean drops below the baseline's by more than
  ``threshold`` with the whole bootstrap interval of the drop beyond it,
  once, and again only after it has recovered.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from agentstream.contracts.events import DriftDetected, EvaluationScored, FeedbackSubmitted
from agentstream.runtime.evaluation import stats
from agentstream.runtime.evaluation.scoring import TaskEvidence, score_outcome

EVALUATOR_VERSION = "online-v1"


def sampled(task_id: str, rate: float, seed: int = 0) -> bool:
    """Deterministic sampling: the task id's hash against the rate."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


@dataclass
class _Windows:
    baseline: list[float] = field(default_factory=list)
    window: deque[float] = field(default_factory=deque)
    alarmed: bool = False
    seen: int = 0


@dataclass
class OnlineEvaluator:
    sample_rate: float = 1.0
    seed: int = 0
    window: int = 200
    baseline_size: int = 200
    drift_threshold: float = 0.1
    min_window: int = 30  # no verdict on fewer results than this
    check_every: int = 10  # a bootstrap per result per metric would cost more than the scoring
    name: str = "online"
    _windows: dict[tuple[str, str], _Windows] = field(default_factory=dict)

    @property
    def evaluator(self) -> str:
        return f"{self.name}/{EVALUATOR_VERSION}"

    def wants(self, task_id: str) -> bool:
        return sampled(task_id, self.sample_rate, self.seed)

    def score(self, evidence: TaskEvidence, *, now: float, deployment: str = "production",
              tenant_id: str = "default", judge: tuple[float, str] | None = None) -> EvaluationScored:
        s = score_outcome(evidence, judge=judge)
        return EvaluationScored(
            task_id=evidence.task_id, agent=evidence.agent, agent_version=evidence.agent_version,
            evaluator=self.evaluator, status=evidence.status, groundedness=s.groundedness, safety=s.safety,
            latency_s=s.latency_s, tokens=s.tokens, cost_usd=s.cost_usd, at=now, judge=s.judge,
            failed_checks=tuple(f"{c.kind}: {c.name}" for c in s.failed_checks), sample_rate=self.sample_rate,
            deployment=deployment, tenant_id=tenant_id)

    def observe_score(self, scored: EvaluationScored, *, now: float) -> list[DriftDetected]:
        values = {"groundedness": scored.groundedness, "safety": float(scored.safety),
                  "success": float(scored.status == "completed")}
        out = []
        for metric, value in values.items():
            d = self._observe(scored.agent, metric, value, now)
            if d is not None:
                out.append(d)
        return out

    def observe_feedback(self, fb: FeedbackSubmitted, *, now: float) -> list[DriftDetected]:
        d = self._observe(fb.agent, "feedback", 1.0 if fb.rating == "up" else 0.0, now)
        return [d] if d is not None else []

    def _observe(self, agent: str, metric: str, value: float, now: float) -> DriftDetected | None:
        w = self._windows.setdefault((agent, metric), _Windows(window=deque(maxlen=self.window)))
        if len(w.baseline) < self.baseline_size:
            w.baseline.append(value)
            return None
        w.window.append(value)
        w.seen += 1
        if len(w.window) < self.min_window or (w.seen % self.check_every and not w.alarmed):
            return None
        d = stats.detect_drift(w.baseline, list(w.window), threshold=self.drift_threshold, seed=self.seed)
        if d.drifted and not w.alarmed:
            w.alarmed = True
            return DriftDetected(agent=agent, metric=metric, baseline_mean=d.baseline_mean, window_mean=d.window_mean,
                                 diff_low=d.diff.low, diff_high=d.diff.high, threshold=d.threshold,
                                 baseline_size=len(w.baseline), window_size=len(w.window), at=now)
        if not d.drifted:
            w.alarmed = False
        return None
