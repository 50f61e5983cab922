"""Ports: the interfaces the engine needs from the outside world.

Adapters (nats-py, OpenAI-compatible HTTP) and in-memory doubles implement
these; the decision core never sees any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from agentstream.contracts.events import Message, ModelResponse, ToolSpec


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One model call. The sampling and tool fields are None when the agent did
    not set them: the adapter then applies its own defaults (from the environment)."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    # "auto" | "required" | "none" | a tool's name; None: the adapter's default
    # (auto whenever tools are offered).
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None


class LLM(Protocol):
    """A chat model with tool calling.

    Raises :class:`agentstream.runtime.core.errors.ModelError` on failure, with
    ``transient=True`` for errors worth retrying (rate limits, 5xx, timeouts).
    """

    @property
    def name(self) -> str: ...

    async def complete(self, request: ModelRequest) -> ModelResponse: ...


class Entry(msgspec.Struct, frozen=True):
    value: bytes
    revision: int


class SessionStore(Protocol):
    """Key/value with compare-and-set; raises ``Conflict`` when a write loses."""

    async def get(self, key: str) -> Entry | None: ...

    async def create(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, revision: int) -> int: ...

    async def put(self, key: str, value: bytes) -> int:
        """Unconditional write, for keys one writer owns (timers)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def keys(self) -> Sequence[str]: ...

    async def items(self) -> list[tuple[str, Entry]]:
        """Every live key with its entry, sorted by key."""
        ...


class Bus(Protocol):
    """Publishes to a stream with a deduplication id."""

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None: ...


class BlobStore(Protocol):
    """Named immutable blobs too large for an event (claim-check). Raises
    ``KeyError`` for a name it does not hold."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes: ...
