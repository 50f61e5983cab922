"""One encoder and typed decoders per event family.

Decoders raise :class:`DecodeError` (never a library exception) so consumers
have exactly one thing to catch before dead-lettering a message.
"""

from __future__ import annotations

import hashlib
from typing import Any, Generic, TypeVar

import msgspec

from agentstream.contracts.events import (
    AgentInboxEvent,
    AnyEvent,
    EvaluationEvent,
    MemoryReplied,
    MemoryRequest,
    TaskEvent,
    TaskResult,
    TaskSubmitted,
    ToolCallRequested,
)

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def arguments_digest(arguments: dict[str, Any]) -> str:
    """A tool call's arguments as a stable digest (sorted keys, sha256 hex):
    what an approval decision names, and a tool worker checks."""
    return hashlib.sha256(msgspec.json.encode(arguments, order="sorted")).hexdigest()


class DecodeError(ValueError):
    """A message body is not a valid event of the expected family."""


def encode(event: msgspec.Struct) -> bytes:
    return _encoder.encode(event)


class Decoder(Generic[T]):
    """A msgspec JSON decoder that raises :class:`DecodeError` with a one-line reason."""

    __slots__ = ("_dec",)

    def __init__(self, type_: Any) -> None:
        self._dec: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)

    def decode(self, buf: bytes | bytearray | memoryview | str) -> T:
        try:
            return self._dec.decode(buf)
        except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:  # ValidationError is a DecodeError
            raise DecodeError(str(exc)) from None


any_event: Decoder[AnyEvent] = Decoder(AnyEvent)
task_submitted: Decoder[TaskSubmitted] = Decoder(TaskSubmitted)
agent_inbox: Decoder[AgentInboxEvent] = Decoder(AgentInboxEvent)
tool_call: Decoder[ToolCallRequested] = Decoder(ToolCallRequested)
task_result: Decoder[TaskResult] = Decoder(TaskResult)
task_event: Decoder[TaskEvent] = Decoder(TaskEvent)
evaluation_event: Decoder[EvaluationEvent] = Decoder(EvaluationEvent)
memory_request: Decoder[MemoryRequest] = Decoder(MemoryRequest)
memory_reply: Decoder[MemoryReplied] = Decoder(MemoryReplied)
