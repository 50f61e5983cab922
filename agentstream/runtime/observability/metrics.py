"""Metrics: counters and fixed-bucket histograms aggregated in process (one set
a process), fed to the OpenTelemetry SDK as well when ``OTEL_METRICS_EXPORTER``
names a push exporter (otlp, console)."""

from __future__ import annotations

import bisect
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from agentstream.runtime.observability.telemetry_config import TelemetryConfig, _otlp_endpoint, otlp_protocol

# GenAI semantic conventions' advisory bucket boundaries.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000)


def build_metric_readers(config: TelemetryConfig) -> tuple[InMemoryMetricReader, list[MetricReader]]:
    """An SDK pull reader (for tests and ad-hoc reads; ``/metrics`` reads the
    in-process aggregation instead) and the push readers ``OTEL_METRICS_EXPORTER`` names."""
    pull = InMemoryMetricReader()
    push: list[MetricReader] = []
    for name in config.metrics_exporters:
        if name == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            push.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
        elif name == "otlp":
            endpoint = _otlp_endpoint(config, "metrics")
            if otlp_protocol(config, "metrics") == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetric

                push.append(PeriodicExportingMetricReader(HttpMetric(endpoint=endpoint)))
            else:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetric

                push.append(PeriodicExportingMetricReader(GrpcMetric(endpoint=endpoint)))
    return pull, push


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
    ``prometheus_text``; ``sdk`` (the same instrument on the OTel SDK, set
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

    def add(self, value: float, attributes: Mapping[str, Any],
            key: tuple[tuple[str, Any], ...] | None = None) -> None:
        """``key``: ``tuple(attributes.items())``, when the caller keeps it."""
        if key is None:
            key = tuple(attributes.items())
        with self._lock:
            series = self._series
            if key not in series and len(series) >= SERIES_LIMIT:
                key = _OVERFLOW
            series[key] = series.get(key, 0) + value
        if self.sdk is not None:
            self.sdk.add(value, attributes)

    def record(self, value: float, attributes: Mapping[str, Any],
               key: tuple[tuple[str, Any], ...] | None = None) -> None:
        """``key``: ``tuple(attributes.items())``, when the caller keeps it."""
        if key is None:
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
    process for ``prometheus_text``; an OTel SDK MeterProvider is built
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


class AttributeSets:
    """Attribute dicts (and their series keys) built once per distinct input:
    a hot caller records the same few sets over and over. Bounded: cleared
    when full, since tenant and user ids come from outside."""

    __slots__ = ("_sets", "limit")

    def __init__(self, limit: int = 1024) -> None:
        self._sets: dict[tuple[Any, ...], Any] = {}
        self.limit = limit

    def get(self, key: tuple[Any, ...]) -> Any:
        return self._sets.get(key)

    def put(self, key: tuple[Any, ...], value: Any) -> Any:
        if len(self._sets) >= self.limit:
            self._sets.clear()
        self._sets[key] = value
        return value


def keyed(attributes: dict[str, Any]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
    """``attributes`` with its series key, for ``record(..., key=)``."""
    return attributes, tuple(attributes.items())


_metrics_lock = threading.Lock()
_METRICS: _Metrics | None = None


def _metrics_for(config: TelemetryConfig, resource: Resource) -> _Metrics:
    global _METRICS
    with _metrics_lock:
        if _METRICS is None:
            _METRICS = _Metrics(config, resource)
        return _METRICS
