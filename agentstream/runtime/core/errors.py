"""The small error hierarchy adapters translate library errors into."""

from __future__ import annotations


class AgentstreamError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AgentstreamError):
    """Configuration is missing or malformed; the message says which variable."""


class BrokerUnavailable(AgentstreamError):
    """The NATS server cannot be reached."""


class Conflict(AgentstreamError):
    """A compare-and-set lost the race: reload and retry."""


class ModelError(AgentstreamError):
    """The model endpoint failed. ``transient`` errors are worth retrying;
    ``timed_out``: it did not answer in time (the task then fails with
    ``model_timeout``, not ``model_error``)."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None,
                 timed_out: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.timed_out = timed_out


class ResultTimeout(AgentstreamError):
    pass

