#!/usr/bin/env python
"""W1: one task = a model turn asking for 3 tools at once, 3 no-op tools run in
parallel, a second model turn that answers. Zero-latency scripted model.

Measures the agentstream runtime (in process, against one embedded
nats-server) and the FLOOR: the same durable work per task done with bare
nats-py, no framework. Both in two modes: sequential (1 in flight) and N in
flight (default 32). See bench/README.md for how to read the figures.

    python bench/w1.py [--tasks 1000] [--seq-tasks 200] [--inflight 32] [--tracing off,on] [--json out.json]

With --tracing (default off,on) the runtime runs once without telemetry and once
with tracing + metrics on (spans to the TELEMETRY stream), same workload, and
prints the throughput ratio on/off.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import json
import logging
import os
import platform
import pstats
import random
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from agentstream import (
    AgentClient,
    App,
    FunctionModel,
    ModelRequest,
    Runtime,
    Settings,
    TaskCompleted,
    answer,
    calls,
    tool,
    tool_results,
)
from agentstream.contracts import codec, subjects
from agentstream.runtime.adapters import js_ack
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats, find_nats_server
from agentstream.runtime.config.auth import NatsAuth
from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.ports import Entry
from agentstream.runtime.observability.telemetry_config import TelemetryConfig
from agentstream.runtime.observability.views import percentile

AGENT = "w1"
MODEL_STEPS_PER_TASK = 2
TOOLS_PER_TASK = 3


def say(line: str) -> None:
    print(f"[w1 {time.strftime('%H:%M:%S')}] {line}", flush=True)


# ============================================================== the W1 app


@tool
async def noop_a(n: int) -> dict[str, object]:
    """No-op tool A: returns at once.

    Args:
        n: Any number; echoed back.
    """
    return {"tool": "a", "n": n}


@tool
async def noop_b(n: int) -> dict[str, object]:
    """No-op tool B: returns at once.

    Args:
        n: Any number; echoed back.
    """
    return {"tool": "b", "n": n}


@tool
async def noop_c(n: int) -> dict[str, object]:
    """No-op tool C: returns at once.

    Args:
        n: Any number; echoed back.
    """
    return {"tool": "c", "n": n}


def w1_script(request: ModelRequest) -> Any:
    """Turn 1: ask for all three tools at once. Turn 2 (results in): answer."""
    if tool_results(request):
        return answer("done: a, b and c ran")
    return calls(("noop_a", {"n": 1}), ("noop_b", {"n": 2}), ("noop_c", {"n": 3}))


def build_app() -> App:
    app = App()
    app.agent(AGENT, "Call noop_a, noop_b and noop_c at once, then answer in one line.",
              tools=[noop_a, noop_b, noop_c], scripted=lambda: FunctionModel(w1_script, name="w1-scripted"))
    return app


def task_inputs(n: int, seed: int) -> list[str]:
    """Deterministic task inputs (fixed length, seeded)."""
    rng = random.Random(seed)
    words = ["order", "refund", "status", "ship", "invoice", "address", "phone", "return"]
    return [f"w1 #{i:06d}: " + " ".join(rng.choice(words) for _ in range(8)) for i in range(n)]


# ============================================================== measuring


@dataclasses.dataclass
class PhaseResult:
    system: str
    mode: str
    inflight: int
    tasks: int
    failures: int
    wall_s: float
    latencies_ms: list[float]
    py_cpu_s: float
    server_cpu_s: float | None
    ops: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.wall_s if self.wall_s > 0 else 0.0

    def pct(self, p: float) -> float:
        return percentile(self.latencies_ms, p)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "system": self.system, "mode": self.mode, "inflight": self.inflight, "tasks": self.tasks,
            "failures": self.failures, "wall_s": round(self.wall_s, 4),
            "tasks_per_s": round(self.tasks_per_s, 2),
            "model_steps_per_s": round(self.tasks_per_s * MODEL_STEPS_PER_TASK, 2),
            "latency_ms": {"p50": round(self.pct(50), 3), "p95": round(self.pct(95), 3),
                           "p99": round(self.pct(99), 3), "mean": round(sum(lat) / len(lat), 3) if lat else None,
                           "min": round(min(lat), 3) if lat else None, "max": round(max(lat), 3) if lat else None},
            "py_cpu_ms_per_task": round(1000 * self.py_cpu_s / self.tasks, 4) if self.tasks else None,
            "server_cpu_ms_per_task": (round(1000 * self.server_cpu_s / self.tasks, 4)
                                       if self.server_cpu_s is not None and self.tasks else None),
            "ops_per_task": {k: round(v / self.tasks, 3) for k, v in sorted(self.ops.items())} if self.ops else {},
        }


def merge(rows: Sequence[PhaseResult]) -> PhaseResult:
    """One row for several runs of the same system and mode (--rounds):
    tasks, wall time and CPU add up, latencies pool."""
    first = rows[0]
    srv = [r.server_cpu_s for r in rows]
    ops: Counter[str] = Counter()
    for r in rows:
        ops.update(r.ops)
    return PhaseResult(system=first.system, mode=first.mode, inflight=first.inflight,
                       tasks=sum(r.tasks for r in rows), failures=sum(r.failures for r in rows),
                       wall_s=sum(r.wall_s for r in rows), latencies_ms=[x for r in rows for x in r.latencies_ms],
                       py_cpu_s=sum(r.py_cpu_s for r in rows),
                       server_cpu_s=None if any(x is None for x in srv) else sum(x for x in srv if x is not None),
                       ops=dict(ops))


def proc_cpu_s(pid: int) -> float | None:
    """utime+stime of another process (the nats-server child), Linux only."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def drive(one_task: Callable[[int], Awaitable[float | None]], n: int, inflight: int
                ) -> tuple[float, list[float], int]:
    """Run ``n`` tasks with at most ``inflight`` at once; each coroutine returns
    its latency in seconds (None = failed). Returns (wall s, latencies ms, failures)."""
    sem = asyncio.Semaphore(inflight)
    lat: list[float] = []
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            try:
                dt = await one_task(i)
            except Exception as exc:  # noqa: BLE001 - count it, keep measuring
                logging.getLogger("w1").warning("task %d failed: %s: %s", i, type(exc).__name__, exc)
                dt = None
            if dt is None:
                failures += 1
            else:
                lat.append(dt * 1000.0)

    t0 = time.perf_counter()
    if inflight == 1:
        for i in range(n):  # plainly sequential: submit, await result, next
            await one(i)
    else:
        await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, lat, failures


async def measure(system: str, mode: str, one_task: Callable[[int], Awaitable[float | None]], n: int,
                  inflight: int, server_pid: int | None, ops: Meter | None = None,
                  profiler: cProfile.Profile | None = None) -> PhaseResult:
    say(f"{system}: {mode}: {n} tasks, {inflight} in flight ...")
    before_ops = Counter(ops.counts) if ops is not None else Counter()
    cpu0 = time.process_time()
    srv0 = proc_cpu_s(server_pid) if server_pid else None
    if profiler is not None:
        profiler.enable()
    wall, lat, failures = await drive(one_task, n, inflight)
    if profiler is not None:
        profiler.disable()
    cpu1 = time.process_time()
    srv1 = proc_cpu_s(server_pid) if server_pid else None
    delta = dict(ops.counts - before_ops) if ops is not None else {}
    res = PhaseResult(system=system, mode=mode, inflight=inflight, tasks=len(lat), failures=failures, wall_s=wall,
                      latencies_ms=lat, py_cpu_s=cpu1 - cpu0,
                      server_cpu_s=(srv1 - srv0) if srv0 is not None and srv1 is not None else None, ops=delta)
    say(f"{system}: {mode}: {res.tasks_per_s:,.0f} tasks/s, p50 {res.pct(50):.2f} ms"
        + (f", {failures} FAILED" if failures else ""))
    return res


# ============================================================== runtime side


class Meter:
    """Counts the runtime's KV and bus operations (and their payload bytes) by
    wrapping the engine's ports after start. Measurement only; adds a Python
    call per operation."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.nbytes: Counter[str] = Counter()

    def add(self, kind: str, size: int | None = None) -> None:
        self.counts[kind] += 1
        if size is not None:
            self.nbytes[kind] += size

    def mean_bytes(self, kind: str) -> int:
        c = self.counts.get(kind, 0)
        return int(self.nbytes.get(kind, 0) / c) if c else 0


class CountingStore:
    def __init__(self, inner: Any, meter: Meter, name: str) -> None:
        self.inner, self.meter, self.name = inner, meter, name

    async def get(self, key: str) -> Any:
        self.meter.add(f"kv.{self.name}.get")
        return await self.inner.get(key)

    async def create(self, key: str, value: bytes) -> int:
        self.meter.add(f"kv.{self.name}.create", len(value))
        try:
            return await self.inner.create(key, value)
        except Conflict:
            self.meter.add(f"kv.{self.name}.conflict")
            raise

    async def update(self, key: str, value: bytes, revision: int) -> int:
        self.meter.add(f"kv.{self.name}.update", len(value))
        try:
            return await self.inner.update(key, value, revision)
        except Conflict:
            self.meter.add(f"kv.{self.name}.conflict")
            raise

    async def put(self, key: str, value: bytes) -> int:
        self.meter.add(f"kv.{self.name}.put", len(value))
        return await self.inner.put(key, value)

    async def delete(self, key: str) -> None:
        self.meter.add(f"kv.{self.name}.delete")
        await self.inner.delete(key)

    async def keys(self) -> Sequence[str]:
        self.meter.add(f"kv.{self.name}.keys")
        return await self.inner.keys()

    async def items(self) -> list[tuple[str, Entry]]:
        self.meter.add(f"kv.{self.name}.items")
        return await self.inner.items()


def subject_kind(subject: str) -> str:
    parts = subject.split(".")
    if parts[0] == "tools":
        return "tool_call"
    if len(parts) >= 3 and parts[0] == "agents":
        return {"events": "tool_result", "progress": "progress", "results": "result",
                "tasks": "task"}.get(parts[2], parts[2])
    return parts[0]


class CountingBus:
    def __init__(self, inner: Any, meter: Meter) -> None:
        self.inner, self.meter = inner, meter

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        self.meter.add(f"publish.{subject_kind(subject)}", len(payload))
        await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)


def instrument(rt: Runtime, meter: Meter) -> None:
    for engine in rt.engines.values():
        engine.sessions = CountingStore(engine.sessions, meter, "sessions")
        engine.deadlines = CountingStore(engine.deadlines, meter, "deadlines")
        engine.conversations = CountingStore(engine.conversations, meter, "conversations")
        engine.bus = CountingBus(engine.bus, meter)
    for runner in rt.runners:
        runner.bus = CountingBus(runner.bus, meter)


async def settle(js: JetStreamContext, wait: bool, timeout: float = 15.0) -> None:
    """Ephemeral ordered consumers on RESULTS (``AgentClient.events``/watch) are
    removed only after ~5 s of inactivity and the server caps consumers per
    stream; let any from the previous phase expire so each phase starts clean.
    (``AgentClient.result`` itself creates none: a plain subscription + direct get.)"""
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await js.stream_info("RESULTS")
        if not info.state.consumer_count:
            return
        await asyncio.sleep(0.5)
    say("runtime: RESULTS still has ephemeral consumers; measuring anyway")


async def run_runtime(url: str, args: argparse.Namespace, inputs: list[str], server_pid: int | None,
                      meter: Meter, tracing: bool = False, run_no: int = 0, *, data_dir: Path | None = None,
                      client_auth: NatsAuth | None = None, system: str | None = None
                      ) -> tuple[list[PhaseResult], dict[str, int], str | None]:
    """``data_dir``/``client_auth``: where the workers find their role's
    credentials (``<data_dir>/nats/auth``) and the client's (bench/auth.py)."""
    settings = dataclasses.replace(Settings.from_env({}), nats_url=url,
                                   data_dir=data_dir or Path(tempfile.mkdtemp(prefix="w1-rt-")))
    # Tracing on: the defaults (every span to the TELEMETRY stream, metrics on),
    # plus the process's OTEL_* variables; off: no telemetry work at all.
    tconf = TelemetryConfig.from_env() if tracing else TelemetryConfig.disabled()
    system = system or ("runtime+trace" if tracing else "runtime")
    rt = Runtime(settings=settings, app=build_app(), agents=[AGENT], tools="all", telemetry_config=tconf)
    say(f"{system}: starting (agent w1 + tools noop_a, noop_b, noop_c, in process) ...")
    await rt.start()
    instrument(rt, meter)
    client = await AgentClient.connect(url, telemetry=tracing, auth=client_auth)
    results: list[PhaseResult] = []
    profile_text: str | None = None
    # --results sub: one plain subscription to the RESULTS subjects (what the
    # floor does) instead of AgentClient.result (subscription + direct get per task).
    waiting: dict[str, asyncio.Future[bytes]] = {}

    async def on_result(msg: Msg) -> None:
        fut = waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    rsub = await client.nc.subscribe(subjects.results(AGENT, "*"), cb=on_result) if args.results == "sub" else None

    def one_task_factory(tag: str) -> Callable[[int], Awaitable[float | None]]:
        async def one_task(i: int) -> float | None:
            tid = f"w1-rt{run_no}-{tag}-{i:06d}"
            if rsub is not None:
                fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                waiting[tid] = fut
            t0 = time.perf_counter()
            await client.submit(AGENT, inputs[i % len(inputs)], task_id=tid)
            if rsub is None:
                res: Any = await client.result(tid, timeout=60)
            else:
                res = codec.task_result.decode(await asyncio.wait_for(fut, timeout=60))
            dt = time.perf_counter() - t0
            if not isinstance(res, TaskCompleted) or res.steps != MODEL_STEPS_PER_TASK \
                    or res.tool_calls != TOOLS_PER_TASK:
                logging.getLogger("w1").warning("runtime task %s: unexpected result %r", tid, res)
                return None
            return dt
        return one_task

    try:
        say(f"runtime: warm-up, {args.warmup} tasks (not measured) ...")
        await drive(one_task_factory("warm"), args.warmup, min(args.inflight, args.warmup) or 1)
        await settle(client.js, rsub is None)
        results.append(await measure(system, "sequential", one_task_factory("seq"), args.seq_tasks, 1,
                                     server_pid, meter))
        await settle(client.js, rsub is None)
        profiler = cProfile.Profile() if args.profile else None
        results.append(await measure(system, f"{args.inflight} in flight", one_task_factory("par"), args.tasks,
                                     args.inflight, server_pid, meter, profiler))
        if profiler is not None:
            profiler.dump_stats(args.profile)
            buf = io.StringIO()
            st = pstats.Stats(profiler, stream=buf).strip_dirs()
            st.sort_stats("tottime").print_stats(25)
            st.sort_stats("cumulative").print_stats(40)
            profile_text = buf.getvalue()
        # Payload sizes the floor should match, from what the runtime really wrote.
        sizes = {k: meter.mean_bytes(k) for k in ("kv.sessions.create", "kv.sessions.update", "publish.tool_call",
                                                 "publish.tool_result", "publish.progress", "publish.result")}
        assert client.js is not None
        task_msg = await client.js.get_msg("TASKS", subject=subjects.tasks(AGENT))
        sizes["publish.task"] = len(task_msg.data or b"")
    finally:
        say(f"{system}: stopping ...")
        if rsub is not None:
            await rsub.unsubscribe()
        await client.close()
        await rt.stop()
    return results, sizes, profile_text


# ============================================================== the floor (bare nats-py)

FLOOR = "FLOOR"
FLOOR_BUCKET = "FLOOR_sessions"
FLOOR_TOOLS = ("noop_a", "noop_b", "noop_c")


class FTask(msgspec.Struct, kw_only=True):
    task_id: str
    agent: str
    input: str
    submitted_at: float
    pad: str = ""


class FCall(msgspec.Struct, kw_only=True):
    task_id: str
    step: int
    call_id: str
    tool: str
    arguments: dict[str, int]
    reply_subject: str
    pad: str = ""


class FToolResult(msgspec.Struct, kw_only=True):
    task_id: str
    step: int
    call_id: str
    tool: str
    ok: bool
    result: dict[str, object]
    pad: str = ""


class FProgress(msgspec.Struct, kw_only=True):
    task_id: str
    step: int
    kind: str
    pad: str = ""


class FResult(msgspec.Struct, kw_only=True):
    task_id: str
    output: str
    steps: int
    tool_calls: int
    pad: str = ""


class FState(msgspec.Struct, kw_only=True):
    task_id: str
    status: str
    step: int
    calls: list[str] = []
    results: list[str] = []
    pad: str = ""


class Padder:
    """Pads each floor payload kind to the runtime's mean payload size for it,
    so both systems move the same bytes."""

    def __init__(self, targets: dict[str, int]) -> None:
        self.targets = targets
        self.pads: dict[str, str] = {}
        self.enc = msgspec.json.Encoder()

    def encode(self, kind: str, obj: msgspec.Struct) -> bytes:
        pad = self.pads.get(kind)
        if pad is None:
            base = len(self.enc.encode(obj))
            pad = "x" * max(0, self.targets.get(kind, 0) - base)
            self.pads[kind] = pad
        obj.pad = pad  # type: ignore[attr-defined]
        return self.enc.encode(obj)


async def provision_floor(js: JetStreamContext) -> None:
    for sd in subjects.STREAMS:
        if sd.name in ("DEADLETTER", "TELEMETRY"):
            continue
        await js.add_stream(StreamConfig(
            name=f"{FLOOR}_{sd.name}", subjects=[f"{FLOOR}.{s}" for s in sd.subjects],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, max_age=sd.max_age_s, num_replicas=1,
            duplicate_window=sd.duplicate_window_s, discard=DiscardPolicy.OLD, allow_direct=True))
    await js.create_key_value(KeyValueConfig(bucket=FLOOR_BUCKET, history=subjects.SESSIONS.history,
                                             ttl=subjects.SESSIONS.max_age_s, replicas=1,
                                             storage=StorageType.FILE))


async def pull_loop(js: JetStreamContext, stream: str, durable: str, subject: str,
                    handler: Callable[[Msg], Awaitable[None]], stop: asyncio.Event, started: asyncio.Event,
                    max_inflight: int = 64, lean: bool = False) -> None:
    """Bare durable consumer with a continuous pull: pull requests kept open for
    as many messages as there are free slots (topped up once a quarter is
    free), each message handled in its own task the moment it arrives, acked
    when done. The runtime's consumer loop does the same plus heartbeats,
    backoff and dead-lettering; nats-py's ``fetch(n)`` would hold the last
    message of a burst until its pull expires (see runtime/execution/pull.py)."""
    cfg = ConsumerConfig(durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                         deliver_policy=DeliverPolicy.ALL, ack_wait=30, max_deliver=5, max_ack_pending=-1)
    await js.add_consumer(stream, cfg)
    nc = js._nc
    inbox = nc.new_inbox()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
    inflight: set[asyncio.Task[None]] = set()
    asked = 0  # requested and not yet delivered
    wake = asyncio.Event()

    async def run(msg: Msg) -> None:
        await handler(msg)
        await msg.ack()

    def done(t: asyncio.Task[None]) -> None:
        inflight.discard(t)
        wake.set()

    def on_msg_now(msg: Msg) -> None:
        nonlocal asked
        if msg.headers and msg.headers.get("Status"):
            if msg.headers["Status"] in ("408", "409"):
                asked = max(0, asked - int(msg.headers.get("Nats-Pending-Messages", asked)))
                wake.set()
            return
        asked -= 1
        t = asyncio.create_task(run(msg))
        inflight.add(t)
        t.add_done_callback(done)

    async def on_msg(msg: Msg) -> None:
        on_msg_now(msg)

    # --floor lean: messages handled from the read loop, as the runtime's pull does.
    sub = await (js_ack.subscribe_inline(nc, inbox, on_msg_now) if lean else nc.subscribe(inbox, cb=on_msg))
    started.set()
    stopper = asyncio.create_task(stop.wait())
    stopper.add_done_callback(lambda _: wake.set())
    while not stop.is_set():
        want = max_inflight - len(inflight) - asked
        if want > 0 and (asked == 0 or want >= max_inflight // 4):
            await nc.publish(next_subject, json.dumps({"batch": want, "expires": 5_000_000_000}).encode(),
                             reply=inbox)
            asked += want
            continue
        wake.clear()
        await wake.wait()
    await sub.unsubscribe()
    if inflight:
        await asyncio.wait(inflight, timeout=5)


class FloorWorker:
    """Agent + tool workers with bare nats-py: the same durable work per task
    as the runtime's W1 (publishes with Nats-Msg-Id, KV compare-and-set)."""

    def __init__(self, js: JetStreamContext, kv: Any, padder: Padder, lean: bool = False) -> None:
        self.js, self.kv, self.p = js, kv, padder
        # --floor lean: the same messages through the ack multiplexer the
        # runtime uses (js_ack) instead of nats-py's js.publish / KeyValue.
        self.acks = js_ack.for_connection(js._nc) if lean else None
        # task id -> [revision, state, lock]: one process, so the revision is
        # known and no read precedes a compare-and-set.
        self.sessions: dict[str, list[Any]] = {}
        self.dec_task = msgspec.json.Decoder(FTask)
        self.dec_call = msgspec.json.Decoder(FCall)
        self.dec_result = msgspec.json.Decoder(FToolResult)

    async def pub(self, subject: str, data: bytes, msg_id: str) -> None:
        if self.acks is not None:
            await self.acks.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=10)
            return
        await self.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=10)

    async def kv_create(self, key: str, value: bytes) -> int:
        if self.acks is not None:
            return await self.kv_update(key, value, 0)
        return int(await self.kv.create(key, value))

    async def kv_update(self, key: str, value: bytes, last: int) -> int:
        if self.acks is not None:
            ack = await self.acks.publish(f"$KV.{FLOOR_BUCKET}.{key}", value, timeout=10,
                                          headers={"Nats-Expected-Last-Subject-Sequence": str(last)})
            return ack.seq
        return int(await self.kv.update(key, value, last=last))

    async def on_task(self, msg: Msg) -> None:
        task = self.dec_task.decode(msg.data)
        tid = task.task_id
        st = FState(task_id=tid, status="awaiting_model", step=1)
        rev = await self.kv_create(tid, self.p.encode("kv.sessions.create", st))
        # model turn 1 (zero latency): three tool calls at once
        names = FLOOR_TOOLS
        st.status, st.calls = "awaiting_tools", [f"call_1_{i}" for i in range(len(names))]
        rev = await self.kv_update(tid, self.p.encode("kv.sessions.update", st), rev)
        self.sessions[tid] = [rev, st, asyncio.Lock()]
        await self.pub(f"{FLOOR}.agents.{task.agent}.progress.{tid}",
                       self.p.encode("publish.progress", FProgress(task_id=tid, step=1, kind="turn")),
                       f"{tid}:1:turn")
        reply = f"{FLOOR}.agents.{task.agent}.events.{tid}"
        for i, name in enumerate(names):
            call = FCall(task_id=tid, step=1, call_id=st.calls[i], tool=name, arguments={"n": i + 1},
                         reply_subject=reply)
            await self.pub(f"{FLOOR}.tools.{name}.calls", self.p.encode("publish.tool_call", call),
                           f"{tid}:1:{call.call_id}")

    async def on_call(self, msg: Msg) -> None:
        call = self.dec_call.decode(msg.data)
        out = {"tool": call.tool[-1], "n": call.arguments["n"]}  # the no-op
        res = FToolResult(task_id=call.task_id, step=call.step, call_id=call.call_id, tool=call.tool, ok=True,
                          result=out)
        await self.pub(call.reply_subject, self.p.encode("publish.tool_result", res),
                       f"{call.task_id}:{call.step}:{call.call_id}:result")

    async def on_result(self, msg: Msg) -> None:
        res = self.dec_result.decode(msg.data)
        tid = res.task_id
        entry = self.sessions.get(tid)
        if entry is None:
            return  # finished already (a redelivery)
        async with entry[2]:
            rev, st = entry[0], entry[1]
            if res.call_id in st.results:
                return
            st.results.append(res.call_id)
            if len(st.results) == len(st.calls):
                st.status, st.step = "awaiting_model", 2
            entry[0] = rev = await self.kv_update(tid, self.p.encode("kv.sessions.update", st), rev)
            if len(st.results) < len(st.calls):
                return
            # model turn 2 (zero latency): the answer
            st.status = "completed"
            entry[0] = await self.kv_update(tid, self.p.encode("kv.sessions.update", st), rev)
            agent = msg.subject.split(".")[2]
            await self.pub(f"{FLOOR}.agents.{agent}.progress.{tid}",
                           self.p.encode("publish.progress", FProgress(task_id=tid, step=2, kind="turn")),
                           f"{tid}:2:turn")
            await self.pub(f"{FLOOR}.agents.{agent}.results.{tid}",
                           self.p.encode("publish.result", FResult(task_id=tid, output="done: a, b and c ran",
                                                                   steps=2, tool_calls=3)),
                           f"{tid}:result")
        self.sessions.pop(tid, None)


async def run_floor(url: str, args: argparse.Namespace, inputs: list[str], server_pid: int | None,
                    sizes: dict[str, int], run_no: int = 0, kind: str = "nats-py") -> list[PhaseResult]:
    say("floor: provisioning FLOOR_* streams and KV bucket, starting bare nats-py consumers ...")
    padder = Padder(sizes)
    wnc = await nats.connect(url, name="w1-floor-worker")
    cnc = await nats.connect(url, name="w1-floor-client")
    wjs, cjs = wnc.jetstream(), cnc.jetstream()
    await provision_floor(wjs)
    kv = await wjs.key_value(FLOOR_BUCKET)
    lean = kind == "lean"
    worker = FloorWorker(wjs, kv, padder, lean)
    stop = asyncio.Event()
    loops: list[asyncio.Task[None]] = []
    started: list[asyncio.Event] = []

    def consumer(stream: str, durable: str, subject: str, handler: Callable[[Msg], Awaitable[None]]) -> None:
        ev = asyncio.Event()
        started.append(ev)
        loops.append(asyncio.create_task(pull_loop(wjs, stream, durable, subject, handler, stop, ev, lean=lean)))

    consumer(f"{FLOOR}_TASKS", "floor_w1_tasks", f"{FLOOR}.agents.{AGENT}.tasks", worker.on_task)
    consumer(f"{FLOOR}_EVENTS", "floor_w1_events", f"{FLOOR}.agents.{AGENT}.events.*", worker.on_result)
    for name in FLOOR_TOOLS:
        consumer(f"{FLOOR}_TOOLS", f"floor_tool_{name}", f"{FLOOR}.tools.{name}.calls", worker.on_call)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=30)

    # Client side: results come back on a plain subscription to the RESULTS subjects.
    waiting: dict[str, asyncio.Future[bytes]] = {}

    def on_result_now(msg: Msg) -> None:
        fut = waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    async def on_result(msg: Msg) -> None:
        on_result_now(msg)

    results_subject = f"{FLOOR}.agents.{AGENT}.results.*"
    rsub = await (js_ack.subscribe_inline(cnc, results_subject, on_result_now) if lean
                  else cnc.subscribe(results_subject, cb=on_result))
    submit_acks = js_ack.for_connection(cnc) if lean else None
    dec_result = msgspec.json.Decoder(FResult)

    def one_task_factory(tag: str) -> Callable[[int], Awaitable[float | None]]:
        async def one_task(i: int) -> float | None:
            tid = f"w1-fl{run_no}{'l' if lean else ''}-{tag}-{i:06d}"
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            waiting[tid] = fut
            t0 = time.perf_counter()
            task = FTask(task_id=tid, agent=AGENT, input=inputs[i % len(inputs)], submitted_at=time.time())
            body = padder.encode("publish.task", task)
            if submit_acks is not None:
                await submit_acks.publish(f"{FLOOR}.agents.{AGENT}.tasks", body, headers={"Nats-Msg-Id": tid},
                                          timeout=10)
            else:
                await cjs.publish(f"{FLOOR}.agents.{AGENT}.tasks", body, headers={"Nats-Msg-Id": tid}, timeout=10)
            data = await asyncio.wait_for(fut, timeout=60)
            dt = time.perf_counter() - t0
            res = dec_result.decode(data)
            return dt if res.steps == MODEL_STEPS_PER_TASK and res.tool_calls == TOOLS_PER_TASK else None
        return one_task

    results: list[PhaseResult] = []
    try:
        say(f"floor: warm-up, {args.warmup} tasks (not measured) ...")
        await drive(one_task_factory("warm"), args.warmup, min(args.inflight, args.warmup) or 1)
        name = "floor-lean" if lean else "floor"
        results.append(await measure(name, "sequential", one_task_factory("seq"), args.seq_tasks, 1, server_pid))
        results.append(await measure(name, f"{args.inflight} in flight", one_task_factory("par"), args.tasks,
                                     args.inflight, server_pid))
    finally:
        say("floor: stopping ...")
        stop.set()
        await asyncio.wait(loops, timeout=10)
        await rsub.unsubscribe()
        for nc in (cnc, wnc):  # all work is acked by now: close, no drain needed
            await nc.close()
    return results


# ============================================================== reporting


def versions() -> dict[str, str]:
    def ver(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    try:
        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10).stdout
        server = out.strip().split()[-1]
    except Exception:  # noqa: BLE001
        server = "?"
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {"nats_server": server, "nats_py": ver("nats-py"), "msgspec": ver("msgspec"),
            "agentstream": ver("agentstream"), "python": platform.python_version(),
            "cores": str(affinity), "cpu_count": str(os.cpu_count()), "machine": platform.machine(),
            "system": platform.system(), "cpu_model": cpu_model()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def table(rows: list[PhaseResult], meta: dict[str, str], ratios: list[dict[str, Any]], note: str = "") -> str:
    hdr = (f"W1: 1 task = model turn (3 tool calls) -> 3 no-op tools in parallel -> model turn (answer); "
           f"zero-latency model\n"
           f"machine: {meta['cores']} cores ({meta['cpu_model']}, {meta['system']} {meta['machine']}) | "
           f"nats-server {meta['nats_server']} | nats-py {meta['nats_py']} | msgspec {meta['msgspec']} | "
           f"Python {meta['python']}\n" + (f"{note}\n" if note else ""))
    cols = ["system", "mode", "tasks", "fail", "wall s", "tasks/s", "steps/s", "p50 ms", "p95 ms", "p99 ms",
            "py CPU ms/task", "srv CPU ms/task"]
    lines = []
    for r in rows:
        s = r.summary()
        lines.append([r.system, r.mode, f"{r.tasks}", f"{r.failures}", f"{r.wall_s:.2f}",
                      f"{r.tasks_per_s:,.1f}", f"{r.tasks_per_s * MODEL_STEPS_PER_TASK:,.1f}",
                      f"{r.pct(50):.2f}", f"{r.pct(95):.2f}", f"{r.pct(99):.2f}",
                      f"{s['py_cpu_ms_per_task']:.3f}",
                      "-" if s["server_cpu_ms_per_task"] is None else f"{s['server_cpu_ms_per_task']:.3f}"])
    widths = [max(len(c), *(len(x[i]) for x in lines)) for i, c in enumerate(cols)]

    def fmt(row: list[str]) -> str:
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

    out = [hdr, fmt(cols), "  ".join("-" * w for w in widths)]
    out += [fmt(x) for x in lines]
    out.append("")
    for rt in ratios:
        rounds = rt.get("tasks_per_s_per_round") or []
        out.append(f"runtime/{rt.get('floor', 'floor')}, {rt['mode']:<14}  tasks/s x{rt['tasks_per_s']:.3f}   "
                   f"p50 x{rt['p50']:.2f}   p99 x{rt['p99']:.2f}   "
                   f"Python CPU per task (floor/runtime) x{rt['py_cpu']:.3f}"
                   + (f"   tasks/s per round: {', '.join(f'x{x:.2f}' for x in rounds)}" if len(rounds) > 1 else ""))
    return "\n".join(out)


def histogram(lat_ms: list[float], title: str, buckets: int = 24, width: int = 50) -> str:
    if not lat_ms:
        return f"{title}: no data"
    lo = 0.0
    hi = percentile(lat_ms, 99.5)
    step = (hi - lo) / buckets if hi > lo else 1.0
    counts = [0] * (buckets + 1)  # last bucket: overflow
    for x in lat_ms:
        idx = int((x - lo) / step)
        counts[min(idx, buckets)] += 1
    peak = max(counts) or 1
    lines = [f"{title} ({len(lat_ms)} tasks, bucket {step:.2f} ms)"]
    for i, c in enumerate(counts):
        if i < buckets:
            label = f"{lo + i * step:8.2f} - {lo + (i + 1) * step:8.2f} ms"
        else:
            label = f"{'>':>8} {hi:8.2f} ms  "
        bar = "#" * round(width * c / peak) if c else ""
        lines.append(f"{label} | {bar:<{width}} {c:5d} ({100 * c / len(lat_ms):5.1f}%)")
    return "\n".join(lines)


def ops_table(rows: list[PhaseResult], sizes: dict[str, int]) -> str:
    r = next((x for x in rows if x.system == "runtime" and x.inflight > 1), None)
    if r is None or not r.ops or not r.tasks:
        return ""
    lines = [f"runtime operations per task (engine + tool runner ports, {r.mode} run; floor in brackets):"]
    floor_ops = {"kv.sessions.get": 0, "kv.sessions.create": 1, "kv.sessions.update": 5,
                 "kv.sessions.conflict": 0, "publish.tool_call": 3, "publish.tool_result": 3,
                 "publish.progress": 2, "publish.result": 1}
    keys = sorted(set(r.ops) | set(floor_ops))
    for k in keys:
        v = r.ops.get(k, 0) / r.tasks
        size = sizes.get(k)
        lines.append(f"  {k:<26} {v:7.2f}  [{floor_ops.get(k, 0)}]" + (f"   ~{size} B payload" if size else ""))
    lines.append("  (+ client side, both: 1 task publish; the runtime's AgentClient subscribes per task, "
                 "the floor uses one plain subscription)")
    return "\n".join(lines)


# ============================================================== main


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    random.seed(args.seed)
    meta = versions()
    inputs = task_inputs(max(args.tasks, args.seq_tasks, args.warmup), args.seed)
    say(f"{meta['cores']} cores, nats-server {meta['nats_server']}, nats-py {meta['nats_py']}; "
        f"N={args.seq_tasks} sequential, N={args.tasks} at {args.inflight} in flight, warm-up {args.warmup}")
    tmp = tempfile.TemporaryDirectory(prefix="w1-nats-")
    broker = EmbeddedNats(store_dir=tmp.name)
    say(f"starting one embedded nats-server (store {tmp.name}) ...")
    await broker.astart()
    server_pid = broker.proc.pid if broker.proc is not None else None
    meter = Meter()
    runs: list[tuple[bool, list[PhaseResult]]] = []
    telemetry_per_task: list[float] = []
    fl_runs: dict[str, list[list[PhaseResult]]] = {kind: [] for kind in args.floor}
    sizes: dict[str, int] | None = None
    sizes_from_off = False
    prof: str | None = None
    try:
        for rnd in range(args.rounds):
            # Drift on a shared machine: odd rounds measure the floor first
            # (the first round cannot: the floor pads to the runtime's sizes).
            floor_first = rnd % 2 == 1
            if floor_first and sizes is not None:
                for kind in args.floor:
                    fl_runs[kind].append(await run_floor(broker.url, args, inputs, server_pid, sizes, rnd, kind))
            for n, mode in enumerate(args.tracing):
                tracing = mode == "on"
                before = await telemetry_bytes(broker.url)
                # Profiled: the first tracing-off run only.
                run_args = args if (rnd == 0 and not tracing and prof is None) else \
                    argparse.Namespace(**{**vars(args), "profile": None})
                rows, run_sizes, run_prof = await run_runtime(broker.url, run_args, inputs, server_pid, meter,
                                                              tracing, rnd * len(args.tracing) + n)
                runs.append((tracing, rows))
                prof = prof or run_prof
                if sizes is None or (not tracing and not sizes_from_off):
                    # Payload sizes for the floor: from the first tracing-off run (else the first run).
                    sizes, sizes_from_off = run_sizes, not tracing
                if tracing:
                    ntasks = args.warmup + args.seq_tasks + args.tasks
                    telemetry_per_task.append((await telemetry_bytes(broker.url) - before) / ntasks)
            if not floor_first:
                assert sizes is not None
                for kind in args.floor:
                    fl_runs[kind].append(await run_floor(broker.url, args, inputs, server_pid, sizes, rnd, kind))
    finally:
        say("stopping nats-server ...")
        await asyncio.to_thread(broker.stop)
        tmp.cleanup()
    assert sizes is not None

    # Against the floor: the tracing-off runs (else all), merged over rounds.
    base = [rr for t, rr in runs if not t] or [rr for _, rr in runs]
    modes = [r.mode for r in base[0]]
    rt_rows = [merge([r for rr in base for r in rr if r.mode == m]) for m in modes]
    fl_rows_by = {kind: [merge([r for rr in runs_ for r in rr if r.mode == m]) for m in modes]
                  for kind, runs_ in fl_runs.items()}
    by_system: dict[str, list[PhaseResult]] = {}
    for _, rr in runs:
        for r in rr:
            by_system.setdefault(f"{r.system}|{r.mode}", []).append(r)
    rows = [merge(v) for v in by_system.values()] + [r for rows_ in fl_rows_by.values() for r in rows_]
    tracing_cost = tracing_ratios(runs)
    ratios = []
    for kind, fl_rows in fl_rows_by.items():
        for rt, fl in zip(rt_rows, fl_rows):
            per_round = [a.tasks_per_s / b.tasks_per_s for a, b in zip(
                [r for rr in base for r in rr if r.mode == rt.mode],
                [r for rr in fl_runs[kind] for r in rr if r.mode == rt.mode]) if b.tasks_per_s]
            ratios.append({"mode": rt.mode, "floor": fl.system,
                           "tasks_per_s": rt.tasks_per_s / fl.tasks_per_s if fl.tasks_per_s else float("nan"),
                           "tasks_per_s_per_round": [round(x, 3) for x in per_round],
                           "py_cpu": (fl.py_cpu_s / fl.tasks) / (rt.py_cpu_s / rt.tasks) if rt.py_cpu_s
                           else float("nan"),
                           "p50": rt.pct(50) / fl.pct(50), "p95": rt.pct(95) / fl.pct(95),
                           "p99": rt.pct(99) / fl.pct(99)})
    par = next(r for r in rt_rows if r.inflight > 1)
    print()
    via = ("AgentClient.submit + AgentClient.result (a subscription per task, made by submit; a direct get only "
           "when nothing came on it)" if args.results == "client"
           else "AgentClient.submit + one plain subscription to agents.w1.results.* (like the floor)")
    print(table(rows, meta, ratios, f"runtime side: {via}; latency = submit to result received"))
    print()
    print(histogram(par.latencies_ms, f"runtime task latency, {par.mode}"))
    print()
    print(ops_table(rows, sizes))
    print()
    print("payload bytes per kind (runtime mean; floor padded to match): "
          + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(sizes.items())))
    if tracing_cost:
        print()
        print(tracing_table(tracing_cost))
    if telemetry_per_task:
        print("TELEMETRY stream bytes per task with tracing on (stored, every span at default sampling): "
              + ", ".join(f"{b:,.0f}" for b in telemetry_per_task))
    if prof:
        print()
        print(f"cProfile of the runtime {par.mode} run (figures above for that run include profiler overhead):")
        print(prof)

    out = {"workload": "W1", "meta": meta,
           "params": {"tasks": args.tasks, "seq_tasks": args.seq_tasks, "inflight": args.inflight,
                      "rounds": args.rounds, "floor": args.floor,
                      "warmup": args.warmup, "seed": args.seed, "profiled": bool(args.profile),
                      "runtime_results_via": args.results},
           "results": [r.summary() for r in rows],
           "ratios_runtime_over_floor": ratios,
           "tracing_on_over_off": tracing_cost,
           "telemetry_bytes_per_task": telemetry_per_task,
           "payload_bytes": sizes,
           "histogram_runtime_inflight_ms": histogram_data(par.latencies_ms)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        say(f"wrote {args.json}")
    return out


async def telemetry_bytes(url: str) -> int:
    """Bytes stored in the TELEMETRY stream now (0 before it exists)."""
    nc = await nats.connect(url)
    try:
        try:
            info = await nc.jetstream().stream_info("TELEMETRY")
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.bytes)
    finally:
        await nc.close()


def tracing_ratios(runs: list[tuple[bool, list[PhaseResult]]]) -> list[dict[str, Any]]:
    """Per mode: mean tasks/s and CPU per task of the tracing-on runs over the
    tracing-off runs (several runs of each are averaged)."""
    out: list[dict[str, Any]] = []
    modes = [r.mode for r in runs[0][1]] if runs else []
    for mode in modes:
        on = [r for t, rr in runs if t for r in rr if r.mode == mode]
        off = [r for t, rr in runs if not t for r in rr if r.mode == mode]
        if not on or not off:
            continue

        def mean(xs: list[float]) -> float:
            return sum(xs) / len(xs)

        tps_on, tps_off = mean([r.tasks_per_s for r in on]), mean([r.tasks_per_s for r in off])
        cpu_on = mean([1000 * r.py_cpu_s / r.tasks for r in on if r.tasks])
        cpu_off = mean([1000 * r.py_cpu_s / r.tasks for r in off if r.tasks])
        out.append({"mode": mode, "runs_on": len(on), "runs_off": len(off),
                    "tasks_per_s_on": round(tps_on, 2), "tasks_per_s_off": round(tps_off, 2),
                    "throughput_ratio": round(tps_on / tps_off, 4) if tps_off else float("nan"),
                    "p50_ms_on": round(mean([r.pct(50) for r in on]), 3),
                    "p50_ms_off": round(mean([r.pct(50) for r in off]), 3),
                    "py_cpu_ms_per_task_on": round(cpu_on, 3), "py_cpu_ms_per_task_off": round(cpu_off, 3)})
    return out


def tracing_table(rows: list[dict[str, Any]]) -> str:
    lines = ["tracing cost (runtime with tracing + metrics on / off; target: throughput ratio >= 0.90):"]
    for r in rows:
        lines.append(f"  {r['mode']:<14} tasks/s {r['tasks_per_s_on']:8.1f} on / {r['tasks_per_s_off']:8.1f} off"
                     f" = x{r['throughput_ratio']:.3f}   p50 {r['p50_ms_on']:.2f} / {r['p50_ms_off']:.2f} ms"
                     f"   py CPU/task {r['py_cpu_ms_per_task_on']:.2f} / {r['py_cpu_ms_per_task_off']:.2f} ms"
                     f"   ({r['runs_on']} on, {r['runs_off']} off runs)")
    return "\n".join(lines)


def histogram_data(lat_ms: list[float], buckets: int = 24) -> dict[str, Any]:
    hi = percentile(lat_ms, 99.5) if lat_ms else 0.0
    step = hi / buckets if hi > 0 else 1.0
    counts = [0] * (buckets + 1)
    for x in lat_ms:
        counts[min(int(x / step), buckets)] += 1
    return {"bucket_ms": step, "counts": counts, "overflow_from_ms": hi}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000, help="tasks in the N-in-flight runs (default 1000)")
    ap.add_argument("--seq-tasks", type=int, default=None,
                    help="tasks in the sequential runs (default: --tasks / 5, so 200)")
    ap.add_argument("--inflight", type=int, default=32, help="tasks in flight in the concurrent runs (default 32)")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured warm-up tasks per system (default 20)")
    ap.add_argument("--seed", type=int, default=1, help="seed for the task inputs (default 1)")
    ap.add_argument("--results", choices=("client", "sub"), default="client",
                    help="how the runtime side awaits a result: AgentClient.result (default; one ordered "
                         "consumer per task) or one plain subscription, like the floor")
    ap.add_argument("--tracing", default="off,on",
                    help="runtime runs in order, each 'off' (no telemetry) or 'on' (tracing + metrics, spans to the "
                         "TELEMETRY stream); default 'off,on'. Several of each are averaged in the on/off ratio, "
                         "e.g. off,on,on,off")
    ap.add_argument("--floor", default="nats-py,lean",
                    help="floors to run, comma-separated: 'nats-py' (nats-py's own API: js.publish, KeyValue, "
                         "callback subscriptions) and 'lean' (the same messages with the nats-py workarounds the "
                         "runtime uses: js_ack's reply multiplexer, messages handled from the read loop); "
                         "default both")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat runtime and floor runs this many times, interleaved (odd rounds floor first), "
                         "and report the merged figures and the per-round ratios (default 1)")
    ap.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    ap.add_argument("--profile", metavar="FILE",
                    help="cProfile the runtime's in-flight run, dump stats to FILE and print the top costs")
    args = ap.parse_args(argv)
    if args.seq_tasks is None:
        args.seq_tasks = max(1, args.tasks // 5)
    if args.tasks < 1 or args.inflight < 1 or args.rounds < 1:
        ap.error("--tasks, --inflight and --rounds must be >= 1")
    args.floor = [m.strip() for m in args.floor.split(",") if m.strip()]
    if not args.floor or any(m not in ("nats-py", "lean") for m in args.floor):
        ap.error("--floor: a comma-separated list of nats-py, lean")
    args.tracing = [m.strip() for m in args.tracing.split(",") if m.strip()]
    if not args.tracing or any(m not in ("on", "off") for m in args.tracing):
        ap.error("--tracing: a comma-separated list of on/off")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
