#!/usr/bin/env python
"""W1 with bus authentication on vs off: what per-role credentials and subject
permissions cost.

Each round starts two embedded nats-servers side by side: one without
authentication (as before issue 8), one as ``agentstream up`` runs it (nkey
users per role, subject allow-lists). On each, the W1 runtime of ``bench/w1.py``
runs in process, the workers under the ``worker`` role and the client under
the ``client`` role when auth is on. Rounds alternate off/on so drift on a
shared machine hits both; the throughput ratio on/off is printed per mode
(expected >= 0.95).

    python bench/auth.py [--rounds 2] [--tasks 500] [--seq-tasks 150] [--inflight 32]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from w1 import Meter, PhaseResult, run_runtime, say, task_inputs  # noqa: E402

from agentstream.runtime.adapters.embedded_broker import EmbeddedNats  # noqa: E402
from agentstream.runtime.config.auth import NatsAuth  # noqa: E402


async def one_run(auth: bool, args: argparse.Namespace, inputs: list[str], run_no: int) -> list[PhaseResult]:
    with tempfile.TemporaryDirectory(prefix=f"auth-bench-{'on' if auth else 'off'}-") as tmp:
        broker = EmbeddedNats(store_dir=Path(tmp) / "nats", auth=auth)
        await broker.astart()
        try:
            pid = broker.proc.pid if broker.proc is not None else None
            system = "auth on" if auth else "auth off"
            if auth:
                # The workers find <tmp>/nats/auth/worker.nk as they would next to an `up`.
                client = NatsAuth(role="client", nkey_seed_file=str(broker.seed_file("client")))
                rows, _, _ = await run_runtime(broker.plain_url, args, inputs, pid, Meter(), False, run_no,
                                               data_dir=Path(tmp), client_auth=client, system=system)
            else:
                rows, _, _ = await run_runtime(broker.url, args, inputs, pid, Meter(), False, run_no,
                                               data_dir=Path(tmp), system=system)
            return rows
        finally:
            await asyncio.to_thread(broker.stop)


async def amain(args: argparse.Namespace) -> list[dict[str, float | str]]:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    inputs = task_inputs(max(args.tasks, args.seq_tasks, args.warmup), args.seed)
    runs: dict[bool, list[PhaseResult]] = {False: [], True: []}
    for r in range(args.rounds):
        # Alternate which goes first, so neither always meets the warmer machine.
        for auth in ((False, True) if r % 2 == 0 else (True, False)):
            runs[auth] += await one_run(auth, args, inputs, 2 * r + auth)
    out: list[dict[str, float | str]] = []
    print()
    print("W1 with bus authentication on / off (expected throughput ratio >= 0.95):")
    for mode in dict.fromkeys(p.mode for p in runs[False]):
        on = [p.tasks_per_s for p in runs[True] if p.mode == mode]
        off = [p.tasks_per_s for p in runs[False] if p.mode == mode]
        mean_on, mean_off = sum(on) / len(on), sum(off) / len(off)
        ratio = mean_on / mean_off if mean_off else float("nan")
        # Each round's on/off pair ran back to back: its ratio is the least
        # exposed to a shared machine's drift; the median of those is the figure.
        paired = statistics.median(a / b for a, b in zip(on, off) if b)
        print(f"  {mode:<14} tasks/s {mean_on:8.1f} on / {mean_off:8.1f} off = x{ratio:.3f}; "
              f"median of per-round ratios x{paired:.3f}   "
              f"(runs on: {', '.join(f'{x:.0f}' for x in on)}; off: {', '.join(f'{x:.0f}' for x in off)})")
        # CPU per task (this process: client and workers; plus the nats-server)
        # hardly moves with a busy machine's scheduling, unlike wall time: on a
        # CPU-bound run, off/on CPU is the throughput ratio auth allows.
        cpu = {a: statistics.mean(1000 * (p.py_cpu_s + (p.server_cpu_s or 0.0)) / p.tasks
                                  for p in runs[a] if p.mode == mode and p.tasks) for a in (True, False)}
        srv = {a: statistics.mean(1000 * (p.server_cpu_s or 0.0) / p.tasks
                                  for p in runs[a] if p.mode == mode and p.tasks) for a in (True, False)}
        print(f"  {'':<14} CPU ms/task {cpu[True]:.3f} on / {cpu[False]:.3f} off (nats-server {srv[True]:.3f} / "
              f"{srv[False]:.3f}): CPU-bound throughput ratio x{cpu[False] / cpu[True]:.3f}")
        out.append({"mode": mode, "tasks_per_s_on": mean_on, "tasks_per_s_off": mean_off, "ratio": ratio,
                    "median_round_ratio": paired, "cpu_ms_per_task_on": cpu[True],
                    "cpu_ms_per_task_off": cpu[False]})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs (default 2)")
    ap.add_argument("--tasks", type=int, default=500, help="tasks in the N-in-flight runs (default 500)")
    ap.add_argument("--seq-tasks", type=int, default=150, help="tasks in the sequential runs (default 150)")
    ap.add_argument("--inflight", type=int, default=32, help="tasks in flight (default 32)")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured warm-up tasks per run (default 20)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    args.results, args.profile = "client", None
    say(f"{args.rounds} rounds of W1, auth off then on")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
