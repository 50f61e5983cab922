#!/usr/bin/env python
"""Soak: many W1 tasks through 2 agent + 2 tool worker processes on one
nats-server, to see what grows.

Prints, every ``--report-every`` seconds: tasks done, throughput in the
window, p50/p99 latency in the window, RSS of each worker and of the
nats-server. At the start (after a warm-up) and at the end: RSS per process,
and the size of every stream and KV bucket (messages, bytes) with the limit
that bounds it; at the end, consumer lag (should be all zero) and the
growth of each figure.

What may grow and what may not: worker RSS must level off (caches are
bounded: the engine's session cache holds 4,096 tasks); the streams and
buckets grow with the tasks by design, up to their max age (7 days for the
work streams and sessions; see ``agentstream.contracts.subjects``); the
deadlines bucket must not grow (one key per task in flight), nor
agent_replicas (one key per live agent replica); nats-server's memory grows
with what the streams retain (their subject index), bounded by their byte
limits (docs/storage.md, "Memory"). Storage limits
for long runs are the storage engineer's soak (``bench/soak_storage.py``).

    python bench/soak.py                      # 100,000 tasks, 2 + 2 replicas, 32 in flight
    python bench/soak.py --tasks 20000 --report-every 10
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from scale import AGENT, Driver, Workers, engine_counts, proc_cpu_s, proc_rss_mb, say

from agentstream import AgentClient
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.observability.lag import read_lag, render_lag
from agentstream.runtime.observability.views import percentile


async def sizes(client: AgentClient) -> dict[str, tuple[int, int]]:
    """Stream (and KV bucket, ``KV_*``) name -> (messages, bytes)."""
    out: dict[str, tuple[int, int]] = {}
    for info in await client.js.streams_info():
        out[info.config.name or "?"] = (int(info.state.messages), int(info.state.bytes))
    return dict(sorted(out.items()))


def rss(workers: Workers, broker: EmbeddedNats) -> dict[str, float]:
    out = {role: proc_rss_mb(p.pid) for role, p in workers.procs.items()}
    if broker.proc is not None:
        out["nats-server"] = proc_rss_mb(broker.proc.pid)
    return out


def fmt_rss(r: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.0f}MB" for k, v in sorted(r.items()))


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    broker = EmbeddedNats(store_dir=str(tmp / "nats"))
    await broker.astart()
    workers = Workers(url=broker.url, app="scale_app:w1", tmp=tmp)
    client = await AgentClient.connect(broker.url, telemetry=False)
    try:
        for i in range(args.agents):
            # INFO: the engine's session reads and conflicts, logged at exit
            workers.start(f"agent{i + 1}", ["--agent", AGENT], {"AGENTSTREAM_LOG_LEVEL": "INFO"})
        for i in range(args.tools):
            workers.start(f"tools{i + 1}", ["--tools", "all"])
        await asyncio.to_thread(workers.wait_ready)
        driver = Driver(client)
        await driver.start()
        say(f"{args.agents} agent + {args.tools} tool replicas on {broker.url}; warm-up {args.warmup} tasks ...")
        await driver.run("soak-warm", args.warmup, min(args.inflight, args.warmup))
        rss0, size0 = rss(workers, broker), await sizes(client)
        pids = {role: p.pid for role, p in workers.procs.items()}
        cpu0 = {role: proc_cpu_s(pid) for role, pid in pids.items()}
        say(f"start RSS: {fmt_rss(rss0)}")

        done = 0
        failed = 0
        window: list[float] = []
        series: list[dict[str, Any]] = []
        sem = asyncio.Semaphore(args.inflight)
        t_start = time.perf_counter()
        t_win = t_start

        async def one(i: int) -> None:
            nonlocal done, failed
            async with sem:
                dt = await driver.one(f"soak-{i:07d}", f"soak task {i}")
            if dt is None:
                failed += 1
            else:
                window.append(dt * 1000)
            done += 1

        async def reporter() -> None:
            nonlocal t_win, window
            while True:
                await asyncio.sleep(args.report_every)
                now = time.perf_counter()
                lat, window = window, []
                r = rss(workers, broker)
                row = {"t_s": round(now - t_start, 1), "done": done, "tasks_per_s": round(len(lat) / (now - t_win), 1),
                       "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
                       "rss_mb": {k: round(v, 1) for k, v in r.items()}}
                series.append(row)
                t_win = now
                say(f"t={row['t_s']:>7}s done={done:>7} {row['tasks_per_s']:>7} tasks/s p50 {row['p50_ms']} "
                    f"p99 {row['p99_ms']} ms | {fmt_rss(r)}" + (f" | FAILED {failed}" if failed else ""))

        rep = asyncio.create_task(reporter())
        # Submitted in chunks so the client holds a bounded number of coroutines.
        for lo in range(0, args.tasks, 5000):
            await asyncio.gather(*(one(i) for i in range(lo, min(args.tasks, lo + 5000))))
        rep.cancel()
        wall = time.perf_counter() - t_start
        rss1, size1 = rss(workers, broker), await sizes(client)
        cpu = {role: proc_cpu_s(pid) - cpu0[role] for role, pid in pids.items()}
        lags = await read_lag(client.js)

        print()
        print(f"soak: {args.tasks} W1 tasks through {args.agents} agent + {args.tools} tool replicas, "
              f"{args.inflight} in flight: {wall:.0f} s, {args.tasks / wall:.1f} tasks/s overall, {failed} failed")
        print(f"worker CPU per task: {1000 * sum(cpu.values()) / max(1, args.tasks):.2f} ms "
              f"({', '.join(f'{k} {v:.0f}s' for k, v in sorted(cpu.items()))})")
        print("RSS (MB) start -> end:")
        for k in sorted(rss1):
            print(f"  {k:<12} {rss0.get(k, 0):7.1f} -> {rss1[k]:7.1f}  ({rss1[k] - rss0.get(k, 0):+.1f})")
        print("streams and KV buckets (messages, bytes) start -> end:")
        for k in sorted(size1):
            m0, b0 = size0.get(k, (0, 0))
            m1, b1 = size1[k]
            print(f"  {k:<24} {m0:>9} -> {m1:>9} msgs   {b0 / 1e6:8.1f} -> {b1 / 1e6:8.1f} MB"
                  f"   ({(b1 - b0) / max(1, args.tasks):.0f} B/task)")
        print(render_lag(lags))
        roles = [f"agent{i + 1}" for i in range(args.agents)]
        for role in roles:
            await asyncio.to_thread(workers.stop, role)
        counts = engine_counts(workers, roles)
        if counts is not None:
            total = args.warmup + args.tasks
            print(f"agent replicas: {counts[0] / total:.2f} session reads, {counts[1] / total:.3f} compare-and-set "
                  f"conflicts a task")
        return {"tasks": args.tasks, "wall_s": wall, "failed": failed, "series": series, "rss_start": rss0,
                "rss_end": rss1, "sizes_start": size0, "sizes_end": size1}
    finally:
        await client.close()
        await asyncio.to_thread(workers.stop_all)
        await asyncio.to_thread(broker.stop)
        # the logs stay for a look; the broker's store (hundreds of MB a run) does not
        shutil.rmtree(tmp / "nats", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--tools", type=int, default=2)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--report-every", type=float, default=30.0, help="seconds between progress lines")
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
