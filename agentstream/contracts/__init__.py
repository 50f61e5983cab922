"""The protocol: events, subjects, streams and buckets. Imports nothing else of ours."""

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import *  # noqa: F403
from agentstream.contracts.events import ALL_EVENT_TYPES

__all__ = ["codec", "subjects", "ALL_EVENT_TYPES"]
