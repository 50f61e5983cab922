"""The app of ``bench/faults.py``: agent ``faults`` calls three side-effecting
tools at once, one per tool mode, then answers with their results.

Every start of a tool is one ``O_APPEND`` line ``<mode> <idempotency key>
<pid>`` in the file named by ``FAULT_LOG`` (lines from several processes
never interleave), so the bench counts executions at the tool itself; its
effect (applied at once, before the tool's latency: the worst case for a
crash) is a line ``<mode>-effect ...``. The idempotent
tool applies its effect through a downstream that deduplicates by the
idempotency key the tool receives (a directory of keys, ``FAULT_LEDGER``).
``FAULT_TOOL_S`` (default 0.2) is each tool's latency: the window in which a
broker or a worker dies with the call in flight.
"""

from __future__ import annotations

import asyncio
import json
import os

from agentstream import App, FunctionModel, ModelRequest, ModelResponse, answer, calls, last_user, tool, tool_results

MODES = ("plain", "idempotent", "at_most_once")


def record(mode: str, key: str) -> None:
    path = os.environ.get("FAULT_LOG")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{mode} {key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


async def _effect(mode: str, key: str, n: str) -> str:
    record(mode, key)
    # The effect first, then the slow part: the worst case, a call cut off
    # after its effect happened and before its result was published.
    if mode == "idempotent":
        downstream_once(key)
    else:
        record(f"{mode}-effect", key)
    await asyncio.sleep(float(os.environ.get("FAULT_TOOL_S", "0.2")))
    return f"{mode}:{n}"


def downstream_once(key: str) -> None:
    """A downstream that deduplicates by idempotency key (as a payments API
    with an ``Idempotency-Key`` header does): the effect is applied (and
    logged as ``idempotent-effect``) only for a key it has not seen."""
    ledger = os.environ.get("FAULT_LEDGER")
    if not ledger:
        return
    try:
        os.close(os.open(os.path.join(ledger, key.replace(":", "_")), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    record("idempotent-effect", key)


@tool
async def fx_plain(n: str, idempotency_key: str) -> str:
    """A side effect with no protection (at least once).

    Args:
        n: The task's number.
    """
    return await _effect("plain", idempotency_key, n)


@tool(idempotent=True)
async def fx_idempotent(n: str, idempotency_key: str) -> str:
    """A side effect the downstream deduplicates by idempotency key.

    Args:
        n: The task's number.
    """
    return await _effect("idempotent", idempotency_key, n)


@tool(at_most_once=True)
async def fx_at_most_once(n: str, idempotency_key: str) -> str:
    """A side effect that must never happen twice.

    Args:
        n: The task's number.
    """
    return await _effect("at_most_once", idempotency_key, n)


TOOLS = {"plain": fx_plain, "idempotent": fx_idempotent, "at_most_once": fx_at_most_once}


async def script(request: ModelRequest) -> ModelResponse:
    n = last_user(request)
    done = tool_results(request)
    if not done:
        specs: list[tuple[str, dict[str, object]]] = [(t.name, {"n": n}) for t in TOOLS.values()]
        return calls(*specs)
    return answer(json.dumps({m.name: m.content for m in done}, sort_keys=True))


app = App()
app.agent("faults", instructions="Call the three tools at once, then report what they returned.",
          tools=list(TOOLS.values()), scripted=lambda: FunctionModel(script, name="scripted-faults"))
