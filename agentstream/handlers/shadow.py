"""A shadow deployment's subscriptions (tasks, its inbox, its tool calls) and
the comparator's (production and shadow results)."""

from __future__ import annotations

import logging

import msgspec
from nats.aio.msg import Msg

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskCompleted, TaskFailed
from agentstream.runtime.execution.consumer import Handler, Reject, stream_seq
from agentstream.runtime.execution.engine import AgentEngine, decode_task
from agentstream.runtime.rollout.comparator import Comparator
from agentstream.runtime.rollout.shadow import ShadowBudget, ShadowConfig, ShadowToolRunner, sampled

log = logging.getLogger("agentstream.shadow")


def shadow_task_handler(engine: AgentEngine, config: ShadowConfig, budget: ShadowBudget) -> Handler:
    async def handle(msg: Msg) -> None:
        task = decode_task(msg.data, stream_seq(msg))
        if task.agent != engine.spec.name:
            raise Reject(f"task for agent {task.agent!r} published on {msg.subject}")
        if not sampled(task.task_id, config.sample_pct) or not await budget.allows():
            return  # acked: not this shadow's to run
        # The shadow answers as its own version, whatever version the submitter asked for.
        await engine.on_task(msgspec.structs.replace(task, agent_version=""))
    return handle


def shadow_tool_handler(runner: ShadowToolRunner) -> Handler:
    async def handle(msg: Msg) -> None:
        await runner.on_call(codec.tool_call.decode(msg.data))
    return handle


def comparator_handler(comparator: Comparator) -> Handler:
    async def handle(msg: Msg) -> None:
        result = codec.any_event.decode(msg.data)
        if not isinstance(result, (TaskCompleted, TaskFailed)):
            raise Reject(f"{type(result).__name__} on a results subject")
        label, rest = subjects.unshadowed(msg.subject)
        if rest != subjects.results(result.agent, result.task_id):
            raise Reject(f"result for task {result.task_id!r} of {result.agent!r} published on {msg.subject}")
        if label:
            await comparator.on_shadow(label, result)
        else:
            await comparator.on_production(result)
    return handle
