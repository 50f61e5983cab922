"""The memory subsystem's errors: adapters translate library errors into these."""

from __future__ import annotations

from agentstream.runtime.core.errors import AgentstreamError


class MemoryError_(AgentstreamError):  # noqa: N801 - MemoryError is a builtin
    """A memory operation failed."""


class IndexFailure(MemoryError_):
    """The vector store refused or failed an operation."""


class LexicalUnavailable(MemoryError_):
    """BM25 cannot run here: retrieval refuses to start rather than silently
    going dense-only."""
