"""``agentstream eval``: the CLI face of :mod:`agentstream.runtime.evaluation`.

    agentstream eval DATASET [--agent support] [--version v2] [--runs k] [--gates FILE] [--baseline v1]
    agentstream eval calibrate LABELS [--judge-model NAME]
    agentstream eval calibrate-router DATASET... [--held-out 0.3] [--seed N] [--runs k]
    agentstream eval online [--agent support] [--sample 0.2]

One parser for the three: ``eval DATASET`` is the command users type most,
and argparse cannot give a subcommand a default. Exit codes: 0 all gates
pass, 1 a gate failed (one ``agentstream: gate failed: ...`` line each on
stderr) or the run could not be made, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentstream.runtime.config.auth import nats_auth
from agentstream.runtime.config.settings import Settings, broker_url
from agentstream.runtime.core.errors import AgentstreamError, ConfigError

if TYPE_CHECKING:  # imported when the command runs: every CLI start parses this module's arguments
    from agentstream.contracts.events import ApprovalRequested, TaskEvent
    from agentstream.runtime.core.ports import LLM
    from agentstream.runtime.evaluation.dataset import Dataset
    from agentstream.runtime.evaluation.judge import LLMJudge
    from agentstream.runtime.evaluation.results import EvalRun
    from agentstream.runtime.evaluation.runner import Judge, RunConfig
    from agentstream.runtime.interfaces.client import AgentClient

EXIT_GATE = 1
BASELINE_DIR = Path(".agentstream") / "baselines"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "eval", help="evaluate an agent on a dataset (real tasks on the bus), gate CI, calibrate the judge",
        description="agentstream eval DATASET: run every case as a real task, score it, report and gate. "
                    "agentstream eval calibrate LABELS: measure the LLM judge against human labels. "
                    "agentstream eval online: score live results as they arrive. See docs/evaluation.md.")
    p.add_argument("target", nargs="+", metavar="DATASET | calibrate LABELS | calibrate-router DATASET... | online",
                   help="a dataset (.yaml or .jsonl); or `calibrate LABELS`; or `calibrate-router DATASET...` "
                        "(the router's threshold from react and plan runs); or `online`")
    r = p.add_argument_group("run")
    r.add_argument("--agent", help="agent to evaluate (default: the dataset's, else 'support')")
    r.add_argument("--app", help="module:attribute of the App to run (default: AGENTSTREAM_APP, else the demo)")
    r.add_argument("--version", dest="label",
                   help="the declared version of the agent to run (e.g. plan, routed in the demo); any other "
                        "label only names the run and its stored baseline (default: the agent's version)")
    r.add_argument("--runs", type=_positive_int, default=1, help="runs per case (k for pass^k)")
    r.add_argument("--concurrency", type=_positive_int, default=8, help="tasks in flight at once")
    r.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds a task may take")
    r.add_argument("--seed", type=int, default=0, help="seed of every random draw (bootstrap resampling)")
    r.add_argument("--remote", action="store_true",
                   help="submit to the broker's running workers (AGENTSTREAM_NATS_URL or `up`'s) instead of "
                        "starting an embedded broker and workers in this process")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("gates and baselines")
    g.add_argument("--gates", help="gate file (YAML): thresholds, budgets, non-inferiority")
    g.add_argument("--baseline", help="compare against this stored version, or a run's JSON file")
    g.add_argument("--save-baseline", action="store_true", help="store this run as the baseline of its version")
    g.add_argument("--baseline-dir", default=str(BASELINE_DIR), help="where baselines are stored")
    o = p.add_argument_group("reports")
    o.add_argument("--json", dest="json_out", metavar="FILE", help="write the JSON report")
    o.add_argument("--markdown", metavar="FILE", help="write a Markdown report")
    o.add_argument("--html", metavar="FILE", help="write the HTML report (pass^k curves, per-case diffs)")
    o.add_argument("--junit", metavar="FILE", help="write JUnit XML for CI systems")
    c = p.add_argument_group("calibrate-router")
    c.add_argument("--held-out", type=_open_fraction, default=0.3,
                   help="share of each dataset's cases kept out of calibration to measure the router on")
    c.add_argument("--react-version", help="the version that runs ReAct (default: the agent's production version)")
    c.add_argument("--plan-version", default="plan", help="the version that plans first (default: plan)")
    j = p.add_argument_group("judge")
    j.add_argument("--judge", choices=("none", "scripted", "model"), default=None,
                   help="grade rubrics with: the judge model (model; AGENTSTREAM_JUDGE_MODEL or --judge-model), "
                        "the deterministic keyword judge (scripted), or not at all (none). Default: model "
                        "if one is configured, else scripted")
    j.add_argument("--judge-model", help="OpenAI-compatible model name for the judge (OPENAI_BASE_URL)")
    j.add_argument("--judge-cache", default=str(Path(".agentstream") / "judge-cache"),
                   help="directory of cached verdicts ('' for none)")
    on = p.add_argument_group("online")
    on.add_argument("--sample", type=_fraction, default=1.0, help="fraction of results to score (0-1]")
    on.add_argument("--window", type=_positive_int, default=200, help="drift: results in the moving window")
    on.add_argument("--drift-threshold", type=_fraction, default=0.1, help="drift: drop in a score that alarms")
    on.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.set_defaults(fn=cmd_eval)
    return p


def _positive_int(raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {raw!r}")
    return v


def _positive_float(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = 0.0
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {raw!r}")
    return v


def _open_fraction(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {raw!r}")
    return v


def _fraction(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {raw!r}")
    return v


async def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    target = list(args.target)
    if target[0] == "calibrate":
        if len(target) != 2:
            raise ConfigError("usage: agentstream eval calibrate LABELS (a .yaml or .jsonl file)")
        return await cmd_calibrate(args, Path(target[1]))
    if target[0] == "calibrate-router":
        if len(target) < 2:
            raise ConfigError("usage: agentstream eval calibrate-router DATASET... [--held-out 0.3] [--seed N]")
        return await cmd_calibrate_router(args, settings, [Path(t) for t in target[1:]])
    if target[0] == "online":
        if len(target) != 1:
            raise AgentstreamError("usage: agentstream eval online [--agent NAME] [--sample F]")
        from agentstream.runtime.interfaces.eval_online import run_online

        return await run_online(args, settings)
    if len(target) != 1:
        raise ConfigError(f"one dataset at a time, got {len(target)}: {' '.join(target)}")
    return await cmd_run(args, settings, Path(target[0]))


# ------------------------------------------------------------------ judge


def build_judge(args: argparse.Namespace, env: Mapping[str, str]) -> LLMJudge | None:
    from agentstream.runtime.adapters.scripted_models import FunctionModel
    from agentstream.runtime.evaluation.judge import JudgeCache, LLMJudge, keyword_judge

    model_name = args.judge_model or env.get("AGENTSTREAM_JUDGE_MODEL", "")
    choice = args.judge or ("model" if model_name else "scripted")
    if choice == "none":
        return None
    cache = JudgeCache(Path(args.judge_cache)) if args.judge_cache else None
    llm: LLM
    if choice == "scripted":
        llm = FunctionModel(keyword_judge, name="keyword-judge")
    else:
        if not model_name:
            raise ConfigError("--judge model needs a model: --judge-model NAME or AGENTSTREAM_JUDGE_MODEL "
                              "(with OPENAI_BASE_URL / OPENAI_API_KEY)")
        from agentstream.runtime.adapters.openai_model import OpenAIChatModel

        made = OpenAIChatModel.from_env({**env, "AGENTSTREAM_MODEL": model_name})
        assert made is not None
        llm = made
    return LLMJudge(llm, cache=cache)


async def _close_judge(judge: LLMJudge | None) -> None:
    close = getattr(judge.llm, "close", None) if judge is not None else None
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


async def cmd_calibrate(args: argparse.Namespace, labels: Path) -> int:
    from agentstream.runtime.evaluation.judge import calibrate, load_labels

    items = load_labels(labels)
    judge = build_judge(args, os.environ)
    if judge is None:
        raise AgentstreamError("calibrate needs a judge: --judge scripted or --judge model")
    try:
        result = await calibrate(judge, items)
    finally:
        await _close_judge(judge)
    print(result.render(judge.version))
    return 0


# ------------------------------------------------------------------ router


async def cmd_calibrate_router(args: argparse.Namespace, settings: Settings, paths: list[Path]) -> int:
    """Run every case with ReAct and with plan-first, label each with the
    strategy that did better (success, then cost, then latency), calibrate
    the router's threshold on one part and measure it on the held-out part."""
    from agentstream.runtime.evaluation import strategies
    from agentstream.runtime.evaluation.dataset import load_dataset

    datasets = [load_dataset(p) for p in paths]
    agents = {ds.agent for ds in datasets if ds.agent}
    agent = args.agent or (agents.pop() if len(agents) == 1 else "support")
    if args.app:
        settings = dataclasses.replace(settings, app=args.app)
    cal_parts, held_parts = strategies.split(datasets, args.held_out, args.seed)
    cal_ids = {c.id for ds in cal_parts for c in ds.cases}
    cal_labels: list[strategies.Label] = []
    held_labels: list[strategies.Label] = []
    for ds in datasets:
        runs = {}
        for name, version in (("react", args.react_version), ("plan", args.plan_version)):
            sys.stderr.write(f"agentstream: {ds.name}: {len(ds.cases)} cases x {args.runs} runs, {name} "
                             f"({version or 'production'})\n")
            runs[name] = await evaluate(ds, settings, agent=agent, label=version, runs=args.runs,
                                        concurrency=args.concurrency, timeout_s=args.timeout, seed=args.seed,
                                        remote=args.remote, progress=not args.no_progress and sys.stderr.isatty())
        for lb in strategies.labels(runs["react"], runs["plan"], ds.cases):
            (cal_labels if lb.case_id in cal_ids else held_labels).append(lb)
    result = strategies.calibrate_router(cal_labels, held_labels)
    print(result.render(), end="")
    if args.json_out:
        import json

        _write(Path(args.json_out), json.dumps({
            "threshold": result.policy.threshold, "held_out": args.held_out, "seed": args.seed,
            "calibration_accuracy": result.calibration_accuracy, "held_out_accuracy": result.held_out_accuracy,
            "always_react_accuracy": result.always_react_accuracy,
            "labels": [{"case": lb.case_id, "part": part, "better": lb.better, "why": lb.why}
                       for part, lbs in (("calibration", result.calibration), ("held-out", result.held_out))
                       for lb in lbs]}, indent=2) + "\n")
    return 0


# ------------------------------------------------------------------ run


class _ClientHarness:
    """AgentClient plus the stand-in supervisor: approvals are decided as the
    first identity the request names (the tool's approvers)."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client

    async def submit(self, agent: str, input: str, *, task_id: str | None = None, conversation_id: str = "",
                     agent_version: str = "", metadata: Mapping[str, str] | None = None) -> str:
        return await self.client.submit(agent, input, task_id=task_id, conversation_id=conversation_id,
                                        agent_version=agent_version, metadata=metadata,
                                        user_id="agentstream-eval")

    def events(self, task_id: str, *, timeout: float | None = None) -> AsyncIterator[TaskEvent]:
        return self.client.events(task_id, timeout=timeout)

    async def decide(self, request: ApprovalRequested, *, approved: bool) -> None:
        from agentstream.runtime.interfaces import approvals

        who = request.approvers[0] if request.approvers else "agentstream-eval"
        # The request event can overtake the approval's record in KV (two
        # publishes by the agent): a missing record is retried, bounded.
        for attempt in range(50):
            try:
                await approvals.decide(self.client, request.approval_id, approved=approved, approver=who,
                                       reason="agentstream eval: the case says so")
                return
            except approvals.ApprovalError as exc:
                if exc.status != 404 or attempt == 49:
                    raise
            await asyncio.sleep(0.1)


def _progress(enabled: bool) -> tuple[Any, Any]:
    """A rich progress bar on stderr (and its update callback), or nothing."""
    if not enabled:
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("cases", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


async def evaluate(dataset: Dataset, settings: Settings, *, agent: str, label: str | None = None, runs: int = 1,
                   concurrency: int = 8, timeout_s: float = 60.0, seed: int = 0, remote: bool = False,
                   model: LLM | None = None, judge: Judge | None = None,
                   progress: bool | Callable[[int, int], None] = False,
                   before_run: Callable[[RunConfig], None] | None = None) -> EvalRun:
    """Run ``dataset`` as real tasks: on an embedded broker with this process's
    own workers (the app from ``settings.app``, ``model`` or the agent's
    usual one), or with ``remote`` on the configured broker's running workers.
    ``before_run`` sees the run's config once the version is known (to
    fail fast, e.g. on a missing baseline, before any task runs). ``progress``:
    a bar on stderr, or a callable given (done, total) after each task."""
    from agentstream.runtime.evaluation.runner import RunConfig, behaviour_hash, run_dataset
    from agentstream.runtime.interfaces.client import AgentClient
    from agentstream.runtime.service.runtime import Runtime, select_model

    with tempfile.TemporaryDirectory(prefix="agentstream-eval-") as tmp:
        rt: Runtime | None = None
        if remote:
            url = broker_url(settings)
            spec_version, model_name, bhash = "", "", ""
        else:
            # A fresh broker and store per run: no earlier run's tasks or sessions can leak in.
            settings = dataclasses.replace(settings, data_dir=Path(tmp), nats_url=None)
            rt = Runtime.from_settings(settings, agents=[agent], tools="all")
            # A label the app declares as a version of the agent runs that version
            # (`--version plan`); any other label only names the run.
            if label is not None and (agent, label) in rt.app.versions:
                rt.version = label
            spec = rt.app.get_version(agent, rt.version).spec
            llm = model or select_model(rt.app, agent, settings, rt.version)
            rt.models[agent] = llm
            spec_version, model_name, bhash = spec.version, llm.name, behaviour_hash(spec, llm.name)
        cfg = RunConfig(agent=agent, version=label or spec_version or "unversioned", runs=runs,
                        concurrency=concurrency, timeout_s=timeout_s, seed=seed, behaviour_hash=bhash,
                        model=model_name)
        if before_run is not None:
            before_run(cfg)
        try:
            if rt is not None:
                await rt.start()
                url = rt.url
            # Submits the cases and plays their supervisor: the gateway role (client + approver).
            auth = rt.auth("gateway") if rt is not None else nats_auth("gateway", url, settings.data_dir)
            async with await AgentClient.connect(url, provision=rt is None, auth=auth) as client:
                bar, update = (contextlib.nullcontext(), progress) if callable(progress) else _progress(progress)
                with bar:
                    return await run_dataset(dataset, _ClientHarness(client), cfg, judge=judge, progress=update)
        finally:
            if rt is not None:
                await rt.stop()


async def cmd_run(args: argparse.Namespace, settings: Settings, path: Path) -> int:
    from agentstream.runtime.evaluation import baselines, reports
    from agentstream.runtime.evaluation.dataset import load_dataset
    from agentstream.runtime.evaluation.gates import GateSpec, evaluate_gates, load_gates

    # Everything that can be wrong with the inputs fails before a broker starts.
    dataset = load_dataset(path)
    agent = args.agent or dataset.agent or "support"
    gates: GateSpec | None = load_gates(args.gates) if args.gates else None
    if args.app:
        settings = dataclasses.replace(settings, app=args.app)
    judge = build_judge(args, os.environ) if any(c.judge for c in dataset.cases) else None
    root = Path(args.baseline_dir)
    baseline: EvalRun | None = None

    def load_baseline(cfg: RunConfig) -> None:
        nonlocal baseline
        if args.baseline:
            baseline = baselines.load_baseline(root, args.baseline, dataset_hash=dataset.hash, agent=agent)

    try:
        run = await evaluate(dataset, settings, agent=agent, label=args.label, runs=args.runs,
                             concurrency=args.concurrency, timeout_s=args.timeout, seed=args.seed,
                             remote=args.remote, judge=judge, before_run=load_baseline,
                             progress=not args.no_progress and sys.stderr.isatty())
    finally:
        await _close_judge(judge)

    report = evaluate_gates(gates, run, baseline=baseline) if gates is not None else None
    print(reports.terminal_report(run, baseline=baseline, gates=report), end="")
    for out, text in ((args.json_out, lambda: reports.json_report(run, baseline=baseline, gates=report)),
                      (args.markdown, lambda: reports.markdown_report(run, baseline=baseline, gates=report)),
                      (args.html, lambda: reports.html_report(run, baseline=baseline, gates=report)),
                      (args.junit, lambda: reports.junit_report(run, gates=report))):
        if out:
            _write(Path(out), text())
    if args.save_baseline:
        print(f"baseline stored: {baselines.save_baseline(root, run)}")
    if report is not None and not report.ok:
        for g in report.failed:
            sys.stderr.write(f"agentstream: gate failed: {g.message}\n")
        return EXIT_GATE
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise AgentstreamError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path}")
