"""Fault benchmark: lost tasks and duplicate tool executions per tool mode,
with the broker or a tool worker SIGKILLed mid-load.

One embedded nats-server (a temp dir, a fixed port so it can come back where
the workers look for it), one agent worker and one tool worker process
(``bench/fault_app.py``: each task calls a plain, an idempotent and an
at-most-once tool at once; every start of a tool is logged by the tool
itself). Scenarios:

- ``broker``: ``--tasks`` tasks submitted at ``--rate`` per second; after
  ``--kill-at`` seconds the broker is SIGKILLed, stays down ``--down``
  seconds, and is restarted on the same port and store. Workers stay alive.
- ``worker``: the same load; after ``--kill-at`` seconds the tool worker is
  SIGKILLed and a new one started at once (its calls in flight are
  redelivered after the ack wait).
- ``cluster``: a 3-node cluster from the ``ops/nats-cluster`` configs (the
  tests' harness), R3 streams; the node leading both TOOLS and EVENTS
  (EVENTS' leader is stepped down until it is) is SIGKILLed for ``--down``
  seconds, then restarted. Worker stderr lines show the log volume.

Printed per scenario: tasks submitted / acknowledged / completed / failed /
lost (acknowledged, no result within the wait), then per tool mode: calls,
executions (starts logged by the tool), duplicate executions (starts beyond
the first per idempotency key), effects (applied as a call starts; the
idempotent tool's through a downstream deduplicating by its key),
duplicate effects, and ``outcome_unknown`` answers. Targets:
0 lost; 0 duplicates for idempotent and at-most-once tools in the broker
scenario, and for plain tools too (their worker survives); 0 duplicates for
at-most-once tools in the worker scenario (a duplicate *start* of an
idempotent tool there is the redelivery its idempotency key deduplicates
downstream: see docs/effects.md).

    .venv/bin/python bench/faults.py                      # both scenarios, 200 tasks, broker down 15 s
    .venv/bin/python bench/faults.py --scenario worker --tasks 100
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentstream.contracts.events import TaskCompleted, TaskFailed
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats, free_port
from agentstream.runtime.core.errors import ResultTimeout, SubmitFailed
from agentstream.runtime.interfaces.client import AgentClient

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODES = ("plain", "idempotent", "at_most_once")
READY = "agentstream worker "


@dataclass
class Run:
    scenario: str
    submitted: int = 0
    acked: list[str] = field(default_factory=list)
    maybe: list[str] = field(default_factory=list)  # SubmitFailed, stored=None
    refused: int = 0  # SubmitFailed, stored=False
    completed: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: list[str] = field(default_factory=list)
    unknown: int = 0
    starts: dict[str, collections.Counter[str]] = field(default_factory=dict)
    log_lines: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Worker:
    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.out = logs / f"{name}.out"
        self.err = logs / f"{name}.err"
        with open(self.out, "wb") as fo, open(self.err, "wb") as fe:
            self.proc = subprocess.Popen([sys.executable, "-m", "agentstream.runtime.interfaces.cli", "worker", *args],
                                         env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, cwd=str(REPO))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY in self.out.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.err.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready within {timeout:g}s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def lines(self) -> int:
        return len(self.err.read_text(errors="replace").splitlines())


def worker_env(url: str, fault_log: Path, ack_wait: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO), env.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "AGENTSTREAM_NATS_URL": url,
        "AGENTSTREAM_APP": "fault_app:app",
        "AGENTSTREAM_ACK_WAIT": f"{ack_wait:g}",
        "AGENTSTREAM_SHUTDOWN_TIMEOUT": "3",
        "AGENTSTREAM_SWEEP_INTERVAL": "1",
        "AGENTSTREAM_LOG_LEVEL": "WARNING",
        "FAULT_LOG": str(fault_log),
        "FAULT_LEDGER": str(fault_log.parent / "ledger"),
    })
    return env


async def _same_leader(nc: Any, cluster: Any) -> int:
    """Make one node lead both TOOLS and EVENTS (EVENTS steps down until it
    lands where TOOLS is, bounded); its index."""
    js = nc.jetstream()
    for _ in range(20):
        tools = (await js.stream_info("TOOLS")).cluster.leader
        events = (await js.stream_info("EVENTS")).cluster.leader
        if tools == events and tools:
            return int(cluster.index_of(tools))
        with contextlib.suppress(Exception):
            await nc.request("$JS.API.STREAM.LEADER.STEPDOWN.EVENTS", b"", timeout=5)
        await asyncio.sleep(1.0)
    return int(cluster.index_of((await js.stream_info("TOOLS")).cluster.leader))


async def scenario(name: str, args: argparse.Namespace) -> Run:
    run = Run(scenario=name)
    with tempfile.TemporaryDirectory(prefix=f"agentstream-faults-{name}-") as tmp:
        base = Path(tmp)
        fault_log = base / "starts.log"
        (base / "ledger").mkdir()
        server: EmbeddedNats | None = None
        cluster: Any = None
        if name == "cluster":
            sys.path.insert(0, str(REPO / "tests"))
            from cluster import NatsCluster  # the tests' harness: the ops/ configs, rendered for localhost

            cluster = NatsCluster().start()
            url = cluster.urls
        else:
            server = EmbeddedNats(store_dir=base / "nats", port=free_port()).start()
            url = server.url
        workers: list[Worker] = []
        try:
            env = worker_env(url, fault_log, args.ack_wait if name == "worker" else 30.0)
            if cluster is not None:
                env["AGENTSTREAM_REPLICAS"] = "3"
            agent = Worker("agent", ["--agent", "faults"], env, base)
            tools = Worker("tools1", ["--tools", "all"], env, base)
            workers += [agent, tools]
            for w in workers:
                await asyncio.to_thread(w.wait_ready)
            # after the workers: they provision the streams (R3 on the cluster)
            client = await AgentClient.connect(url, telemetry=False)
            client.submit_retry_s = args.down + 30.0
            started = time.monotonic()

            async def submit(i: int) -> None:
                await asyncio.sleep(i / args.rate)
                task_id = f"{name}-{i:04d}"
                run.submitted += 1
                try:
                    await client.submit("faults", str(i), task_id=task_id, deadline_s=600)
                except SubmitFailed as exc:
                    if exc.stored is None:
                        run.maybe.append(task_id)
                    else:
                        run.refused += 1
                    return
                run.acked.append(task_id)

            async def fault() -> None:
                await asyncio.sleep(args.kill_at)
                if name == "cluster":
                    victim = await _same_leader(client.nc, cluster)
                    print(f"  t={time.monotonic() - started:5.1f}s SIGKILL node {victim + 1} (leads TOOLS and "
                          f"EVENTS), down {args.down:g}s", flush=True)
                    cluster.kill(victim)
                    await asyncio.sleep(args.down)
                    await asyncio.to_thread(cluster.restart, victim)
                    print(f"  t={time.monotonic() - started:5.1f}s node {victim + 1} restarted", flush=True)
                elif name == "broker":
                    print(f"  t={time.monotonic() - started:5.1f}s SIGKILL broker, down {args.down:g}s", flush=True)
                    assert server is not None and server.proc is not None
                    server.proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(server.proc.wait)
                    await asyncio.sleep(args.down)
                    await asyncio.to_thread(server.start)
                    print(f"  t={time.monotonic() - started:5.1f}s broker restarted", flush=True)
                else:
                    print(f"  t={time.monotonic() - started:5.1f}s SIGKILL tool worker, start another", flush=True)
                    await asyncio.to_thread(tools.kill)
                    fresh = Worker("tools2", ["--tools", "all"], env, base)
                    workers.append(fresh)
                    await asyncio.to_thread(fresh.wait_ready)

            await asyncio.gather(fault(), *(submit(i) for i in range(args.tasks)))
            sem = asyncio.Semaphore(64)
            wait_until = time.monotonic() + args.wait

            async def result(task_id: str) -> None:
                async with sem:
                    try:
                        res = await client.result(task_id, timeout=max(wait_until - time.monotonic(), 1.0),
                                                  agent="faults")
                    except ResultTimeout:
                        run.lost.append(task_id)
                        return
                if isinstance(res, TaskCompleted):
                    run.completed += 1
                    out: dict[str, Any] = json.loads(res.output)
                    run.unknown += sum("outcome_unknown" in str(v) for v in out.values())
                elif isinstance(res, TaskFailed):
                    run.failed[res.reason] += 1

            await asyncio.gather(*(result(t) for t in [*run.acked, *run.maybe]))
            run.seconds = time.monotonic() - started
            # a "maybe stored" task that has no result was not stored: not lost
            run.lost = [t for t in run.lost if t in run.acked]
            await client.close()
        finally:
            for w in workers:
                w.kill(signal.SIGTERM)
            if server is not None:
                server.stop()
            if cluster is not None:
                cluster.stop()
        run.log_lines = {w.name: w.lines() for w in workers}
        if args.keep_logs:
            keep = Path(args.keep_logs) / name
            keep.mkdir(parents=True, exist_ok=True)
            for w in workers:
                shutil.copy(w.err, keep / w.err.name)
        run.starts = {m: collections.Counter() for m in (*MODES, *(f"{m}-effect" for m in MODES))}
        if fault_log.exists():
            for line in fault_log.read_text().splitlines():
                mode, key, _pid = line.split()
                run.starts[mode][key] += 1
    return run


def report(run: Run) -> None:
    print(f"\nscenario {run.scenario}: {run.seconds:.1f}s")
    print(f"  tasks: submitted {run.submitted}, acknowledged {len(run.acked)}, submit unconfirmed "
          f"{len(run.maybe)}, refused {run.refused}; completed {run.completed}, failed {dict(run.failed) or 0}, "
          f"LOST {len(run.lost)}{' ' + ','.join(run.lost[:10]) if run.lost else ''}")
    print(f"  {'tool mode':<14} {'calls':>6} {'executions':>11} {'duplicates':>11} {'effects':>8} "
          f"{'dup. effects':>13} {'outcome_unknown':>16}")
    for mode in MODES:
        c, e = run.starts[mode], run.starts[f"{mode}-effect"]
        dup = sum(n - 1 for n in c.values() if n > 1)
        dup_e = sum(n - 1 for n in e.values() if n > 1)
        unk = run.unknown if mode == "at_most_once" else 0
        print(f"  {mode:<14} {len(c):>6} {sum(c.values()):>11} {dup:>11} {sum(e.values()):>8} {dup_e:>13} {unk:>16}")
    print(f"  worker stderr lines: {run.log_lines}")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scenario", choices=("broker", "worker", "cluster", "both", "all"), default="both",
                   help="both = broker and worker; all = those and cluster")
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0, help="tasks submitted per second")
    p.add_argument("--kill-at", type=float, default=4.0, help="seconds into the load")
    p.add_argument("--down", type=float, default=15.0, help="seconds the broker stays down")
    p.add_argument("--ack-wait", type=float, default=2.0, help="AGENTSTREAM_ACK_WAIT in the worker scenario")
    p.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the results")
    p.add_argument("--keep-logs", metavar="DIR", help="copy each worker's stderr here")
    args = p.parse_args()
    names = {"both": ("broker", "worker"), "all": ("broker", "worker", "cluster")}.get(args.scenario,
                                                                                    (args.scenario,))
    runs = []
    for name in names:
        print(f"scenario {name}: {args.tasks} tasks at {args.rate:g}/s", flush=True)
        runs.append(await scenario(name, args))
    for run in runs:
        report(run)


if __name__ == "__main__":
    asyncio.run(main())
