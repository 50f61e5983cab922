"""Comparing production with a shadow, knowing that agents are noisy. Pure.

Diffy's idea, applied to agents: an LLM agent does not agree with itself from
one run to the next, so "the candidate answered differently" proves little.
A second shadow of the *production* version measures that noise on the same
traffic. A candidate is flagged only where its disagreement with production
exceeds production's disagreement with itself, by more than the sampling
error (a 95 % interval on the difference of the two rates).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from agentstream.contracts.events import TaskCompleted, TaskFailed, ToolCallDispatched

Z95 = 1.959963984540054
MIN_PAIRS = 20  # below this many paired tasks a verdict is "inconclusive"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """One deployment's outcome of one task, as the comparator keeps it."""

    label: str  # "" = production
    version: str  # agent_version label
    version_hash: str
    status: Literal["completed", "failed"]
    reason: str = ""
    output: str = ""
    tools: tuple[str, ...] = ()  # per call, "name(canonical args)", in dispatch order
    latency_s: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0
    strategy: str = ""  # react | plan: what ran (a routed agent's choice per task); "" in older records


class PairRecord(msgspec.Struct, kw_only=True):
    agent: str
    task_id: str
    production: Outcome | None = None
    shadows: dict[str, Outcome] = {}


_record_decoder = msgspec.json.Decoder(PairRecord)


def decode_record(raw: bytes) -> PairRecord:
    return _record_decoder.decode(raw)


def encode_record(rec: PairRecord) -> bytes:
    return msgspec.json.encode(rec)


def canonical_args(arguments: str | dict[str, object]) -> str:
    """A tool call's arguments as sorted compact JSON; the model's raw text if it is not JSON."""
    value: object = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except ValueError:
            return arguments.strip()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tool_signature(dispatches: Iterable[ToolCallDispatched]) -> tuple[str, ...]:
    """Tool calls in dispatch order; within one turn sorted (the model's order
    of parallel calls carries no meaning)."""
    out: list[str] = []
    for d in sorted(dispatches, key=lambda d: d.step):
        out.extend(sorted(f"{c.name}({canonical_args(c.arguments)})" for c in d.calls))
    return tuple(out)


def outcome_of(result: TaskCompleted | TaskFailed, *, label: str,
               dispatches: Iterable[ToolCallDispatched] = (), strategy: str = "") -> Outcome:
    usage = result.usage
    return Outcome(label=label, version=result.agent_version, version_hash=result.version_hash,
                   status="completed" if isinstance(result, TaskCompleted) else "failed",
                   reason="" if isinstance(result, TaskCompleted) else result.reason,
                   output=result.output if isinstance(result, TaskCompleted) else result.message,
                   tools=tool_signature(dispatches), latency_s=max(0.0, result.finished_at - result.started_at),
                   tokens=usage.input_tokens + usage.output_tokens, cost_usd=usage.cost_usd, strategy=strategy)


_WORDS = re.compile(r"[\w$.%-]+")


def normalise(text: str) -> str:
    """Case, whitespace and punctuation do not make two answers different."""
    return " ".join(w.strip(".").lower() for w in _WORDS.findall(text) if w.strip("."))


class Agreement(msgspec.Struct, frozen=True, kw_only=True):
    status: bool
    answer: bool
    tools: bool

    @property
    def overall(self) -> bool:
        return self.status and self.answer and self.tools


def agreement(a: Outcome, b: Outcome) -> Agreement:
    return Agreement(status=a.status == b.status and a.reason == b.reason,
                     answer=normalise(a.output) == normalise(b.output), tools=a.tools == b.tools)


# ----------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (good at 0 and 1, unlike Wald)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact at the ends: rounding must not put 1/1 outside its own interval.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid score interval (method 10), for two
    independent proportions: (difference, low, high)."""
    p1 = k1 / n1 if n1 else 0.0
    p2 = k2 / n2 if n2 else 0.0
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, low), min(1.0, high)


# ----------------------------------------------------------------- the report


class Rate(msgspec.Struct, frozen=True, kw_only=True):
    agree: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.agree / self.n if self.n else float("nan")


def _rate(flags: Sequence[bool]) -> Rate:
    k, n = sum(flags), len(flags)
    low, high = wilson(k, n)
    return Rate(agree=k, n=n, low=low, high=high)


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    kind: Literal["regression", "tools", "answer", "status", "improvement"]
    production: Outcome
    candidate: Outcome


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    latency_p50_s: tuple[float, float]  # production, candidate
    tokens_mean: tuple[float, float]
    cost_mean: tuple[float, float]
    failed: tuple[int, int]


class StrategySplit(msgspec.Struct, frozen=True, kw_only=True):
    """The pairs where the candidate ran one strategy (a routed candidate
    chooses per task): how it compared with production there."""

    strategy: str
    pairs: int
    overall: Rate
    answer: Rate
    deltas: Delta


class ShadowReport(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    candidate: str
    noise: str  # the shadow of production's own version, "" if none ran
    pairs: int
    overall: Rate
    answer: Rate
    tools: Rate
    status: Rate
    noise_overall: Rate | None
    # noise agreement - candidate agreement, with its 95 % interval
    excess: tuple[float, float, float] | None
    verdict: Literal["differs beyond noise", "within noise", "no differences", "differs (no noise estimate)",
                     "inconclusive"]
    deltas: Delta
    differences: tuple[Difference, ...]
    # Per strategy the candidate ran, when it ran more than one (or any but ReAct).
    by_strategy: tuple[StrategySplit, ...] = ()


_KIND_ORDER = {"regression": 0, "tools": 1, "status": 2, "answer": 3, "improvement": 4}


def _kind(prod: Outcome, cand: Outcome, agree: Agreement) -> str | None:
    if agree.overall:
        return None
    if prod.status == "completed" and cand.status == "failed":
        return "regression"
    if prod.status == "failed" and cand.status == "completed":
        return "improvement"
    if not agree.tools:
        return "tools"
    if not agree.status:
        return "status"
    return "answer"


def _median(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def noise_label(records: Iterable[PairRecord], *, agent: str, candidate: str) -> str:
    """A shadow running production's own version (same label as production's
    answers): the noise estimate, when the user named none."""
    for rec in records:
        if rec.agent != agent or rec.production is None:
            continue
        for label, out in sorted(rec.shadows.items()):
            if label != candidate and out.version == rec.production.version:
                return label
    return ""


def shadow_report(records: Iterable[PairRecord], *, agent: str, candidate: str, noise: str = "",
                  min_pairs: int = MIN_PAIRS) -> ShadowReport:
    """Agreement of ``candidate`` with production over the tasks both answered,
    against the ``noise`` shadow's (production's version run again) where it exists."""
    flags: list[Agreement] = []
    noise_flags: list[bool] = []
    diffs: list[Difference] = []
    prods: list[Outcome] = []
    cands: list[Outcome] = []
    for rec in records:
        if rec.agent != agent or rec.production is None:
            continue
        prod = rec.production
        cand = rec.shadows.get(candidate)
        if noise and (twin := rec.shadows.get(noise)) is not None:
            noise_flags.append(agreement(prod, twin).overall)
        if cand is None:
            continue
        agree = agreement(prod, cand)
        flags.append(agree)
        prods.append(prod)
        cands.append(cand)
        kind = _kind(prod, cand, agree)
        if kind is not None:
            diffs.append(Difference(task_id=rec.task_id, kind=kind, production=prod, candidate=cand))  # type: ignore[arg-type]
    overall = _rate([f.overall for f in flags])
    noise_rate = _rate(noise_flags) if noise_flags else None
    excess = None
    if noise_rate is not None and overall.n:
        excess = newcombe(noise_rate.agree, noise_rate.n, overall.agree, overall.n)
    if overall.n < min_pairs or (noise and (noise_rate is None or noise_rate.n < min_pairs)):
        verdict = "inconclusive"
    elif excess is not None:
        verdict = "differs beyond noise" if excess[1] > 0 else "within noise"
    else:
        verdict = "no differences" if overall.agree == overall.n else "differs (no noise estimate)"
    diffs.sort(key=lambda d: (_KIND_ORDER[d.kind], d.task_id))
    splits: list[StrategySplit] = []
    strategies = sorted({c.strategy for c in cands if c.strategy})
    if strategies and strategies != ["react"]:
        for strategy in strategies:
            idx = [i for i, c in enumerate(cands) if c.strategy == strategy]
            splits.append(StrategySplit(
                strategy=strategy, pairs=len(idx), overall=_rate([flags[i].overall for i in idx]),
                answer=_rate([flags[i].answer for i in idx]),
                deltas=_deltas([prods[i] for i in idx], [cands[i] for i in idx])))
    return ShadowReport(agent=agent, candidate=candidate, noise=noise, pairs=overall.n, overall=overall,
                        answer=_rate([f.answer for f in flags]), tools=_rate([f.tools for f in flags]),
                        status=_rate([f.status for f in flags]), noise_overall=noise_rate, excess=excess,
                        verdict=verdict, deltas=_deltas(prods, cands), differences=tuple(diffs),  # type: ignore[arg-type]
                        by_strategy=tuple(splits))


def _deltas(prods: Sequence[Outcome], cands: Sequence[Outcome]) -> Delta:
    return Delta(latency_p50_s=(_median([p.latency_s for p in prods]), _median([c.latency_s for c in cands])),
                 tokens_mean=(_mean([p.tokens for p in prods]), _mean([c.tokens for c in cands])),
                 cost_mean=(_mean([p.cost_usd for p in prods]), _mean([c.cost_usd for c in cands])),
                 failed=(sum(p.status == "failed" for p in prods), sum(c.status == "failed" for c in cands)))


def _delta_line(dl: Delta) -> str:
    return (f"latency p50 {dl.latency_p50_s[0] * 1000:.0f} -> {dl.latency_p50_s[1] * 1000:.0f} ms; "
            f"tokens/task {dl.tokens_mean[0]:.0f} -> {dl.tokens_mean[1]:.0f}; "
            f"cost/task ${dl.cost_mean[0]:.4f} -> ${dl.cost_mean[1]:.4f}; failed {dl.failed[0]} -> {dl.failed[1]}")


def _pct(r: Rate) -> str:
    if not r.n:
        return "n/a (no pairs)"
    return f"{100 * r.rate:5.1f}%  [{100 * r.low:.1f}, {100 * r.high:.1f}]  ({r.agree}/{r.n})"


def render_report(rep: ShadowReport, *, limit: int = 20) -> str:
    lines = [f"shadow report: agent {rep.agent}, candidate {rep.candidate!r} against production"
             + (f", noise from shadow {rep.noise!r}" if rep.noise else ", no noise shadow"),
             f"paired tasks: {rep.pairs}",
             f"  agreement (all)     {_pct(rep.overall)}",
             f"  same answer         {_pct(rep.answer)}",
             f"  same tool calls     {_pct(rep.tools)}",
             f"  same status         {_pct(rep.status)}"]
    if rep.noise_overall is not None:
        lines.append(f"  noise: production vs itself {_pct(rep.noise_overall)}")
    if rep.excess is not None:
        ex, lo, hi = rep.excess
        lines.append(f"  excess disagreement (noise - candidate): {100 * ex:+.1f} points  [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    lines.append(f"  {_delta_line(rep.deltas)}")
    for sp in rep.by_strategy:
        lines.append(f"  where the candidate ran {sp.strategy} ({sp.pairs} tasks): agreement {_pct(sp.overall).strip()}, "
                     f"same answer {_pct(sp.answer).strip()}")
        lines.append(f"      {_delta_line(sp.deltas)}")
    lines.append(f"verdict: {rep.verdict}")
    if rep.differences:
        lines.append(f"differences ({len(rep.differences)}, regressions first):")
        for d in rep.differences[:limit]:
            lines.append(f"  [{d.kind}] task {d.task_id}: production {d.production.status}"
                         f"{'/' + d.production.reason if d.production.reason else ''} "
                         f"-> candidate {d.candidate.status}{'/' + d.candidate.reason if d.candidate.reason else ''}")
            if d.kind in ("tools", "regression") and d.production.tools != d.candidate.tools:
                lines.append(f"      tools: {', '.join(d.production.tools) or '-'}  ->  {', '.join(d.candidate.tools) or '-'}")
            if d.kind == "answer":
                lines.append(f"      answer: {d.production.output[:80]!r} -> {d.candidate.output[:80]!r}")
            lines.append(f"      agentstream trace {d.task_id}   |   agentstream shadow show {d.task_id} "
                         f"--agent {rep.agent} --candidate {rep.candidate}")
        if len(rep.differences) > limit:
            lines.append(f"  ... {len(rep.differences) - limit} more (--json for all)")
    return "\n".join(lines)
