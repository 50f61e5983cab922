"""Log formatters: redacting text, and JSON lines with the current trace and task."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from agentstream.runtime.observability.redact import redact
from agentstream.runtime.observability.telemetry_config import TelemetryConfig
from agentstream.runtime.observability.trace_context import _TASK, _current


class RedactingFormatter(logging.Formatter):
    """The usual text format, with the message and traceback redacted."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = redact(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return redact(super().formatException(ei))


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message (redacted), and the
    current trace_id / span_id / task_id / agent when there are any."""

    def __init__(self, *, worker: str = "", service: str = "agentstream") -> None:
        super().__init__()
        self.worker = worker
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": redact(record.getMessage()),
        }
        ctx = _current()
        if ctx is not None:
            out["trace_id"] = ctx.trace_id
            out["span_id"] = ctx.span_id
        info = _TASK.get()
        if info is not None:
            out["task_id"] = info.task_id
            out["agent"] = info.agent
        if self.worker:
            out["worker"] = self.worker
        out["service"] = self.service
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return msgspec.json.encode(out).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(config: TelemetryConfig, *, worker: str = "") -> None:
    """Install the JSON (``AGENTSTREAM_LOG_FORMAT=json``) or redacting text
    formatter on the root logger's stream handlers; with JSON and no handler,
    add one on stderr. Idempotent; other handlers (pytest's) are left alone."""
    root = logging.getLogger()
    handlers = [h for h in root.handlers if type(h) is logging.StreamHandler]
    if not handlers and config.log_format == "json":
        h: logging.StreamHandler[Any] = logging.StreamHandler(sys.stderr)
        root.addHandler(h)
        handlers = [h]
    for h in handlers:
        if config.log_format == "json":
            h.setFormatter(JsonLogFormatter(worker=worker, service=config.service_name))
        elif not isinstance(h.formatter, RedactingFormatter):
            fmt = (h.formatter._fmt if h.formatter is not None else None) or TEXT_FORMAT
            datefmt = h.formatter.datefmt if h.formatter is not None else None
            h.setFormatter(RedactingFormatter(fmt, datefmt))
