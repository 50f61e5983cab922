"""agentstream: an event-driven runtime for production LLM agents on NATS JetStream.

What users write and call, in one place (like ``from pydantic_ai import Agent``)::

    from agentstream import App, tool, AgentClient, FunctionModel, answer, calls

Everything else stays importable from its layer (``agentstream.runtime.<layer>``,
see docs/architecture.md) but is not what the README teaches. Names resolve
lazily, so ``import agentstream.contracts`` does not pull in the broker client,
OpenTelemetry or aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # defining agents and tools
    "App": "agentstream.runtime.core.app",
    "Agent": "agentstream.runtime.core.app",
    "load_app": "agentstream.runtime.core.app",
    "tool": "agentstream.runtime.core.tools",
    "Tool": "agentstream.runtime.core.tools",
    "ToolFailure": "agentstream.runtime.core.tools",
    "RetryableToolError": "agentstream.runtime.core.tools",
    "RateLimited": "agentstream.runtime.core.tools",
    "RetryPolicy": "agentstream.runtime.core.tools",
    "BreakerPolicy": "agentstream.runtime.core.tools",
    "NO_RETRY": "agentstream.runtime.core.tools",
    "ToolContext": "agentstream.runtime.core.tools",
    "AgentSpec": "agentstream.runtime.core.spec",
    # models: the port and the scripted (deterministic) implementations
    "LLM": "agentstream.runtime.core.ports",
    "ModelRequest": "agentstream.runtime.core.ports",
    "FunctionModel": "agentstream.runtime.adapters.scripted_models",
    "answer": "agentstream.runtime.adapters.scripted_models",
    "calls": "agentstream.runtime.adapters.scripted_models",
    "last_user": "agentstream.runtime.adapters.scripted_models",
    "tool_results": "agentstream.runtime.adapters.scripted_models",
    "OpenAIChatModel": "agentstream.runtime.adapters.openai_model",
    # talking to a running system
    "AgentClient": "agentstream.runtime.interfaces.client",
    "Runtime": "agentstream.runtime.service.runtime",
    "Settings": "agentstream.runtime.config.settings",
    # events users receive
    "ModelResponse": "agentstream.contracts.events",
    "TaskSubmitted": "agentstream.contracts.events",
    "TaskCompleted": "agentstream.contracts.events",
    "TaskFailed": "agentstream.contracts.events",
    "TaskResult": "agentstream.contracts.events",
    # errors
    "AgentstreamError": "agentstream.runtime.core.errors",
    "ConfigError": "agentstream.runtime.core.errors",
    "BrokerUnavailable": "agentstream.runtime.core.errors",
    "ResultTimeout": "agentstream.runtime.core.errors",
}

__all__ = [
    "Agent",
    "AgentClient",
    "AgentSpec",
    "AgentstreamError",
    "answer",
    "App",
    "BreakerPolicy",
    "BrokerUnavailable",
    "calls",
    "ConfigError",
    "FunctionModel",
    "last_user",
    "LLM",
    "load_app",
    "ModelRequest",
    "ModelResponse",
    "NO_RETRY",
    "OpenAIChatModel",
    "RateLimited",
    "ResultTimeout",
    "RetryableToolError",
    "RetryPolicy",
    "Runtime",
    "Settings",
    "TaskCompleted",
    "TaskFailed",
    "TaskResult",
    "TaskSubmitted",
    "tool",
    "Tool",
    "tool_results",
    "ToolContext",
    "ToolFailure",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what type checkers and IDEs see
    from agentstream.contracts.events import ModelResponse, TaskCompleted, TaskFailed, TaskResult, TaskSubmitted
    from agentstream.runtime.adapters.openai_model import OpenAIChatModel
    from agentstream.runtime.adapters.scripted_models import FunctionModel, answer, calls, last_user, tool_results
    from agentstream.runtime.config.settings import Settings
    from agentstream.runtime.core.app import Agent, App, load_app
    from agentstream.runtime.core.errors import AgentstreamError, BrokerUnavailable, ConfigError, ResultTimeout
    from agentstream.runtime.core.ports import LLM, ModelRequest
    from agentstream.runtime.core.spec import AgentSpec
    from agentstream.runtime.core.tools import (
        NO_RETRY,
        BreakerPolicy,
        RateLimited,
        RetryableToolError,
        RetryPolicy,
        Tool,
        ToolContext,
        ToolFailure,
        tool,
    )
    from agentstream.runtime.interfaces.client import AgentClient
    from agentstream.runtime.service.runtime import Runtime
