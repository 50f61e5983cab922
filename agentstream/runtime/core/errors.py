"""The small error hierarchy adapters translate library errors into."""

from __future__ import annotations


class AgentstreamError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AgentstreamError):
    """Configuration is missing or malformed; the message says which variable."""


class BrokerUnavailable(AgentstreamError):
    """The NATS server cannot be reached."""


class SubmitFailed(BrokerUnavailable):
    """A submit the broker never acknowledged, retried until the client's
    bound. ``stored``: False, the task is certainly not stored (every attempt
    was refused before reaching a stream); None, it may be (an attempt timed
    out after sending): submitting again with the same task id is safe."""

    def __init__(self, message: str, *, task_id: str, stored: bool | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.stored = stored


class PayloadTooLarge(AgentstreamError):
    """A message is larger than the broker accepts (its ``max_payload``): a
    property of the message, not an outage; retrying it cannot help."""


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

