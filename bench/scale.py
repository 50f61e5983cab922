#!/usr/bin/env python
"""Scale-out: real worker processes (``agentstream worker``) against one
nats-server, for 1/2/4 agent replicas and 1/2 tool replicas, on two workloads.

- ``w1``: CPU-bound (zero-latency model, no-op tools; see bench/w1.py). On a
  2-core machine replicas cannot add throughput; they must not cost any.
- ``latency``: each model turn 50 ms, each tool 20 ms (simulated), each agent
  replica capped at ``--cap`` steps in flight per consumer
  (``AGENTSTREAM_MAX_IN_FLIGHT``), like a fixed number of runs per instance:
  throughput should grow with the agent replicas.

Per configuration: a fresh nats-server, the workers, an unmeasured warm-up,
then ``--tasks`` tasks at ``--inflight`` in flight (submit with
``AgentClient.submit``, results on one plain subscription), then ``--isolated``
tasks one at a time with random gaps (the latency an isolated task sees).
Prints tasks/s, p50/p95/p99, CPU per process, and each configuration's ratio to
the first (1 agent + 1 tool replica). ``--rounds 2`` runs every configuration
twice, interleaved, and reports means (a shared machine is noisy).

    python bench/scale.py                                  # both workloads, all configurations
    python bench/scale.py --workload w1 --configs 1+1,2+2 --rounds 2
    python bench/scale.py --workload latency --configs 1+1,2+1,4+1 --json scale.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from agentstream import AgentClient
from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskCompleted
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.observability.views import percentile

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
AGENT = "w1"


def say(line: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {line}", flush=True)


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a process, children excluded (Linux)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def agentstream_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("agentstream")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "agentstream.runtime.interfaces.cli"]


@dataclass
class Workers:
    """``agentstream worker`` processes, each with its own log file."""

    url: str
    app: str
    tmp: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, role: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
        # PYTHONPATH from the caller first: `PYTHONPATH=/tmp/old-agentstream
        # python bench/scale.py` runs another version of the package side by side.
        env.update({"AGENTSTREAM_NATS_URL": self.url, "AGENTSTREAM_APP": self.app,
                    "AGENTSTREAM_DATA_DIR": str(self.tmp / f"{role}.data"), "AGENTSTREAM_WORKER_ID": role,
                    "AGENTSTREAM_TRACING": "0", "AGENTSTREAM_METRICS": "0", "AGENTSTREAM_LOG_LEVEL": "WARNING",
                    "AGENTSTREAM_SHUTDOWN_TIMEOUT": "5",
                    "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(BENCH_DIR), str(REPO)])})
        env.update(self.env_extra)
        return env

    def start(self, role: str, args: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{role}.log", "wb")  # noqa: SIM115 - the child owns it
        env = self.env(role)
        env.update(extra or {})
        proc = subprocess.Popen([*agentstream_cmd(), "worker", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.tmp))
        out.close()
        self.procs[role] = proc
        return proc

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for role, proc in self.procs.items():
            log = self.tmp / f"{role}.log"
            while "agentstream worker " not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {role} did not start:\n{log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)

    def stop(self, role: str, timeout: float = 15.0) -> None:
        proc = self.procs.pop(role)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        for role in list(self.procs):
            self.stop(role)

    def log_tail(self, role: str, n: int = 20) -> str:
        return "\n".join((self.tmp / f"{role}.log").read_text(errors="replace").splitlines()[-n:])


class Driver:
    """Submits tasks with AgentClient and awaits their results on one plain
    subscription to ``agents.w1.results.*`` (no per-task consumer or lookup)."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client
        self.waiting: dict[str, asyncio.Future[bytes]] = {}
        self.sub: Any = None

    async def start(self) -> None:
        async def on_result(msg: Msg) -> None:
            fut = self.waiting.pop(msg.subject.rsplit(".", 1)[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg.data)

        self.sub = await self.client.nc.subscribe(subjects.results(AGENT, "*"), cb=on_result)

    async def one(self, task_id: str, text: str, timeout: float = 120.0) -> float | None:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[task_id] = fut
        t0 = time.perf_counter()
        await self.client.submit(AGENT, text, task_id=task_id)
        try:
            data = await asyncio.wait_for(fut, timeout=timeout)
        except TimeoutError:
            self.waiting.pop(task_id, None)
            return None
        dt = time.perf_counter() - t0
        res = codec.task_result.decode(data)
        return dt if isinstance(res, TaskCompleted) and res.tool_calls == 3 else None

    async def run(self, tag: str, n: int, inflight: int) -> tuple[float, list[float], int]:
        sem = asyncio.Semaphore(inflight)
        lat: list[float] = []
        failed = 0

        async def go(i: int) -> None:
            nonlocal failed
            async with sem:
                dt = await self.one(f"{tag}-{i:06d}", f"scale task {i}")
                if dt is None:
                    failed += 1
                else:
                    lat.append(dt * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(go(i) for i in range(n)))
        return time.perf_counter() - t0, lat, failed

    async def isolated(self, tag: str, n: int, seed: int) -> list[float]:
        """One task at a time, a random 50-600 ms pause before each: what an
        isolated task waits, whatever the fetch cycles of idle consumers."""
        rng = random.Random(seed)
        lat: list[float] = []
        for i in range(n):
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            dt = await self.one(f"{tag}-iso-{i:04d}", f"isolated task {i}")
            if dt is not None:
                lat.append(dt * 1000)
        return lat


async def hop_gaps(client: AgentClient, tag: str) -> list[float]:
    """For each isolated task: ms from its last tool result stored in EVENTS to
    its result stored in RESULTS (the step the issue saw stall 340-480 ms),
    from the streams' own timestamps."""
    last_tool: dict[str, float] = {}
    for raw in await scan(client.js, subjects.EVENTS_STREAM, subjects.stored(f"agents.{AGENT}.events.*")):
        tid = raw.subject.rsplit(".", 1)[1]
        if "-iso-" in tid and tid.startswith(tag):
            last_tool[tid] = max(last_tool.get(tid, 0.0), raw.time)
    gaps = []
    for raw in await scan(client.js, "RESULTS", f"agents.{AGENT}.results.*"):
        tid = raw.subject.rsplit(".", 1)[1]
        if tid in last_tool:
            gaps.append(1000 * (raw.time - last_tool[tid]))
    return gaps


async def sample_lag(client: AgentClient, peak: dict[str, tuple[int, int]], period_s: float = 0.5) -> None:
    """The autoscaling signal during the run: peak pending and ack pending per durable."""
    try:
        from agentstream.runtime.observability.lag import read_lag
    except ImportError:  # an older agentstream on PYTHONPATH (a side-by-side run)
        return
    while True:
        await asyncio.sleep(period_s)
        try:
            lags = await read_lag(client.js)
        except Exception:  # noqa: BLE001 - a missed sample is fine
            continue
        for c in lags:
            p, a = peak.get(c.durable, (0, 0))
            peak[c.durable] = (max(p, c.pending), max(a, c.ack_pending))


@dataclass
class Row:
    workload: str
    agents: int
    tools: int
    round: int
    tasks: int
    failed: int
    wall_s: float
    lat: list[float]
    iso: list[float]
    gaps: list[float]
    cpu: dict[str, float]  # role -> CPU seconds during the measured run
    # Per task over the whole configuration (warm-up and isolated tasks too), as
    # the agent workers log them at exit; None: an agentstream that does not.
    reads: float | None = None
    conflicts: float | None = None

    @property
    def tps(self) -> float:
        return self.tasks / self.wall_s if self.wall_s else 0.0

    def cpu_ms_per_task(self) -> float:
        return 1000 * sum(self.cpu.values()) / self.tasks if self.tasks else 0.0

    def agent_cpu_ms_per_task(self) -> float:
        agents = sum(v for k, v in self.cpu.items() if k.startswith("agent"))
        return 1000 * agents / self.tasks if self.tasks else 0.0


_ENGINE_LINE = re.compile(r"engine \S+: (\d+) session reads, (\d+) compare-and-set conflicts")


def engine_counts(workers: Workers, roles: list[str]) -> tuple[int, int] | None:
    """Session reads and compare-and-set conflicts the agent workers logged at exit."""
    reads = conflicts = 0
    for role in roles:
        m = _ENGINE_LINE.search((workers.tmp / f"{role}.log").read_text(errors="replace"))
        if m is None:
            return None
        reads += int(m.group(1))
        conflicts += int(m.group(2))
    return reads, conflicts


async def run_config(workload: str, agents: int, tools: int, args: argparse.Namespace, rnd: int) -> Row:
    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{workload}-{agents}x{tools}-"))
    broker = EmbeddedNats(store_dir=str(tmp / "nats"))
    await broker.astart()
    assert broker.proc is not None
    workers = Workers(url=broker.url, app=f"scale_app:{workload}", tmp=tmp)
    agent_env = {"AGENTSTREAM_MAX_IN_FLIGHT": str(args.cap)} if workload == "latency" else {}
    agent_env["AGENTSTREAM_LOG_LEVEL"] = "INFO"  # the engine's counters, logged at exit
    client = await AgentClient.connect(broker.url, telemetry=False)
    try:
        for i in range(agents):
            workers.start(f"agent{i + 1}", ["--agent", AGENT], agent_env)
        for i in range(tools):
            workers.start(f"tools{i + 1}", ["--tools", "all"])
        await asyncio.to_thread(workers.wait_ready)
        driver = Driver(client)
        await driver.start()
        inflight = args.inflight if workload == "w1" else args.latency_inflight
        tag = f"{workload}-{agents}x{tools}-r{rnd}"
        await driver.run(f"{tag}-warm", args.warmup, min(inflight, args.warmup))
        pids = {role: p.pid for role, p in workers.procs.items()}
        pids["nats-server"] = broker.proc.pid
        cpu0 = {role: proc_cpu_s(pid) for role, pid in pids.items()}
        me0 = time.process_time()
        n = args.tasks if workload == "w1" else args.latency_tasks
        peak: dict[str, tuple[int, int]] = {}
        sampler = asyncio.create_task(sample_lag(client, peak))
        try:
            wall, lat, failed = await driver.run(tag, n, inflight)
        finally:
            sampler.cancel()
        cpu = {role: proc_cpu_s(pid) - cpu0[role] for role, pid in pids.items()}
        cpu["client"] = time.process_time() - me0
        iso = await driver.isolated(tag, args.isolated, seed=rnd) if args.isolated else []
        gaps = await hop_gaps(client, tag) if args.isolated else []
        row = Row(workload, agents, tools, rnd, len(lat), failed, wall, lat, iso, gaps, cpu)
        roles = [f"agent{i + 1}" for i in range(agents)]
        for role in roles:
            await asyncio.to_thread(workers.stop, role)
        counts = engine_counts(workers, roles)
        if counts is not None:
            total = args.warmup + n + len(iso)
            row.reads, row.conflicts = counts[0] / total, counts[1] / total
        say("  peak consumer lag (pending / ack pending): "
            + ", ".join(f"{d}={p}/{a}" for d, (p, a) in sorted(peak.items())))
        say(f"{workload} {agents}+{tools} (round {rnd}): {row.tps:,.1f} tasks/s, p50 {percentile(lat, 50):.1f} "
            f"p99 {percentile(lat, 99):.1f} ms" + (f", isolated p50 {percentile(iso, 50):.1f} max {max(iso):.1f} ms"
                                                   f" (last tool result -> result max {max(gaps):.1f} ms)"
                                                   if iso and gaps else "") + (f", {failed} FAILED" if failed else ""))
        return row
    finally:
        await client.close()
        await asyncio.to_thread(workers.stop_all)
        await asyncio.to_thread(broker.stop)
        # the logs stay for a look; the broker's store (hundreds of MB a run) does not
        shutil.rmtree(tmp / "nats", ignore_errors=True)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def report(rows: list[Row]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for workload in dict.fromkeys(r.workload for r in rows):
        mine = [r for r in rows if r.workload == workload]
        configs = list(dict.fromkeys((r.agents, r.tools) for r in mine))
        base = None
        print()
        print(f"workload {workload}: " + ("CPU-bound W1 (zero-latency model, no-op tools)" if workload == "w1" else
                                          "model turn 50 ms, tool 20 ms, each agent replica capped"))
        hdr = (f"{'agents+tools':<13}{'tasks/s':>9}{'x 1+1':>7}{'p50':>8}{'p95':>8}{'p99':>8}{'p99 x':>7}"
               f"{'iso p50':>9}{'iso max':>9}{'gap max':>9}{'CPU ms/task':>12}{'agents':>7}{'reads':>6}"
               f"{'CAS x':>6}  CPU s per process (measured run)")
        print(hdr)
        print("-" * len(hdr))
        for agents, tools in configs:
            rs = [r for r in mine if (r.agents, r.tools) == (agents, tools)]
            lat = [x for r in rs for x in r.lat]
            iso = [x for r in rs for x in r.iso]
            gaps = [x for r in rs for x in r.gaps]
            tps = mean([r.tps for r in rs])
            p99 = percentile(lat, 99)
            if base is None:
                base = (tps, p99)
            cpu: dict[str, float] = {}
            for r in rs:
                for k, v in r.cpu.items():
                    cpu[k] = cpu.get(k, 0.0) + v / len(rs)
            d = {"workload": workload, "agents": agents, "tools": tools, "rounds": len(rs),
                 "tasks_per_s": round(tps, 1), "ratio": round(tps / base[0], 3) if base[0] else None,
                 "p50_ms": round(percentile(lat, 50), 1), "p95_ms": round(percentile(lat, 95), 1),
                 "p99_ms": round(p99, 1), "p99_ratio": round(p99 / base[1], 3) if base[1] else None,
                 "isolated_p50_ms": round(percentile(iso, 50), 1) if iso else None,
                 "isolated_max_ms": round(max(iso), 1) if iso else None,
                 "isolated_step_gap_p50_ms": round(percentile(gaps, 50), 1) if gaps else None,
                 "isolated_step_gap_max_ms": round(max(gaps), 1) if gaps else None,
                 "cpu_ms_per_task": round(mean([r.cpu_ms_per_task() for r in rs]), 2),
                 "agent_cpu_ms_per_task": round(mean([r.agent_cpu_ms_per_task() for r in rs]), 2),
                 "session_reads_per_task": _mean_or_none([r.reads for r in rs]),
                 "cas_conflicts_per_task": _mean_or_none([r.conflicts for r in rs]),
                 "cpu_s": {k: round(v, 2) for k, v in cpu.items()}, "failed": sum(r.failed for r in rs)}
            out.append(d)
            iso_s = (f"{d['isolated_p50_ms']:>9.1f}{d['isolated_max_ms']:>9.1f}"
                     + (f"{d['isolated_step_gap_max_ms']:>9.1f}" if gaps else f"{'-':>9}")
                     if iso else f"{'-':>9}{'-':>9}{'-':>9}")
            print(f"{agents}+{tools:<11}{tps:>9.1f}{d['ratio']:>7.2f}{d['p50_ms']:>8.1f}{d['p95_ms']:>8.1f}"
                  f"{d['p99_ms']:>8.1f}{d['p99_ratio']:>7.2f}{iso_s}{d['cpu_ms_per_task']:>12.2f}"
                  f"{d['agent_cpu_ms_per_task']:>7.2f}{_fmt(d['session_reads_per_task'])}"
                  f"{_fmt(d['cas_conflicts_per_task'])}  "
                  + " ".join(f"{k}={v:.1f}" for k, v in sorted(cpu.items()))
                  + (f"  FAILED {d['failed']}" if d["failed"] else ""))
    return out


def _mean_or_none(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return round(mean(known), 2) if known and len(known) == len(xs) else None


def _fmt(x: object) -> str:
    return f"{x:>6.2f}" if isinstance(x, float) else f"{'-':>6}"


def parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        a, _, t = part.strip().partition("+")
        out.append((int(a), int(t or 1)))
    return out


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    say(f"{os.cpu_count()} cores; workloads {args.workload}; configs {args.configs}; rounds {args.rounds}")
    rows: list[Row] = []
    for rnd in range(1, args.rounds + 1):
        for workload in args.workload.split(","):
            for agents, tools in parse_configs(args.configs):
                rows.append(await run_config(workload, agents, tools, args, rnd))
    out = report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        say(f"wrote {args.json}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="w1,latency", help="w1, latency or both (default)")
    ap.add_argument("--configs", default="1+1,2+1,4+1,1+2,2+2,4+2",
                    help="agent+tool replica counts, comma-separated; the first is the baseline (default: "
                         "1+1,2+1,4+1,1+2,2+2,4+2)")
    ap.add_argument("--tasks", type=int, default=3000, help="W1 tasks per configuration (default 3000)")
    ap.add_argument("--inflight", type=int, default=32, help="W1 tasks in flight (default 32)")
    ap.add_argument("--latency-tasks", type=int, default=1500, help="latency tasks per configuration (default 1500)")
    ap.add_argument("--latency-inflight", type=int, default=64,
                    help="latency tasks in flight from the client (default 64: more than 4 capped replicas take)")
    ap.add_argument("--cap", type=int, default=4,
                    help="latency workload: steps in flight per consumer of an agent replica (default 4)")
    ap.add_argument("--warmup", type=int, default=100, help="unmeasured warm-up tasks (default 100)")
    ap.add_argument("--isolated", type=int, default=20, help="isolated tasks after each run (default 20; 0: none)")
    ap.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, interleaved")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
