"""How the CLI waits on a task: whether any worker serves an agent, whether a
task id names anything, and waiting for a result while saying what the task
waits on (a human approval). Each wait is bounded and ends in a one-line
outcome with its exit code (:mod:`agentstream.runtime.interfaces.exit_codes`)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import msgspec

from agentstream.contracts import subjects
from agentstream.contracts.events import ApprovalRequested, TaskCompleted, TaskFailed, TaskResult
from agentstream.runtime.core.errors import ResultTimeout
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.exit_codes import CommandExit, ExitCode

# How long `submit` looks for a live worker before saying none serves the agent:
# a live agent worker always has a pull request outstanding (its fetch waits
# 0.5 s, then it asks again) or a task in hand.
_LIVENESS_PROBES = 3
_LIVENESS_GAP_S = 0.3


async def unserved(client: AgentClient, agent: str) -> str:
    """Why no worker serves ``agent`` right now, or "" when one does (or when
    we cannot tell: the task is submitted either way). A typo in the agent
    name, and an agent whose workers all stopped, look exactly like this.

    Detection: the durable consumer every agent worker creates on TASKS; a
    live worker keeps a pull request waiting on it (``num_waiting``) or holds
    a task (``num_ack_pending``)."""
    import nats.js.errors as jse

    durable = subjects.agent_durable(agent, "tasks")
    for probe in range(_LIVENESS_PROBES):
        if probe:
            await asyncio.sleep(_LIVENESS_GAP_S)
        try:
            info = await client.js.consumer_info("TASKS", durable, timeout=5)
        except jse.NotFoundError:
            return f"no worker has ever served agent {agent!r}"
        except Exception:  # noqa: BLE001 - best effort: the task is submitted either way
            return ""
        if (info.num_waiting or 0) > 0 or (info.num_ack_pending or 0) > 0:
            return ""
    return f"no worker is serving agent {agent!r} now (its consumer exists, but nothing is fetching from it)"


def _approval_line(q: ApprovalRequested) -> str:
    args_text = msgspec.json.encode(q.arguments).decode()
    who = ", ".join(q.approvers) or "any allowed identity"
    due = max(0.0, q.deadline_at - time.time())
    return (f"task {q.task_id} is waiting for approval of {q.tool}{args_text} (approvers: {who}; expires in "
            f"{due:.0f}s): agentstream approve {q.approval_id} --as NAME  (or: agentstream deny "
            f"{q.approval_id} --as NAME --reason TEXT)")


async def await_result(client: AgentClient, task_id: str, timeout: float) -> TaskResult:
    """The task's result, saying on stderr (as it happens) when the task parks
    on a human approval and how to decide it. A wait that runs out is
    ``WAIT_TIMEOUT``, not a failure: the task may still finish."""
    waiting: dict[str, ApprovalRequested] = {}
    try:
        async for ev in client.events(task_id, timeout=timeout):
            if isinstance(ev, ApprovalRequested) and ev.approval_id not in waiting:
                waiting[ev.approval_id] = ev
                sys.stderr.write(f"agentstream: {_approval_line(ev)}\n")
                sys.stderr.flush()
            elif isinstance(ev, (TaskCompleted, TaskFailed)):
                return ev
    except ResultTimeout:
        pass
    hint = f"it may still finish: `agentstream watch {task_id}` or `agentstream result {task_id} --wait S`"
    if waiting:
        ids = " ".join(waiting)
        raise CommandExit(f"no result for task {task_id} within {timeout:g}s: it is waiting for approval "
                          f"(`agentstream approvals`; `agentstream approve {ids} --as NAME`); {hint}",
                          ExitCode.WAIT_TIMEOUT)
    raise CommandExit(f"no result for task {task_id} within {timeout:g}s; {hint}", ExitCode.WAIT_TIMEOUT)

# How long `watch` gives an id nothing knows yet (a task just submitted may not
# have reached a worker) before calling it unknown.
UNKNOWN_TASK_GRACE_S = 5.0


async def require_task(client: AgentClient, task_id: str, grace_s: float) -> None:
    """Return once anything knows ``task_id`` (a session, an event, a result);
    after ``grace_s`` of nothing, a ``NOT_FOUND`` error instead of waiting forever."""
    from agentstream.runtime.adapters.scan import stored_result

    if not subjects.is_token(task_id):
        raise CommandExit(f"invalid task id {task_id!r}: use 1-128 letters, digits, '_' or '-'", ExitCode.USAGE)
    deadline = time.monotonic() + grace_s
    while True:
        with contextlib.suppress(Exception):  # a missing key or bucket: not known (yet)
            kv = await client.js.key_value(subjects.SESSIONS.name)
            if await kv.get(task_id) is not None:
                return
        if await client._activity_count(task_id) > 0:
            return
        with contextlib.suppress(Exception):
            if await stored_result(client.js, task_id, direct=True) is not None:
                return
        if time.monotonic() >= deadline:
            raise CommandExit(f"no task {task_id!r}: no session, no events and no result after {grace_s:g}s "
                              "(check the id; a task no worker has picked up yet has none either)",
                              ExitCode.NOT_FOUND)
        await asyncio.sleep(0.25)
