"""Observability: one OpenTelemetry trace per task across every process, GenAI
and messaging spans, metrics with a Prometheus text rendering, JSON logs.

Wiring (``service.py``, ``client.py``): ``setup_telemetry(...) -> Telemetry``
per process role, ``await telemetry.shutdown()`` before the NATS connection is
drained. Ports are wrapped from the outside (``wrap_bus``, ``wrap_llm``,
``instrument_tool_runner``), consumers get ``consumer_middleware``, and the
engine calls three hooks (``engine_hooks``): nothing of this runs when
tracing and metrics are off.

How one task is one trace
-------------------------
- W3C trace context travels in NATS headers (``traceparent``/``tracestate``):
  every publish injects the current span's context (``TracedBus``, the
  client's submit), every consumer extracts it and runs the handler inside a
  ``process <subject>`` CONSUMER span (messaging conventions).
- The task's ``invoke_agent {agent}`` span must cover the task from its first
  step to its result, but the steps run on different replicas. Its span id is
  generated when the task's session state is created and stored in the state
  (``SessionState.trace_parent``, a traceparent, plus ``trace_caller_span``,
  the id of its own parent). Every step, on any replica, runs in a ``step
  {agent}`` span whose parent is that stored context (and which links to the
  step's ``process`` span). When the result is published, the finished
  ``invoke_agent`` span is built directly as a ``ReadableSpan`` with the
  stored ids and ``start = task start`` and handed to the span processors.
- Hot-path spans are built the same way (:class:`LiteSpan`): plain values
  (ids as a :class:`Ctx` tuple, not OpenTelemetry's ``SpanContext``) encoded
  straight to a ``SpanRecord`` when the span ends, or assembled as a
  ``ReadableSpan`` for the SDK's processors when other exporters are on. The
  SDK's ``Span`` costs ~45 us per span here (attribute validation and
  locking), a lite span ~10 us including its encoding. The spans our own
  code runs under (``process``, ``step``) are current only in our context
  variable; the ones foreign code runs under (``execute_tool``, ``chat``,
  ``Telemetry.span``) are also put in OpenTelemetry's context as a
  ``NonRecordingSpan``, so a tool's own spans and other instrumentation
  (``opentelemetry.trace.get_current_span()``, their own tracers) continue
  the task's trace under them.

Exporters (``OTEL_TRACES_EXPORTER``, comma-separated): ``jetstream`` (default:
:class:`~agentstream.contracts.telemetry.SpanBatch` JSON messages, a trace's
spans batched, on ``telemetry.spans.<trace_id>``, stream TELEMETRY), ``otlp``, ``console``
(stderr), ``none``. ``OTEL_METRICS_EXPORTER``: ``prometheus`` (default:
counters and histograms aggregated in process, ~1 us a record against the
SDK's ~15-65 us, rendered by :func:`prometheus_text`), ``otlp``, ``console``
(these add the OpenTelemetry SDK instruments, fed every record as well),
``none`` (no metrics at all). ``AGENTSTREAM_TRACING=0`` turns tracing off.
Prompt and tool-argument content is captured only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``, and always
passes through :mod:`agentstream.runtime.observability.redact`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextvars
import logging
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from agentstream.contracts.codec import DecodeError, encode
from agentstream.contracts.telemetry import SpanBatch, SpanRecord, span_subject
from agentstream.runtime.adapters.jetstream import MSG_ID
from agentstream.runtime.config.settings import env_bool as _bool
from agentstream.runtime.core.errors import ConfigError, ModelError
from agentstream.runtime.execution.consumer import Reject
from agentstream.runtime.observability.redact import redact

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

    from agentstream.contracts.events import TaskCompleted, TaskFailed, ToolCallRequested
    from agentstream.runtime.core.decide import Decision
    from agentstream.runtime.core.ports import LLM, Bus, ModelRequest
    from agentstream.runtime.core.spec import AgentSpec
    from agentstream.runtime.core.state import SessionState
    from agentstream.runtime.execution.tool_runner import Outcome, ToolRunner

log = logging.getLogger("agentstream.telemetry")

__all__ = [
    "TelemetryConfig", "Telemetry", "setup_telemetry", "prometheus_text", "render_prometheus",
    "JetStreamSpanExporter", "JsonLogFormatter", "RedactingFormatter", "configure_logging",
    "build_span_exporters", "build_metric_readers", "span_record", "parse_traceparent", "format_traceparent",
    "LiteSpan", "TracedBus", "TracedLLM",
]

SCOPE = InstrumentationScope("agentstream", "0.1.0")
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
DEFAULT_BSP_DELAY_MS = 500  # the SDK's 5 s would make `agentstream trace` lag behind a finished task

TRACE_EXPORTERS = frozenset({"jetstream", "otlp", "console", "none"})
METRIC_EXPORTERS = frozenset({"prometheus", "otlp", "console", "none"})

# GenAI semantic conventions' advisory bucket boundaries.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000)

_KIND_NAMES = {SpanKind.INTERNAL: "internal", SpanKind.CLIENT: "client", SpanKind.SERVER: "server",
               SpanKind.PRODUCER: "producer", SpanKind.CONSUMER: "consumer"}
_UNSET = Status(StatusCode.UNSET)

# --------------------------------------------------------------------------- configuration

def _names(env: Mapping[str, str], name: str, default: str, allowed: frozenset[str]) -> tuple[str, ...]:
    raw = env.get(name) or default
    out = tuple(dict.fromkeys(p.strip().lower() for p in raw.split(",") if p.strip()))
    bad = [p for p in out if p not in allowed]
    if bad:
        raise ConfigError(f"{name}={raw!r}: unknown exporter {bad[0]!r} (use {', '.join(sorted(allowed))})")
    if "none" in out:
        return ()
    return out


@dataclass(frozen=True)
class TelemetryConfig:
    tracing: bool = True
    metrics: bool = True
    traces_exporters: tuple[str, ...] = ("jetstream",)
    metrics_exporters: tuple[str, ...] = ("prometheus",)
    service_name: str = "agentstream"
    capture_content: bool = False
    log_format: str = "text"
    producer_spans: bool = False
    otlp_endpoint: str | None = None
    otlp_protocol: str = "grpc"
    otlp_traces_endpoint: str | None = None
    otlp_metrics_endpoint: str | None = None
    bsp_delay_ms: int | None = DEFAULT_BSP_DELAY_MS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TelemetryConfig:
        env = os.environ if env is None else env
        disabled = _bool(env, "OTEL_SDK_DISABLED", False)
        fmt = (env.get("AGENTSTREAM_LOG_FORMAT") or "text").strip().lower()
        if fmt not in ("text", "json"):
            raise ConfigError(f"AGENTSTREAM_LOG_FORMAT={fmt!r} must be text or json")
        proto = (env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
        if proto not in ("grpc", "http/protobuf"):
            raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={proto!r} must be grpc or http/protobuf")
        metrics_exporters = _names(env, "OTEL_METRICS_EXPORTER", "prometheus", METRIC_EXPORTERS)
        return cls(
            tracing=not disabled and _bool(env, "AGENTSTREAM_TRACING", True),
            metrics=not disabled and _bool(env, "AGENTSTREAM_METRICS", True) and bool(metrics_exporters),
            traces_exporters=_names(env, "OTEL_TRACES_EXPORTER", "jetstream", TRACE_EXPORTERS),
            metrics_exporters=metrics_exporters,
            service_name=env.get("OTEL_SERVICE_NAME") or "agentstream",
            capture_content=_bool(env, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", False),
            log_format=fmt,
            producer_spans=_bool(env, "AGENTSTREAM_TRACE_PUBLISH", False),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            otlp_protocol=proto,
            otlp_traces_endpoint=env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None,
            otlp_metrics_endpoint=env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or None,
            bsp_delay_ms=None if env.get("OTEL_BSP_SCHEDULE_DELAY") else DEFAULT_BSP_DELAY_MS,
        )

    @classmethod
    def disabled(cls) -> TelemetryConfig:
        return cls(tracing=False, metrics=False)


# --------------------------------------------------------------------------- ids and trace context

_rng = random.Random(int.from_bytes(os.urandom(16), "big"))
os.register_at_fork(after_in_child=lambda: _rng.seed(int.from_bytes(os.urandom(16), "big")))


def _span_id() -> str:
    while True:
        v = _rng.getrandbits(64)
        if v:
            return f"{v:016x}"


def _trace_id() -> tuple[int, str]:
    while True:
        v = _rng.getrandbits(128)
        if v:
            return v, f"{v:032x}"


class Ctx(NamedTuple):
    """A span's identity as W3C trace context carries it, ids as the lowercase
    hex they travel and are stored in. The hot path uses this, not
    OpenTelemetry's ``SpanContext`` (int ids to format to hex for every
    record and header, a validating constructor, property accessors);
    :func:`to_otel` converts where OpenTelemetry needs one."""

    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    flags: int = 1  # W3C trace-flags; bit 0: sampled
    state: str = ""  # the tracestate header, passed through as it came

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


def to_otel(ctx: Ctx, *, remote: bool = False) -> SpanContext:
    state = TraceState.from_header([ctx.state]) if ctx.state else None
    return SpanContext(int(ctx.trace_id, 16), int(ctx.span_id, 16), remote, TraceFlags(ctx.flags & 0xff), state)


def _from_otel(sc: SpanContext) -> Ctx:
    return Ctx(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", int(sc.trace_flags),
               sc.trace_state.to_header() if sc.trace_state else "")


def format_traceparent(ctx: Ctx) -> str:
    return f"00-{ctx.trace_id}-{ctx.span_id}-{ctx.flags & 0xff:02x}"


# version 00 is exactly this; a later version may append "-..." (W3C: parse what you know)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Ctx | None:
    """A W3C ``traceparent`` (version 00 and compatible later ones) or None."""
    m = _TRACEPARENT.fullmatch(value) if value else None
    if m is None:
        return None
    version, tid, sid, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or tid == _ZERO_TRACE or sid == _ZERO_SPAN:
        return None
    return Ctx(tid, sid, int(flags, 16), tracestate or "")


# The current span when it is one of ours that only our code runs under
# (process, step); None defers to OpenTelemetry's context, where the spans
# that foreign code runs under (execute_tool, chat) and anyone else's spans are.
_CUR: contextvars.ContextVar[Ctx | None] = contextvars.ContextVar("agentstream_span", default=None)


def _current() -> Ctx | None:
    cur = _CUR.get()
    if cur is not None:
        return cur
    sc = trace_api.get_current_span().get_span_context()
    return _from_otel(sc) if sc.is_valid else None


# --------------------------------------------------------------------------- task info (for child spans and logs)


@dataclass(frozen=True, slots=True)
class _TaskInfo:
    agent: str
    task_id: str
    tenant: str
    user: str
    conversation: str


_TASK: contextvars.ContextVar[_TaskInfo | None] = contextvars.ContextVar("agentstream_task", default=None)


# --------------------------------------------------------------------------- lite spans


class LiteSpan:
    """A span recorded as plain values and handed to the exporters when it ends (see the module doc)."""

    __slots__ = ("_tel", "name", "kind", "context", "parent", "start_ns", "attributes", "links", "error",
                 "_tokens", "_ended")

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
            otel_token = otel_context.attach(trace_api.set_span_in_context(NonRecordingSpan(to_otel(self.context))))
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

# --------------------------------------------------------------------------- the JetStream exporter


def _record(ctx: Ctx, parent: Ctx | None, name: str, kind: str, start_ns: int, end_ns: int,
            error: bool, attrs: dict[str, Any], service: str, worker: str, links: Sequence[Ctx]) -> SpanRecord:
    return SpanRecord(
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


_BATCH_HEAD, _BATCH_TAIL = encode(SpanBatch(spans=[]))[:-2], b"]}"


def _batches(records: list[tuple[str, bytes]], max_bytes: int) -> list[tuple[str, bytes, int]]:
    """Encoded spans (trace id, record JSON) as ``SpanBatch`` messages, one per
    trace (more if a trace's spans exceed ``max_bytes``): ``(subject, payload,
    spans in it)``."""
    by_trace: dict[str, list[bytes]] = {}
    for trace_id, data in records:
        by_trace.setdefault(trace_id, []).append(data)
    out: list[tuple[str, bytes, int]] = []
    room = max_bytes - len(_BATCH_HEAD) - len(_BATCH_TAIL)
    for trace_id, parts in by_trace.items():
        subject = span_subject(trace_id)
        chunk: list[bytes] = []
        size = 0
        for part in parts:
            if chunk and size + len(part) + 1 > room:
                out.append((subject, _BATCH_HEAD + b",".join(chunk) + _BATCH_TAIL, len(chunk)))
                chunk, size = [], 0
            chunk.append(part)
            size += len(part) + 1
        out.append((subject, _BATCH_HEAD + b",".join(chunk) + _BATCH_TAIL, len(chunk)))
    return out


class JetStreamSpanExporter(SpanExporter):
    """Writes finished spans to ``telemetry.spans.<trace_id>`` as ``SpanBatch``
    messages: the spans of one trace finished in one flush interval go out
    together, so a task costs one to three messages instead of one per span
    and the TELEMETRY stream stores a fraction of the messages.

    ``export`` runs on the BatchSpanProcessor's thread: it encodes there and
    hands the messages to the event loop (``call_soon_threadsafe``), where a
    task publishes with nats-py. It never waits on the loop, so a shutdown
    called from the loop cannot deadlock. Plain (core) publishes into the
    stream: no per-message acknowledgement round trip; telemetry is best
    effort. A span that arrives twice (a redelivered final step re-emits
    ``invoke_agent``) is dropped by the readers, by span id.

    When it is the only exporter, the runtime's own spans skip the
    BatchSpanProcessor: :meth:`add_lite` buffers them on the loop and a timer
    (``delay_s``, or a full batch) flushes them from an asyncio task, encoding
    straight from the span (no ReadableSpan, no thread hop). Same records.
    """

    def __init__(self, nc: NatsClient, loop: asyncio.AbstractEventLoop | None = None, *,
                 delay_s: float = 0.2, max_batch: int = 512) -> None:
        self.nc = nc
        self.loop = loop or asyncio.get_running_loop()
        self.delay_s = delay_s
        self.max_batch = max_batch
        # Below the server's max_payload (1 MB by default), with room for headers.
        self.max_bytes = max(4096, min(int(getattr(nc, "max_payload", 0) or 1 << 20), 1 << 20) - 1024)
        self._queue: collections.deque[tuple[str, bytes, int]] = collections.deque()
        self._lite: list[tuple[str, bytes]] = []  # (trace id, encoded SpanRecord)
        self._timer: asyncio.TimerHandle | None = None
        self._loop_thread = threading.get_ident() if loop is None else None
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0  # spans lost (closed exporter, encoding error, broker gone): for inspection

    def add_lite(self, span: LiteSpan, end_ns: int) -> None:
        """Encode a finished lite span and buffer the bytes (call on the loop's
        thread); the span and its attribute dict can then be freed at once
        instead of living until the flush."""
        if self._closed:
            self.dropped += 1
            return
        if self._loop_thread is None:
            self._loop_thread = threading.get_ident() if self.loop.is_running() else None
        if self._loop_thread != threading.get_ident():
            try:
                self.loop.call_soon_threadsafe(self.add_lite, span, end_ns)
            except RuntimeError:
                self.dropped += 1
            return
        try:
            rec = _record(span.context, span.parent, span.name, _KIND_NAMES[span.kind], span.start_ns, end_ns,
                          span.error is not None, span.attributes, span._tel.service_name, span._tel.worker_name,
                          span.links)
            self._lite.append((rec.trace_id, encode(rec)))
        except Exception as exc:  # noqa: BLE001 - one odd attribute must not fail the work
            log.debug("cannot encode span %s: %s", span.name, exc)
            self.dropped += 1
            return
        if len(self._lite) >= self.max_batch:
            self._kick()
        elif self._timer is None:
            self._timer = self.loop.call_later(self.delay_s, self._kick)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        records, self._lite = self._lite, []
        self._enqueue(self._pack(records))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        records: list[tuple[str, bytes]] = []
        for span in spans:
            try:
                rec = span_record(span)
                records.append((rec.trace_id, encode(rec)))
            except Exception as exc:  # noqa: BLE001 - one odd attribute must not lose the batch
                log.debug("cannot encode span %s: %s", span.name, exc)
                self.dropped += 1
        items = self._pack(records)
        try:
            self.loop.call_soon_threadsafe(self._enqueue, items)
        except RuntimeError:  # the loop is closed: the process is exiting
            self.dropped += sum(item[2] for item in items)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _pack(self, records: list[tuple[str, bytes]]) -> list[tuple[str, bytes, int]]:
        fits = [r for r in records if len(r[1]) < self.max_bytes - 64]
        self.dropped += len(records) - len(fits)  # one span over the payload limit: telemetry is best effort
        return _batches(fits, self.max_bytes)

    def _enqueue(self, items: list[tuple[str, bytes, int]]) -> None:
        self._queue.extend(items)
        if self._sender is None or self._sender.done():
            self._sender = self.loop.create_task(self._send())

    async def _send(self) -> None:
        q = self._queue
        while q:
            subject, data, n = q.popleft()
            try:
                await self.nc.publish(subject, data)
            except Exception as exc:  # noqa: BLE001 - a closed connection: drop telemetry, never fail work
                self.dropped += n + sum(item[2] for item in q)
                q.clear()
                log.debug("span export failed: %s", exc)
                return

    async def aflush(self, timeout: float = 5.0) -> None:
        """Wait until everything handed over so far is written to the socket."""
        if self._lite:
            self._kick()
        deadline = time.monotonic() + timeout
        while (self._queue or (self._sender is not None and not self._sender.done())) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not self.nc.is_closed:
            try:
                await self.nc.flush(timeout=max(1, int(deadline - time.monotonic())))
            except Exception:  # noqa: BLE001
                pass

    def shutdown(self) -> None:
        self._closed = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _otlp_endpoint(config: TelemetryConfig, signal: str) -> str | None:
    specific = config.otlp_traces_endpoint if signal == "traces" else config.otlp_metrics_endpoint
    if specific:
        return specific
    if not config.otlp_endpoint:
        return None
    if config.otlp_protocol == "http/protobuf":
        return config.otlp_endpoint.rstrip("/") + f"/v1/{signal}"
    return config.otlp_endpoint


def build_span_exporters(config: TelemetryConfig, *, nc: NatsClient | None = None,
                         loop: asyncio.AbstractEventLoop | None = None) -> list[SpanExporter]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names (``jetstream`` needs a connection)."""
    out: list[SpanExporter] = []
    for name in config.traces_exporters:
        if name == "jetstream":
            if nc is None:
                log.debug("no NATS connection: the jetstream span exporter is skipped")
                continue
            out.append(JetStreamSpanExporter(nc, loop))
        elif name == "console":
            out.append(ConsoleSpanExporter(service_name=config.service_name, out=sys.stderr))
        elif name == "otlp":
            endpoint = _otlp_endpoint(config, "traces")
            if config.otlp_protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

                out.append(HttpExporter(endpoint=endpoint))
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

                out.append(GrpcExporter(endpoint=endpoint))
    return out


def build_metric_readers(config: TelemetryConfig) -> tuple[InMemoryMetricReader, list[MetricReader]]:
    """The pull reader behind :func:`prometheus_text` (always, when metrics are
    on) and the push readers ``OTEL_METRICS_EXPORTER`` names."""
    pull = InMemoryMetricReader()
    push: list[MetricReader] = []
    for name in config.metrics_exporters:
        if name == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            push.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
        elif name == "otlp":
            endpoint = _otlp_endpoint(config, "metrics")
            if config.otlp_protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetric

                push.append(PeriodicExportingMetricReader(HttpMetric(endpoint=endpoint)))
            else:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetric

                push.append(PeriodicExportingMetricReader(GrpcMetric(endpoint=endpoint)))
    return pull, push


# --------------------------------------------------------------------------- metrics (process-wide)


# Series per instrument before new attribute sets are folded into one
# ``otel.metric.overflow=true`` series: the OpenTelemetry SDK's default
# cardinality limit and overflow attribute. Metrics carry tenant and user ids,
# and a long-running worker must not grow without bound with its users.
SERIES_LIMIT = 2000
_OVERFLOW: tuple[tuple[str, Any], ...] = (("otel.metric.overflow", True),)


class _LiteInstrument:
    """A counter or fixed-bucket histogram aggregated in process, keyed by the
    tuple of its attribute items: a few dict operations a record, where the
    SDK's attribute cleaning, hashing and aggregation cost ~65 us. It feeds
    :func:`prometheus_text`; ``sdk`` (the same instrument on the OTel SDK, set
    only when an OTLP or console metrics exporter is configured) gets every
    record too."""

    __slots__ = ("name", "unit", "description", "bounds", "sdk", "_series", "_lock", "_width")

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float] | None = None) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds: tuple[float, ...] | None = tuple(bounds) if bounds is not None else None
        self.sdk: Any = None
        # counter: key -> value; histogram: key -> [sum, count, bucket 0 .. bucket len(bounds)]
        self._series: dict[tuple[tuple[str, Any], ...], Any] = {}
        self._lock = threading.Lock()  # records may come from several loops' threads
        self._width = len(self.bounds) + 3 if self.bounds is not None else 0

    def add(self, value: float, attributes: Mapping[str, Any]) -> None:
        key = tuple(attributes.items())
        with self._lock:
            series = self._series
            if key not in series and len(series) >= SERIES_LIMIT:
                key = _OVERFLOW
            series[key] = series.get(key, 0) + value
        if self.sdk is not None:
            self.sdk.add(value, attributes)

    def record(self, value: float, attributes: Mapping[str, Any]) -> None:
        key = tuple(attributes.items())
        i = bisect.bisect_left(self.bounds, value) + 2  # type: ignore[arg-type]  # (b[i-1], b[i]], as the SDK
        with self._lock:
            point = self._series.get(key)
            if point is None:
                if len(self._series) >= SERIES_LIMIT:
                    key = _OVERFLOW
                    point = self._series.get(key)
                if point is None:
                    point = self._series[key] = [0] * self._width
            point[0] += value
            point[1] += 1
            point[i] += 1
        if self.sdk is not None:
            self.sdk.record(value, attributes)

    def points(self) -> list[tuple[tuple[tuple[str, Any], ...], Any]]:
        """(sorted attribute items, value or [sum, count, buckets...]) per
        series; series whose attributes differ only in order are merged."""
        with self._lock:
            snapshot = [(k, v if self.bounds is None else list(v)) for k, v in self._series.items()]
        merged: dict[tuple[tuple[str, Any], ...], Any] = {}
        for key, val in snapshot:
            norm = tuple(sorted((k, v) for k, v in key if v is not None))
            prev = merged.get(norm)
            if prev is None:
                merged[norm] = val
            elif self.bounds is None:
                merged[norm] = prev + val
            else:
                merged[norm] = [a + b for a, b in zip(prev, val)]
        return list(merged.items())


class _Metrics:
    """The process's metrics (one set a process: metrics describe the
    process, whichever runtimes and clients live in it). Aggregated in
    process for :func:`prometheus_text`; an OTel SDK MeterProvider is built
    only when ``OTEL_METRICS_EXPORTER`` names a push exporter (otlp, console),
    and then gets every record as well."""

    def __init__(self, config: TelemetryConfig, resource: Resource) -> None:
        self.operation_duration = _LiteInstrument("gen_ai.client.operation.duration", "s",
                                                  "GenAI operation duration", DURATION_BUCKETS)
        self.token_usage = _LiteInstrument("gen_ai.client.token.usage", "{token}",
                                           "Number of input and output tokens used", TOKEN_BUCKETS)
        self.task_duration = _LiteInstrument("agentstream.task.duration", "s", "Task duration, submit to result",
                                             TASK_BUCKETS)
        self.tool_duration = _LiteInstrument("agentstream.tool.duration", "s", "Tool execution duration",
                                             DURATION_BUCKETS)
        self.errors = _LiteInstrument("agentstream.errors", "{error}",
                                      "Errors by error.type (model, tool, task, handler)")
        self.cost = _LiteInstrument("agentstream.cost", "USD", "Model cost in US dollars")
        self.tools_unused = _LiteInstrument(
            "agentstream.tools.unused", "{warning}",
            "Times an agent's model went TOOLS_UNUSED_TURNS turns offered tools without calling one")
        self.instruments = (self.operation_duration, self.token_usage, self.task_duration, self.tool_duration,
                            self.errors, self.cost, self.tools_unused)
        self.provider: MeterProvider | None = None
        _, push = build_metric_readers(config)
        if push:
            # No exemplars: sampling them on every record costs ~20% of a record.
            self.provider = MeterProvider(resource=resource, metric_readers=push,
                                          exemplar_filter=AlwaysOffExemplarFilter())
            m = self.provider.get_meter("agentstream", "0.1.0")
            for inst in self.instruments:
                if inst.bounds is not None:
                    inst.sdk = m.create_histogram(inst.name, unit=inst.unit, description=inst.description,
                                                  explicit_bucket_boundaries_advisory=inst.bounds)
                else:
                    inst.sdk = m.create_counter(inst.name, unit=inst.unit, description=inst.description)

    def prometheus_lines(self) -> list[str]:
        lines: list[str] = []
        for inst in self.instruments:
            points = inst.points()
            if not points:
                continue
            name = _prom_name(inst.name, inst.unit)
            bounds = inst.bounds
            if bounds is None:
                name = name if name.endswith("_total") else name + "_total"
            lines.append(f"# HELP {name} {_prom_help(inst.description or inst.name)}")
            lines.append(f"# TYPE {name} {'counter' if bounds is None else 'histogram'}")
            for attrs, val in points:
                labels = dict(attrs)
                if bounds is None:
                    lines.append(f"{name}{_labels(labels)} {_prom_num(val)}")
                else:
                    lines += _histogram_lines(name, labels, bounds, val[2:], val[1], val[0])
        return lines


_metrics_lock = threading.Lock()
_METRICS: _Metrics | None = None


def _metrics_for(config: TelemetryConfig, resource: Resource) -> _Metrics:
    global _METRICS
    with _metrics_lock:
        if _METRICS is None:
            _METRICS = _Metrics(config, resource)
        return _METRICS


def prometheus_text() -> str:
    """The process's current metrics in the Prometheus text exposition format
    (version 0.0.4); empty when metrics are off. Mount at ``GET /metrics`` with
    content type ``text/plain; version=0.0.4; charset=utf-8``."""
    m = _METRICS
    if m is None:
        return ""
    lines = m.prometheus_lines()
    return "\n".join(lines) + ("\n" if lines else "")


_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "USD": "usd", "1": "ratio"}


def _prom_name(name: str, unit: str) -> str:
    base = "".join(c if c.isalnum() or c in "_:" else "_" for c in name)
    suffix = _UNIT_SUFFIX.get(unit or "", "")
    if suffix and not base.endswith("_" + suffix):
        base += "_" + suffix
    return base


def _prom_label(key: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in key)
    return "_" + out if out[:1].isdigit() else out


def _prom_escape(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _prom_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _prom_num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _labels(attrs: Mapping[str, Any] | None, extra: tuple[str, str] | None = None) -> str:
    items = [f'{_prom_label(k)}="{_prom_escape(v)}"' for k, v in sorted((attrs or {}).items())]
    if extra is not None:
        items.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(items) + "}" if items else ""


def _histogram_lines(name: str, attrs: Mapping[str, Any] | None, bounds: Sequence[float],
                     counts: Sequence[int], count: int, total: float) -> list[str]:
    """One histogram series: a cumulative ``_bucket`` line per bound, then
    ``+Inf`` (which is ``count``), ``_sum`` and ``_count``."""
    lines: list[str] = []
    cum = 0
    for bound, n in zip(bounds, counts):
        cum += n
        lines.append(f"{name}_bucket{_labels(attrs, ('le', _prom_num(float(bound))))} {cum}")
    lines.append(f"{name}_bucket{_labels(attrs, ('le', '+Inf'))} {count}")
    lines.append(f"{name}_sum{_labels(attrs)} {_prom_num(total)}")
    lines.append(f"{name}_count{_labels(attrs)} {count}")
    return lines


def render_prometheus(data: MetricsData) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                d = metric.data
                name = _prom_name(metric.name, metric.unit or "")
                if isinstance(d, Sum) and d.is_monotonic:
                    name, kind = (name if name.endswith("_total") else name + "_total"), "counter"
                elif isinstance(d, Histogram):
                    kind = "histogram"
                elif isinstance(d, (Sum, Gauge)):
                    kind = "gauge"
                else:
                    continue
                if name not in seen:
                    seen.add(name)
                    lines.append(f"# HELP {name} {_prom_help(metric.description or metric.name)}")
                    lines.append(f"# TYPE {name} {kind}")
                if isinstance(d, Histogram):
                    for hp in d.data_points:
                        lines += _histogram_lines(name, hp.attributes, hp.explicit_bounds, hp.bucket_counts,
                                                  hp.count, hp.sum)
                else:
                    for np_ in d.data_points:
                        lines.append(f"{name}{_labels(np_.attributes)} {_prom_num(np_.value)}")
    return "\n".join(lines) + ("\n" if lines else "")


# --------------------------------------------------------------------------- logs


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


# --------------------------------------------------------------------------- the Telemetry object


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


def _provider_name(llm: object) -> str:
    name = getattr(llm, "provider", None)
    if isinstance(name, str) and name:
        return name
    return "openai" if type(llm).__name__ == "OpenAIChatModel" else "scripted"


_content_enc = msgspec.json.Encoder()


def _json(value: Any) -> str:
    try:
        return _content_enc.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


class Telemetry:
    """Tracing and metrics for one process role (a runtime, a client).

    ``active`` is False when both tracing and metrics are off: then callers
    wrap nothing and pay nothing.
    """

    def __init__(self, config: TelemetryConfig, *, worker_id: str = "", nc: NatsClient | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 span_exporters: Sequence[SpanExporter] | None = None, metrics: bool | None = None) -> None:
        self.config = config
        self.tracing = config.tracing
        self.capture = config.capture_content
        self.resource = Resource.create({"service.name": config.service_name,
                                         "service.instance.id": worker_id or _default_worker()})
        self.service_name = config.service_name
        self.worker_name = str(self.resource.attributes.get("service.instance.id", ""))
        self._processors: list[SpanProcessor] = []
        self._jetstream: list[JetStreamSpanExporter] = []
        direct: JetStreamSpanExporter | None = None
        self.provider: TracerProvider | None = None
        if self.tracing:
            self.provider = TracerProvider(resource=self.resource, shutdown_on_exit=False)
            exporters = list(span_exporters) if span_exporters is not None else \
                build_span_exporters(config, nc=nc, loop=loop)
            for exp in exporters:
                if isinstance(exp, JetStreamSpanExporter):
                    self._jetstream.append(exp)
                bsp = BatchSpanProcessor(exp, schedule_delay_millis=config.bsp_delay_ms)
                self.provider.add_span_processor(bsp)
                self._processors.append(bsp)
            self._sampler = self.provider.sampler
            if len(exporters) == 1 and self._jetstream:
                direct = self._jetstream[0]  # lite spans skip the BSP (see JetStreamSpanExporter)
        # Where a finished lite span goes: one call from LiteSpan.end.
        self._sink: Callable[[LiteSpan, int], None] = direct.add_lite if direct is not None else self._to_processors
        use_metrics = config.metrics if metrics is None else (metrics and config.metrics)
        self.metrics: _Metrics | None = _metrics_for(config, self.resource) if use_metrics else None
        self.active = self.tracing or self.metrics is not None

    # ------------------------------------------------------------ spans

    @property
    def tracer(self) -> trace_api.Tracer:
        """An SDK tracer on this process's pipeline, for spans of your own."""
        if self.provider is None:
            return trace_api.NoOpTracer()
        return self.provider.get_tracer("agentstream", "0.1.0")

    def _to_processors(self, sp: LiteSpan, end_ns: int) -> None:
        if not self._processors:
            return
        status = _UNSET if sp.error is None else Status(StatusCode.ERROR, sp.error or None)
        rs = ReadableSpan(sp.name, to_otel(sp.context), to_otel(sp.parent, remote=True) if sp.parent else None,
                          self.resource, sp.attributes, (), [Link(to_otel(lk)) for lk in sp.links], sp.kind,
                          None, status, sp.start_ns, end_ns, SCOPE)
        for p in self._processors:
            p.on_end(rs)

    def start_span(self, name: str, kind: SpanKind = SpanKind.INTERNAL, parent: Ctx | None = None,
                   attributes: dict[str, Any] | None = None, *, start_ns: int | None = None,
                   links: Sequence[Ctx] = (),
                   use_current: bool = True) -> LiteSpan:
        """A span whose parent is ``parent``, else the current span (unless
        ``use_current`` is False): the root of a new trace when there is none."""
        if parent is None and use_current:
            parent = _current()
        attrs = attributes if attributes is not None else {}
        if parent is not None:
            ctx = Ctx(parent.trace_id, _span_id(), parent.flags, parent.state)
        else:
            tid, tid_hex = _trace_id()
            sampled = self._sampler.should_sample(None, tid, name, kind, attrs).decision.is_sampled()
            ctx = Ctx(tid_hex, _span_id(), 1 if sampled else 0)
        return LiteSpan(self, name, kind, ctx, parent, attrs, start_ns or time.time_ns(), links)

    @contextmanager
    def span(self, name: str, kind: SpanKind = SpanKind.INTERNAL,
             attributes: dict[str, Any] | None = None) -> Iterator[LiteSpan | _NoopSpan]:
        """A current span around a block; errors set ``error.type``."""
        if not self.tracing:
            yield NOOP_SPAN
            return
        sp = self.start_span(name, kind, attributes=attributes).activate(foreign=True)
        try:
            yield sp
        except BaseException as exc:
            sp.set_error(_error_type(exc), str(exc))
            raise
        finally:
            sp.end()

    # ------------------------------------------------------------ propagation

    _last_ctx: Ctx | None = None
    _last_tp = ""

    def inject(self, headers: dict[str, str]) -> None:
        ctx = _current()
        if ctx is not None:
            if ctx is not self._last_ctx:  # a step publishes several messages under one span
                self._last_ctx, self._last_tp = ctx, format_traceparent(ctx)
            headers[TRACEPARENT] = self._last_tp
            if ctx.state:
                headers[TRACESTATE] = ctx.state

    @staticmethod
    def extract(headers: Mapping[str, str] | None) -> Ctx | None:
        if not headers:
            return None
        return parse_traceparent(headers.get(TRACEPARENT), headers.get(TRACESTATE))

    def producer_span(self, subject: str, headers: dict[str, str], msg_id: str | None = None,
                      attributes: dict[str, Any] | None = None) -> LiteSpan:
        """A ``send <subject>`` PRODUCER span whose context is injected into ``headers``."""
        attrs = {"messaging.system": "nats", "messaging.operation.type": "send", "messaging.operation.name": "send",
                 "messaging.destination.name": subject}
        if msg_id:
            attrs["messaging.message.id"] = msg_id
        if attributes:
            attrs.update(attributes)
        sp = self.start_span(f"send {_template(subject)}", SpanKind.PRODUCER, attributes=attrs)
        headers[TRACEPARENT] = format_traceparent(sp.context)
        if sp.context.state:
            headers[TRACESTATE] = sp.context.state
        return sp

    # ------------------------------------------------------------ wrappers

    def wrap_bus(self, bus: Bus) -> Bus:
        return TracedBus(bus, self) if self.tracing else bus

    def wrap_llm(self, llm: LLM, agent: str) -> LLM:
        return TracedLLM(llm, self, agent) if self.active else llm

    def consumer_middleware(self, durable: str, filter_subject: str) -> Callable[..., Awaitable[None]] | None:
        """A consumer Middleware: each message runs in a ``process <subject>``
        CONSUMER span, child of the context in its headers. None when tracing is off."""
        if not self.tracing:
            return None
        name = f"process {filter_subject}"
        metrics = self.metrics

        async def mw(msg: Msg, nxt: Callable[[Msg], Awaitable[None]]) -> None:
            headers = msg.headers
            parent = self.extract(headers)
            attrs: dict[str, Any] = {"messaging.system": "nats", "messaging.operation.type": "process",
                                     "messaging.operation.name": "process", "messaging.destination.name": msg.subject,
                                     "messaging.consumer.group.name": durable,
                                     "messaging.message.body.size": len(msg.data or b"")}
            mid = headers.get(MSG_ID) if headers else None
            if mid:
                attrs["messaging.message.id"] = mid
            sp = self.start_span(name, SpanKind.CONSUMER, parent, attrs, use_current=False).activate()
            try:
                await nxt(msg)
            except BaseException as exc:
                etype = "rejected" if isinstance(exc, (Reject, DecodeError)) else _error_type(exc)
                sp.set_error(etype, str(exc))
                if metrics is not None:
                    metrics.errors.add(1, {"error.type": etype, "messaging.consumer.group.name": durable})
                raise
            finally:
                sp.end()
        return mw

    def instrument_tool_runner(self, runner: ToolRunner) -> None:
        """An ``execute_tool {name}`` span and the tool metrics per execution,
        by wrapping the runner's ``run`` from outside (an instance attribute
        shadows the method); ``on_call`` and ``execute`` both go through it."""
        if not self.active or getattr(runner, "_agentstream_instrumented", False):
            return
        inner = runner.run
        tel = self

        async def wrapped(req: ToolCallRequested) -> Outcome:
            return await tel._execute_tool(inner, req)

        setattr(runner, "run", wrapped)  # noqa: B010
        setattr(runner, "_agentstream_instrumented", True)  # noqa: B010

    async def _execute_tool(self, inner: Callable[[ToolCallRequested], Awaitable[Outcome]],
                            req: ToolCallRequested) -> Outcome:
        sp: LiteSpan | None = None
        if self.tracing:
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": req.tool,
                "gen_ai.tool.call.id": req.call_id, "gen_ai.tool.type": "function",
                "gen_ai.agent.name": req.agent, "agentstream.task_id": req.task_id, "agentstream.step": req.step,
                "agentstream.tenant_id": req.tenant_id, "agentstream.user_id": req.user_id,
            }
            if self.capture:
                attrs["gen_ai.tool.call.arguments"] = redact(_json(req.arguments))
            sp = self.start_span(f"execute_tool {req.tool}", SpanKind.INTERNAL, attributes=attrs).activate(foreign=True)
        t0 = time.perf_counter()
        try:
            out = await inner(req)
        except BaseException as exc:
            etype = _error_type(exc)
            if sp is not None:
                sp.set_error(etype, str(exc))
                sp.end()
            self._tool_metrics(req, time.perf_counter() - t0, etype)
            raise
        error = out.error
        if sp is not None:
            sp.set_attribute("agentstream.tool.attempts", out.attempts)
            if out.served_by and out.served_by != req.tool:
                sp.set_attribute("agentstream.tool.served_by", out.served_by)
            if error is not None:
                sp.set_error(error.kind, error.message)
            elif self.capture:
                sp.set_attribute("gen_ai.tool.call.result", redact(_json(out.result))[:8192])
            sp.end()
        self._tool_metrics(req, time.perf_counter() - t0, error.kind if error is not None else None)
        return out

    def _tool_metrics(self, req: ToolCallRequested, seconds: float, error_type: str | None) -> None:
        m = self.metrics
        if m is None:
            return
        attrs = {"gen_ai.tool.name": req.tool, "gen_ai.agent.name": req.agent,
                 "agentstream.tenant_id": req.tenant_id, "agentstream.user_id": req.user_id}
        if error_type is not None:
            attrs["error.type"] = error_type
            m.errors.add(1, attrs)
        m.tool_duration.record(seconds, attrs)

    def engine_hooks(self, spec: AgentSpec, model: str = "") -> EngineHooks | None:
        return EngineHooks(self, spec, model) if self.active else None

    # ------------------------------------------------------------ lifecycle

    async def force_flush(self, timeout: float = 5.0) -> None:
        """Export everything finished so far (and, for jetstream, write it out)."""
        if self.provider is not None:
            await asyncio.to_thread(self.provider.force_flush, int(timeout * 1000))
        for exp in self._jetstream:
            await exp.aflush(timeout)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Flush and stop the span pipeline. Call before draining the NATS
        connection the jetstream exporter publishes on. Metrics are
        process-wide and stay (the MeterProvider flushes at exit)."""
        if self.provider is None:
            return
        provider, self.provider = self.provider, None
        self.tracing = False
        await asyncio.to_thread(provider.force_flush, int(timeout * 1000))
        for exp in self._jetstream:
            await exp.aflush(timeout)
        await asyncio.to_thread(provider.shutdown)


def _default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _template(subject: str) -> str:
    """Low-cardinality form of a subject for span names: the per-task token
    of ``agents.<agent>.<kind>.<task_id>`` becomes ``*``."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[0] == "agents":
        return f"agents.{parts[1]}.{parts[2]}.*"
    return subject


# --------------------------------------------------------------------------- port wrappers


class TracedBus:
    """``Bus`` that injects the current trace context into every publish, in a
    ``send <subject>`` PRODUCER span when ``AGENTSTREAM_TRACE_PUBLISH=1`` (by
    default context only: a span per publish costs more than it tells)."""

    def __init__(self, inner: Bus, tel: Telemetry) -> None:
        self.inner = inner
        self.tel = tel
        self.spans = tel.config.producer_spans

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        if not self.tel.tracing:
            await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)
            return
        hdrs = dict(headers) if headers else {}
        if not self.spans:
            self.tel.inject(hdrs)
            await self.inner.publish(subject, payload, msg_id=msg_id, headers=hdrs)
            return
        sp = self.tel.producer_span(subject, hdrs, msg_id, {"messaging.message.body.size": len(payload)})
        try:
            await self.inner.publish(subject, payload, msg_id=msg_id, headers=hdrs)
        except BaseException as exc:
            sp.set_error(_error_type(exc), str(exc))
            raise
        finally:
            sp.end()


# An agent whose model was offered tools this many turns in a row and called
# none gets a warning (log and the agentstream.tools.unused metric): a model
# or chat format that cannot call tools answers without them, plausibly.
TOOLS_UNUSED_TURNS = 20


class TracedLLM:
    """``LLM`` with a ``chat {model}`` CLIENT span and the GenAI metrics per call."""

    def __init__(self, inner: LLM, tel: Telemetry, agent: str) -> None:
        self.inner = inner
        self.tel = tel
        self.agent = agent
        self.name = inner.name
        self.provider = _provider_name(inner)
        self._turns_without_calls = 0  # consecutive turns offered tools, none called

    def _note_tool_use(self, model: str, offered: int, called: int) -> None:
        if not offered:
            return
        if called:
            self._turns_without_calls = 0
            return
        self._turns_without_calls += 1
        if self._turns_without_calls % TOOLS_UNUSED_TURNS == 0:
            log.warning("agent %s: model %s was offered tools in the last %d turns and called none; it may not "
                        "support tool calling (agentstream doctor)", self.agent, model, self._turns_without_calls)
            m = self.tel.metrics
            if m is not None:
                m.tools_unused.add(1, {"gen_ai.agent.name": self.agent, "gen_ai.request.model": model})

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    async def complete(self, request: ModelRequest) -> Any:
        tel = self.tel
        info = _TASK.get()
        sp: LiteSpan | None = None
        if tel.tracing:
            attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider,
                                     "gen_ai.request.model": request.model, "gen_ai.agent.name": self.agent}
            if request.max_tokens is not None:
                attrs["gen_ai.request.max_tokens"] = request.max_tokens
            if request.temperature is not None:
                attrs["gen_ai.request.temperature"] = request.temperature
            if info is not None:
                if info.conversation:
                    attrs["gen_ai.conversation.id"] = info.conversation
                attrs["agentstream.task_id"] = info.task_id
                attrs["agentstream.tenant_id"] = info.tenant
                attrs["agentstream.user_id"] = info.user
            if tel.capture:
                attrs["gen_ai.input.messages"] = redact(_json(_input_messages(request)))
                if request.tools:
                    attrs["gen_ai.tool.definitions"] = _json([t.name for t in request.tools])
            sp = tel.start_span(f"chat {request.model}", SpanKind.CLIENT, attributes=attrs).activate(foreign=True)
        t0 = time.perf_counter()
        try:
            resp = await self.inner.complete(request)
        except BaseException as exc:
            etype = _error_type(exc)
            if sp is not None:
                sp.set_error(etype, str(exc))
                sp.end()
            self._metrics(request.model, "", info, time.perf_counter() - t0, etype, None)
            raise
        if sp is not None:
            a = sp.attributes
            a["gen_ai.response.model"] = resp.model or request.model
            a["gen_ai.usage.input_tokens"] = resp.usage.input_tokens
            a["gen_ai.usage.output_tokens"] = resp.usage.output_tokens
            a["gen_ai.response.finish_reasons"] = (resp.finish_reason,)
            a["agentstream.cost_usd"] = resp.usage.cost_usd
            # Read by `stats`: turns offered tools and turns that called one.
            a["agentstream.tools_offered"] = len(request.tools)
            a["agentstream.tool_calls"] = len(resp.tool_calls)
            if tel.capture:
                a["gen_ai.output.messages"] = redact(_json([_output_message(resp)]))
            sp.end()
        self._metrics(request.model, resp.model, info, time.perf_counter() - t0, None, resp)
        self._note_tool_use(request.model, len(request.tools), len(resp.tool_calls))
        return resp

    def _metrics(self, model: str, response_model: str, info: _TaskInfo | None, seconds: float,
                 error_type: str | None, resp: Any) -> None:
        m = self.tel.metrics
        if m is None:
            return
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider,
                 "gen_ai.request.model": model, "gen_ai.agent.name": self.agent}
        if response_model:
            attrs["gen_ai.response.model"] = response_model
        if info is not None:
            attrs["agentstream.tenant_id"] = info.tenant
            attrs["agentstream.user_id"] = info.user
        if error_type is not None:
            attrs["error.type"] = error_type
            m.errors.add(1, attrs)
        m.operation_duration.record(seconds, attrs)
        if resp is not None:
            u = resp.usage
            m.token_usage.record(u.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            m.token_usage.record(u.output_tokens, {**attrs, "gen_ai.token.type": "output"})
            if u.cost_usd:
                m.cost.add(u.cost_usd, attrs)


def _input_messages(request: ModelRequest) -> list[dict[str, Any]]:
    """The request's messages in the GenAI conventions' message shape."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        parts: list[dict[str, Any]] = []
        if m.role == "tool":
            parts.append({"type": "tool_call_response", "id": m.tool_call_id, "response": m.content})
        elif m.content:
            parts.append({"type": "text", "content": m.content})
        for c in m.tool_calls:
            parts.append({"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments})
        out.append({"role": m.role, "parts": parts})
    return out


def _output_message(resp: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if resp.text:
        parts.append({"type": "text", "content": resp.text})
    for c in resp.tool_calls:
        parts.append({"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments})
    return {"role": "assistant", "parts": parts, "finish_reason": resp.finish_reason}


# --------------------------------------------------------------------------- engine hooks


class StepScope:
    __slots__ = ("_task_token", "_span")

    def __init__(self, task_token: contextvars.Token[_TaskInfo | None], span: LiteSpan | None) -> None:
        self._task_token = task_token
        self._span = span

    def close(self, exc: BaseException | None = None) -> None:
        sp = self._span
        if sp is not None:
            if exc is not None:
                sp.set_error(_error_type(exc), str(exc))
            sp.end()
        _TASK.reset(self._task_token)


class EngineHooks:
    """What the engine calls (``AgentEngine.telemetry``): at session creation,
    around each step's effects, and when the result is published."""

    def __init__(self, tel: Telemetry, spec: AgentSpec, model: str = "") -> None:
        self.tel = tel
        self.agent = spec.name
        self.model = model
        self.step_name = f"step {spec.name}"
        self.invoke_name = f"invoke_agent {spec.name}"

    def stamp(self, decision: Decision) -> Decision:
        """Fix the task's trace context in its new session state: the
        ``invoke_agent`` span's id, and the id of that span's parent (the
        current span: the ``process`` span of the task message)."""
        state = decision.state
        if not self.tel.tracing or state is None or state.trace_parent:
            return decision
        cur = _current()
        if cur is not None:
            tid, flags, caller = cur.trace_id, cur.flags, cur.span_id
        else:
            tid, flags, caller = _trace_id()[1], 1, ""
        tp = format_traceparent(Ctx(tid, _span_id(), flags & 1))
        new_state = msgspec.structs.replace(state, trace_parent=tp, trace_caller_span=caller)
        return msgspec.structs.replace(decision, state=new_state)

    def step(self, state: SessionState) -> StepScope:
        task = state.task
        info = _TaskInfo(self.agent, task.task_id, task.tenant_id, task.user_id, task.conversation_id)
        token = _TASK.set(info)
        sp: LiteSpan | None = None
        if self.tel.tracing:
            parent = parse_traceparent(state.trace_parent)
            cur = _current()
            links = (cur,) if parent is not None and cur is not None else ()
            attrs: dict[str, Any] = {"gen_ai.agent.name": self.agent, "agentstream.task_id": task.task_id,
                                     "agentstream.step": state.step, "agentstream.status": state.status,
                                     "agentstream.tenant_id": task.tenant_id, "agentstream.user_id": task.user_id}
            if task.conversation_id:
                attrs["gen_ai.conversation.id"] = task.conversation_id
            sp = self.tel.start_span(self.step_name, SpanKind.INTERNAL, parent, attrs, links=links).activate()
        return StepScope(token, sp)

    def finished(self, state: SessionState | None, result: TaskCompleted | TaskFailed) -> None:
        """The task ended: its ``invoke_agent`` span (built with the ids kept in
        the state, from task start to result) and the task metrics."""
        reason = getattr(result, "reason", None)
        m = self.tel.metrics
        if m is not None:
            attrs = {"gen_ai.agent.name": self.agent, "agentstream.tenant_id": result.tenant_id,
                     "agentstream.user_id": result.user_id, "agentstream.outcome": "failed" if reason else "completed"}
            if reason:
                attrs["error.type"] = reason
                m.errors.add(1, attrs)
            m.task_duration.record(max(0.0, result.finished_at - result.started_at), attrs)
        if not self.tel.tracing:
            return
        stored = parse_traceparent(state.trace_parent) if state is not None else None
        u = result.usage
        attrs2: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.agent,
            "agentstream.task_id": result.task_id, "agentstream.tenant_id": result.tenant_id,
            "agentstream.user_id": result.user_id, "agentstream.steps": result.steps,
            "agentstream.tool_calls": result.tool_calls, "gen_ai.usage.input_tokens": u.input_tokens,
            "gen_ai.usage.output_tokens": u.output_tokens, "agentstream.cost_usd": u.cost_usd,
        }
        if result.agent_version:
            attrs2["gen_ai.agent.version"] = result.agent_version
        if self.model:
            attrs2["gen_ai.request.model"] = self.model
        if result.conversation_id:
            attrs2["gen_ai.conversation.id"] = result.conversation_id
        start_ns = int(result.started_at * 1e9)
        end_ns = int(result.finished_at * 1e9) or time.time_ns()
        if stored is not None:
            caller = state.trace_caller_span if state is not None else ""
            parent = Ctx(stored.trace_id, caller, stored.flags) if caller else None
            ctx = Ctx(stored.trace_id, stored.span_id, stored.flags)
            sp = LiteSpan(self.tel, self.invoke_name, SpanKind.INTERNAL, ctx, parent, attrs2, start_ns)
        else:  # a task started while tracing was off: no stored id, best effort
            sp = self.tel.start_span(self.invoke_name, SpanKind.INTERNAL, attributes=attrs2, start_ns=start_ns)
        if reason:
            sp.set_error(str(reason), getattr(result, "message", ""))
        sp.end(end_ns)


# --------------------------------------------------------------------------- setup


def setup_telemetry(config: TelemetryConfig | Mapping[str, str] | None = None, *, nc: NatsClient | None = None,
                    worker_id: str = "", configure_logs: bool = False,
                    span_exporters: Sequence[SpanExporter] | None = None, metrics: bool | None = None,
                    loop: asyncio.AbstractEventLoop | None = None) -> Telemetry:
    """Telemetry for one process role, from a config or an environment
    mapping (default ``os.environ``). ``nc``: the connection the jetstream
    exporter publishes on (plain publishes). Call from the event loop the
    connection runs on.
    ``metrics=False``: no metrics from this role (clients)."""
    cfg = config if isinstance(config, TelemetryConfig) else TelemetryConfig.from_env(config)
    if loop is None and nc is not None:
        loop = asyncio.get_running_loop()
    if configure_logs:
        configure_logging(cfg, worker=worker_id)
    return Telemetry(cfg, worker_id=worker_id, nc=nc, loop=loop, span_exporters=span_exporters, metrics=metrics)
