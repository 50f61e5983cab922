"""Strategies: does planning pay? ReAct, plan-first and routed on the support
desk's datasets, as real tasks on the bus (embedded broker, in process).

1. Split each dataset's cases into a calibration part and a held-out part
   (deterministic, ``--held-out`` of each dataset, keyed by ``--seed``).
2. Run every case ``--runs`` times with ReAct (support@v1) and plan-first
   (support@plan).
3. Label each calibration case with the strategy that did better (success,
   then cost, then latency; ties go to ReAct) and calibrate the router's
   threshold on those labels only.
4. Run the held-out cases with the routed version (support@routed) at that
   threshold, so the router is not scored on the cases that tuned it.
5. Print, per dataset and strategy, on the held-out cases (all three) and on
   all cases (ReAct and plan-first): success pass@1 and pass^k, tokens and
   cost per case, latency p50/p95, each with a 95% bootstrap interval over
   cases, and the paired comparison with ReAct on the same cases.

The model is the scripted support model under the assumptions in
agentstream/examples/support_sim.py (``BENCH``: per-turn latency from token
counts with seeded jitter, 5% of tool-calling turns with one wrong
argument); they are printed with the figures. Prices default to a small
hosted model's ($0.15 / $0.60 per million input / output tokens).

    .venv/bin/python bench/strategies.py [--runs 3] [--held-out 0.5] [--seed 0] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import msgspec  # noqa: E402

from agentstream import Settings  # noqa: E402
from agentstream.examples import support_desk, support_sim  # noqa: E402
from agentstream.runtime.evaluation import strategies  # noqa: E402
from agentstream.runtime.evaluation.dataset import Dataset, load_dataset  # noqa: E402
from agentstream.runtime.evaluation.results import EvalRun  # noqa: E402
from agentstream.runtime.interfaces.eval_command import evaluate  # noqa: E402

DATASETS = ROOT / "agentstream" / "examples" / "datasets"
PRICES = {"scripted-support": {"input": 0.15, "output": 0.60}}


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def with_router_threshold(threshold: float) -> None:
    """The routed candidate at the calibrated threshold (in this process's app)."""
    key = ("support", "routed")
    agent = support_desk.app.versions[key]
    support_desk.app.versions[key] = dataclasses.replace(
        agent, spec=msgspec.structs.replace(agent.spec, router_threshold=threshold))


async def run(ds: Dataset, version: str | None, args: argparse.Namespace, settings: Settings,
              assumptions: support_sim.Assumptions, step: str) -> EvalRun:
    total = len(ds.cases) * args.runs
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, of: int) -> None:
        now = time.perf_counter()
        if done == of or now - last[0] > 5:
            last[0] = now
            log(f"{step} {ds.name} {version or 'v1 (react)'}: {done}/{of} tasks, {now - t0:.0f}s")

    log(f"{step} {ds.name} {version or 'v1 (react)'}: {total} tasks ({len(ds.cases)} cases x {args.runs})")
    model = support_sim.SimulatedModel(support_desk.make_support_script, assumptions)
    return await evaluate(ds, settings, agent="support", label=version, runs=args.runs,
                          concurrency=args.concurrency, timeout_s=args.timeout, seed=args.seed, model=model,
                          progress=progress)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--held-out", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--assumptions", choices=("bench", "default"), default="bench")
    ap.add_argument("--planner-conditionals", choices=("defer", "speculate"), default=None)
    ap.add_argument("--react-calls-per-turn", type=int, default=None)
    ap.add_argument("--error-rate", type=float, default=None)
    ap.add_argument("--markdown", help="write the tables (and assumptions) to this file")
    ap.add_argument("--json", dest="json_out", help="write the figures as JSON")
    args = ap.parse_args()
    assumptions = support_sim.BENCH if args.assumptions == "bench" else support_sim.DEFAULT
    overrides = {k: v for k, v in (("planner_conditionals", args.planner_conditionals),
                                   ("react_calls_per_turn", args.react_calls_per_turn),
                                   ("error_rate", args.error_rate)) if v is not None}
    assumptions = dataclasses.replace(assumptions, seed=args.seed, **overrides)
    os.environ.setdefault("AGENTSTREAM_PRICES", json.dumps(PRICES))
    datasets = [load_dataset(DATASETS / "support.yaml"), load_dataset(DATASETS / "multistep.yaml")]
    cal_parts, held_parts = strategies.split(datasets, args.held_out, args.seed)
    held_ids = {ds.name.rsplit(" (", 1)[0]: [c.id for c in ds.cases] for ds in held_parts}
    cal_ids = {ds.name.rsplit(" (", 1)[0]: [c.id for c in ds.cases] for ds in cal_parts}
    log(f"assumptions: {assumptions}")
    started = time.perf_counter()
    full: dict[tuple[str, str], EvalRun] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(Settings.from_env({}), data_dir=Path(tmp))
        steps = len(datasets) * 3
        n = 0
        for ds in datasets:
            for strategy, version in (("react", None), ("plan", "plan")):
                n += 1
                full[(ds.name, strategy)] = await run(ds, version, args, settings, assumptions, f"[{n}/{steps}]")
        # Calibrate on the calibration part only.
        cal_labels: list[strategies.Label] = []
        held_labels: list[strategies.Label] = []
        for ds in datasets:
            r, p = full[(ds.name, "react")], full[(ds.name, "plan")]
            cal_cases = [c for c in ds.cases if c.id in set(cal_ids[ds.name])]
            held_cases = [c for c in ds.cases if c.id in set(held_ids.get(ds.name, []))]
            cal_labels += strategies.labels(r, p, cal_cases)
            held_labels += strategies.labels(r, p, held_cases)
        calibration = strategies.calibrate_router(cal_labels, held_labels)
        threshold = calibration.policy.threshold
        log(f"router threshold {threshold:.2f} (held-out accuracy {calibration.held_out_accuracy:.2f})")
        with_router_threshold(threshold)
        for held in held_parts:
            n += 1
            name = held.name.rsplit(" (", 1)[0]
            full[(name, "routed")] = await run(held, "routed", args, settings, assumptions, f"[{n}/{steps}]")
    elapsed = time.perf_counter() - started

    held_rows: list[strategies.Figures] = []
    held_pairs: list[strategies.Paired | None] = []
    all_rows: list[strategies.Figures] = []
    all_pairs: list[strategies.Paired | None] = []
    for ds in datasets:
        ids = held_ids.get(ds.name, [])
        react_held = strategies.restrict(full[(ds.name, "react")], ids)
        for strategy in ("react", "plan", "routed"):
            r = full[(ds.name, strategy)]
            r = strategies.restrict(r, ids)
            r = msgspec.structs.replace(r, dataset=f"{ds.name} (held-out)")
            held_rows.append(strategies.figures(r, strategy, seed=args.seed))
            held_pairs.append(None if strategy == "react" else
                              strategies.paired(r, react_held, strategy, seed=args.seed))
        for strategy in ("react", "plan"):
            r = full[(ds.name, strategy)]
            all_rows.append(strategies.figures(r, strategy, seed=args.seed))
            all_pairs.append(None if strategy == "react" else
                             strategies.paired(r, full[(ds.name, "react")], strategy, seed=args.seed))
    tasks = sum(len(r.results) for r in full.values())
    text = "\n".join([
        f"# Strategies on the support desk ({tasks} tasks, {elapsed:.0f}s, runs per case {args.runs}, "
        f"seed {args.seed})",
        "",
        f"Assumptions: `{assumptions}`; prices `{os.environ['AGENTSTREAM_PRICES']}` (USD per million tokens).",
        "",
        f"## Router calibration (held-out share {args.held_out})",
        "",
        "```",
        calibration.render().rstrip(),
        "```",
        "",
        "## Held-out cases: ReAct, plan-first, routed (95% intervals; paired with ReAct on the same cases)",
        "",
        strategies.markdown_table(held_rows, held_pairs),
        "## All cases: ReAct and plan-first",
        "",
        strategies.markdown_table(all_rows, all_pairs),
    ])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
        log(f"wrote {args.markdown}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "assumptions": dataclasses.asdict(assumptions), "threshold": threshold,
            "held_out_accuracy": calibration.held_out_accuracy,
            "held_out": [dataclasses.asdict(f) for f in held_rows],
            "all": [dataclasses.asdict(f) for f in all_rows],
            "paired_held_out": [dataclasses.asdict(p) for p in held_pairs if p is not None],
            "paired_all": [dataclasses.asdict(p) for p in all_pairs if p is not None]}, indent=2, default=str))


if __name__ == "__main__":
    asyncio.run(main())
