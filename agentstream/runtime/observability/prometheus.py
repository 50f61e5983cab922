"""``GET /metrics``: the process's metrics in the Prometheus text format (or
OpenMetrics, when the scraper asks for it), written by ``prometheus_client``.

The aggregation stays ours (:mod:`agentstream.runtime.observability.metrics`)
and is exposed through a custom ``prometheus_client`` collector, because the
hot path records on every model call, tool call and task. Measured with
``python bench/metrics_record.py`` (2 shared cores, CPython 3.11), per record
with six attributes:

- our in-process aggregation: ~1.4 us;
- ``prometheus_client``'s ``Histogram.labels(...).observe()``: ~2.5 us with
  the label values ready, ~10 us including turning the attributes into them;
- the OpenTelemetry SDK's ``Histogram.record``: ~22 us.

(Best of 5 interleaved rounds; the machine is shared, so the ratios matter
more than the figures.)

``prometheus_client``'s instruments also need every label name fixed when
the metric is created, where our records carry OpenTelemetry attribute sets
whose keys vary (``error.type`` only on errors, ``gen_ai.response.model``
only when a model answered), and they have no cardinality limit (ours folds
series beyond ``SERIES_LIMIT`` into one ``otel.metric.overflow`` series).

So what is hand-written here is only the translation of one aggregated
series into samples: the OpenTelemetry unit as a name suffix (the
OpenTelemetry-to-Prometheus compatibility rules), cumulative bucket counts,
and an attribute value as a label string. Name and label escaping (dots to
underscores), number formatting and the exposition itself are the library's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from agentstream.runtime.observability import metrics as _metrics

__all__ = ["prometheus_text", "exposition", "REGISTRY"]

# OpenTelemetry unit -> Prometheus unit suffix (the OTel spec's Prometheus compatibility table).
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "USD": "usd", "1": "ratio"}


def label_value(value: Any) -> str:
    """An attribute value as a Prometheus label value (OTel arrays joined by commas)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


# OTel attribute key -> label name, by the library's own escaping, once a key:
# escaping "gen_ai.agent.name" character by character on every sample made a
# scrape of 600 histogram series (bench/metrics_record.py) about 3x slower.
_label_names: dict[str, str] = {}


def _label_name(key: str) -> str:
    name = _label_names.get(key)
    if name is None:
        name = _label_names[key] = escape_label_name(key) if len(_label_names) < 10_000 else key
    return name


def _family(inst: _metrics._LiteInstrument) -> Metric | None:
    points = inst.points()
    if not points:
        return None
    bounds = inst.bounds
    m = Metric(escape_metric_name(inst.name), inst.description or inst.name, "counter" if bounds is None else "histogram",
               unit=_UNIT_SUFFIX.get(inst.unit, ""))
    les = [floatToGoString(b) for b in bounds] if bounds is not None else []
    for attrs, val in points:
        labels = {_label_name(k): label_value(v) for k, v in attrs}
        if bounds is None:
            m.add_sample(m.name + "_total", labels, val)
            continue
        total, count, counts = val[0], val[1], val[2:]
        cum = 0
        for le, n in zip(les, counts):
            cum += n
            m.add_sample(m.name + "_bucket", {**labels, "le": le}, cum)
        m.add_sample(m.name + "_bucket", {**labels, "le": "+Inf"}, count)
        m.add_sample(m.name + "_count", labels, count)
        m.add_sample(m.name + "_sum", labels, total)
    return m


class LiteMetricsCollector(Collector):
    """In-process aggregated metrics (``metrics``, default: the process's), for
    a ``prometheus_client`` registry."""

    def __init__(self, metrics: _metrics._Metrics | None = None) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics or _metrics._METRICS
        if m is None:
            return
        for inst in m.instruments:
            fam = _family(inst)
            if fam is not None:
                yield fam


# Our own registry, not prometheus_client's global one: the global one
# collects the process and GC metrics of whoever imports the library, and a
# library must not register into an application's registry behind its back.
# An application that wants ours in its registry: REGISTRY.register(LiteMetricsCollector()).
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(LiteMetricsCollector())


def prometheus_text() -> str:
    """The process's current metrics in the Prometheus text exposition format
    (version 0.0.4); empty when metrics are off."""
    return generate_latest(REGISTRY).decode()


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics body and content type for a scrape with this ``Accept``
    header: OpenMetrics when the scraper asks for it, else the text format."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type
