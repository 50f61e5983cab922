"""What an agent is: its name, version, instructions, tools and limits. Pure data."""

from __future__ import annotations

from typing import Literal

import msgspec

from agentstream.contracts.events import ToolSpec
from agentstream.runtime.planning.router import RouterPolicy


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    instructions: str
    tools: tuple[ToolSpec, ...] = ()
    version: str = "v1"
    model: str = "scripted"
    max_steps: int = 8
    deadline_s: float = 120.0
    history_turns: int = 10
    tool_timeout_s: float = 30.0
    # Budgets and runaway protection (per task; a task may lower or raise them).
    max_tokens: int | None = None  # input + output tokens over the whole task
    max_cost_usd: float | None = None
    max_output_tokens: int = 1024  # per model call; also caps a call so a budget cannot be overshot
    max_tool_calls: int = 32
    loop_limit: int = 3  # the same tool with the same arguments this many times ends the task
    # What the model request carries (None: the deployment's default, see
    # docs/models.md). tool_choice: "auto" (the default when tools exist),
    # "required", "none", or the name of one of the agent's tools.
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    # Strategy (docs/planning.md): "react" (think, call tools, repeat), "plan"
    # (one planner turn emits a typed DAG, the steps run, a solver turn
    # answers) or "routed" (per task, the router picks one of the two from
    # cheap features of the input; its threshold is calibrated with
    # `agentstream eval calibrate-router`, not guessed).
    strategy: Literal["react", "plan", "routed"] = "react"
    max_replans: int = 2  # planner turns after the first (invalid plan, failed step) before falling back to ReAct
    # Complexity at or above which "routed" plans first; the router's own default.
    router_threshold: float = RouterPolicy().threshold
    # Human in the loop.
    approval_timeout_s: float = 3600.0
    on_approval_timeout: Literal["deny", "escalate"] = "deny"

    def tool(self, name: str) -> ToolSpec | None:
        for spec in self.tools:
            if spec.name == name:
                return spec
        return None
