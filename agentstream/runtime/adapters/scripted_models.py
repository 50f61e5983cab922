"""Real in-memory implementations of the ``LLM`` port (not mocks), in the spirit
of pydantic-ai's ``FunctionModel``: used by the demo when no model is
configured, by tests and by benchmarks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from agentstream.contracts.events import Message, ModelResponse, ToolCall, Usage
from agentstream.runtime.core.ports import ModelRequest

ModelFn = Callable[[ModelRequest], ModelResponse | Awaitable[ModelResponse]]


def estimate_tokens(text: str) -> int:
    """~4 characters a token: scripted models still report plausible usage."""
    return max(1, len(text) // 4) if text else 0


class FunctionModel:
    """A model whose turns are computed by a Python function of the request."""

    def __init__(self, fn: ModelFn, name: str = "function-model") -> None:
        self.fn = fn
        self.name = name
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        out = self.fn(request)
        if isinstance(out, Awaitable):
            out = await out
        resp: ModelResponse = out
        if resp.usage == Usage():
            prompt = sum(estimate_tokens(m.content) + 8 for m in request.messages)
            completion = estimate_tokens(resp.text) + sum(
                estimate_tokens(c.arguments) + 4 for c in resp.tool_calls)
            resp = msgspec.structs.replace(resp, usage=Usage(input_tokens=prompt, output_tokens=completion))
        if not resp.model:
            resp = msgspec.structs.replace(resp, model=self.name)
        return resp


def last_user(request: ModelRequest) -> str:
    for m in reversed(request.messages):
        if m.role == "user":
            return m.content
    return ""


def tool_results(request: ModelRequest) -> list[Message]:
    """Tool messages since the last user message (this task's results so far)."""
    out: list[Message] = []
    for m in reversed(request.messages):
        if m.role == "user":
            break
        if m.role == "tool":
            out.append(m)
    return list(reversed(out))


def calls(*specs: tuple[str, dict[str, object]], step: int = 1) -> ModelResponse:
    """A turn asking for several tools at once."""
    return ModelResponse(
        tool_calls=tuple(ToolCall(id=f"call_{step}_{i}", name=name, arguments=msgspec.json.encode(args).decode())
                         for i, (name, args) in enumerate(specs)),
        finish_reason="tool_calls")


def answer(text: str) -> ModelResponse:
    return ModelResponse(text=text, finish_reason="stop")
