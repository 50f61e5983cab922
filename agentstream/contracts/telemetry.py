"""Telemetry records on the wire: finished spans written to the TELEMETRY
stream (subject ``telemetry.spans.<trace_id>``) by the built-in exporter, so
``agentstream trace``/``stats`` and the dashboard work with no other
infrastructure. Times are Unix epoch seconds (float)."""

from __future__ import annotations

from typing import Any

import msgspec


class SpanRecord(msgspec.Struct, frozen=True, kw_only=True, tag_field="type",
                 tag="agentstream.telemetry.span.v1"):
    trace_id: str  # 32 hex chars
    span_id: str  # 16 hex chars
    parent_span_id: str = ""
    name: str  # e.g. "invoke_agent support", "chat gpt-4o", "execute_tool lookup_order"
    kind: str = "internal"  # internal | client | server | producer | consumer
    start: float
    end: float
    status: str = "ok"  # ok | error
    error_type: str = ""
    attributes: dict[str, Any] = {}
    service: str = ""  # resource service.name
    worker: str = ""
    # Added by the tracing core: span links, e.g. a ``step`` span's link to
    # the ``process`` span of the message that triggered it.
    links: list[dict[str, str]] = []  # [{"trace_id": ..., "span_id": ...}]


def span_subject(trace_id: str) -> str:
    return f"telemetry.spans.{trace_id}"


TELEMETRY_STREAM = "TELEMETRY"
TELEMETRY_SUBJECTS = ("telemetry.spans.*",)
