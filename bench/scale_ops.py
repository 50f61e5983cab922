#!/usr/bin/env python
"""What agent replicas cost each other, counted at the session port: W1 tasks
through 1, 2 or 4 agent runtimes (and one tool runtime) in one process, so the
CPU figure is comparable between configurations, with every session read and
compare-and-set conflict counted by a wrapper around each engine's session
store. The wrapper is set from outside the engine, so an older agentstream on
PYTHONPATH is measured the same way (before/after in one window):

    python bench/scale_ops.py --agents 1,2,4
    PYTHONPATH=/tmp/old-agentstream python bench/scale_ops.py --agents 1,2,4

Prints, per configuration: tasks/s, session reads and conflicts per task,
Python CPU per task (this process: agents, tools and the driver together).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from w1 import AGENT, build_app  # noqa: E402

import agentstream  # noqa: E402
from agentstream import AgentClient  # noqa: E402
from agentstream.contracts.events import TaskCompleted  # noqa: E402
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats  # noqa: E402
from agentstream.runtime.config.settings import Settings  # noqa: E402
from agentstream.runtime.core.errors import Conflict  # noqa: E402
from agentstream.runtime.observability.telemetry_config import TelemetryConfig  # noqa: E402
from agentstream.runtime.service.runtime import Runtime  # noqa: E402


class Counting:
    """A session store that counts what passes through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0
        self.writes = 0
        self.conflicts = 0

    async def get(self, key: str) -> Any:
        self.reads += 1
        return await self.inner.get(key)

    async def create(self, key: str, value: bytes) -> int:
        return await self._write(self.inner.create(key, value))

    async def update(self, key: str, value: bytes, revision: int) -> int:
        return await self._write(self.inner.update(key, value, revision))

    async def write_expiring(self, key: str, value: bytes, revision: int | None, ttl_s: float) -> int:
        return await self._write(self.inner.write_expiring(key, value, revision, ttl_s))

    async def _write(self, op: Any) -> int:
        self.writes += 1
        try:
            return int(await op)
        except Conflict:
            self.conflicts += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def run(agents: int, tasks: int, inflight: int, warmup: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="scale-ops-"))
    server = EmbeddedNats(store_dir=tmp / "nats").start()
    rts: list[Runtime] = []
    try:
        base = dataclasses.replace(Settings.from_env({}), nats_url=server.url, data_dir=tmp)
        app = build_app()
        for i in range(agents):
            rt = Runtime(settings=dataclasses.replace(base, worker_id=f"agent{i}"), app=app, agents=[AGENT],
                         tools=None, telemetry_config=TelemetryConfig.disabled())
            await rt.start()
            rts.append(rt)
        tools = Runtime(settings=dataclasses.replace(base, worker_id="tools"), app=app, agents=[], tools="all",
                        telemetry_config=TelemetryConfig.disabled())
        await tools.start()
        rts.append(tools)
        counters = []
        for rt in rts[:agents]:
            engine = rt.engines[AGENT]
            counters.append(Counting(engine.sessions))
            engine.sessions = counters[-1]  # type: ignore[assignment]
        client = await AgentClient.connect(server.url, telemetry=False)
        sem = asyncio.Semaphore(inflight)

        async def one(tag: str, i: int) -> None:
            async with sem:
                tid = f"{tag}-{i:06d}"
                await client.submit(AGENT, "go", task_id=tid)
                res = await client.result(tid, timeout=120, agent=AGENT)
                assert isinstance(res, TaskCompleted), res

        await asyncio.sleep(2.5)  # replicas see each other (the partitioned inbox splits on heartbeats)
        await asyncio.gather(*(one("warm", i) for i in range(warmup)))
        for c in counters:
            c.reads = c.writes = c.conflicts = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one("run", i) for i in range(tasks)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await client.close()
        return {"agents": agents, "tasks_per_s": tasks / wall,
                "reads_per_task": sum(c.reads for c in counters) / tasks,
                "conflicts_per_task": sum(c.conflicts for c in counters) / tasks,
                "writes_per_task": sum(c.writes for c in counters) / tasks,
                "cpu_ms_per_task": 1000 * cpu / tasks}
    finally:
        for rt in rts:
            await rt.stop()
        server.stop()


async def amain(args: argparse.Namespace) -> None:
    print(f"agentstream from {Path(agentstream.__file__).resolve().parent}")
    print(f"{'agents':>6} {'tasks/s':>8} {'reads/task':>11} {'conflicts/task':>15} {'writes/task':>12} "
          f"{'CPU ms/task':>12}")
    for n in [int(x) for x in args.agents.split(",")]:
        r = await run(n, args.tasks, args.inflight, args.warmup)
        print(f"{n:>6} {r['tasks_per_s']:>8.0f} {r['reads_per_task']:>11.2f} {r['conflicts_per_task']:>15.2f} "
              f"{r['writes_per_task']:>12.2f} {r['cpu_ms_per_task']:>12.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="1,2,4", help="agent runtimes per configuration (default 1,2,4)")
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=50)
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
