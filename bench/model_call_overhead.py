#!/usr/bin/env python
"""Per-call overhead of bounding a model call by the task's deadline, in
microseconds, with a zero-latency ``FunctionModel``.

Rows (same process, same model, fixed iteration counts after a warm-up):

- direct: ``await model.complete(request)``, the floor;
- retry helper: ``complete_with_retry`` around the engine's counting wrapper
  (the model-call path before deadlines bounded it);
- bounded: the same through the engine's ``_Bounded`` (min(per-call timeout,
  deadline left) as an ``asyncio.timeout``, failed attempts recorded), the path now.

    python bench/model_call_overhead.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from agentstream.contracts.events import Message, ModelResponse
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryKV
from agentstream.runtime.adapters.retry import complete_with_retry
from agentstream.runtime.adapters.scripted_models import FunctionModel
from agentstream.runtime.core.ports import ModelRequest
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.execution.engine import AgentEngine, _Bounded


async def _time(n: int, call: Callable[[], Awaitable[object]]) -> float:
    for _ in range(n // 10):
        await call()
    t0 = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - t0) / n * 1e6


async def main(n: int) -> None:
    model = FunctionModel(lambda req: ModelResponse(text="ok"), name="zero")
    engine = AgentEngine(AgentSpec(name="a", instructions="x"), model, sessions=InMemoryKV(),
                         conversations=InMemoryKV(), deadlines=InMemoryKV(), bus=InMemoryBus(),
                         model_timeout_s=60.0)
    request = ModelRequest(model="zero", messages=(Message(role="user", content="hi"),))
    deadline = time.time() + 3600

    rows = {
        "direct": await _time(n, lambda: model.complete(request)),
        "retry helper (before)": await _time(n, lambda: complete_with_retry(engine._counted, request, attempts=3)),
        "bounded by the deadline (now)": await _time(
            n, lambda: complete_with_retry(_Bounded(engine, deadline), request, attempts=3)),
    }
    base = rows["retry helper (before)"]
    print(f"model call overhead, {n} calls each, zero-latency model (us per call)")
    for name, us in rows.items():
        print(f"  {name:<32} {us:8.1f} us   x{us / base:.2f} of before")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=20000)
    asyncio.run(main(ap.parse_args().n))
