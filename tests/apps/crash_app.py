"""A test app for the process tests: agent ``crashy`` asks for three tools at
once, then answers with their combined results.

Everything it does is logged to files named by environment variables, one
``O_APPEND`` write a line, so several worker processes can log to one file and
the test can see which process ran what:

- ``CRASH_APP_LOG``: ``"<tool> <task>"`` when a tool starts;
- ``CRASH_APP_MODEL_LOG``: ``"model <step> <worker id> <pid> <task>"`` when a
  model turn starts.

``CRASH_APP_TOOL_S`` (default 0.3) is each tool's latency; ``CRASH_APP_MODEL_S``
(default 0) is the latency of the second model turn (a window to kill a worker in).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

from applog import append_line

from agentstream import App, FunctionModel, ModelRequest, ModelResponse, answer, calls, last_user, tool, tool_results

TOOLS = ("count_a", "count_b", "count_c")




def worker_id() -> str:
    return os.environ.get("AGENTSTREAM_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"


async def _run_tool(name: str, task: str) -> str:
    append_line("CRASH_APP_LOG", f"{name} {task}")
    await asyncio.sleep(float(os.environ.get("CRASH_APP_TOOL_S", "0.3")))
    return f"{name[-1]}:{task}"


@tool
async def count_a(task: str) -> str:
    """Count A for a task.

    Args:
        task: The task input.
    """
    return await _run_tool("count_a", task)


@tool
async def count_b(task: str) -> str:
    """Count B for a task.

    Args:
        task: The task input.
    """
    return await _run_tool("count_b", task)


@tool
async def count_c(task: str) -> str:
    """Count C for a task.

    Args:
        task: The task input.
    """
    return await _run_tool("count_c", task)


def expected_output(task: str) -> str:
    return f"{task}: " + " ".join(f"{t[-1]}:{task}" for t in TOOLS)


def _content(text: str) -> str:
    try:
        out = json.loads(text)
    except ValueError:
        return text
    return out if isinstance(out, str) else text


async def crashy_script(request: ModelRequest) -> ModelResponse:
    task = last_user(request)
    results = tool_results(request)
    step = 2 if results else 1
    append_line("CRASH_APP_MODEL_LOG", f"model {step} {worker_id()} {os.getpid()} {task}")
    if step == 1:
        specs: list[tuple[str, dict[str, object]]] = [(name, {"task": task}) for name in TOOLS]
        return calls(*specs)
    delay = float(os.environ.get("CRASH_APP_MODEL_S", "0") or 0)
    if delay > 0:
        await asyncio.sleep(delay)
    by_tool = {m.name: _content(m.content) for m in results}
    return answer(f"{task}: " + " ".join(str(by_tool.get(t)) for t in TOOLS))


app = App()
app.agent(
    "crashy",
    instructions="Call count_a, count_b and count_c together, then report their results.",
    tools=[count_a, count_b, count_c],
    scripted=lambda: FunctionModel(crashy_script, name="scripted-crashy"),
    samples=["t1"],
)
