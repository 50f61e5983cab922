"""Runs one tool call and publishes its result to the agent's inbox.

Every failure becomes a structured ``ToolError`` in the result: a tool error
is something the model should see and react to, never a crashed step.
"""

from __future__ import annotations

import asyncio
import time

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import ToolCallCompleted, ToolCallRequested, ToolError
from agentstream.runtime.consumer import Reject
from agentstream.runtime.ports import Bus
from agentstream.runtime.tools import Tool, ToolFailure


class ToolRunner:
    def __init__(self, tools: dict[str, Tool], bus: Bus, *, worker: str = "",
                 default_timeout_s: float = 30.0) -> None:
        self.tools = tools
        self.bus = bus
        self.worker = worker
        self.default_timeout_s = default_timeout_s
        self.executions = 0

    async def on_call(self, req: ToolCallRequested) -> None:
        # The reply goes only to the inbox of the task named in the request, so a
        # forged request cannot make a tool worker publish anywhere else.
        if req.reply_subject != subjects.events(req.agent, req.task_id) or not subjects.is_token(req.agent) \
                or not subjects.is_token(req.task_id):
            raise Reject(f"reply_subject {req.reply_subject!r} is not the inbox of task {req.task_id!r}")
        started = time.time()
        result, error = await self.execute(req)
        done = ToolCallCompleted(
            task_id=req.task_id, agent=req.agent, step=req.step, call_id=req.call_id, tool=req.tool,
            ok=error is None, result=result if error is None else None, error=error,
            started_at=started, finished_at=time.time(), worker=self.worker)
        await self.bus.publish(req.reply_subject, codec.encode(done), msg_id=f"{req.idempotency_key}:result")

    async def execute(self, req: ToolCallRequested) -> tuple[object, ToolError | None]:
        tool = self.tools.get(req.tool)
        if tool is None:
            return None, ToolError(kind="unknown_tool", message=f"no worker serves tool {req.tool!r}")
        args = tool.validate(req.arguments)
        if isinstance(args, ToolError):
            return None, args
        timeout = tool.timeout_s or req.timeout_s or self.default_timeout_s
        self.executions += 1
        try:
            return await asyncio.wait_for(tool(args), timeout=timeout), None
        except ToolFailure as exc:
            return None, exc.error
        except TimeoutError:
            return None, ToolError(kind="timeout", message=f"{req.tool} did not finish within {timeout:g}s",
                                   retryable=True)
        except Exception as exc:  # noqa: BLE001 - any tool bug becomes a result the model sees
            return None, ToolError(kind="execution_error", message=f"{type(exc).__name__}: {exc}")
