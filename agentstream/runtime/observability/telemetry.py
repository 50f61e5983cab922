"""Observability: one OpenTelemetry trace per task across every process, GenAI
and messaging spans, metrics exposed for Prometheus, JSON logs.

Wiring (``service.py``, ``client.py``): ``setup_telemetry(...) -> Telemetry``
per process role, ``await telemetry.shutdown()`` before the NATS connection is
drained. Ports are wrapped from the outside (``wrap_bus``, ``wrap_llm``,
``instrument_tool_runner``), consumers get ``consumer_middleware``, and the
engine calls its hooks (``engine_hooks``, the ``execution.hooks`` protocol): nothing of this runs when
tracing and metrics are off.

How one task is one trace
-------------------------
- W3C trace context travels in NATS headers (``traceparent``/``tracestate``):
  every publish injects the current span's context (``TracedBus``, the
  client's submit), every consumer extracts it and runs the handler inside a
  ``process <subject>`` CONSUMER span (messaging conventions).
- The task's ``invoke_agent {agent}`` span is the trace's root and covers
  the task from submit to result, but the steps run on different replicas.
  Its span id is derived from the trace and task ids
  (:func:`~.trace_context.task_span_id`): the client sends the task with it
  as the parent (:meth:`Telemetry.task_context`), and the engine keeps it in
  the session state (``SessionState.trace_parent``, plus
  ``trace_caller_span``, its own parent when the task continues a caller's
  span). Every step, on any replica, runs in a ``step {agent}`` span whose
  parent is that stored context (and which links to the step's ``process``
  span). When the result is published, the finished ``invoke_agent`` span is
  built with the stored ids and handed to the span processors. An approval's
  wait is an ``await_approval`` span built the same way (id derived from the
  approval id). docs/tracing.md has the whole shape and why.
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
SDK's ~15-65 us, exposed by ``prometheus_client`` in :mod:`.prometheus`), ``otlp``, ``console``
(these add the OpenTelemetry SDK instruments, fed every record as well),
``none`` (no metrics at all). ``AGENTSTREAM_TRACING=0`` turns tracing off.
Prompt and tool-argument content is captured only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``, and always
passes through :mod:`agentstream.runtime.observability.redact`.

Modules: ``telemetry`` (this: :class:`Telemetry`, :func:`setup_telemetry`),
``telemetry_config`` (the environment), ``trace_context`` (ids, traceparent,
current span and task), ``spans`` (lite spans, span records),
``span_export`` (JetStream exporter, exporter list), ``metrics`` (in-process
aggregation), ``prometheus`` (``/metrics``), ``logs`` (formatters),
``instrumentation`` (traced bus and model, the engine's hooks).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from agentstream.contracts.codec import DecodeError
from agentstream.contracts.subjects import published
from agentstream.runtime.adapters.jetstream import MSG_ID
from agentstream.runtime.execution.consumer import Reject
from agentstream.runtime.observability.instrumentation import EngineHooks, TracedBus, TracedLLM
from agentstream.runtime.observability.logs import configure_logging
from agentstream.runtime.observability.metrics import AttributeSets, _Metrics, _metrics_for, keyed
from agentstream.runtime.observability.redact import redact
from agentstream.runtime.observability.span_export import JetStreamSpanExporter, build_span_exporters
from agentstream.runtime.observability.spans import (
    _PROCESS,
    _UNSET,
    NOOP_SPAN,
    SCOPE,
    LiteSpan,
    _error_type,
    _json,
    _NoopSpan,
    _template,
)
from agentstream.runtime.observability.telemetry_config import TelemetryConfig, build_sampler
from agentstream.runtime.observability.trace_context import (
    TRACEPARENT,
    TRACESTATE,
    Ctx,
    _current,
    _span_id,
    _trace_id,
    format_traceparent,
    parse_traceparent,
    task_span_id,
    to_otel,
)
from agentstream.runtime.planning.protocol import plan_call

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

    from agentstream.contracts.events import ToolCallRequested
    from agentstream.runtime.core.ports import LLM, Bus
    from agentstream.runtime.core.spec import AgentSpec
    from agentstream.runtime.execution.tool_runner import Outcome, ToolRunner

__all__ = ["Telemetry", "setup_telemetry"]


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
        # OTEL_RESOURCE_ATTRIBUTES of the config's environment; Phoenix files
        # traces under openinference.project.name, "default" without one, so
        # it defaults to the service name.
        res_attrs: dict[str, Any] = {"openinference.project.name": config.service_name,
                                     **dict(config.resource_attributes)}
        res_attrs["service.name"] = config.service_name
        res_attrs["service.instance.id"] = worker_id or _default_worker()
        self.resource = Resource.create(res_attrs)
        self.service_name = config.service_name
        self.worker_name = str(self.resource.attributes.get("service.instance.id", ""))
        self._processors: list[SpanProcessor] = []
        self._jetstream: list[JetStreamSpanExporter] = []
        direct: JetStreamSpanExporter | None = None
        self.provider: TracerProvider | None = None
        if self.tracing:
            self.provider = TracerProvider(resource=self.resource, shutdown_on_exit=False,
                                           sampler=build_sampler(config))
            exporters = list(span_exporters) if span_exporters is not None else \
                build_span_exporters(config, nc=nc, loop=loop)
            for exp in exporters:
                if isinstance(exp, JetStreamSpanExporter):
                    exp.set_origin(self.service_name, self.worker_name)
                    self._jetstream.append(exp)
                bsp = BatchSpanProcessor(exp, schedule_delay_millis=config.bsp_delay_ms)
                self.provider.add_span_processor(bsp)
                self._processors.append(bsp)
            self._sampler = self.provider.sampler
            # The fixed samplers decide a new trace without the SDK's call
            # (a SamplingResult and its attributes, per task).
            self._root_fixed = {"always_on": True, "parentbased_always_on": True, "always_off": False,
                                "parentbased_always_off": False}.get(config.sampler)
            if len(exporters) == 1 and self._jetstream:
                direct = self._jetstream[0]  # lite spans skip the BSP (see JetStreamSpanExporter)
        # Where a finished lite span goes: one call from LiteSpan.end.
        self._sink: Callable[[LiteSpan, int], None] = direct.add_lite if direct is not None else self._to_processors
        use_metrics = config.metrics if metrics is None else (metrics and config.metrics)
        self.metrics: _Metrics | None = _metrics_for(config, self.resource) if use_metrics else None
        self.active = self.tracing or self.metrics is not None
        self._tool_sets = AttributeSets()

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

    _root_fixed: bool | None = None

    def sample_root(self, trace_id: int, name: str, kind: SpanKind, attributes: dict[str, Any] | None = None
                    ) -> bool:
        """The head sampler's decision for a new trace (no parent)."""
        fixed = self._root_fixed
        if fixed is not None:
            return fixed
        return self._sampler.should_sample(None, trace_id, name, kind, attributes).decision.is_sampled()

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
            ctx = Ctx(tid_hex, _span_id(), 1 if self.sample_root(tid, name, kind, attrs) else 0)
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
        """The current span's context into ``headers``, unless they carry one
        already (a message that continues another span: an approval request
        carries its wait span's)."""
        if TRACEPARENT in headers:
            return
        ctx = _current()
        if ctx is not None:
            if ctx is not self._last_ctx:  # a step publishes several messages under one span
                self._last_ctx, self._last_tp = ctx, format_traceparent(ctx)
            headers[TRACEPARENT] = self._last_tp
            if ctx.state:
                headers[TRACESTATE] = ctx.state

    def task_context(self, task_id: str) -> Ctx | None:
        """The context a client sends a new task with when no span is current:
        a new trace whose parent span is the task's ``invoke_agent`` span
        (its id derived from the trace and task ids), so the worker's spans
        hang under the span that covers the task and it becomes the trace's
        root. None when a span is current: the task continues that trace."""
        if not self.tracing or _current() is not None:
            return None
        tid, tid_hex = _trace_id()
        sampled = self.sample_root(tid, "invoke_agent", SpanKind.INTERNAL)
        return Ctx(tid_hex, task_span_id(tid_hex, task_id), 1 if sampled else 0)

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
                                     "messaging.operation.name": "process",
                                     # as published: EVENTS stores a partition in the subject
                                     "messaging.destination.name": published(msg.subject),
                                     "messaging.consumer.group.name": durable}
            # (messaging.message.body.size is opt-in in the conventions: ~35 bytes a span, left out)
            mid = headers.get(MSG_ID) if headers else None
            if mid:
                attrs["messaging.message.id"] = mid
            sp = self.start_span(name, SpanKind.CONSUMER, parent, attrs, use_current=False).activate()
            process_token = _PROCESS.set(sp)
            try:
                await nxt(msg)
            except BaseException as exc:
                etype = "rejected" if isinstance(exc, (Reject, DecodeError)) else _error_type(exc)
                sp.set_error(etype, str(exc))
                if metrics is not None:
                    metrics.errors.add(1, {"error.type": etype, "messaging.consumer.group.name": durable})
                raise
            finally:
                _PROCESS.reset(process_token)
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
                "gen_ai.agent.name": req.agent, "agentstream.task_id": req.task_id,
            }
            step = plan_call(req.call_id)
            if step is not None:  # a plan step: the trace shows plan against execution
                attrs["agentstream.plan.attempt"], attrs["agentstream.plan.step"] = step
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
            if out.attempts != 1:  # retried: one attempt is the rule, not worth 30 bytes a span
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
        ident = (req.tool, req.agent, req.tenant_id, req.user_id, error_type)
        attrs, key = self._tool_sets.get(ident) or self._tool_sets.put(ident, keyed(
            {"gen_ai.tool.name": req.tool, "gen_ai.agent.name": req.agent, "agentstream.tenant_id": req.tenant_id,
             "agentstream.user_id": req.user_id, **({"error.type": error_type} if error_type is not None else {})}))
        if error_type is not None:
            m.errors.add(1, attrs, key)
        m.tool_duration.record(seconds, attrs, key)

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
