"""The agent's two subscriptions: new tasks, and its per-task inbox."""

from __future__ import annotations

from nats.aio.msg import Msg

from agentstream.contracts import codec
from agentstream.runtime.consumer import Handler, Reject, stream_seq
from agentstream.runtime.engine import AgentEngine, decode_task


def task_handler(engine: AgentEngine) -> Handler:
    async def handle(msg: Msg) -> None:
        task = decode_task(msg.data, stream_seq(msg))
        if task.agent != engine.spec.name:
            raise Reject(f"task for agent {task.agent!r} published on {msg.subject}")
        await engine.on_task(task)
    return handle


def inbox_handler(engine: AgentEngine) -> Handler:
    async def handle(msg: Msg) -> None:
        await engine.on_event(codec.agent_inbox.decode(msg.data))
    return handle
