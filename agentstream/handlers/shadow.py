"""Safe change on the bus: a shadow deployment's subscriptions (tasks, its
inbox, its tool calls), the comparator's (production and shadow results), and
canary routing in front of an agent's task subscription."""

from __future__ import annotations

import logging
import time

import msgspec
from nats.aio.msg import Msg

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskCompleted, TaskFailed
from agentstream.runtime.execution.consumer import Handler, Reject, stream_seq
from agentstream.runtime.execution.engine import AgentEngine, decode_task
from agentstream.runtime.rollout.canary import route, routing_key
from agentstream.runtime.rollout.canary_control import Router
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


def routed_task_handler(router: Router, agent: str, role: str, inner: Handler) -> Handler:
    """Canary routing in front of an agent's task handler: this replica runs a
    task only if the canary rule gives it to ``role`` (baseline or candidate)."""
    async def handle(msg: Msg) -> None:
        state = await router.state(agent)
        if state is None:
            if role == "baseline":
                await inner(msg)
            return
        try:
            task = decode_task(msg.data, stream_seq(msg))
        except Exception:
            if role == "baseline":  # a bad body is dead-lettered (and answered) once, by the baseline
                await inner(msg)
            return
        md = msg.metadata
        at = md.timestamp.timestamp() if md.timestamp is not None else time.time()
        key = routing_key(task.conversation_id, task.user_id, task.task_id, task.tenant_id)
        if route(state, key, at) == role:
            await inner(msg)
    return handle
