"""Comparing strategies (ReAct, plan-first, routed) with evaluation runs, and
calibrating the router's threshold on them. Pure: the runs come from the
harness (``agentstream eval calibrate-router``, ``bench/strategies.py``).

- :func:`split`: a deterministic calibration / held-out split of the cases,
  per dataset (so each dataset is represented in both parts), keyed by the
  seed and the case id: adding a case never reshuffles the others.
- :func:`better`: which strategy did better on one case: success first,
  then cost (USD, or tokens when the model is unpriced), then latency; a
  difference within ``tolerance`` (``latency_tolerance`` for latency, which
  a shared machine makes noisy) is a tie, and a tie goes to ReAct, the
  simpler strategy (complexity must earn its place).
- :func:`calibrate_router`: the router's threshold from the labelled
  calibration cases, and its accuracy on the held-out ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from agentstream.runtime.evaluation import stats
from agentstream.runtime.evaluation.dataset import Case, Dataset
from agentstream.runtime.evaluation.results import (
    CaseSummary,
    EvalRun,
    by_case,
    case_summaries,
    discordant_pairs,
    paired_values,
    summarize,
)
from agentstream.runtime.planning.router import RouterPolicy, Strategy, calibrate, route


def split(datasets: Sequence[Dataset], held_out: float, seed: int) -> tuple[list[Dataset], list[Dataset]]:
    """(calibration part, held-out part) of every dataset: ``held_out`` of each
    dataset's cases (at least one, if it has two or more) are held out."""
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    cal: list[Dataset] = []
    hold: list[Dataset] = []
    for ds in datasets:
        ranked = sorted(ds.cases, key=lambda c: hashlib.sha256(f"{seed}:{ds.name}:{c.id}".encode()).hexdigest())
        n = min(max(1, round(held_out * len(ranked))), len(ranked) - 1) if len(ranked) > 1 else 0
        held_ids = {c.id for c in ranked[:n]}
        keep = [c for c in ds.cases if c.id not in held_ids]
        held = [c for c in ds.cases if c.id in held_ids]
        cal.append(_subset(ds, keep, "calibration"))
        if held:
            hold.append(_subset(ds, held, "held-out"))
    return cal, hold


def _subset(ds: Dataset, cases: list[Case], part: str) -> Dataset:
    return Dataset(name=f"{ds.name} ({part})", cases=tuple(cases), agent=ds.agent, description=ds.description,
                   budget=ds.budget)


@dataclass(frozen=True)
class Label:
    case_id: str
    input: str
    better: Strategy
    why: str  # success | cost | tokens | latency | tie
    # What each strategy did on the case (means over its runs): to estimate a routed mix.
    success: tuple[float, float] = (float("nan"), float("nan"))  # (react, plan)
    tokens: tuple[float, float] = (float("nan"), float("nan"))
    cost_usd: tuple[float, float] = (float("nan"), float("nan"))


@dataclass(frozen=True)
class Mix:
    """Mean success, tokens and cost per case of a routing, estimated from the
    ReAct and plan-first runs of the same cases (no run of its own)."""

    success: float
    tokens: float
    cost_usd: float


def mix(labelled: Sequence[Label], choose: Callable[[Label], Strategy]) -> Mix:
    if not labelled:
        nan = float("nan")
        return Mix(nan, nan, nan)
    picks = [(lb, 0 if choose(lb) == "react" else 1) for lb in labelled]
    n = len(picks)
    return Mix(success=sum(lb.success[i] for lb, i in picks) / n, tokens=sum(lb.tokens[i] for lb, i in picks) / n,
               cost_usd=sum(lb.cost_usd[i] for lb, i in picks) / n)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def better(react: CaseSummary, plan: CaseSummary, *, tolerance: float = 0.05,
           latency_tolerance: float = 0.2) -> tuple[Strategy, str]:
    """Which strategy did better on a case, and on what."""
    rs, ps = react.c / react.n, plan.c / plan.n
    if rs != ps:
        return ("plan" if ps > rs else "react"), "success"
    if (react.cost_usd or plan.cost_usd) and _rel(react.cost_usd, plan.cost_usd) > tolerance:
        return ("plan" if plan.cost_usd < react.cost_usd else "react"), "cost"
    if not (react.cost_usd or plan.cost_usd) and _rel(react.tokens, plan.tokens) > tolerance:
        return ("plan" if plan.tokens < react.tokens else "react"), "tokens"
    if _rel(react.latency_s, plan.latency_s) > latency_tolerance:
        return ("plan" if plan.latency_s < react.latency_s else "react"), "latency"
    return "react", "tie"


def labels(react: EvalRun, plan: EvalRun, cases: Sequence[Case], *, tolerance: float = 0.05) -> list[Label]:
    """Each case that both runs have, labelled with the better strategy."""
    r = {c.case_id: c for c in case_summaries(react)}
    p = {c.case_id: c for c in case_summaries(plan)}
    out = []
    for case in cases:
        if case.id in r and case.id in p:
            rc, pc = r[case.id], p[case.id]
            which, why = better(rc, pc, tolerance=tolerance)
            out.append(Label(case_id=case.id, input=case.input, better=which, why=why,
                             success=(rc.c / rc.n, pc.c / pc.n), tokens=(rc.tokens, pc.tokens),
                             cost_usd=(rc.cost_usd, pc.cost_usd)))
    return out


def accuracy(policy: RouterPolicy, labelled: Sequence[Label]) -> float:
    if not labelled:
        return float("nan")
    return sum(route(lb.input, policy).strategy == lb.better for lb in labelled) / len(labelled)


@dataclass(frozen=True)
class Calibration:
    policy: RouterPolicy
    calibration: list[Label]
    held_out: list[Label]
    calibration_accuracy: float
    held_out_accuracy: float
    always_react_accuracy: float  # the baseline a router must beat on the held-out part

    def held_out_mixes(self) -> dict[str, Mix]:
        """Always ReAct, always plan-first, and routed at the calibrated threshold,
        on the held-out cases: accuracy alone hides what a miss costs (a lost
        success weighs more than saved tokens); these do not."""
        return {"always ReAct": mix(self.held_out, lambda lb: "react"),
                "always plan-first": mix(self.held_out, lambda lb: "plan"),
                f"routed at {self.policy.threshold:.2f}": mix(
                    self.held_out, lambda lb: route(lb.input, self.policy).strategy)}

    def render(self) -> str:
        lines = [f"calibration cases: {len(self.calibration)} "
                 f"({sum(lb.better == 'plan' for lb in self.calibration)} better planned)",
                 f"held-out cases:    {len(self.held_out)} "
                 f"({sum(lb.better == 'plan' for lb in self.held_out)} better planned)",
                 f"threshold: {self.policy.threshold:.2f} (complexity at or above it plans first)",
                 f"accuracy: calibration {self.calibration_accuracy:.2f}, held-out {self.held_out_accuracy:.2f} "
                 f"(always ReAct on the held-out part: {self.always_react_accuracy:.2f})",
                 "", "held-out cases (complexity, better, routed):"]
        for lb in self.held_out:
            d = route(lb.input, self.policy)
            mark = "ok " if d.strategy == lb.better else "MISS"
            lines.append(f"  {mark} {d.score:5.2f}  {lb.better:5} ({lb.why:7})  "
                         f"{d.strategy:5}  {lb.case_id}")
        lines += ["", "on the held-out part, estimated from the same runs (success, tokens/case, cost/case):"]
        for name, m in self.held_out_mixes().items():
            lines.append(f"  {name:24} {m.success:5.2f}  {m.tokens:7.0f}  ${m.cost_usd:.5f}")
        lines += ["", f"declare: app.agent(..., strategy=\"routed\", router_threshold={self.policy.threshold:.2f})"]
        return "\n".join(lines) + "\n"


def calibrate_router(calibration: Sequence[Label], held_out: Sequence[Label]) -> Calibration:
    policy = calibrate([(lb.input, lb.better) for lb in calibration])
    return Calibration(policy=policy, calibration=list(calibration), held_out=list(held_out),
                       calibration_accuracy=accuracy(policy, calibration),
                       held_out_accuracy=accuracy(policy, held_out),
                       always_react_accuracy=(sum(lb.better == "react" for lb in held_out) / len(held_out)
                                              if held_out else float("nan")))


# ----------------------------------------------------------------- figures per strategy, paired with ReAct


def restrict(run: EvalRun, case_ids: Sequence[str]) -> EvalRun:
    """The same run, only these cases (the held-out part of a full run)."""
    keep = set(case_ids)
    return msgspec.structs.replace(run, case_ids=tuple(c for c in run.case_ids if c in keep),
                                   results=tuple(r for r in run.results if r.case_id in keep))


def _bootstrap_percentile(per_case: Sequence[Sequence[float]], q: float, *, seed: int, confidence: float = 0.95,
                          resamples: int = 1000) -> stats.Interval:
    """A latency percentile over every run, with an interval from resampling
    cases (a case's runs move together: they share the case's difficulty)."""
    flat = [v for vs in per_case for v in vs]
    est = stats.percentile(flat, q)
    if len(per_case) < 2:
        return stats.Interval(est, est, est, confidence)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(per_case), size=len(per_case))
        draws.append(float(np.percentile(np.concatenate([np.asarray(per_case[i], dtype=float) for i in idx]), q)))
    alpha = (1 - confidence) / 2
    return stats.Interval(est, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha)), confidence)


@dataclass(frozen=True)
class Figures:
    strategy: str
    dataset: str
    cases: int
    runs: int  # per case
    success: stats.Interval  # pass@1
    pass_k: stats.Interval  # pass^runs
    tokens: stats.Interval  # per case (mean over its runs)
    cost_usd: stats.Interval
    latency_p50_s: stats.Interval
    latency_p95_s: stats.Interval


def figures(run: EvalRun, strategy: str, *, seed: int = 0) -> Figures:
    s = summarize(run)
    cases = s.cases
    lat = [[r.score.latency_s for r in rs] for rs in by_case(run).values()]
    k = max(s.pass_k) if s.pass_k else 1
    nan = stats.Interval(float("nan"), float("nan"), float("nan"), 0.95)
    return Figures(strategy=strategy, dataset=run.dataset, cases=len(cases), runs=run.runs_per_case,
                   success=s.scores.get("pass@1", nan), pass_k=s.pass_k.get(k, nan),
                   tokens=stats.bootstrap_mean([c.tokens for c in cases], seed=seed),
                   cost_usd=stats.bootstrap_mean([c.cost_usd for c in cases], seed=seed),
                   latency_p50_s=_bootstrap_percentile(lat, 50, seed=seed),
                   latency_p95_s=_bootstrap_percentile(lat, 95, seed=seed))


def _ratio(candidate: Sequence[float], baseline: Sequence[float], *, seed: int,
           resamples: int = 2000) -> stats.Interval:
    """sum(candidate) / sum(baseline) over cases, paired bootstrap interval."""
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    est = float(c.sum() / b.sum()) if b.sum() else float("nan")
    if c.size < 2 or not b.sum():
        return stats.Interval(est, est, est, 0.95)
    idx = np.random.default_rng(seed).integers(0, c.size, size=(resamples, c.size))
    num, den = c[idx].sum(axis=1), b[idx].sum(axis=1)
    r = np.divide(num, den, out=np.full_like(num, np.nan), where=den != 0)
    return stats.Interval(est, float(np.nanquantile(r, 0.025)), float(np.nanquantile(r, 0.975)), 0.95)


@dataclass(frozen=True)
class Paired:
    """A strategy against ReAct on the same cases."""

    strategy: str
    cases: int
    success_diff: stats.Interval  # pass@1, candidate minus ReAct
    worse: int  # (case, run) pairs ReAct passed and the candidate failed
    better: int
    p_worse: float  # one-sided exact McNemar
    tokens_ratio: stats.Interval
    cost_ratio: stats.Interval
    latency_ratio: stats.Interval  # mean latency


def paired(candidate: EvalRun, react: EvalRun, strategy: str, *, seed: int = 0) -> Paired:
    xs, ys = paired_values(candidate, react, "pass@1")
    cand = {c.case_id: c for c in case_summaries(candidate)}
    base = {c.case_id: c for c in case_summaries(react)}
    ids = [cid for cid in candidate.case_ids if cid in cand and cid in base]
    worse, better_ = discordant_pairs(candidate, react)
    return Paired(strategy=strategy, cases=len(ids),
                  success_diff=stats.paired_bootstrap_diff(xs, ys, seed=seed), worse=worse, better=better_,
                  p_worse=stats.mcnemar_exact(worse, better_),
                  tokens_ratio=_ratio([cand[i].tokens for i in ids], [base[i].tokens for i in ids], seed=seed),
                  cost_ratio=_ratio([cand[i].cost_usd for i in ids], [base[i].cost_usd for i in ids], seed=seed),
                  latency_ratio=_ratio([cand[i].latency_s for i in ids], [base[i].latency_s for i in ids],
                                       seed=seed))


def _iv(i: stats.Interval, fmt: str = "{:.2f}") -> str:
    if i.estimate != i.estimate:  # nan
        return "n/a"
    return f"{fmt.format(i.estimate)} [{fmt.format(i.low)}, {fmt.format(i.high)}]"


def markdown_table(rows: Sequence[Figures], pairs: Sequence[Paired | None]) -> str:
    """One row per (dataset, strategy): the figures with 95% intervals and the
    paired comparison with ReAct on the same cases."""
    out = ["| dataset | strategy | cases x runs | success (pass@1) | pass^k | tokens/case | cost/case (USD) "
           "| latency p50 (s) | latency p95 (s) | vs ReAct: success diff | worse / better pairs "
           "| tokens x | cost x | latency x |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f, p in zip(rows, pairs):
        cmp = ("| | | | | |" if p is None else
               f"| {_iv(p.success_diff, '{:+.2f}')} | {p.worse} / {p.better} (p={p.p_worse:.2f}) "
               f"| {_iv(p.tokens_ratio)} | {_iv(p.cost_ratio)} | {_iv(p.latency_ratio)} |")
        out.append(f"| {f.dataset} | {f.strategy} | {f.cases} x {f.runs} | {_iv(f.success)} | {_iv(f.pass_k)} "
                   f"| {_iv(f.tokens, '{:.0f}')} | {_iv(f.cost_usd, '{:.5f}')} | {_iv(f.latency_p50_s)} "
                   f"| {_iv(f.latency_p95_s)} {cmp}")
    return "\n".join(out) + "\n"
