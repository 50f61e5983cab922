"""A test app for tool resilience: a flaky tool, a dead tool with a breaker.

- ``flaky_lookup(key)``: read-only; raises ``ConnectionError`` on its first
  ``FLAKY_FAILURES`` (2) attempts for each key, then answers ``"value-<key>"``.
  Counts are per process (``ATTEMPTS``).
- ``dead_tool(n)``: read-only, no retries, always raises ``ConnectionError``;
  breaker: 3 failures in 30 s open it for 60 s. Each execution appends
  ``"<worker id> <n>"`` to the file named by ``FLAKY_APP_COUNTER`` (one
  ``O_APPEND`` write a line, so several processes can share the file).

Agent ``flaky`` calls ``flaky_lookup`` with its input, then answers with the result.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter

from agentstream import (
    NO_RETRY,
    App,
    BreakerPolicy,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    RetryPolicy,
    answer,
    calls,
    last_user,
    tool,
    tool_results,
)

FLAKY_FAILURES = 2
ATTEMPTS: Counter[str] = Counter()
DEAD_BREAKER = BreakerPolicy(failure_threshold=3, window_s=30.0, open_s=60.0)


def worker_id() -> str:
    return os.environ.get("AGENTSTREAM_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"


@tool(read_only=True, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05))
async def flaky_lookup(key: str) -> str:
    """Look up a key in a flaky upstream service.

    Args:
        key: The key to look up.
    """
    ATTEMPTS[key] += 1
    if ATTEMPTS[key] <= FLAKY_FAILURES:
        raise ConnectionError(f"upstream reset the connection (attempt {ATTEMPTS[key]})")
    return f"value-{key}"


@tool(read_only=True, retry=NO_RETRY, breaker=DEAD_BREAKER)
async def dead_tool(n: int) -> str:
    """Call a service that is down.

    Args:
        n: A call number.
    """
    path = os.environ.get("FLAKY_APP_COUNTER")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{worker_id()} {n}\n".encode())
        finally:
            os.close(fd)
    raise ConnectionError("connection refused")


def flaky_script(request: ModelRequest) -> ModelResponse:
    results = tool_results(request)
    if not results:
        return calls(("flaky_lookup", {"key": last_user(request)}))
    try:
        value = json.loads(results[0].content)
    except ValueError:
        value = results[0].content
    return answer(f"got {value}")


app = App()
app.agent(
    "flaky",
    instructions="Look the key up with flaky_lookup and report the value.",
    tools=[flaky_lookup],
    scripted=lambda: FunctionModel(flaky_script, name="scripted-flaky"),
    samples=["k1"],
)
app.tools[dead_tool.name] = dead_tool  # served by tool workers; no agent calls it (tests publish to it directly)
