"""The agent's two subscriptions: new tasks, and its per-task inbox; and the
answer to a task that can never run."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskFailed, Usage
from agentstream.runtime.execution.consumer import DeadLetterHook, Handler, Reject, stream_seq
from agentstream.runtime.execution.engine import AgentEngine, decode_task, seq_task_id

log = logging.getLogger("agentstream.agent")


def task_handler(engine: AgentEngine) -> Handler:
    async def handle(msg: Msg) -> None:
        task = decode_task(msg.data, stream_seq(msg))
        if task.agent != engine.spec.name:
            raise Reject(f"task for agent {task.agent!r} published on {msg.subject}")
        await engine.on_task(task)
    return handle


def inbox_handler(engine: AgentEngine) -> Handler:
    """Tool results (``agents.<a>.events.*``) and decisions (``agents.<a>.decisions.*``):
    the subject and stream sequence go along, so the engine can check the
    event is bound to where it arrived (core.trust)."""
    async def handle(msg: Msg) -> None:
        # Judged by the subject it was published on: EVENTS stores it with the
        # task's partition, which only the stream's own transform writes. A
        # shadow deployment's inbox is production's under shadow.<label>.: bound the same way.
        subject = subjects.published(subjects.unshadowed(msg.subject)[1])
        await engine.on_event(codec.agent_inbox.decode(msg.data), subject=subject, seq=stream_seq(msg) or 0)
    return handle


# ------------------------------------------------------------ rejected tasks


class _TaskIds(msgspec.Struct):
    """What a rejected task body may still tell: read leniently (any type), so
    a wrong type elsewhere in the body does not hide the task id."""

    task_id: Any = None
    tenant_id: Any = None
    user_id: Any = None
    conversation_id: Any = None


_ids_decoder = msgspec.json.Decoder(_TaskIds)


def rejected_result(raw: bytes, reason: str, *, agent: str, seq: int | None, now: float) -> TaskFailed | None:
    """The failed result for a task body the consumer dead-lettered, or None
    when the body yields no usable task id (then there is nobody to answer).

    ``agent`` is the one whose task subject carried the body, not the body's
    own claim. The task id is taken as the runtime would (``seq-<n>`` when
    absent) and must be a subject token: a forged id cannot steer the result
    to any other subject."""
    try:
        ids = _ids_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        # Not a JSON object: the id it would have had is its stream sequence,
        # which whoever published it can read from the publish ack.
        ids = _TaskIds()
    if ids.task_id is None or ids.task_id == "":
        if seq is None:
            return None
        task_id = seq_task_id(seq)
    elif isinstance(ids.task_id, str) and subjects.is_token(ids.task_id):
        task_id = ids.task_id
    else:
        return None
    if not subjects.is_token(agent):
        return None

    def text(value: Any, default: str) -> str:
        return value if isinstance(value, str) and value else default

    return TaskFailed(task_id=task_id, agent=agent, agent_version="", reason="rejected",
                      message=f"the task was rejected and will not run: {reason}", steps=0, tool_calls=0,
                      usage=Usage(), started_at=now, finished_at=now,
                      tenant_id=text(ids.tenant_id, "default"), user_id=text(ids.user_id, "anonymous"),
                      conversation_id=text(ids.conversation_id, ""))


def task_rejected(engine: AgentEngine) -> DeadLetterHook:
    """After the task consumer dead-letters a body: answer its task with a
    failed result, so whoever waits on it learns at once instead of timing out."""
    agent = engine.spec.name

    async def hook(msg: Msg, reason: str) -> None:
        result = rejected_result(msg.data or b"", reason, agent=agent, seq=stream_seq(msg), now=time.time())
        if result is None:
            return
        # A task the runtime knows (a session exists, running or finished) has,
        # or will get, its own result (the deadline sweep fails a stuck one):
        # a bad body reusing its id must not answer for it.
        if await engine.sessions.get(result.task_id) is not None:
            log.warning("rejected body for known task %s left unanswered: %s", result.task_id, reason)
            return
        # The msg id every result of the task uses: one result per task, and a
        # redelivered rejection publishes nothing new.
        await engine.bus.publish(subjects.results(agent, result.task_id), codec.encode(result),
                                 msg_id=f"{result.task_id}:result")
    return hook
