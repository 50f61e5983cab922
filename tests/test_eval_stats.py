"""The evaluation statistics: pass^k against brute force, McNemar, the
non-inferiority verdicts, drift."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentstream.runtime.evaluation import stats


def brute_force_pass_k(outcomes: list[list[bool]], k: int) -> float:
    """Mean over cases of: over every k-subset of the case's runs, the share where all pass."""
    per_case = []
    for runs in outcomes:
        subsets = list(itertools.combinations(runs, k))
        per_case.append(sum(all(s) for s in subsets) / len(subsets))
    return sum(per_case) / len(per_case)


cases_st = st.integers(min_value=1, max_value=6).flatmap(
    lambda n: st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=1, max_size=6))


@given(outcomes=cases_st, data=st.data())
def test_pass_hat_k_equals_brute_force_enumeration(outcomes: list[list[bool]], data: st.DataObject) -> None:
    n = len(outcomes[0])
    k = data.draw(st.integers(min_value=1, max_value=n))
    counts = [(len(r), sum(r)) for r in outcomes]
    assert stats.pass_hat_k(counts, k) == pytest.approx(brute_force_pass_k(outcomes, k), abs=1e-12)


@given(outcomes=cases_st)
def test_pass_hat_k_never_rises_with_k_and_pass1_is_the_mean(outcomes: list[list[bool]]) -> None:
    counts = [(len(r), sum(r)) for r in outcomes]
    n = len(outcomes[0])
    curve = [stats.pass_hat_k(counts, k) for k in range(1, n + 1)]
    assert all(a >= b - 1e-12 for a, b in zip(curve, curve[1:]))
    assert curve[0] == pytest.approx(sum(c / m for m, c in counts) / len(counts))


def test_pass_hat_k_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        stats.pass_hat_k_case(3, 4, 1)
    with pytest.raises(ValueError):
        stats.pass_hat_k_case(3, 1, 4)


def test_mcnemar_exact_matches_the_binomial_tail() -> None:
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(7, 0) == pytest.approx(1 / 128)
    assert stats.mcnemar_exact(5, 5) == pytest.approx(sum(math.comb(10, i) for i in range(5, 11)) / 1024)
    # More "worse" pairs, smaller p; "better" pairs are no evidence of worse.
    assert stats.mcnemar_exact(8, 2) < stats.mcnemar_exact(6, 4) < stats.mcnemar_exact(2, 8)


def test_bootstrap_is_seeded() -> None:
    xs = [0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 1.0]
    assert stats.bootstrap_mean(xs, seed=3) == stats.bootstrap_mean(xs, seed=3)
    iv = stats.bootstrap_mean(xs, seed=3)
    assert iv.low <= iv.estimate <= iv.high


def test_non_inferiority_three_verdicts() -> None:
    same = [1.0] * 20
    assert stats.non_inferiority("pass@1", same, same, margin=0.05).verdict == "pass"
    worse = [0.0] * 8 + [1.0] * 12
    res = stats.non_inferiority("pass@1", worse, same, margin=0.1, discordant=(8, 0))
    assert res.verdict == "fail" and res.p_worse is not None and res.p_worse < 0.01
    # A little worse on few informative pairs: cannot tell, and that is not a pass.
    slightly = [0.0] * 2 + [1.0] * 18
    res = stats.non_inferiority("pass@1", slightly, same, margin=0.05, discordant=(2, 0))
    assert res.verdict == "inconclusive"


def test_too_few_cases_is_inconclusive_even_when_identical() -> None:
    res = stats.non_inferiority("action", [1.0] * 5, [1.0] * 5, margin=0.1, min_pairs=10)
    assert res.verdict == "inconclusive" and "fewer than the 10" in res.reason


def test_drift_needs_the_whole_interval_beyond_the_threshold() -> None:
    base = [1.0, 1.0, 0.0, 1.0] * 25
    assert not stats.detect_drift(base, [1.0, 0.0, 1.0, 1.0] * 25, threshold=0.1).drifted
    assert stats.detect_drift(base, [0.0, 0.0, 1.0, 0.0] * 25, threshold=0.1).drifted
    # Two bad results are not enough to alarm.
    assert not stats.detect_drift(base, [0.0, 1.0], threshold=0.1).drifted
