"""Consumer lag per durable: the autoscaling signal.

For every durable consumer on the work streams (TASKS, EVENTS, TOOLS),
as the broker reports it (``$JS.API.CONSUMER.INFO``):

- ``pending``: messages in the stream the consumer has not delivered yet (the
  backlog: replicas to add);
- ``ack_pending``: delivered, not yet acknowledged (work in progress);
- ``redelivered``: delivered more than once and not yet acknowledged
  (crashes, timeouts, naks: a sign of trouble rather than of load);
- ``waiting``: open pull requests (replicas idle and asking for work).

The figures are the broker's, so they are the same whichever process reads
them: the HTTP API exposes them on ``/metrics`` (Prometheus) and
``/api/lag`` (dashboard), pushes them over OTLP when
``OTEL_METRICS_EXPORTER`` names ``otlp``, and ``agentstream stats`` prints
them. An agent's partitioned inbox (one durable per partition on EVENTS,
``agent_<a>_events_<n>``, docs/scaling.md) is one row, ``agent_<a>_events``,
the sum over its partitions: the agent's backlog, whichever replica owns
which partition. KEDA's NATS JetStream scaler reads the same numbers from the
nats-server monitoring endpoint (``ops/keda/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import nats.errors
import nats.js.errors as jse
from nats.js import JetStreamContext

from agentstream.contracts.subjects import EVENTS_STREAM

log = logging.getLogger("agentstream.lag")

WORK_STREAMS = ("TASKS", EVENTS_STREAM, "TOOLS")

# Prometheus name, OpenTelemetry name, field, help: one gauge per field,
# labelled by stream and durable.
GAUGES = (
    ("agentstream_consumer_pending_messages", "agentstream.consumer.pending", "pending",
     "Messages not yet delivered to the durable consumer (backlog)"),
    ("agentstream_consumer_ack_pending_messages", "agentstream.consumer.ack_pending", "ack_pending",
     "Messages delivered to the durable consumer and not yet acknowledged"),
    ("agentstream_consumer_redelivered_messages", "agentstream.consumer.redelivered", "redelivered",
     "Messages delivered more than once and not yet acknowledged"),
    ("agentstream_consumer_waiting_pulls", "agentstream.consumer.waiting", "waiting",
     "Open pull requests (idle replicas asking for work)"),
)


@dataclass(frozen=True)
class ConsumerLag:
    stream: str
    durable: str
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int
    # Durables summed into this row (an agent's inbox partitions), else 1.
    partitions: int = 1

    @property
    def lag(self) -> int:
        """Work not yet finished: the backlog plus what is in progress."""
        return self.pending + self.ack_pending


async def read_lag(js: JetStreamContext, streams: Iterable[str] = WORK_STREAMS,
                   timeout: float = 5.0) -> list[ConsumerLag]:
    """Every durable consumer's lag on ``streams`` (a missing stream reads as
    none), sorted by stream and durable. Ephemeral consumers (``watch``,
    scans) are left out: nothing scales on them."""
    out: list[ConsumerLag] = []
    for stream in streams:
        try:
            infos = await js.consumers_info(stream)
        except jse.NotFoundError:
            continue
        for ci in infos:
            cfg = ci.config
            if not (cfg and cfg.durable_name):
                continue
            out.append(ConsumerLag(stream=stream, durable=cfg.durable_name, pending=int(ci.num_pending or 0),
                                   ack_pending=int(ci.num_ack_pending or 0),
                                   redelivered=int(ci.num_redelivered or 0), waiting=int(ci.num_waiting or 0)))
    return sorted(_sum_partitions(out), key=lambda c: (c.stream, c.durable))


_PARTITION = re.compile(r"^(agent_.+_events)_(\d+)$")


def partition_of(durable: str) -> tuple[str, int] | None:
    """``agent_<a>_events_<n>`` -> (``agent_<a>_events``, n): one of an agent's inbox partitions."""
    m = _PARTITION.match(durable)
    return (m.group(1), int(m.group(2))) if m else None


def _sum_partitions(lags: Iterable[ConsumerLag]) -> list[ConsumerLag]:
    out: list[ConsumerLag] = []
    sums: dict[str, ConsumerLag] = {}
    for c in lags:
        part = partition_of(c.durable) if c.stream == EVENTS_STREAM else None
        if part is None:
            out.append(c)
            continue
        name = part[0]
        prev = sums.get(name)
        sums[name] = replace(c, durable=name) if prev is None else ConsumerLag(
            stream=c.stream, durable=name, pending=prev.pending + c.pending,
            ack_pending=prev.ack_pending + c.ack_pending, redelivered=prev.redelivered + c.redelivered,
            waiting=prev.waiting + c.waiting, partitions=prev.partitions + 1)
    return [*out, *sums.values()]


def lag_json(lags: Sequence[ConsumerLag]) -> list[dict[str, Any]]:
    return [{**asdict(c), "lag": c.lag} for c in lags]


def render_lag(lags: Sequence[ConsumerLag]) -> str:
    """A table for ``agentstream stats``."""
    if not lags:
        return "consumer lag: no durable consumers yet (no worker has started)"
    width = max(len(c.durable) for c in lags)
    lines = ["consumer lag (now; scale on pending):",
             f"  {'stream':<7} {'durable':<{width}} {'pending':>8} {'ack pending':>12} {'redelivered':>12} "
             f"{'waiting':>8}"]
    for c in lags:
        lines.append(f"  {c.stream:<7} {c.durable:<{width}} {c.pending:>8} {c.ack_pending:>12} "
                     f"{c.redelivered:>12} {c.waiting:>8}")
    return "\n".join(lines)


def prometheus_lines(lags: Sequence[ConsumerLag]) -> list[str]:
    """Gauges in the Prometheus text format (0.0.4)."""
    lines: list[str] = []
    if not lags:
        return lines
    for name, _, attr, help_text in GAUGES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for c in lags:
            lines.append(f'{name}{{stream="{_esc(c.stream)}",durable="{_esc(c.durable)}"}} {getattr(c, attr)}')
    return lines


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class LagCache:
    """The last reading, refreshed at most every ``max_age_s``: scrapes and
    dashboard polls from many clients cost the broker one read a period.
    A failed read keeps the previous figures and says so in the log once."""

    def __init__(self, js: JetStreamContext, max_age_s: float = 2.0) -> None:
        self.js = js
        self.max_age_s = max_age_s
        self.lags: list[ConsumerLag] = []
        self.read_at = 0.0
        self._lock = asyncio.Lock()
        self._failing = False

    async def get(self) -> list[ConsumerLag]:
        async with self._lock:
            if time.monotonic() - self.read_at >= self.max_age_s:
                try:
                    self.lags = await read_lag(self.js)
                    if self._failing:
                        log.info("consumer lag readable again")
                    self._failing = False
                except (TimeoutError, nats.errors.Error, jse.APIError) as exc:
                    if not self._failing:
                        log.warning("cannot read consumer lag (%s: %s); serving the last reading",
                                    type(exc).__name__, exc)
                    self._failing = True
                self.read_at = time.monotonic()
            return self.lags


class OtlpLagExporter:
    """Pushes the lag gauges through the configured OpenTelemetry push
    exporters (OTLP, console), as observable gauges read from a
    :class:`LagCache` kept fresh by a background task."""

    def __init__(self, cache: LagCache, readers: Sequence[Any], resource: Any = None,
                 period_s: float = 5.0) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation
        from opentelemetry.sdk.metrics import MeterProvider

        self.cache = cache
        self.period_s = period_s
        self.provider = MeterProvider(metric_readers=list(readers), **({"resource": resource} if resource else {}))
        meter = self.provider.get_meter("agentstream.lag", "0.1.0")

        def callback(attr: str) -> Any:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(getattr(c, attr), {"stream": c.stream, "durable": c.durable})
                        for c in self.cache.lags]
            return observe

        for _, otel_name, attr, help_text in GAUGES:
            meter.create_observable_gauge(otel_name, callbacks=[callback(attr)], description=help_text,
                                          unit="{message}")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            await self.cache.get()
            await asyncio.sleep(self.period_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.provider.shutdown)


def otlp_exporter_from_env(cache: LagCache, env: Mapping[str, str]) -> OtlpLagExporter | None:
    """An :class:`OtlpLagExporter` when metrics are on and ``OTEL_METRICS_EXPORTER``
    names a push exporter (otlp, console); else None."""
    from agentstream.runtime.observability.metrics import build_metric_readers
    from agentstream.runtime.observability.telemetry_config import TelemetryConfig

    config = TelemetryConfig.from_env(env)
    if not config.metrics:
        return None
    _, push = build_metric_readers(config)
    if not push:
        return None
    from opentelemetry.sdk.resources import Resource

    return OtlpLagExporter(cache, push, Resource.create({"service.name": config.service_name}))
