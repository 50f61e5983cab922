"""Gates: what a run must reach for CI to go green. Pure.

A gate file (YAML)::

    thresholds:            # absolute: the score's point estimate must reach it
      pass@1: 0.9
      pass^3: 0.8
      action: 0.9
      safety: 1.0
    budgets:               # upper limits
      cost_per_case_usd: 0.01
      cost_per_run_usd: 0.2
      latency_p95_s: 5
      tokens_per_case: 4000
    non_inferiority:       # against a stored baseline, paired by case
      confidence: 0.95
      min_cases: 10
      on_inconclusive: fail   # or warn
      margins: {pass@1: 0.1, action: 0.05, outcome: 0.1}
      cost_growth: 0.25       # candidate cost per case at most 1.25x the baseline's
      latency_growth: 0.5

Thresholds compare point estimates, not interval bounds: they are the
team's floor on what was measured. Comparisons against a baseline use the
paired tests of :mod:`stats` and have three outcomes; "inconclusive" (the
sample cannot tell) fails the gate unless ``on_inconclusive: warn``, because
"could not tell" is not evidence of "no worse".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.evaluation import stats
from agentstream.runtime.evaluation.dataset import yaml_reason
from agentstream.runtime.evaluation.results import (
    METRICS,
    EvalRun,
    Summary,
    discordant_pairs,
    paired_values,
    summarize,
)


class NonInferioritySpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    confidence: float = 0.95
    min_cases: int = 10
    on_inconclusive: Literal["fail", "warn"] = "fail"
    margins: dict[str, float] = {}
    cost_growth: float | None = None
    latency_growth: float | None = None


class Budgets(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cost_per_case_usd: float | None = None
    cost_per_run_usd: float | None = None
    cost_total_usd: float | None = None
    latency_p95_s: float | None = None
    tokens_per_case: float | None = None


class GateSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    thresholds: dict[str, float] = {}
    budgets: Budgets = Budgets()
    non_inferiority: NonInferioritySpec | None = None


def _check_metric(name: str, source: str) -> None:
    if name in METRICS:
        return
    if name.startswith("pass^") and name[5:].isdigit() and int(name[5:]) >= 1:
        return
    raise ConfigError(f"{source}: unknown metric {name!r}; known: {', '.join(METRICS)}, pass^<k>")


def parse_gates(raw: Any, *, source: str) -> GateSpec:
    if raw is None:
        raw = {}
    try:
        spec = msgspec.convert(raw, GateSpec, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for name, value in spec.thresholds.items():
        _check_metric(name, source)
        if not 0 <= value <= 1:
            raise ConfigError(f"{source}: threshold {name}: {value} is not between 0 and 1")
    if spec.non_inferiority is not None:
        ni = spec.non_inferiority
        if not 0.5 < ni.confidence < 1:
            raise ConfigError(f"{source}: non_inferiority.confidence must be between 0.5 and 1")
        for name, margin in ni.margins.items():
            if name not in METRICS:
                raise ConfigError(f"{source}: non_inferiority.margins: unknown metric {name!r}")
            if margin < 0:
                raise ConfigError(f"{source}: non_inferiority.margins.{name} must be >= 0")
    return spec


def load_gates(path: str | Path) -> GateSpec:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read gate file {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {yaml_reason(exc)}") from None
    return parse_gates(raw, source=str(p))


GateStatus = Literal["pass", "fail", "inconclusive", "warn"]


@dataclass(frozen=True)
class GateResult:
    name: str
    status: GateStatus
    message: str

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "inconclusive")


@dataclass
class GateReport:
    results: list[GateResult] = field(default_factory=list)
    comparisons: list[stats.NonInferiority] = field(default_factory=list)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if r.failed]

    @property
    def ok(self) -> bool:
        return not self.failed


def _value(summary: Summary, metric: str) -> float | None:
    if metric.startswith("pass^"):
        iv = summary.pass_k.get(int(metric[5:]))
        return None if iv is None else iv.estimate
    iv = summary.scores.get(metric)
    return None if iv is None else iv.estimate


def evaluate_gates(spec: GateSpec, run: EvalRun, *, baseline: EvalRun | None = None,
                   summary: Summary | None = None) -> GateReport:
    summary = summary or summarize(run)
    report = GateReport()
    add = report.results.append
    for metric, floor in spec.thresholds.items():
        value = _value(summary, metric)
        if value is None:
            add(GateResult(metric, "fail", f"{metric}: not measured (needs more runs per case, a case "
                                           "expectation or a judge)"))
        elif value + 1e-12 < floor:
            add(GateResult(metric, "fail", f"{metric} {value:.3f} is below the threshold {floor:g}"))
        else:
            add(GateResult(metric, "pass", f"{metric} {value:.3f} >= {floor:g}"))
    b = spec.budgets
    for name, value, limit, unit in (
        ("cost_per_case_usd", summary.cost_per_case_usd, b.cost_per_case_usd, "$"),
        ("cost_per_run_usd", summary.cost_per_run_usd, b.cost_per_run_usd, "$"),
        ("cost_total_usd", summary.cost_total_usd, b.cost_total_usd, "$"),
        ("latency_p95_s", summary.latency_p95_s, b.latency_p95_s, "s"),
        ("tokens_per_case", summary.tokens_per_case, b.tokens_per_case, ""),
    ):
        if limit is None:
            continue
        shown = f"{unit}{value:.6g}" if unit == "$" else f"{value:.6g}{unit}"
        if math.isnan(value) or value > limit:
            add(GateResult(name, "fail", f"{name} {shown} is over the budget {limit:g}"))
        else:
            add(GateResult(name, "pass", f"{name} {shown} <= {limit:g}"))
    ni = spec.non_inferiority
    if ni is None:
        return report
    if baseline is None:
        add(GateResult("baseline", "fail", "the gate compares against a baseline, but none was given "
                                           "(--baseline VERSION or FILE; store one with --save-baseline)"))
        return report
    if baseline.dataset_hash != run.dataset_hash:
        add(GateResult("baseline", "fail", f"baseline {baseline.version} ran another dataset (hash "
                                           f"{baseline.dataset_hash[:12]}, this run {run.dataset_hash[:12]})"))
        return report
    for metric, margin in ni.margins.items():
        cand, base = paired_values(run, baseline, metric)
        disc = discordant_pairs(run, baseline) if metric == "pass@1" else None
        res = stats.non_inferiority(metric, cand, base, margin=margin, confidence=ni.confidence,
                                    min_pairs=ni.min_cases, seed=run.seed, discordant=disc)
        report.comparisons.append(res)
        head = f"{metric} vs {baseline.version}: diff {res.diff.estimate:+.3f} " \
               f"[{res.diff.low:+.3f}, {res.diff.high:+.3f}]"
        if res.verdict == "pass":
            add(GateResult(f"{metric} non-inferiority", "pass", f"{head}, within -{margin:g}"))
        elif res.verdict == "fail":
            add(GateResult(f"{metric} non-inferiority", "fail", f"{head}: regression, {res.reason}"))
        else:
            status: GateStatus = "warn" if ni.on_inconclusive == "warn" else "inconclusive"
            add(GateResult(f"{metric} non-inferiority", status, f"{head}: inconclusive, {res.reason}"))
    base_summary = summarize(baseline)
    for name, growth, cval, bval in (
        ("cost growth", ni.cost_growth, summary.cost_per_case_usd, base_summary.cost_per_case_usd),
        ("latency growth", ni.latency_growth, summary.latency_p95_s, base_summary.latency_p95_s),
    ):
        if growth is None:
            continue
        limit = bval * (1 + growth)
        if cval > limit + 1e-12:
            pct = (cval / bval - 1) * 100 if bval > 0 else math.inf
            add(GateResult(name, "fail", f"{name}: {cval:.6g} vs baseline {bval:.6g} (+{pct:.0f}%, allowed "
                                         f"+{growth * 100:.0f}%)"))
        else:
            add(GateResult(name, "pass", f"{name}: {cval:.6g} vs baseline {bval:.6g}"))
    return report
