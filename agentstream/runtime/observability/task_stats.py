"""Latency, error and cost statistics over spans and results: percentiles per
agent, model and tool, error kinds, histograms, cost over time, and their
terminal and JSON renderings."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentstream.contracts.events import (
    TaskFailed,
    TaskResult,
)
from agentstream.contracts.telemetry import SpanRecord
from agentstream.runtime.config.settings import parse_duration as _parse_seconds
from agentstream.runtime.observability.waterfall import (
    PRICES_HINT,
    _attr,
    _chat_model,
    _money,
    _num,
    _op,
    _suffix,
    _task_of,
    error_type,
    is_error,
    is_unpriced,
)

# =========================================================================== stats


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks
    (numpy's default). NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Latency:
    count: int
    p50: float  # seconds; NaN without samples
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        if not samples:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(len(samples), percentile(samples, 50), percentile(samples, 95), percentile(samples, 99),
                   sum(samples) / len(samples), max(samples))


@dataclass(frozen=True)
class GroupStats:
    """One agent, tool or model."""

    name: str
    count: int
    errors: int
    latency: Latency
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    durations: tuple[float, ...] = field(default=(), repr=False)  # seconds, for histograms

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    @property
    def cost_per_call(self) -> float:
        return self.cost_usd / self.count if self.count else 0.0


@dataclass(frozen=True)
class ErrorKind:
    scope: str  # task | tool | model
    kind: str
    count: int
    rate: float  # count / calls of that scope


@dataclass(frozen=True)
class Stats:
    tasks: int
    tasks_failed: int
    task_cost_total: float
    task_cost_mean: float
    agents: list[GroupStats]
    tools: list[GroupStats]
    models: list[GroupStats]
    errors: list[ErrorKind]
    spans: int
    since_s: float | None = None
    # Models that used tokens and cost nothing: no price configured (shown as "unpriced", not $0).
    unpriced_models: tuple[str, ...] = ()
    # (agent, model, turns): the agent's last turns offered tools and called none.
    tools_unused: tuple[tuple[str, str, int], ...] = ()

    @property
    def task_error_rate(self) -> float:
        return self.tasks_failed / self.tasks if self.tasks else 0.0

    @property
    def tool_calls(self) -> int:
        return sum(t.count for t in self.tools)

    @property
    def tool_errors(self) -> int:
        return sum(t.errors for t in self.tools)

    @property
    def model_calls(self) -> int:
        return sum(m.count for m in self.models)


@dataclass
class _Acc:
    durations: list[float] = field(default_factory=list)
    errors: int = 0
    cost: float = 0.0
    tin: int = 0
    tout: int = 0

    def done(self, name: str) -> GroupStats:
        return GroupStats(name=name, count=len(self.durations), errors=self.errors,
                          latency=Latency.of(self.durations), cost_usd=self.cost, input_tokens=self.tin,
                          output_tokens=self.tout, durations=tuple(self.durations))


def compute_stats(spans: Sequence[SpanRecord], results: Sequence[TaskResult], *,
                  since_s: float | None = None) -> Stats:
    """Latency percentiles, error rates and cost per agent, tool and model.

    Tasks come from results; a task with an ``invoke_agent`` span but no result in
    the window counts from its span (its cost from the span, else from its model calls)."""
    agents: dict[str, _Acc] = defaultdict(_Acc)
    tools: dict[str, _Acc] = defaultdict(_Acc)
    models: dict[str, _Acc] = defaultdict(_Acc)
    errors: dict[tuple[str, str], int] = defaultdict(int)
    task_costs: list[float] = []
    failed = 0

    chat_cost_by_trace: dict[str, float] = defaultdict(float)
    for s in spans:
        op = _op(s)
        dur = max(0.0, s.end - s.start)
        if op == "execute_tool":
            name = str(_attr(s, "gen_ai.tool.name", "") or _suffix(s))
            acc = tools[name]
            acc.durations.append(dur)
            if is_error(s):
                acc.errors += 1
                errors[("tool", error_type(s) or "error")] += 1
        elif op == "chat":
            name = str(_attr(s, "gen_ai.response.model", "") or _attr(s, "gen_ai.request.model", "") or _suffix(s))
            acc = models[name]
            acc.durations.append(dur)
            cost = _num(_attr(s, "agentstream.cost_usd", 0))
            acc.cost += cost
            acc.tin += int(_num(_attr(s, "gen_ai.usage.input_tokens", 0)))
            acc.tout += int(_num(_attr(s, "gen_ai.usage.output_tokens", 0)))
            chat_cost_by_trace[s.trace_id] += cost
            if is_error(s):
                acc.errors += 1
                errors[("model", error_type(s) or "error")] += 1

    seen: set[str] = set()
    for r in results:
        if r.task_id in seen:
            continue
        seen.add(r.task_id)
        acc = agents[r.agent]
        acc.durations.append(max(0.0, r.finished_at - r.started_at))
        acc.cost += r.usage.cost_usd
        acc.tin += r.usage.input_tokens
        acc.tout += r.usage.output_tokens
        task_costs.append(r.usage.cost_usd)
        if isinstance(r, TaskFailed):
            acc.errors += 1
            failed += 1
            errors[("task", r.reason or "error")] += 1
    for s in spans:
        if _op(s) != "invoke_agent":
            continue
        task = _task_of(s) or s.span_id
        if task in seen:
            continue
        seen.add(task)
        name = str(_attr(s, "gen_ai.agent.name", "") or _suffix(s))
        acc = agents[name]
        acc.durations.append(max(0.0, s.end - s.start))
        cost = _attr(s, "agentstream.cost_usd")
        c = _num(cost) if cost is not None else chat_cost_by_trace.get(s.trace_id, 0.0)
        acc.cost += c
        task_costs.append(c)
        if is_error(s):
            acc.errors += 1
            failed += 1
            errors[("task", error_type(s) or "error")] += 1

    scope_total = {"task": len(task_costs), "tool": sum(len(a.durations) for a in tools.values()),
                   "model": sum(len(a.durations) for a in models.values())}
    kinds = [ErrorKind(scope, kind, n, n / scope_total[scope] if scope_total[scope] else 0.0)
             for (scope, kind), n in errors.items()]
    kinds.sort(key=lambda e: (-e.count, e.scope, e.kind))

    def groups(d: dict[str, _Acc]) -> list[GroupStats]:
        return sorted((a.done(n) for n, a in d.items()), key=lambda g: (-g.count, g.name))

    total = sum(task_costs)
    unused = _tools_unused(spans)
    unpriced = tuple(sorted(n for n, a in models.items() if is_unpriced(n, a.tin + a.tout, a.cost)))
    return Stats(tasks=len(task_costs), tasks_failed=failed, task_cost_total=total,
                 task_cost_mean=total / len(task_costs) if task_costs else 0.0, agents=groups(agents),
                 tools=groups(tools), models=groups(models), errors=kinds, spans=len(spans), since_s=since_s,
                 unpriced_models=unpriced, tools_unused=unused)


# `stats` warns about an agent whose model was offered tools at the start of at
# least this many tasks (counted up to TOOLS_UNUSED_TURNS) since it last called one.
TOOLS_UNUSED_MIN_TURNS = 5


def _tools_unused(spans: Sequence[SpanRecord]) -> tuple[tuple[str, str, int], ...]:
    from agentstream.runtime.observability.instrumentation import TOOLS_UNUSED_TURNS

    offered: dict[str, list[SpanRecord]] = defaultdict(list)
    for s in spans:
        if _op(s) == "chat" and _num(_attr(s, "agentstream.tools_offered", 0)) > 0:
            offered[str(_attr(s, "gen_ai.agent.name", "") or "?")].append(s)
    out = []
    for agent, chats in sorted(offered.items()):
        since: list[SpanRecord] = []  # opening turns after the last turn that called a tool
        for s in sorted(chats, key=lambda s: s.end):
            if _num(_attr(s, "agentstream.tool_calls", 0)):
                since = []
            elif _attr(s, "agentstream.opening_turn", False):
                since.append(s)
        since = since[-TOOLS_UNUSED_TURNS:]
        if len(since) >= TOOLS_UNUSED_MIN_TURNS:
            out.append((agent, _chat_model(since[-1]), len(since)))
    return tuple(out)


def _lat(v: float) -> str:
    if math.isnan(v):
        return "-"
    if v < 0.01:
        return f"{v * 1000:.1f} ms"
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = [(lambda s, w=w: f"{s:<{w}}") if i == 0 else (lambda s, w=w: f"{s:>{w}}") for i, w in enumerate(widths)]
    out = ["  " + "  ".join(f(h) for f, h in zip(fmt, header))]
    out += ["  " + "  ".join(f(str(c)) for f, c in zip(fmt, r)) for r in rows]
    return out


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def render_stats(stats: Stats) -> str:
    window = f" in the last {format_duration(stats.since_s)}" if stats.since_s else ""
    unpriced = set(stats.unpriced_models)
    # All cost unknown: say so instead of a $0 that reads as free.
    money = (lambda v: "unpriced" if v == 0 else _money(v)) if unpriced else _money
    cost = (f"cost unpriced ({', '.join(sorted(unpriced))})" if unpriced and stats.task_cost_total == 0 else
            f"cost {_money(stats.task_cost_total)} total, {_money(stats.task_cost_mean)} per task"
            + (f" + unpriced {', '.join(sorted(unpriced))}" if unpriced else ""))
    lines = [f"{stats.tasks} tasks{window}: {stats.tasks - stats.tasks_failed} completed, {stats.tasks_failed} failed "
             f"(error rate {stats.task_error_rate:.1%}); {cost}; {stats.model_calls} model calls, "
             f"{stats.tool_calls} tool calls ({stats.spans} spans)"]
    if unpriced:
        lines.append(f"unpriced models (no price configured): {', '.join(sorted(unpriced))}; "
                     + PRICES_HINT.replace("MODEL", sorted(unpriced)[0]))
    for agent, model, turns in stats.tools_unused:
        lines.append(f"warning: agent {agent}: model {model} was offered tools at the start of its last {turns} tasks and called "
                     "none; it may not support tool calling (agentstream doctor)")
    if not stats.tasks and not stats.spans:
        lines.append("(no tasks or spans in this window)")
        return "\n".join(lines)
    if stats.agents:
        lines += ["", "agents (task latency)"]
        lines += _table(["agent", "tasks", "p50", "p95", "p99", "errors", "err%", "cost", "cost/task"],
                        [[g.name, str(g.count), _lat(g.latency.p50), _lat(g.latency.p95), _lat(g.latency.p99),
                          str(g.errors), f"{g.error_rate:.1%}", money(g.cost_usd), money(g.cost_per_call)]
                         for g in stats.agents])
    if stats.models:
        lines += ["", "models (chat latency)"]
        lines += _table(["model", "calls", "p50", "p95", "p99", "errors", "err%", "in tok", "out tok", "cost"],
                        [[g.name, str(g.count), _lat(g.latency.p50), _lat(g.latency.p95), _lat(g.latency.p99),
                          str(g.errors), f"{g.error_rate:.1%}", str(g.input_tokens), str(g.output_tokens),
                          "unpriced" if g.name in unpriced else _money(g.cost_usd)] for g in stats.models])
    if stats.tools:
        lines += ["", "tools (execute_tool latency; tools have no cost)"]
        lines += _table(["tool", "calls", "p50", "p95", "p99", "errors", "err%"],
                        [[g.name, str(g.count), _lat(g.latency.p50), _lat(g.latency.p95), _lat(g.latency.p99),
                          str(g.errors), f"{g.error_rate:.1%}"] for g in stats.tools])
    lines += ["", "errors by kind"]
    if stats.errors:
        lines += _table(["scope", "kind", "count", "rate"],
                        [[e.scope, e.kind, str(e.count), f"{e.rate:.1%}"] for e in stats.errors])
    else:
        lines.append("  (none)")
    return "\n".join(lines)


def histogram(samples: Sequence[float], bins: int = 12) -> dict[str, list[float]]:
    """Equal-width histogram of durations in seconds -> edges (ms) and counts."""
    if not samples:
        return {"edges_ms": [], "counts": []}
    lo, hi = min(samples), max(samples)
    if hi - lo < 1e-9:
        return {"edges_ms": [lo * 1000, hi * 1000 + 1], "counts": [len(samples)]}
    step = (hi - lo) / bins
    counts = [0] * bins
    for v in samples:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    return {"edges_ms": [(lo + i * step) * 1000 for i in range(bins + 1)], "counts": [float(c) for c in counts]}


def time_series(results: Sequence[TaskResult], since_s: float, *, now: float | None = None,
                buckets: int = 24) -> list[dict[str, float]]:
    """Per time bucket: tasks, failed, cost, error rate (by finish time)."""
    now = time.time() if now is None else now
    start = now - since_s
    step = since_s / buckets
    rows = [{"t": start + i * step, "tasks": 0.0, "failed": 0.0, "cost_usd": 0.0, "error_rate": 0.0}
            for i in range(buckets)]
    for r in results:
        i = int((r.finished_at - start) / step)
        if 0 <= i < buckets:
            rows[i]["tasks"] += 1
            rows[i]["cost_usd"] += r.usage.cost_usd
            rows[i]["failed"] += isinstance(r, TaskFailed)
    for row in rows:
        row["error_rate"] = row["failed"] / row["tasks"] if row["tasks"] else 0.0
    return rows


# =========================================================================== CLI glue

def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``1h``, ``2d`` (or bare seconds) -> seconds, more than zero. ValueError otherwise.

    The syntax is the settings' one; a look-back window must also be positive."""
    value = _parse_seconds(text)
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"invalid duration {text!r}: must be more than zero")
    return value


def stats_json(stats: Stats) -> dict[str, Any]:
    def nan(v: float) -> float | None:
        return None if math.isnan(v) else v

    def group(g: GroupStats) -> dict[str, Any]:
        lat = g.latency
        return {"name": g.name, "count": g.count, "errors": g.errors, "error_rate": g.error_rate,
                "p50_s": nan(lat.p50), "p95_s": nan(lat.p95), "p99_s": nan(lat.p99), "mean_s": nan(lat.mean),
                "max_s": nan(lat.max), "cost_usd": g.cost_usd, "input_tokens": g.input_tokens,
                "output_tokens": g.output_tokens, "unpriced": g.name in stats.unpriced_models}

    return {"since_s": stats.since_s, "tasks": stats.tasks, "tasks_failed": stats.tasks_failed,
            "task_error_rate": stats.task_error_rate, "task_cost_total": stats.task_cost_total,
            "task_cost_mean": stats.task_cost_mean, "spans": stats.spans, "tool_calls": stats.tool_calls,
            "tool_errors": stats.tool_errors, "model_calls": stats.model_calls,
            "agents": [group(g) for g in stats.agents], "tools": [group(g) for g in stats.tools],
            "models": [group(g) for g in stats.models], "unpriced_models": list(stats.unpriced_models),
            "prices_hint": PRICES_HINT if stats.unpriced_models else "",
            "tools_unused": [{"agent": a, "model": m, "turns": n} for a, m, n in stats.tools_unused],
            "errors": [{"scope": e.scope, "kind": e.kind, "count": e.count, "rate": e.rate} for e in stats.errors]}
