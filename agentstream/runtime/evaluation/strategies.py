"""Comparing strategies (ReAct, plan-first, routed) with evaluation runs, and
calibrating the router's threshold on them. Pure: the runs come from the
harness (``agentstream eval calibrate-router``, ``bench/strategies.py``).

- :func:`split`: a deterministic calibration / held-out split of the cases,
  per dataset (so each dataset is represented in both parts), keyed by the
  seed and the case id: adding a case never reshuffles the others.
- :func:`better`: which strategy did better on one case: success first,
  then cost (USD, or tokens when the model is unpriced), then latency; a
  difference within ``tolerance`` is a tie, and a tie goes to ReAct, the
  simpler strategy (complexity must earn its place).
- :func:`calibrate_router`: the router's threshold from the labelled
  calibration cases, and its accuracy on the held-out ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from agentstream.runtime.evaluation.dataset import Case, Dataset
from agentstream.runtime.evaluation.results import CaseSummary, EvalRun, case_summaries
from agentstream.runtime.planning.router import RouterPolicy, Strategy, calibrate, complexity, features, route


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


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def better(react: CaseSummary, plan: CaseSummary, *, tolerance: float = 0.05) -> tuple[Strategy, str]:
    """Which strategy did better on a case, and on what."""
    rs, ps = react.c / react.n, plan.c / plan.n
    if rs != ps:
        return ("plan" if ps > rs else "react"), "success"
    if (react.cost_usd or plan.cost_usd) and _rel(react.cost_usd, plan.cost_usd) > tolerance:
        return ("plan" if plan.cost_usd < react.cost_usd else "react"), "cost"
    if not (react.cost_usd or plan.cost_usd) and _rel(react.tokens, plan.tokens) > tolerance:
        return ("plan" if plan.tokens < react.tokens else "react"), "tokens"
    if _rel(react.latency_s, plan.latency_s) > tolerance:
        return ("plan" if plan.latency_s < react.latency_s else "react"), "latency"
    return "react", "tie"


def labels(react: EvalRun, plan: EvalRun, cases: Sequence[Case], *, tolerance: float = 0.05) -> list[Label]:
    """Each case that both runs have, labelled with the better strategy."""
    r = {c.case_id: c for c in case_summaries(react)}
    p = {c.case_id: c for c in case_summaries(plan)}
    out = []
    for case in cases:
        if case.id in r and case.id in p:
            which, why = better(r[case.id], p[case.id], tolerance=tolerance)
            out.append(Label(case_id=case.id, input=case.input, better=which, why=why))
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
            lines.append(f"  {mark} {complexity(features(lb.input)):5.2f}  {lb.better:5} ({lb.why:7})  "
                         f"{d.strategy:5}  {lb.case_id}")
        lines += ["", f"declare: app.agent(..., strategy=\"routed\", router_threshold={self.policy.threshold:.2f})"]
        return "\n".join(lines) + "\n"


def calibrate_router(calibration: Sequence[Label], held_out: Sequence[Label]) -> Calibration:
    policy = calibrate([(lb.input, lb.better) for lb in calibration])
    return Calibration(policy=policy, calibration=list(calibration), held_out=list(held_out),
                       calibration_accuracy=accuracy(policy, calibration),
                       held_out_accuracy=accuracy(policy, held_out),
                       always_react_accuracy=(sum(lb.better == "react" for lb in held_out) / len(held_out)
                                              if held_out else float("nan")))
