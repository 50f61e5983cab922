"""Production throughput with a shadow attached.

One embedded nats-server; production (agent + tool workers) in this process;
the shadow, when attached, is a separate ``agentstream worker --shadow``
process (as it would be deployed). The workload is tests/apps/rollout_app.py
(a read-only and a side-effecting tool per task, zero-latency model).

Phases, in one run: production alone; production with a shadow of v2
attached (100 % sample); production alone again (the window's drift). Prints
tasks/s, p50/p99 and the ratio with/without. Run::

    python bench/shadow.py [--tasks 600] [--inflight 32]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "apps"))

import rollout_app  # noqa: E402

from agentstream import AgentClient, Runtime, Settings, TaskCompleted  # noqa: E402
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def phase(client: AgentClient, n: int, inflight: int, tag: str) -> tuple[float, float, float]:
    sem = asyncio.Semaphore(inflight)
    lat: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            tid = await client.submit("shop", f"buy tea{i % 5} for {i + 1}", task_id=f"{tag}-{i}")
            res = await client.result(tid, timeout=120)
            assert isinstance(res, TaskCompleted), res
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    return n / wall, pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--sample", type=float, default=100.0, help="the shadow's sample, percent")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = await EmbeddedNats(store_dir=Path(tmp) / "nats").astart()
        settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url, app="rollout_app:app")
        prod = Runtime(settings=settings, app=rollout_app.app, agents=["shop"], tools="all")
        await prod.start()
        client = await AgentClient.connect(broker.url)
        env = {**os.environ, "AGENTSTREAM_NATS_URL": broker.url, "AGENTSTREAM_APP": "rollout_app:app",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "apps")]),
               "AGENTSTREAM_TRACING": "0"}
        exe = Path(sys.executable).with_name("agentstream")
        try:
            await phase(client, 50, args.inflight, "warm")
            rows = [("production alone", *await phase(client, args.tasks, args.inflight, "a"))]
            shadow = subprocess.Popen([str(exe), "worker", "--agent", "shop", "--version", "v2", "--shadow",
                                       "--sample", str(args.sample)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                assert shadow.stdout is not None
                shadow.stdout.readline()  # its start-up line: consumers exist
                rows.append((f"with a shadow ({args.sample:g} %)", *await phase(client, args.tasks, args.inflight, "b")))
            finally:
                shadow.kill()
                shadow.wait()
            rows.append(("production alone again", *await phase(client, args.tasks, args.inflight, "c")))
        finally:
            await client.close()
            await prod.stop()
            broker.stop()
    print(f"{os.cpu_count()} cores; {args.tasks} tasks per phase, {args.inflight} in flight")
    print(f"{'phase':<26} {'tasks/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, tps, p50, p99 in rows:
        print(f"{name:<26} {tps:>8.1f} {p50:>8.1f} {p99:>8.1f}")
    alone = (rows[0][1] + rows[2][1]) / 2
    print(f"production with shadow / alone: tasks/s x{rows[1][1] / alone:.2f}, p99 x{rows[1][3] / ((rows[0][3] + rows[2][3]) / 2):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
