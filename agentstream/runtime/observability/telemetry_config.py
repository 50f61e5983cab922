"""Telemetry configuration from the standard ``OTEL_*`` variables and ours
(``AGENTSTREAM_TRACING``, ``AGENTSTREAM_LOG_FORMAT``, ...), and the OTLP
endpoint and protocol each signal exports with.

OTLP protocol, per signal: ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``grpc`` or ``http/protobuf``). When none is set, ``grpc`` (the OpenTelemetry
Python SDK's default, port 4317), unless the endpoint is plainly an OTLP/HTTP
one: port 4318 (OTLP/HTTP's registered port) or a path ending in
``/v1/traces`` / ``/v1/metrics``. Sending gRPC to an HTTP receiver only ever
logs ``UNAVAILABLE`` and loses every span, so the endpoint's own evidence wins
over a default the user did not choose; an explicit variable always wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from agentstream.runtime.config.settings import env_bool as _bool
from agentstream.runtime.core.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

DEFAULT_BSP_DELAY_MS = 500  # the SDK's 5 s would make `agentstream trace` lag behind a finished task

TRACE_EXPORTERS = frozenset({"jetstream", "otlp", "console", "none"})
METRIC_EXPORTERS = frozenset({"prometheus", "otlp", "console", "none"})
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
DEFAULT_SLOW_S = 10.0  # a task at least this long is kept whatever the sampler said (AGENTSTREAM_TRACE_SLOW_S)


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
    # Per-signal protocol variables; None: ``otlp_protocol`` when it was set, else inferred (module doc).
    otlp_traces_protocol: str | None = None
    otlp_metrics_protocol: str | None = None
    otlp_protocol_set: bool = False
    # OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the SDK's names and default).
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    # Tail keep rules for traces the sampler dropped: a task's root span is
    # kept when the task failed or took at least ``slow_s``; a failed span always.
    slow_s: float = DEFAULT_SLOW_S
    # OTEL_RESOURCE_ATTRIBUTES of the environment this config came from (the
    # SDK reads only os.environ's), e.g. openinference.project.name=support.
    resource_attributes: tuple[tuple[str, str], ...] = ()
    bsp_delay_ms: int | None = DEFAULT_BSP_DELAY_MS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TelemetryConfig:
        env = os.environ if env is None else env
        disabled = _bool(env, "OTEL_SDK_DISABLED", False)
        fmt = (env.get("AGENTSTREAM_LOG_FORMAT") or "text").strip().lower()
        if fmt not in ("text", "json"):
            raise ConfigError(f"AGENTSTREAM_LOG_FORMAT={fmt!r} must be text or json")
        proto = _protocol(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
        metrics_exporters = _names(env, "OTEL_METRICS_EXPORTER", "prometheus", METRIC_EXPORTERS)
        sampler, sampler_arg = _sampler(env)
        resource = dict(_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES") or ""))
        try:
            slow_s = float(env.get("AGENTSTREAM_TRACE_SLOW_S") or DEFAULT_SLOW_S)
        except ValueError:
            raise ConfigError(f"AGENTSTREAM_TRACE_SLOW_S={env.get('AGENTSTREAM_TRACE_SLOW_S')!r} "
                              "must be a number of seconds") from None
        return cls(
            tracing=not disabled and _bool(env, "AGENTSTREAM_TRACING", True),
            metrics=not disabled and _bool(env, "AGENTSTREAM_METRICS", True) and bool(metrics_exporters),
            traces_exporters=_names(env, "OTEL_TRACES_EXPORTER", "jetstream", TRACE_EXPORTERS),
            metrics_exporters=metrics_exporters,
            service_name=env.get("OTEL_SERVICE_NAME") or resource.get("service.name") or "agentstream",
            capture_content=_bool(env, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", False),
            log_format=fmt,
            producer_spans=_bool(env, "AGENTSTREAM_TRACE_PUBLISH", False),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            otlp_protocol=proto or "grpc",
            otlp_protocol_set=proto is not None,
            otlp_traces_protocol=_protocol(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            otlp_metrics_protocol=_protocol(env, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
            otlp_traces_endpoint=env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None,
            otlp_metrics_endpoint=env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or None,
            bsp_delay_ms=None if env.get("OTEL_BSP_SCHEDULE_DELAY") else DEFAULT_BSP_DELAY_MS,
            sampler=sampler,
            sampler_arg=sampler_arg,
            slow_s=slow_s,
            resource_attributes=tuple(resource.items()),
        )

    @classmethod
    def disabled(cls) -> TelemetryConfig:
        return cls(tracing=False, metrics=False)


def _sampler(env: Mapping[str, str]) -> tuple[str, float]:
    name = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if name not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER={name!r}: unknown sampler (use {', '.join(SAMPLERS)})")
    raw = (env.get("OTEL_TRACES_SAMPLER_ARG") or "").strip()
    if not raw or not name.endswith("traceidratio"):
        return name, 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} must be a ratio from 0 to 1")
    return name, ratio


def _resource_attributes(raw: str) -> tuple[tuple[str, str], ...]:
    """``key=value,key=value`` (values percent-decoded), as the SDK parses it."""
    out: list[tuple[str, str]] = []
    for part in raw.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out.append((key.strip(), unquote(value.strip())))
    return tuple(out)


def _protocol(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw not in OTLP_PROTOCOLS:
        raise ConfigError(f"{name}={raw!r} must be grpc or http/protobuf")
    return raw


def otlp_protocol(config: TelemetryConfig, signal: str) -> str:
    """The OTLP protocol ``signal`` (``traces`` or ``metrics``) exports with (module doc)."""
    specific = config.otlp_traces_protocol if signal == "traces" else config.otlp_metrics_protocol
    if specific:
        return specific
    if config.otlp_protocol_set:
        return config.otlp_protocol
    endpoint = (config.otlp_traces_endpoint if signal == "traces" else config.otlp_metrics_endpoint) \
        or config.otlp_endpoint
    if endpoint:
        try:
            url = urlsplit(endpoint if "//" in endpoint else "//" + endpoint)
            port = url.port
        except ValueError:
            return config.otlp_protocol
        if port == 4318 or url.path.rstrip("/").endswith(f"/v1/{signal}"):
            return "http/protobuf"
    return config.otlp_protocol


def _otlp_endpoint(config: TelemetryConfig, signal: str) -> str | None:
    specific = config.otlp_traces_endpoint if signal == "traces" else config.otlp_metrics_endpoint
    if specific:
        return specific
    if not config.otlp_endpoint:
        return None
    if otlp_protocol(config, signal) == "http/protobuf":
        base = config.otlp_endpoint.rstrip("/")
        # Trace UIs often document the full path (Phoenix: http://host:6006/v1/traces).
        return base if base.endswith(f"/v1/{signal}") else base + f"/v1/{signal}"
    return config.otlp_endpoint


def build_sampler(config: TelemetryConfig) -> Sampler:
    """The head sampler ``OTEL_TRACES_SAMPLER`` / ``_ARG`` name (the SDK's samplers)."""
    from opentelemetry.sdk.trace import sampling

    if config.sampler == "traceidratio":
        return sampling.TraceIdRatioBased(config.sampler_arg)
    if config.sampler == "parentbased_traceidratio":
        return sampling.ParentBasedTraceIdRatio(config.sampler_arg)
    return {"always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF,
            "parentbased_always_on": sampling.DEFAULT_ON, "parentbased_always_off": sampling.DEFAULT_OFF}[config.sampler]
