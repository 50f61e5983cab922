"""The tool worker's subscription: one durable consumer per tool."""

from __future__ import annotations

from nats.aio.msg import Msg

from agentstream.contracts import codec
from agentstream.runtime.execution.consumer import Handler
from agentstream.runtime.execution.tool_runner import ToolRunner


def tool_handler(runner: ToolRunner) -> Handler:
    async def handle(msg: Msg) -> None:
        await runner.on_call(codec.tool_call.decode(msg.data))
    return handle
