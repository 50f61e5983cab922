"""Which strategy a new task runs: the agent's ``strategy``, or for
``routed`` the router's choice from cheap features of the task's input. Pure.

The router's decision is an event (``RouteDecided`` on the task's progress
subject) and stays in the session (``Planning.route``), so a timeline and an
evaluation can say why a task planned first or not.
"""

from __future__ import annotations

import msgspec

from agentstream.contracts.events import RouteDecided, TaskSubmitted
from agentstream.runtime.core.common import Context
from agentstream.runtime.core.state import AnyCommand, Planning, PublishProgress
from agentstream.runtime.planning.router import RouterPolicy, route


def start(task: TaskSubmitted, agent_version: str,
          ctx: Context) -> tuple[Planning | None, tuple[AnyCommand, ...]]:
    """The new session's planning state (None: plain ReAct, the state a
    ReAct session always had) and the commands announcing a routed choice."""
    strategy = ctx.spec.strategy
    if strategy == "react":
        return None, ()
    if strategy == "plan":
        return Planning(phase="planning"), ()
    decision = route(task.input, RouterPolicy(threshold=ctx.spec.router_threshold))
    event = RouteDecided(
        task_id=task.task_id, agent=task.agent, strategy=decision.strategy, score=round(decision.score, 4),
        threshold=decision.threshold, confidence=round(decision.confidence, 4), reason=decision.reason,
        features=msgspec.structs.asdict(decision.features), at=ctx.now, agent_version=agent_version,
        version_hash=ctx.version_hash)
    return Planning(phase="planning" if decision.strategy == "plan" else "react", route=decision), (PublishProgress(event=event),)
