"""What production recorded for a task: its tool calls with their results, and
its outcome, read back from the streams (the shadow's tool results and the
comparator's joins come from here)."""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.js import JetStreamContext

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    PlanProposed,
    RouteDecided,
    TaskCompleted,
    TaskFailed,
    ToolCallCompleted,
    ToolCallDispatched,
)
from agentstream.runtime.adapters.scan import scan, stored_result
from agentstream.runtime.rollout.compare import canonical_args


class Recorded(msgspec.Struct, frozen=True):
    tool: str
    args: str  # canonical JSON
    completed: ToolCallCompleted


async def recorded_calls(js: JetStreamContext, agent: str, task_id: str, *, label: str = "") -> list[Recorded]:
    """Production's (or shadow ``label``'s) finished tool calls of one task, in order."""
    stream = "SHADOW" if label else subjects.EVENTS_STREAM
    subject = subjects.any_task_activity(task_id)
    subject = subjects.shadowed(label, subject) if label else subjects.stored(subject)
    args: dict[str, tuple[str, str]] = {}
    done: list[ToolCallCompleted] = []
    for raw in await scan(js, stream, subject, timeout=10.0):
        try:
            ev = codec.any_event.decode(raw.data)
        except Exception:  # noqa: BLE001 - a foreign message on the subject is not ours to read
            continue
        if isinstance(ev, ToolCallDispatched) and ev.agent == agent:
            for c in ev.calls:
                args[c.id] = (c.name, canonical_args(c.arguments))
        elif isinstance(ev, ToolCallCompleted) and ev.agent == agent:
            done.append(ev)
    out = []
    for completed in done:
        name, a = args.get(completed.call_id, (completed.tool, ""))
        out.append(Recorded(tool=name, args=a, completed=completed))
    return out


async def task_progress(js: JetStreamContext, agent: str, task_id: str, *,
                        label: str = "") -> tuple[list[ToolCallDispatched], str]:
    """A task's dispatched calls and the strategy it ran: the router's choice
    (``RouteDecided``), else ``plan`` when it planned, else ``react``."""
    subject, stream = subjects.stored(subjects.progress(agent, task_id)), subjects.EVENTS_STREAM
    if label:
        subject, stream = subjects.shadowed(label, subjects.progress(agent, task_id)), "SHADOW"
    out: list[ToolCallDispatched] = []
    routed = ""
    planned = False
    for raw in await scan(js, stream, subject, timeout=10.0):
        try:
            ev = codec.any_event.decode(raw.data)
        except Exception:  # noqa: BLE001
            continue
        if isinstance(ev, ToolCallDispatched):
            out.append(ev)
        elif isinstance(ev, RouteDecided) and ev.task_id == task_id:
            routed = ev.strategy
        elif isinstance(ev, PlanProposed) and ev.task_id == task_id:
            planned = True
    return out, routed or ("plan" if planned else "react")


async def production_result(js: JetStreamContext, task_id: str) -> TaskCompleted | TaskFailed | None:
    raw = await stored_result(js, task_id)
    if raw is None:
        return None
    ev = codec.any_event.decode(raw)
    return ev if isinstance(ev, (TaskCompleted, TaskFailed)) else None


async def find_recorded(js: JetStreamContext, agent: str, task_id: str, tool: str, args: dict[str, object], *,
                        wait_s: float, call_id: str = "", used: dict[str, str] | None = None,
                        poll_s: float = 0.05) -> ToolCallCompleted | None:
    """Production's result of the same tool with the same arguments in the same
    task. Production usually runs beside the shadow, a little ahead or behind:
    wait (bounded by ``wait_s``) while its task is unfinished.

    ``used`` maps the shadow's call ids to the production calls already served
    for this task, so two identical calls get two recorded results, and a
    redelivered shadow call gets the same one again."""
    want = canonical_args(args)
    # Wait for production's result (a cheap direct read) and scan its task
    # once, rather than scanning the task's events on every poll: the scans
    # are what a shadow costs the broker.
    deadline = time.monotonic() + wait_s
    while await production_result(js, task_id) is None and time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
        poll_s = min(poll_s * 2, 1.0)
    recorded = await recorded_calls(js, agent, task_id)
    if used is not None and call_id in used:
        for rec in recorded:
            if rec.completed.call_id == used[call_id]:
                return rec.completed
    taken = set(used.values()) if used is not None else set()
    for rec in recorded:
        if rec.tool == tool and rec.args == want and rec.completed.call_id not in taken:
            if used is not None:
                used[call_id] = rec.completed.call_id
            return rec.completed
    return None
