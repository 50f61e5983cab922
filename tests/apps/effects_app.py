"""A test app for tests/test_effects.py's process test: agent ``effects``
calls the at-most-once tool ``pay`` once, then answers with its result.

``pay`` logs ``<idempotency key> <pid>`` to the file named by
``EFFECTS_APP_LOG`` when it starts (one ``O_APPEND`` write), then takes
``EFFECTS_APP_TOOL_S`` seconds (default 30: a window to kill its worker in).
"""

from __future__ import annotations

import asyncio
import os

from agentstream import App, FunctionModel, ModelRequest, ModelResponse, answer, calls, tool, tool_results


@tool(at_most_once=True)
async def pay(amount: int, idempotency_key: str) -> str:
    """Pay an amount.

    Args:
        amount: Cents.
    """
    path = os.environ.get("EFFECTS_APP_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{idempotency_key} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
    await asyncio.sleep(float(os.environ.get("EFFECTS_APP_TOOL_S", "30")))
    return "paid"


async def script(request: ModelRequest) -> ModelResponse:
    done = tool_results(request)
    if not done:
        return calls(("pay", {"amount": 100}))
    return answer(done[0].content)


app = App()
app.agent("effects", instructions="Pay, then say what happened.", tools=[pay],
          scripted=lambda: FunctionModel(script, name="scripted-effects"))
