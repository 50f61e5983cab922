"""Telemetry records on the wire: finished spans written to the TELEMETRY
stream (subject ``telemetry.spans.<trace_id>``) by the built-in exporter, so
``agentstream trace``/``stats`` and the dashboard work with no other
infrastructure. Times are Unix epoch seconds (float).

A message is a :class:`SpanBatch` of :class:`BatchedSpan`: the spans of one trace that one process
finished within one flush interval, with that process's service and worker
said once (a task's ~15 spans are one or two
messages, not fifteen). Readers also accept a bare :class:`SpanRecord`, and
drop repeats by ``span_id`` (a redelivered final step may emit its
``invoke_agent`` span twice)."""

from __future__ import annotations

from typing import Any

import msgspec


class BatchedSpan(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One finished span, as it travels inside a :class:`SpanBatch` (whose
    type says what it holds, so the span carries no ``type`` of its own).
    Fields at their default are left out on the wire (a reader fills them
    in), and ``service`` and ``worker`` are usually given once for the batch."""

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


class SpanRecord(BatchedSpan, frozen=True, kw_only=True, tag_field="type", tag="agentstream.telemetry.span.v1"):
    """One finished span on its own (what readers return; also accepted as a bare message)."""


class SpanBatch(msgspec.Struct, frozen=True, kw_only=True, tag_field="type",
                tag="agentstream.telemetry.spans.v1", omit_defaults=True):
    # The service and worker of every span in the batch that names none itself
    # (a batch comes from one process; saying it once saves ~45 bytes a span).
    service: str = ""
    worker: str = ""
    spans: list[BatchedSpan]  # last: the exporter writes the head once and appends records


TelemetryMessage = SpanRecord | SpanBatch
_decoder = msgspec.json.Decoder(TelemetryMessage)


def decode_spans(data: bytes) -> list[SpanRecord]:
    """The spans in one TELEMETRY message (a batch or a bare record). Raises
    ``msgspec.DecodeError`` on anything else."""
    msg = _decoder.decode(data)
    if not isinstance(msg, SpanBatch):
        return [msg]
    service, worker = msg.service, msg.worker
    out: list[SpanRecord] = []
    for s in msg.spans:
        fields = msgspec.structs.asdict(s)
        if service and not s.service:
            fields["service"] = service
        if worker and not s.worker:
            fields["worker"] = worker
        out.append(SpanRecord(**fields))
    return out


def span_subject(trace_id: str) -> str:
    return f"telemetry.spans.{trace_id}"


TELEMETRY_STREAM = "TELEMETRY"
TELEMETRY_SUBJECTS = ("telemetry.spans.*",)
