"""What the plan-first strategy asks of a model, and how a model (or a
scripted stand-in) tells the turns apart. Pure.

- **Planner turn**: the request offers the agent's tools plus
  :data:`SUBMIT_PLAN` and sets ``tool_choice="submit_plan"``. The model answers
  with one ``submit_plan`` call whose arguments are a :class:`~.plan.Plan`
  (steps with typed ``{"$ref": step, "path": [...]}`` pointers). An invalid
  plan or a failed step comes back as the ``submit_plan`` call's tool message
  (JSON: ``{"errors": [PlanError...]}`` or ``{"failed": {...}, "done": {...}}``)
  and the model plans again, at most ``AgentSpec.max_replans`` times.
- **Solver turn**: the request offers no tools and sets ``tool_choice="none"``;
  the messages hold the plan's results as tool messages. The model answers
  in text.

The tool list is offered in the planner turn so that a model sees the
schemas in the form it was trained on; ``tool_choice`` forces the plan.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from agentstream.contracts.events import ToolSpec

SUBMIT_PLAN_NAME = "submit_plan"

_REF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A pointer at an earlier step's output: {\"$ref\": step id, \"path\": [keys or indexes]}",
    "properties": {"$ref": {"type": "string"}, "path": {"type": "array", "items": {"type": ["string", "integer"]}}},
    "required": ["$ref"],
}

SUBMIT_PLAN = ToolSpec(
    name=SUBMIT_PLAN_NAME,
    description=("Submit the whole plan before anything runs: the tool calls needed, in any order, each with an id. "
                 "An argument that needs an earlier step's output is a pointer {\"$ref\": id, \"path\": [...]}, "
                 "never a template string. Steps with no pointer between them run in parallel."),
    parameters={
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "tool": {"type": "string"},
                    "args": {"type": "object", "additionalProperties": True},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["id", "tool", "args"],
            }},
            "rationale": {"type": "string"},
        },
        "required": ["steps"],
        "$defs": {"ref": _REF_SCHEMA},
    },
)

Turn = Literal["planner", "solver", "react"]


def turn_kind(tools: tuple[ToolSpec, ...], tool_choice: str | None) -> Turn:
    """Which turn a model request is (for scripted models and traces)."""
    if tool_choice == SUBMIT_PLAN_NAME and any(t.name == SUBMIT_PLAN_NAME for t in tools):
        return "planner"
    if tool_choice == "none" and not tools:
        return "solver"
    return "react"


# A plan step's call id, ``p<attempt>-<step id>`` (core.plan_turns.call_id):
# read back by the engine (message ids), the spans and the timeline.
_PLAN_CALL = re.compile(r"p(\d+)-([A-Za-z0-9_-]+)")


def plan_call(call_id: str) -> tuple[int, str] | None:
    """``p<attempt>-<step id>`` -> (attempt, step id); None for a ReAct call id."""
    m = _PLAN_CALL.fullmatch(call_id)
    return (int(m.group(1)), m.group(2)) if m else None

