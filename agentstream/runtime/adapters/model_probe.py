"""One small request that tells whether a model server can drive an agent:
does it answer, does it call the one tool it is offered, does it report
usage, and how long does it take. ``agentstream doctor`` prints it; worker
start-up logs a warning when a model that agents with tools depend on does
not call the tool.

The probe goes through the same adapter as real traffic, so it sends the
same fields (``tool_choice`` and the output cap under the server's name).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from agentstream.contracts.events import Message, ToolSpec
from agentstream.runtime.core.errors import ModelError
from agentstream.runtime.core.ports import LLM, ModelRequest

PROBE_TOOL = ToolSpec(
    name="get_weather",
    description="Get the current weather in a city. Call it for any question about the weather.",
    parameters={"type": "object", "properties": {"city": {"type": "string", "description": "The city's name"}},
                "required": ["city"]},
)
PROBE_MESSAGES = (
    Message(role="system", content="You are a helpful assistant. Use the tools you are given when they help."),
    Message(role="user", content="What is the weather in Paris right now? Use the get_weather tool."),
)
PROBE_MAX_TOKENS = 128


@dataclass(frozen=True)
class ProbeResult:
    model: str
    latency_s: float
    error: str = ""
    called_tool: bool = False
    arguments: str = ""
    reported_usage: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str = ""

    @property
    def answered(self) -> bool:
        return not self.error

    @property
    def ignored_cap(self) -> bool:
        return self.output_tokens > PROBE_MAX_TOKENS

    def summary(self) -> str:
        """One line: what the probe found."""
        if not self.answered:
            return f"model {self.model}: no answer after {self.latency_s:.1f}s: {self.error}"
        tool = (f"called {PROBE_TOOL.name}({self.arguments})" if self.called_tool
                else f"did NOT call the offered tool (finish_reason={self.finish_reason or '?'})")
        usage = (f"usage {self.input_tokens} in / {self.output_tokens} out" if self.reported_usage
                 else "no usage reported (token budgets and cost cannot work)")
        cap = f"; ignored the output cap of {PROBE_MAX_TOKENS}" if self.ignored_cap else ""
        return f"model {self.model}: answered in {self.latency_s:.1f}s; {tool}; {usage}{cap}"


async def probe_model(llm: LLM, timeout_s: float = 60.0) -> ProbeResult:
    """Ask ``llm`` the probe question with one tool; never raises for a model failure."""
    request = ModelRequest(model=llm.name, messages=PROBE_MESSAGES, tools=(PROBE_TOOL,),
                           max_tokens=PROBE_MAX_TOKENS)
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            resp = await llm.complete(request)
    except TimeoutError:
        return ProbeResult(model=llm.name, latency_s=time.monotonic() - t0, error=f"timed out after {timeout_s:g}s")
    except ModelError as exc:
        return ProbeResult(model=llm.name, latency_s=time.monotonic() - t0, error=str(exc))
    calls = [c for c in resp.tool_calls if c.name == PROBE_TOOL.name]
    u = resp.usage
    return ProbeResult(model=llm.name, latency_s=time.monotonic() - t0, called_tool=bool(calls),
                       arguments=calls[0].arguments if calls else "",
                       reported_usage=bool(u.input_tokens or u.output_tokens), input_tokens=u.input_tokens,
                       output_tokens=u.output_tokens, finish_reason=resp.finish_reason)
