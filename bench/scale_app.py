"""The apps `bench/scale.py` and `bench/soak.py` run in their worker processes
(``AGENTSTREAM_APP=scale_app:w1`` or ``scale_app:latency``, with ``bench/`` on
PYTHONPATH).

- ``w1``: the W1 workload of ``bench/w1.py`` (zero-latency model, three no-op
  tools in parallel): CPU-bound, it measures what the system adds.
- ``latency``: the same shape, but each model turn takes 50 ms and each tool
  20 ms (``asyncio.sleep``, as a remote model or API would): latency-bound, the
  machine is not the limit, the replicas' in-flight caps are.
"""

from __future__ import annotations

import asyncio
from typing import Any

from w1 import AGENT, build_app, w1_script

from agentstream import App, FunctionModel, ModelRequest, tool

MODEL_LATENCY_S = 0.050
TOOL_LATENCY_S = 0.020

w1: App = build_app()


@tool
async def slow_a(n: int) -> dict[str, object]:
    """Simulated remote call A: 20 ms.

    Args:
        n: Any number; echoed back.
    """
    await asyncio.sleep(TOOL_LATENCY_S)
    return {"tool": "a", "n": n}


@tool
async def slow_b(n: int) -> dict[str, object]:
    """Simulated remote call B: 20 ms.

    Args:
        n: Any number; echoed back.
    """
    await asyncio.sleep(TOOL_LATENCY_S)
    return {"tool": "b", "n": n}


@tool
async def slow_c(n: int) -> dict[str, object]:
    """Simulated remote call C: 20 ms.

    Args:
        n: Any number; echoed back.
    """
    await asyncio.sleep(TOOL_LATENCY_S)
    return {"tool": "c", "n": n}


async def latency_script(request: ModelRequest) -> Any:
    """W1's two turns, each taking 50 ms like a (fast) remote model."""
    await asyncio.sleep(MODEL_LATENCY_S)
    resp = w1_script(request)
    if resp.tool_calls:  # the same three calls, on the slow tools
        from agentstream import calls

        return calls(("slow_a", {"n": 1}), ("slow_b", {"n": 2}), ("slow_c", {"n": 3}))
    return resp


latency = App()
latency.agent(AGENT, "Call slow_a, slow_b and slow_c at once, then answer in one line.",
              tools=[slow_a, slow_b, slow_c],
              scripted=lambda: FunctionModel(latency_script, name="latency-scripted"))
