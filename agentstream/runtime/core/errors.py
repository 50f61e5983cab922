"""The small error hierarchy adapters translate library errors into."""

from __future__ import annotations


class AgentstreamError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AgentstreamError):
    """Configuration is missing or malformed; the message says which variable."""


class BrokerUnavailable(AgentstreamError):
    """The NATS server cannot be reached."""


class StoreFull(AgentstreamError):
    """A stream or bucket refused a write: it reached its byte limit (or the
    server its storage). Transient for a worker (it waits for room); for a
    submitter, the answer to give its caller."""

    def __init__(self, store: str, message: str) -> None:
        super().__init__(message)
        self.store = store


class Conflict(AgentstreamError):
    """A compare-and-set lost the race: reload and retry."""


class ModelError(AgentstreamError):
    """The model endpoint failed. ``transient`` errors are worth retrying."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class ResultTimeout(AgentstreamError):
    pass

