"""How often does the paired non-inferiority gate cry wolf, and does it still
catch a real regression? Prints figures; fails on nothing.

A deliberately random support model (10% of first turns forget the tools,
seeded; tests/apps/support_variants.py) is run against the support dataset
once per seed. Each adjacent pair of seeds is a no-change comparison (same
agent, same model, different noise): the paired gate (margin 0.1, 95%) should
almost never fail it. For contrast, the naive rule "flag when the candidate's
pass@1 is below the baseline's" is counted too. Then the planted regression
(the version without refund_eligibility) is compared with every noisy run.

    .venv/bin/python bench/eval_gate.py [--seeds 6] [--runs 8]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from apps.support_variants import noisy_script, regressed  # noqa: E402

from agentstream import FunctionModel, Settings  # noqa: E402
from agentstream.runtime.evaluation.dataset import load_dataset  # noqa: E402
from agentstream.runtime.evaluation.gates import evaluate_gates, parse_gates  # noqa: E402
from agentstream.runtime.evaluation.results import EvalRun, summarize  # noqa: E402
from agentstream.runtime.interfaces.eval_command import evaluate  # noqa: E402

GATE = parse_gates({"non_inferiority": {"margins": {"pass@1": 0.1}}}, source="bench")


def verdict(candidate: EvalRun, baseline: EvalRun) -> str:
    report = evaluate_gates(GATE, candidate, baseline=baseline)
    return report.results[0].status


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=8)
    args = ap.parse_args()
    dataset = load_dataset(ROOT / "agentstream" / "examples" / "datasets" / "support.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(Settings.from_env({}), data_dir=Path(tmp))
        noisy: list[EvalRun] = []
        t0 = time.perf_counter()
        for seed in range(1, args.seeds + 1):
            noisy.append(await evaluate(dataset, settings, agent="support", runs=args.runs, concurrency=24,
                                        model=FunctionModel(noisy_script(seed), name="noisy-support")))
        per_run = (time.perf_counter() - t0) / args.seeds
        bad_settings = dataclasses.replace(settings, app="apps.support_variants:regressed")
        assert regressed.agents  # the module is importable as the settings name it
        bad = await evaluate(dataset, bad_settings, agent="support", runs=args.runs, concurrency=24)
    tasks = len(dataset.cases) * args.runs
    print(f"support dataset: {len(dataset.cases)} cases x {args.runs} runs = {tasks} tasks a run, "
          f"{per_run:.1f}s a run (embedded broker, in process)")
    print("noisy runs, pass@1 [95% CI] and pass^k at k = runs:")
    for seed, run in enumerate(noisy, 1):
        s = summarize(run)
        p1, pk = s.scores["pass@1"], s.pass_k[args.runs]
        print(f"  seed {seed}: pass@1 {p1.estimate:.3f} [{p1.low:.3f}, {p1.high:.3f}]   "
              f"pass^{args.runs} {pk.estimate:.3f}")
    pairs = list(zip(noisy[1:], noisy[:-1]))
    verdicts = [verdict(c, b) for c, b in pairs]
    naive = sum(summarize(c).scores["pass@1"].estimate < summarize(b).scores["pass@1"].estimate for c, b in pairs)
    print(f"no-change pairs: {len(pairs)}; paired gate failed {verdicts.count('fail')}, inconclusive "
          f"{verdicts.count('inconclusive')}, passed {verdicts.count('pass')}; "
          f"naive 'pass@1 went down' would flag {naive}")
    caught = [verdict(bad, b) for b in noisy]
    print(f"planted regression (pass@1 {summarize(bad).scores['pass@1'].estimate:.3f}) vs each noisy run: "
          f"failed {caught.count('fail')} of {len(caught)}")


if __name__ == "__main__":
    asyncio.run(main())
