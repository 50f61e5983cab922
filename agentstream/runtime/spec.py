"""What an agent is: its name, version, instructions, tools and limits. Pure data."""

from __future__ import annotations

import msgspec

from agentstream.contracts.events import ToolSpec


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

    def tool(self, name: str) -> ToolSpec | None:
        for spec in self.tools:
            if spec.name == name:
                return spec
        return None
