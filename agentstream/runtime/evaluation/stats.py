"""Statistics for evaluation: pass^k, bootstrap intervals, paired tests, drift.

Pure functions over numbers (numpy only), every random draw from a seeded
generator the caller passes: the same run always gives the same interval.

pass^k is tau-bench's estimator: for a case run ``n`` times with ``c``
successes, the chance that ``k`` runs drawn without replacement all succeed
is C(c,k)/C(n,k), unbiased for p^k; pass^k is its mean over cases. pass@1 is
pass^1, the mean of c/n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


def pass_hat_k_case(n: int, c: int, k: int) -> float:
    """C(c,k)/C(n,k): the chance that k of the n runs, drawn without replacement, all pass."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return math.comb(c, k) / math.comb(n, k)


def pass_hat_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean over cases of C(c,k)/C(n,k); ``counts`` holds (n, c) per case."""
    if not counts:
        return float("nan")
    return sum(pass_hat_k_case(n, c, k) for n, c in counts) / len(counts)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    confidence: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence}


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_mean(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean, resampling cases."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, confidence)
    est = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return Interval(est, est, est, confidence)
    idx = _rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return Interval(est, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), confidence)


def bootstrap_pass_hat_k(counts: Sequence[tuple[int, int]], k: int, *, confidence: float = 0.95,
                         resamples: int = 2000, seed: int = 0) -> Interval:
    """pass^k with a percentile bootstrap interval over cases."""
    return bootstrap_mean([pass_hat_k_case(n, c, k) for n, c in counts], confidence=confidence,
                          resamples=resamples, seed=seed)


def paired_bootstrap_diff(candidate: Sequence[float], baseline: Sequence[float], *, confidence: float = 0.95,
                          resamples: int = 2000, seed: int = 0) -> Interval:
    """Interval of mean(candidate - baseline), resampling the pairs (cases) together.

    Pairing is what absorbs per-case difficulty: a hard case is hard for both
    versions, so only the difference on it counts. The interval is two-sided
    at ``confidence``; its low end is a one-sided bound at (1+confidence)/2."""
    if len(candidate) != len(baseline):
        raise ValueError("paired samples must have the same length")
    return bootstrap_mean([c - b for c, b in zip(candidate, baseline)], confidence=confidence,
                          resamples=resamples, seed=seed)


def mcnemar_exact(worse: int, better: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse.

    ``worse``: pairs the baseline passed and the candidate failed; ``better``
    the reverse. Under no difference each discordant pair is a fair coin, so
    the p-value is P(Binomial(worse+better, 1/2) >= worse). Concordant pairs
    carry no information and do not enter."""
    n = worse + better
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(worse, n + 1)) / 2 ** n


Verdict = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class NonInferiority:
    """The paired comparison of one metric; see :func:`non_inferiority`."""

    metric: str
    verdict: Verdict
    diff: Interval
    margin: float
    pairs: int
    p_worse: float | None = None  # McNemar, pass/fail metrics only
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "verdict": self.verdict, "diff": self.diff.to_dict(), "margin": self.margin,
                "pairs": self.pairs, "p_worse": self.p_worse, "reason": self.reason}


def non_inferiority(metric: str, candidate: Sequence[float], baseline: Sequence[float], *, margin: float,
                    confidence: float = 0.95, min_pairs: int = 10, seed: int = 0,
                    discordant: tuple[int, int] | None = None) -> NonInferiority:
    """Is the candidate no worse than the baseline by more than ``margin``?

    ``candidate``/``baseline``: per-case scores in the same case order.
    ``discordant``: (worse, better) run pairs for a pass/fail metric, for McNemar.

    - pass: the one-sided lower confidence bound of the difference is >= -margin;
    - fail: the difference is below -margin and the data says so: the upper
      bound is below -margin, or (pass/fail) McNemar finds the candidate worse
      at 1-confidence;
    - inconclusive otherwise, and always with fewer than ``min_pairs`` cases:
      the sample cannot tell "no worse" from "worse". That is not a pass; the
      remedy is more cases or more runs per case (``--runs``).
    """
    two_sided = 2 * confidence - 1  # its low end is the one-sided bound at `confidence`
    diff = paired_bootstrap_diff(candidate, baseline, confidence=two_sided, seed=seed)
    p = mcnemar_exact(*discordant) if discordant is not None else None
    n = len(candidate)
    if n < min_pairs:
        return NonInferiority(metric, "inconclusive", diff, margin, n, p,
                              f"{n} paired cases, fewer than the {min_pairs} needed to decide")
    alpha = 1 - confidence
    if diff.low >= -margin:
        return NonInferiority(metric, "pass", diff, margin, n, p)
    if diff.high < -margin or (p is not None and p < alpha and diff.estimate < -margin):
        why = f"worse by {-diff.estimate:.3f} (allowed {margin:g})"
        if p is not None:
            why += f", McNemar p={p:.3g}"
        return NonInferiority(metric, "fail", diff, margin, n, p, why)
    return NonInferiority(metric, "inconclusive", diff, margin, n, p,
                          f"the {confidence:.0%} bound {diff.low:+.3f} reaches below -{margin:g}; "
                          "add cases or runs to decide")


@dataclass(frozen=True)
class Drift:
    drifted: bool
    baseline_mean: float
    window_mean: float
    diff: Interval
    threshold: float


def detect_drift(baseline: Sequence[float], window: Sequence[float], *, threshold: float,
                 confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Drift:
    """Has the moving window's mean dropped more than ``threshold`` below the
    baseline window's? Unpaired (different tasks), so each window is
    resampled on its own; drift is declared only when the whole interval of
    the drop lies beyond the threshold, so a noisy small window does not alarm."""
    b = np.asarray(baseline, dtype=float)
    w = np.asarray(window, dtype=float)
    if b.size == 0 or w.size == 0:
        nan = float("nan")
        return Drift(False, nan, nan, Interval(nan, nan, nan, confidence), threshold)
    rng = _rng(seed)
    diffs = (w[rng.integers(0, w.size, size=(resamples, w.size))].mean(axis=1)
             - b[rng.integers(0, b.size, size=(resamples, b.size))].mean(axis=1))
    alpha = (1 - confidence) / 2
    est = float(w.mean() - b.mean())
    iv = Interval(est, float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)), confidence)
    return Drift(iv.high < -threshold, float(b.mean()), float(w.mean()), iv, threshold)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))
