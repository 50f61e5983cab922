#!/usr/bin/env python
"""Per-call overhead of the tool path, in microseconds, for a no-op tool.

Rows (fixed iteration counts, after an unmeasured warm-up of 10 %):

- direct call: ``await noop(x=1)``, the floor;
- validation: ``Tool.validate(arguments)`` (msgspec convert into the args Struct);
- breaker check (closed), in-memory KV: ``SharedBreaker.admit`` = one get + decode;
- breaker check (closed), JetStream KV: the same against a real KV bucket
  (``tool_breakers``) on an embedded nats-server: one direct-get round trip;
- ``ToolRunner.execute``: validation, the attempt loop, ``asyncio.timeout``,
  without a breaker / with one on the in-memory KV / with one on JetStream KV.

The breaker's key holds a realistic closed state (one recent failure), so each
check decodes JSON. Run on a quiet machine; compare rows of the same run.

    python bench/tool_overhead.py [--n 20000] [--kv-n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats

from agentstream import BreakerPolicy, Tool, tool
from agentstream.contracts import subjects
from agentstream.contracts.events import ToolCallRequested
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryKV
from agentstream.runtime.execution.breaker import BreakerState, SharedBreaker
from agentstream.runtime.execution.tool_runner import ToolRunner

POLICY = BreakerPolicy(failure_threshold=5, window_s=60.0, open_s=30.0)


@tool(read_only=True)
async def noop(x: int, label: str = "a") -> int:
    """Do nothing.

    Args:
        x: A number.
        label: A label.
    """
    return x


# The same no-op behind a breaker. A Tool holds no breaker state (the runner's
# KV does), so the in-memory and JetStream rows share it.
GUARDED = Tool(noop.fn, name="noop_guarded", read_only=True, breaker=POLICY)


ARGS: dict[str, Any] = {"x": 1, "label": "b"}


def request(tool_name: str) -> ToolCallRequested:
    return ToolCallRequested(task_id="t", agent="a", step=1, call_id="c", tool=tool_name, arguments=ARGS,
                             idempotency_key="t:1:c", reply_subject=subjects.events("a", "t"),
                             requested_at=0.0, timeout_s=5.0)


async def measure(fn: Callable[[], Awaitable[Any]] | Callable[[], Any], n: int, is_async: bool) -> list[float]:
    warm = max(n // 10, 1)
    out: list[float] = []
    clock = time.perf_counter_ns
    for i in range(warm + n):
        t0 = clock()
        if is_async:
            await fn()  # type: ignore[misc]
        else:
            fn()
        t1 = clock()
        if i >= warm:
            out.append((t1 - t0) / 1000.0)
    return out


def row(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    p50 = s[len(s) // 2]
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"{name:<48} {len(s):>7} {statistics.fmean(s):>9.1f} {p50:>9.1f} {p99:>9.1f}"


async def seed(store: Any) -> None:
    closed = BreakerState(state="closed", failures=(time.time(),))
    if await store.get(GUARDED.name) is None:
        await store.create(GUARDED.name, msgspec.json.encode(closed))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="iterations of the in-process rows")
    ap.add_argument("--kv-n", type=int, default=2000, help="iterations of the rows that touch nats-server")
    a = ap.parse_args()

    rows: list[str] = []
    kwargs = dict(ARGS)
    rows.append(row("direct call (await noop(**args))", await measure(lambda: noop.fn(**kwargs), a.n, True)))
    rows.append(row("validation (Tool.validate)", await measure(lambda: noop.validate(ARGS), a.n, False)))

    mem = InMemoryKV()
    await seed(mem)
    b_mem = SharedBreaker(mem)
    rows.append(row("breaker check, closed, in-memory KV",
                    await measure(lambda: b_mem.admit(GUARDED.name, POLICY, "w/x"), a.n, True)))

    plain = ToolRunner({"noop": noop}, InMemoryBus(), worker="w")
    req = request("noop")
    rows.append(row("ToolRunner.execute, no breaker", await measure(lambda: plain.execute(req), a.n, True)))
    r_mem = ToolRunner({GUARDED.name: GUARDED}, InMemoryBus(), worker="w", breakers=mem)
    req_g = request(GUARDED.name)
    rows.append(row("ToolRunner.execute, breaker on in-memory KV",
                    await measure(lambda: r_mem.execute(req_g), a.n, True)))

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(store_dir=tmp).start()
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await nats_adapters.provision(js)
            kv = await nats_adapters.bucket(js, subjects.TOOL_BREAKERS.name)
            await seed(kv)
            b_kv = SharedBreaker(kv)
            rows.append(row("breaker check, closed, JetStream KV (1 get)",
                            await measure(lambda: b_kv.admit(GUARDED.name, POLICY, "w/x"), a.kv_n, True)))
            rows.append(row("raw KV get (nats-py, for reference)",
                            await measure(lambda: kv.kv.get(GUARDED.name), a.kv_n, True)))
            r_kv = ToolRunner({GUARDED.name: GUARDED}, InMemoryBus(), worker="w", breakers=kv)
            rows.append(row("ToolRunner.execute, breaker on JetStream KV",
                            await measure(lambda: r_kv.execute(req_g), a.kv_n, True)))
        finally:
            await nc.close()
            server.stop()

    print(f"python {platform.python_version()}, msgspec {msgspec.__version__}, {platform.machine()}")
    print(f"{'path':<48} {'n':>7} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9}")
    for r in rows:
        print(r)


if __name__ == "__main__":
    asyncio.run(main())
