"""Span exporters: the JetStream exporter (spans batched per trace on
``telemetry.spans.<trace_id>``, stream TELEMETRY) and the list
``OTEL_TRACES_EXPORTER`` names (jetstream, otlp, console)."""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from agentstream.contracts.codec import encode
from agentstream.contracts.telemetry import BatchedSpan, SpanBatch, span_subject
from agentstream.runtime.observability.spans import _KIND_NAMES, _record, span_record
from agentstream.runtime.observability.telemetry_config import TelemetryConfig, _otlp_endpoint, otlp_protocol
from agentstream.runtime.observability.trace_ui import TraceUIExporter

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from agentstream.runtime.observability.spans import LiteSpan

log = logging.getLogger("agentstream.telemetry")


_BATCH_TAIL = b"]}"


def batch_head(service: str = "", worker: str = "") -> bytes:
    """A ``SpanBatch``'s JSON up to its first record (``spans`` is its last field)."""
    return encode(SpanBatch(service=service, worker=worker, spans=[]))[:-len(_BATCH_TAIL)]


_BATCH_HEAD = batch_head()


def _batches(records: list[tuple[str, bytes]], max_bytes: int, head: bytes = _BATCH_HEAD,
             ) -> list[tuple[str, bytes, int]]:
    """Encoded spans (trace id, record JSON) as ``SpanBatch`` messages, one per
    trace (more if a trace's spans exceed ``max_bytes``): ``(subject, payload,
    spans in it)``; ``head``: :func:`batch_head` of the records' process."""
    by_trace: dict[str, list[bytes]] = {}
    for trace_id, data in records:
        by_trace.setdefault(trace_id, []).append(data)
    out: list[tuple[str, bytes, int]] = []
    room = max_bytes - len(head) - len(_BATCH_TAIL)
    for trace_id, parts in by_trace.items():
        subject = span_subject(trace_id)
        chunk: list[bytes] = []
        size = 0
        for part in parts:
            if chunk and size + len(part) + 1 > room:
                out.append((subject, head + b",".join(chunk) + _BATCH_TAIL, len(chunk)))
                chunk, size = [], 0
            chunk.append(part)
            size += len(part) + 1
        out.append((subject, head + b",".join(chunk) + _BATCH_TAIL, len(chunk)))
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
        self._unencoded: list[tuple[LiteSpan, int]] = []  # finished spans not yet encoded (add_lite)
        self._timer: asyncio.TimerHandle | None = None
        self._loop_thread = threading.get_ident() if loop is None else None
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0  # spans lost (closed exporter, encoding error, broker gone): for inspection
        self.set_origin("", "")

    def set_origin(self, service: str, worker: str) -> None:
        """The process the spans come from: said once per batch, left out of
        each record that matches (the Telemetry that owns this exporter sets it)."""
        self.service, self.worker = service, worker
        self._head = batch_head(service, worker)

    def add_lite(self, span: LiteSpan, end_ns: int) -> None:
        """Buffer a finished lite span (call on the loop's thread). Spans are
        encoded ``ENCODE_EVERY`` at a time: one tight loop over a few dozen
        spans costs less than the same work spread between the steps of the
        tasks (in situ each span's record cost ~2x its microbenchmark), and
        the spans and their attribute dicts still go within a few
        milliseconds, before the garbage collector would promote them."""
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
        unencoded = self._unencoded
        unencoded.append((span, end_ns))
        if len(unencoded) >= self.ENCODE_EVERY:
            self._encode()
        if self._timer is None:
            self._timer = self.loop.call_later(self.delay_s, self._kick)

    ENCODE_EVERY = 32

    def _encode(self) -> None:
        spans, self._unencoded = self._unencoded, []
        lite = self._lite
        service, worker = self.service, self.worker
        for span, end_ns in spans:
            try:
                tel = span._tel
                rec = _record(span.context, span.parent, span.name, _KIND_NAMES[span.kind], span.start_ns, end_ns,
                              span.error is not None, span.attributes,
                              "" if tel.service_name == service else tel.service_name,
                              "" if tel.worker_name == worker else tel.worker_name, span.links, BatchedSpan)
                lite.append((rec.trace_id, encode(rec)))
            except Exception as exc:  # noqa: BLE001 - one odd attribute must not fail the work
                log.debug("cannot encode span %s: %s", span.name, exc)
                self.dropped += 1
        if len(lite) >= self.max_batch:
            self._kick()

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unencoded:
            self._encode()
        records, self._lite = self._lite, []
        if records:
            self._enqueue(self._pack(records))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        records: list[tuple[str, bytes]] = []
        for span in spans:
            try:
                fields = msgspec.structs.asdict(span_record(span))
                if fields["service"] == self.service and fields["worker"] == self.worker:
                    fields["service"] = fields["worker"] = ""
                rec = BatchedSpan(**fields)
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
        return _batches(fits, self.max_bytes, self._head)

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
        if self._lite or self._unencoded:
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


def build_span_exporters(config: TelemetryConfig, *, nc: NatsClient | None = None,
                         loop: asyncio.AbstractEventLoop | None = None) -> list[SpanExporter]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names (``jetstream`` needs a
    connection); OTLP ones add the attributes trace UIs read (:mod:`.trace_ui`)."""
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
            if otlp_protocol(config, "traces") == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

                out.append(TraceUIExporter(HttpExporter(endpoint=endpoint)))
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

                out.append(TraceUIExporter(GrpcExporter(endpoint=endpoint)))
    return out
