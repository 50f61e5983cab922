#!/usr/bin/env python
"""The W1 hot path in one process without a broker: the Python CPU a task
costs in agentstream's own code (engine, core, tool runner, handlers,
consumer middleware, telemetry), with nats-py and the network taken out.

Same app as bench/w1.py (two zero-latency model turns, three no-op tools).
The ports are the in-memory ones (``InMemoryKV``); the bus hands each publish
to the consumer chain of its subject as a nats-py ``Msg`` with the headers the
real bus would carry (``Nats-Msg-Id``, trace context), each handled in its own
asyncio task as the pull consumer does. Telemetry is the real pipeline: the
JetStream span exporter encodes and batches every span and "publishes" to a
connection that only counts bytes.

Prints, per telemetry mode (interleaved rounds, best and median): CPU per task
(µs) and the on/off ratio, and, with ``--parts``, the change in CPU per task
when one part of telemetry alone is switched off.

    python bench/hotpath.py [--tasks 3000] [--inflight 32] [--rounds 5] [--parts]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import w1  # noqa: E402  (the W1 app)

from agentstream.contracts import codec, subjects  # noqa: E402
from agentstream.contracts.events import TaskCompleted, TaskSubmitted  # noqa: E402
from agentstream.handlers.agent import inbox_handler, task_handler  # noqa: E402
from agentstream.handlers.tools import tool_handler  # noqa: E402
from agentstream.runtime.adapters.in_memory import InMemoryKV  # noqa: E402
from agentstream.runtime.adapters.jetstream import MSG_ID  # noqa: E402
from agentstream.runtime.execution.consumer import _chain, size_limit  # noqa: E402
from agentstream.runtime.execution.engine import AgentEngine  # noqa: E402
from agentstream.runtime.execution.tool_runner import ToolRunner  # noqa: E402
from agentstream.runtime.observability.span_export import JetStreamSpanExporter  # noqa: E402
from agentstream.runtime.observability.telemetry import Telemetry  # noqa: E402
from agentstream.runtime.observability.telemetry_config import TelemetryConfig  # noqa: E402
from agentstream.runtime.observability.trace_context import format_traceparent  # noqa: E402

Handler = Callable[[Msg], Awaitable[None]]


class CountingConnection:
    """What the span exporter publishes on: counts, sends nothing."""

    max_payload = 1 << 20
    is_closed = False

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    async def publish(self, subject: str, data: bytes) -> None:
        self.messages += 1
        self.bytes += len(data)

    async def flush(self, timeout: float = 1) -> None:
        pass


class LoopBus:
    """``Bus`` that delivers each publish to the chain consuming its subject,
    in a task of its own (as the pull consumer runs each message)."""

    def __init__(self) -> None:
        self.routes: list[tuple[Callable[[str], bool], Handler]] = []
        self.results: dict[str, asyncio.Future[bytes]] = {}
        self._seen: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        hdrs = dict(headers) if headers else {}
        if msg_id:
            if msg_id in self._seen:
                return
            self._seen.add(msg_id)
            hdrs[MSG_ID] = msg_id
        self.deliver(subject, payload, hdrs)

    def deliver(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        if ".results." in subject:
            fut = self.results.pop(subject.rsplit(".", 1)[1], None)
            if fut is not None and not fut.done():
                fut.set_result(payload)
            return
        for match, handler in self.routes:
            if match(subject):
                msg = Msg(_client=None, subject=subject, data=payload, headers=headers)  # type: ignore[arg-type]
                t: asyncio.Task[None] = asyncio.ensure_future(handler(msg))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
                return


def build(tel: Telemetry | None) -> tuple[LoopBus, Telemetry | None]:
    app = w1.build_app()
    agent = app.get_version(w1.AGENT, None)
    bus = LoopBus()
    traced_bus: Any = tel.wrap_bus(bus) if tel is not None else bus
    assert agent.scripted is not None
    llm: Any = agent.scripted()
    model_name = llm.name
    if tel is not None:
        llm = tel.wrap_llm(llm, w1.AGENT)
    engine = AgentEngine(agent.spec, llm, sessions=InMemoryKV(), conversations=InMemoryKV(),
                         deadlines=InMemoryKV(), bus=traced_bus, worker="bench", approvals=InMemoryKV())
    if tel is not None:
        engine.telemetry = tel.engine_hooks(agent.spec, model_name)
    tools = {t: app.tools[t] for t in ("noop_a", "noop_b", "noop_c")}
    runner = ToolRunner(tools, traced_bus, worker="bench", registry=app.tools, breakers=InMemoryKV(),
                        results=InMemoryKV())
    if tel is not None:
        tel.instrument_tool_runner(runner)

    def chain(handler: Handler, durable: str, subject: str) -> Handler:
        mws: list[Any] = [size_limit(1 << 20)]
        mw = tel.consumer_middleware(durable, subject) if tel is not None else None
        if mw is not None:
            mws.append(mw)
        return _chain(handler, mws)

    tasks_subject = subjects.tasks(w1.AGENT)
    bus.routes.append((lambda s: s == tasks_subject,
                       chain(task_handler(engine), "w1_tasks", tasks_subject)))
    events_prefix = f"agents.{w1.AGENT}.events."
    bus.routes.append((lambda s: s.startswith(events_prefix),
                       chain(inbox_handler(engine), "w1_events", subjects.events(w1.AGENT, "*"))))
    for name in tools:
        subject = subjects.tool_calls(name)
        bus.routes.append((subject.__eq__, chain(tool_handler(runner), f"tool_{name}", subject)))
    bus.routes.append((lambda s: ".progress." in s, _ignore))
    return bus, tel


async def _ignore(msg: Msg) -> None:
    pass


async def run(mode: str, n: int, inflight: int, inputs: list[str], tag: str) -> tuple[float, int]:
    """CPU µs per task of ``n`` tasks; ``mode``: off, on, or on-<part> (see PARTS)."""
    tel: Telemetry | None = None
    conn = CountingConnection()
    if mode != "off":
        env = dict(PARTS.get(mode, {}))
        config = TelemetryConfig.from_env(env)
        loop = asyncio.get_running_loop()
        tel = Telemetry(config, worker_id="bench", nc=conn,  # type: ignore[arg-type]
                        span_exporters=[JetStreamSpanExporter(conn, loop)]  # type: ignore[arg-type]
                        if config.tracing else [])
    bus, tel = build(tel)
    client_tel = tel
    sem = asyncio.Semaphore(inflight)
    loop = asyncio.get_running_loop()
    bad = 0

    async def one(i: int, phase: str = "run") -> None:
        nonlocal bad
        async with sem:
            tid = f"hp-{tag}-{phase}-{i:06d}"
            fut: asyncio.Future[bytes] = loop.create_future()
            bus.results[tid] = fut
            task = TaskSubmitted(agent=w1.AGENT, input=inputs[i % len(inputs)], task_id=tid, submitted_at=time.time())
            headers = {MSG_ID: tid}
            root = client_tel.task_context(tid) if client_tel is not None and client_tel.tracing else None
            if root is not None:
                headers["traceparent"] = format_traceparent(root)
            bus.deliver(subjects.tasks(w1.AGENT), codec.encode(task), headers)
            res = codec.task_result.decode(await asyncio.wait_for(fut, 30))
            if not isinstance(res, TaskCompleted) or res.tool_calls != 3:
                bad += 1

    # warm-up
    await asyncio.gather(*(one(i, "warm") for i in range(min(50, n))))
    gc.collect()
    c0 = time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu = time.process_time() - c0
    if tel is not None:
        await tel.shutdown()
    return 1e6 * cpu / n, bad


# Telemetry on, less one part (AGENTSTREAM_* switches the runtime already has).
PARTS: dict[str, dict[str, str]] = {
    "on": {},
    "tracing-only": {"AGENTSTREAM_METRICS": "0"},
    "metrics-only": {"AGENTSTREAM_TRACING": "0"},
}


async def amain(args: argparse.Namespace) -> None:
    # W1's answering turns call no tools: the tools-unused warning would fire
    # every few hundred tasks and print, which is not what is measured here.
    logging.disable(logging.WARNING)
    inputs = w1.task_inputs(64, 1)
    modes = ["off", "on"] + (["tracing-only", "metrics-only"] if args.parts else [])
    figures: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for m in modes:
            us, bad = await run(m, args.tasks, args.inflight, inputs, f"{r}{m}")
            if bad:
                print(f"  {m}: {bad} tasks with a wrong result", flush=True)
            figures[m].append(us)
            print(f"round {r + 1} {m:<13} {us:8.1f} µs CPU/task", flush=True)
    print()
    print(f"W1 in process, no broker: {args.tasks} tasks at {args.inflight} in flight, {args.rounds} rounds")
    off = statistics.median(figures["off"])
    for m in modes:
        xs = figures[m]
        med = statistics.median(xs)
        print(f"  {m:<13} median {med:8.1f}  best {min(xs):8.1f}  µs CPU/task   x{med / off:.3f} of off")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parts", action="store_true", help="also tracing alone and metrics alone")
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
