#!/usr/bin/env python
"""Storage and memory under sustained load: W1 tasks (bench/w1.py's workload)
through one in-process runtime (agent + tool workers, tracing on by default, as
`agentstream up` runs them) on one embedded nats-server.

Every ``--every`` tasks it prints the worker process's RSS, nats-server's RSS,
the throughput of the last interval, and bytes on disk per store with bytes
per task; at the end the RSS drift after warm-up (target: within 10 %).

    python bench/soak_storage.py [--tasks 100000] [--every 10000] [--inflight 32] [--tracing on|off]
    python bench/soak_storage.py --sizing 3000      # bytes per task per store, compression off vs s2

``--sizing N`` runs N tasks twice, on fresh servers, once with every store
uncompressed and once with each store's own choice (S2 where it pays), and
prints the table docs/storage.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nats.aio.msg import Msg  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from w1 import AGENT, MODEL_STEPS_PER_TASK, build_app, task_inputs  # noqa: E402

from agentstream import AgentClient, Runtime, Settings, TaskCompleted  # noqa: E402
from agentstream.contracts import codec, subjects  # noqa: E402
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats  # noqa: E402
from agentstream.runtime.observability.telemetry import TelemetryConfig  # noqa: E402


def say(line: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {line}", flush=True)


def rss_mb(pid: int | None = None) -> float:
    """Resident set size in MB (Linux /proc), of this process or ``pid``."""
    path = Path(f"/proc/{pid or 'self'}/status")
    try:
        for line in path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


async def store_bytes(js: JetStreamContext) -> dict[str, tuple[int, int]]:
    """Store name -> (bytes, messages), as JetStream accounts them (after compression)."""
    out: dict[str, tuple[int, int]] = {}
    for sd in subjects.STREAMS:
        st = (await js.stream_info(sd.name)).state
        out[sd.name] = (st.bytes, st.messages)
    for bd in subjects.BUCKETS:
        st = (await js.stream_info(bd.stream)).state
        out[bd.name] = (st.bytes, st.messages)
    return out


def store_disk(store_dir: Path) -> dict[str, int]:
    """Store name -> bytes of its files on disk (what compression changes:
    JetStream's own byte count is of the uncompressed messages)."""
    base = store_dir / "jetstream" / "$G" / "streams"
    out: dict[str, int] = {}
    for sd in subjects.STREAMS:
        out[sd.name] = dir_bytes(base / sd.name)
    for bd in subjects.BUCKETS:
        out[bd.name] = dir_bytes(base / bd.stream)
    return out


@dataclasses.dataclass
class Run:
    url: str
    js: JetStreamContext
    client: AgentClient
    rt: Runtime
    waiting: dict[str, asyncio.Future[bytes]]
    inputs: list[str]
    done: int = 0
    failed: int = 0


async def start(url: str, tracing: bool, compression: str | None, inputs: list[str]) -> Run:
    settings = dataclasses.replace(Settings.from_env({}), nats_url=url, store_compression=compression,
                                   data_dir=Path(tempfile.mkdtemp(prefix="soak-rt-")))
    tconf = TelemetryConfig.from_env() if tracing else TelemetryConfig.disabled()
    rt = Runtime(settings=settings, app=build_app(), agents=[AGENT], tools="all", telemetry_config=tconf)
    await rt.start()
    client = await AgentClient.connect(url, telemetry=tracing, provision=False)
    assert client.js is not None
    waiting: dict[str, asyncio.Future[bytes]] = {}

    async def on_result(msg: Msg) -> None:
        fut = waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    await client.nc.subscribe(subjects.results(AGENT, "*"), cb=on_result)
    return Run(url=url, js=client.js, client=client, rt=rt, waiting=waiting, inputs=inputs)


async def run_tasks(run: Run, first: int, n: int, inflight: int, tag: str) -> None:
    """``n`` tasks, ``inflight`` at a time, by a fixed pool of submitters (not
    one coroutine per task: the harness's own memory must not grow with n)."""
    it = iter(range(first, first + n))

    async def submitter() -> None:
        for i in it:
            tid = f"soak-{tag}-{i:07d}"
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            run.waiting[tid] = fut
            try:
                await run.client.submit(AGENT, run.inputs[i % len(run.inputs)], task_id=tid)
                res = codec.task_result.decode(await asyncio.wait_for(fut, timeout=120))
            except Exception as exc:  # noqa: BLE001 - count it, keep going
                logging.getLogger("soak").warning("task %s: %s: %s", tid, type(exc).__name__, exc)
                run.waiting.pop(tid, None)
                run.failed += 1
                continue
            if isinstance(res, TaskCompleted) and res.steps == MODEL_STEPS_PER_TASK:
                run.done += 1
            else:
                run.failed += 1

    await asyncio.gather(*(submitter() for _ in range(inflight)))


async def stop(run: Run) -> None:
    await run.client.close()
    await run.rt.stop()


def per_task_table(title: str, sizes: dict[str, tuple[int, int]], disk: dict[str, int], tasks: int) -> str:
    lines = [title, f"  {'store':<20} {'messages':>10} {'bytes':>13} {'B/task':>8} {'disk':>13} {'disk B/task':>11}"]
    tot_b = tot_d = 0
    for name, (b, m) in sizes.items():
        d = disk.get(name, 0)
        tot_b += b
        tot_d += d
        lines.append(f"  {name:<20} {m:>10,} {b:>13,} {b / tasks:>8,.0f} {d:>13,} {d / tasks:>11,.0f}")
    lines.append(f"  {'total':<20} {'':>10} {tot_b:>13,} {tot_b / tasks:>8,.0f} {tot_d:>13,} {tot_d / tasks:>11,.0f}")
    return "\n".join(lines)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    store_dir = Path(tempfile.mkdtemp(prefix="soak-nats-"))
    server = EmbeddedNats(store_dir=store_dir).start()
    assert server.proc is not None
    spid = server.proc.pid
    inputs = task_inputs(1000, seed=7)
    rows: list[dict[str, Any]] = []
    try:
        run = await start(server.url, args.tracing == "on", args.compression, inputs)
        say(f"started: W1, {args.inflight} in flight, tracing {args.tracing}; worker RSS {rss_mb():.0f} MB, "
            f"nats-server RSS {rss_mb(spid):.0f} MB")
        say(f"{'tasks':>8} {'tasks/s':>8} {'worker MB':>9} {'server MB':>9} {'disk MB':>8} {'B/task':>7}  "
            "per store (KB/task)")
        total = 0
        while total < args.tasks:
            n = min(args.every, args.tasks - total)
            t0 = time.perf_counter()
            await run_tasks(run, total, n, args.inflight, "s")
            dt = time.perf_counter() - t0
            total += n
            gc.collect()
            sizes = await store_bytes(run.js)
            disk = dir_bytes(store_dir / "jetstream")
            row = {"tasks": total, "tasks_per_s": n / dt, "worker_rss_mb": rss_mb(),
                   "server_rss_mb": rss_mb(spid), "disk_bytes": disk, "failed": run.failed,
                   "stores": {k: v[0] for k, v in sizes.items()}}
            rows.append(row)
            per = " ".join(f"{k}={v[0] / total / 1024:.1f}" for k, v in sizes.items() if v[0])
            say(f"{total:>8,} {row['tasks_per_s']:>8,.0f} {row['worker_rss_mb']:>9.1f} {row['server_rss_mb']:>9.1f} "
                f"{disk / 1e6:>8.1f} {disk / total:>7,.0f}  {per}")
        print(per_task_table(f"after {total:,} tasks ({run.failed} failed):", await store_bytes(run.js),
                             store_disk(store_dir), total))
        await stop(run)
    finally:
        server.stop()
    # RSS drift after warm-up: the first report is the warm-up point.
    summary: dict[str, Any] = {"rows": rows}
    if len(rows) >= 2:
        for key in ("worker_rss_mb", "server_rss_mb"):
            base, last = rows[0][key], rows[-1][key]
            peak = max(r[key] for r in rows[1:])
            summary[key + "_drift"] = (last - base) / base
            say(f"{key}: {base:.1f} MB after warm-up ({rows[0]['tasks']:,} tasks) -> {last:.1f} MB at "
                f"{rows[-1]['tasks']:,} (peak {peak:.1f}): {100 * (last - base) / base:+.1f} %")
    return summary


async def sizing(args: argparse.Namespace) -> dict[str, Any]:
    inputs = task_inputs(1000, seed=7)
    out: dict[str, Any] = {}
    for label, compression in (("uncompressed", "none"), ("default (S2 where it pays)", None)):
        store_dir = Path(tempfile.mkdtemp(prefix="soak-size-"))
        server = EmbeddedNats(store_dir=store_dir).start()
        try:
            run = await start(server.url, args.tracing == "on", compression, inputs)
            await run_tasks(run, 0, args.sizing, args.inflight, "z")
            await stop(run)
            js = (await AgentClient.connect(server.url, telemetry=False, provision=False))
            assert js.js is not None
            sizes = await store_bytes(js.js)
            await js.close()
            disk = store_disk(store_dir)
            print(per_task_table(f"{label}: {args.sizing:,} W1 tasks, tracing {args.tracing} "
                                 f"({run.failed} failed)", sizes, disk, args.sizing))
            out[label] = {name: {"bytes": sizes[name][0], "disk": disk[name]} for name in sizes}
        finally:
            server.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--every", type=int, default=10_000)
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--tracing", choices=("on", "off"), default="on")
    p.add_argument("--compression", choices=("s2", "none"), default=None,
                   help="every store compressed or not (default: each store's own choice)")
    p.add_argument("--sizing", type=int, default=0, metavar="N", help="bytes per task per store, S2 off vs on")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(sizing(args) if args.sizing else soak(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
