"""An evaluation run as data (the JSON report and the stored baseline), and
its summary: pass@1, pass^k curves, the separate scores with intervals, cost
and latency. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from agentstream.runtime.evaluation import stats
from agentstream.runtime.evaluation.scoring import ObservedCall, OutcomeScore

RUN_SCHEMA = "agentstream.eval.run.v1"


class CaseRun(msgspec.Struct, frozen=True, kw_only=True):
    """One run of one case: its task, its scores, and the evidence they came from."""

    case_id: str
    run: int
    task_id: str
    score: OutcomeScore
    output: str
    status: str
    calls: tuple[ObservedCall, ...] = ()
    trace: str = ""  # how to see the task's trace


class EvalRun(msgspec.Struct, frozen=True, kw_only=True):
    schema: str = RUN_SCHEMA
    run_id: str
    dataset: str
    dataset_hash: str
    agent: str
    version: str
    behaviour_hash: str = ""
    model: str = ""
    runs_per_case: int
    seed: int
    started_at: float
    finished_at: float
    case_ids: tuple[str, ...]
    results: tuple[CaseRun, ...]
    judge_version: str = ""


# Per-case scores a run reports and a comparison pairs. "pass" is pass@1.
METRICS = ("pass@1", "action", "outcome", "groundedness", "safety", "within_budget", "judge")


@dataclass
class CaseSummary:
    case_id: str
    n: int
    c: int  # runs that passed
    means: dict[str, float | None]
    cost_usd: float  # mean per run
    latency_s: float  # mean per run
    tokens: float


@dataclass
class Summary:
    cases: list[CaseSummary]
    pass_k: dict[int, stats.Interval]  # k -> pass^k
    scores: dict[str, stats.Interval]  # metric -> mean over cases
    cost_total_usd: float
    cost_per_case_usd: float  # mean over cases of a case's mean cost per run
    cost_per_run_usd: float  # one pass over the dataset
    latency_p50_s: float
    latency_p95_s: float
    tokens_per_case: float
    runs: int
    failed_checks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "pass^k": {str(k): v.to_dict() for k, v in self.pass_k.items()},
            "scores": {m: v.to_dict() for m, v in self.scores.items()},
            "cost_total_usd": self.cost_total_usd, "cost_per_case_usd": self.cost_per_case_usd,
            "cost_per_run_usd": self.cost_per_run_usd, "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s, "tokens_per_case": self.tokens_per_case,
            "runs": self.runs, "failed_checks": self.failed_checks,
            "cases": [{"case_id": c.case_id, "n": c.n, "passed": c.c, "means": c.means, "cost_usd": c.cost_usd,
                       "latency_s": c.latency_s, "tokens": c.tokens} for c in self.cases],
        }


def _metric(score: OutcomeScore, metric: str) -> float | None:
    if metric == "pass@1":
        return None if score.passed is None else float(score.passed)
    if metric == "safety":
        return float(score.safety)
    if metric == "within_budget":
        return float(score.within_budget)
    value = getattr(score, metric)
    return None if value is None else float(value)


def by_case(run: EvalRun) -> dict[str, list[CaseRun]]:
    out: dict[str, list[CaseRun]] = defaultdict(list)
    for r in run.results:
        out[r.case_id].append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.run)
    return out


def case_summaries(run: EvalRun) -> list[CaseSummary]:
    grouped = by_case(run)
    out = []
    for cid in run.case_ids:
        rs = grouped.get(cid, [])
        if not rs:
            continue
        means: dict[str, float | None] = {}
        for m in METRICS:
            vals = [v for r in rs if (v := _metric(r.score, m)) is not None]
            means[m] = sum(vals) / len(vals) if vals else None
        out.append(CaseSummary(case_id=cid, n=len(rs), c=sum(bool(r.score.passed) for r in rs), means=means,
                               cost_usd=sum(r.score.cost_usd for r in rs) / len(rs),
                               latency_s=sum(r.score.latency_s for r in rs) / len(rs),
                               tokens=sum(r.score.tokens for r in rs) / len(rs)))
    return out


def summarize(run: EvalRun, *, confidence: float = 0.95) -> Summary:
    cases = case_summaries(run)
    counts = [(c.n, c.c) for c in cases]
    kmax = min((c.n for c in cases), default=0)
    pass_k = {k: stats.bootstrap_pass_hat_k(counts, k, confidence=confidence, seed=run.seed)
              for k in range(1, kmax + 1)}
    scores: dict[str, stats.Interval] = {}
    for m in METRICS:
        vals = [v for c in cases if (v := c.means[m]) is not None]
        if vals:
            scores[m] = stats.bootstrap_mean(vals, confidence=confidence, seed=run.seed)
    latencies = [r.score.latency_s for r in run.results]
    failed: dict[str, int] = defaultdict(int)
    for r in run.results:
        for chk in r.score.failed_checks:
            failed[chk.kind] += 1
    total = sum(r.score.cost_usd for r in run.results)
    return Summary(
        cases=cases, pass_k=pass_k, scores=scores, cost_total_usd=total,
        cost_per_case_usd=(sum(c.cost_usd for c in cases) / len(cases)) if cases else 0.0,
        cost_per_run_usd=total / run.runs_per_case if run.runs_per_case else total,
        latency_p50_s=stats.percentile(latencies, 50), latency_p95_s=stats.percentile(latencies, 95),
        tokens_per_case=(sum(c.tokens for c in cases) / len(cases)) if cases else 0.0,
        runs=len(run.results), failed_checks=dict(failed))


def paired_values(candidate: EvalRun, baseline: EvalRun, metric: str) -> tuple[list[float], list[float]]:
    """Per-case means of ``metric`` for the cases both runs have, in the candidate's order."""
    cand = {c.case_id: c for c in case_summaries(candidate)}
    base = {c.case_id: c for c in case_summaries(baseline)}
    xs, ys = [], []
    for cid in candidate.case_ids:
        if cid in cand and cid in base:
            a, b = cand[cid].means.get(metric), base[cid].means.get(metric)
            if a is not None and b is not None:
                xs.append(a)
                ys.append(b)
    return xs, ys


def discordant_pairs(candidate: EvalRun, baseline: EvalRun) -> tuple[int, int]:
    """(worse, better) over (case, run index) pairs: baseline passed and candidate
    failed, and the reverse. Runs of a case are exchangeable, so pairing them
    by index is as good as any pairing."""
    cand, base = by_case(candidate), by_case(baseline)
    worse = better = 0
    for cid, rs in cand.items():
        for a, b in zip(rs, base.get(cid, [])):
            if b.score.passed and not a.score.passed:
                worse += 1
            elif a.score.passed and not b.score.passed:
                better += 1
    return worse, better


def encode_run(run: EvalRun) -> bytes:
    return msgspec.json.encode(run)


def decode_run(raw: bytes | str) -> EvalRun:
    return msgspec.json.decode(raw, type=EvalRun)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
