"""The Prometheus text exposition format (version 0.0.4) of the process's metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, MetricsData, Sum

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
