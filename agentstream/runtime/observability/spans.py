"""Lite spans (:class:`LiteSpan`, see :mod:`~agentstream.runtime.observability.telemetry`
for why) and the :class:`SpanRecord` a finished span is stored as, with the
helpers that fill span attributes (error type, content as JSON, subject template)."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from agentstream.contracts.telemetry import BatchedSpan, SpanRecord
from agentstream.runtime.core.errors import ModelError
from agentstream.runtime.observability.redact import redact
from agentstream.runtime.observability.trace_context import _CUR, Ctx, _from_otel, to_otel

if TYPE_CHECKING:
    from agentstream.runtime.observability.telemetry import Telemetry


SCOPE = InstrumentationScope("agentstream", "0.1.0")


_KIND_NAMES = {SpanKind.INTERNAL: "internal", SpanKind.CLIENT: "client", SpanKind.SERVER: "server",
               SpanKind.PRODUCER: "producer", SpanKind.CONSUMER: "consumer"}
_UNSET = Status(StatusCode.UNSET)


class LiteSpan:
    """A span recorded as plain values and handed to the exporters when it ends (see the module doc)."""

    __slots__ = ("_tel", "name", "kind", "context", "parent", "start_ns", "attributes", "links", "error",
                 "keep", "_tokens", "_ended")

    def __init__(self, tel: Telemetry, name: str, kind: SpanKind, context: Ctx, parent: Ctx | None,
                 attributes: dict[str, Any], start_ns: int, links: Sequence[Ctx] = ()) -> None:
        self._tel = tel
        self.name = name
        self.kind = kind
        self.context = context
        self.parent = parent
        self.attributes = attributes
        self.start_ns = start_ns
        self.links = links
        self.error: str | None = None  # the status description when the span failed
        # Tail keep rule: recorded even though the sampler dropped its trace
        # (a failed or slow task's root span; a failed span keeps itself).
        self.keep = False
        self._tokens: tuple[Any, ...] = ()
        self._ended = False

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_error(self, error_type: str, description: str = "") -> None:
        self.attributes["error.type"] = error_type
        self.error = redact(description)[:500] if description else ""

    def activate(self, *, foreign: bool = False) -> LiteSpan:
        """Make this span the current one (for children and context injection).
        ``foreign``: code other than ours runs under it (a tool, a model
        adapter), so it goes into OpenTelemetry's context too, where their
        own spans and instrumentation look for a parent."""
        if foreign:
            otel_token = otel_context.attach(trace_api.set_span_in_context(_ForeignView(self.context)))
            self._tokens = (_CUR.set(None), otel_token)
        else:
            self._tokens = (_CUR.set(self.context),)
        return self

    def end(self, end_ns: int | None = None) -> None:
        if self._tokens:
            if len(self._tokens) > 1:
                otel_context.detach(self._tokens[1])
            _CUR.reset(self._tokens[0])
            self._tokens = ()
        if self._ended:
            return
        self._ended = True
        if self.context.flags & 1:
            self._tel._sink(self, end_ns or time.time_ns())
        elif self.keep or self.error is not None:
            self.context = self.context._replace(flags=self.context.flags | 1)
            self._tel._sink(self, end_ns or time.time_ns())


class _ForeignView(NonRecordingSpan):
    """The span foreign code finds in OpenTelemetry's context: its
    ``SpanContext`` (int ids parsed from hex, validated) is built only when
    something asks for it; most tools and models never do."""

    def __init__(self, ctx: Ctx) -> None:  # no super().__init__: the context is made on demand
        self._ctx = ctx
        self._sc: trace_api.SpanContext | None = None

    def get_span_context(self) -> trace_api.SpanContext:
        sc = self._sc
        if sc is None:
            sc = self._sc = to_otel(self._ctx)
        return sc

    @property
    def _context(self) -> trace_api.SpanContext:  # type: ignore[override]  # NonRecordingSpan's repr reads it
        return self.get_span_context()


# The ``process`` span of the message being handled, while its handler runs:
# the engine's hooks re-parent it when it turns out to belong to a task's
# trace (it is not recorded before its handler returns).
_PROCESS: contextvars.ContextVar[LiteSpan | None] = contextvars.ContextVar("agentstream_process", default=None)


class _NoopSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_error(self, error_type: str, description: str = "") -> None:
        pass

    def activate(self) -> _NoopSpan:
        return self

    def end(self, end_ns: int | None = None) -> None:
        pass


NOOP_SPAN = _NoopSpan()


def _record(ctx: Ctx, parent: Ctx | None, name: str, kind: str, start_ns: int, end_ns: int,
            error: bool, attrs: dict[str, Any], service: str, worker: str, links: Sequence[Ctx],
            cls: type[BatchedSpan] = SpanRecord) -> Any:
    """The span as ``cls``: a :class:`SpanRecord`, or the untagged
    :class:`BatchedSpan` the JetStream exporter writes into a batch."""
    return cls(
        trace_id=ctx.trace_id, span_id=ctx.span_id, parent_span_id=parent.span_id if parent is not None else "",
        name=name, kind=kind, start=start_ns / 1e9, end=end_ns / 1e9,
        status="error" if error else "ok", error_type=str(attrs.get("error.type", "")) if error else "",
        attributes=attrs, service=service, worker=worker,
        links=[{"trace_id": lk.trace_id, "span_id": lk.span_id} for lk in links] if links else [],
    )


def span_record(span: ReadableSpan) -> SpanRecord:
    assert span.context is not None
    res = span.resource.attributes
    return _record(_from_otel(span.context), _from_otel(span.parent) if span.parent is not None else None,
                   span.name, _KIND_NAMES.get(span.kind, "internal"), span.start_time or 0, span.end_time or 0,
                   span.status.status_code is StatusCode.ERROR, dict(span.attributes or {}),
                   str(res.get("service.name", "")), str(res.get("service.instance.id", "")),
                   [_from_otel(lk.context) for lk in span.links])


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, ModelError):
        # an HTTP error status is the useful kind; a 2xx whose body we could
        # not read is an invalid response, not an error kind called "200"
        if exc.status is None:
            return "model_unavailable"  # timed out or unreachable: no answer at all
        return str(exc.status) if exc.status >= 400 else "invalid_response"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


_content_enc = msgspec.json.Encoder()


def _json(value: Any) -> str:
    try:
        return _content_enc.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def _template(subject: str) -> str:
    """Low-cardinality form of a subject for span names: the per-task token
    of ``agents.<agent>.<kind>.<task_id>`` becomes ``*``."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[0] == "agents":
        return f"agents.{parts[1]}.{parts[2]}.*"
    return subject
