"""Telemetry configuration from the standard ``OTEL_*`` variables and ours
(``AGENTSTREAM_TRACING``, ``AGENTSTREAM_LOG_FORMAT``, ...), and the OTLP
endpoint each signal exports to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from agentstream.runtime.config.settings import env_bool as _bool
from agentstream.runtime.core.errors import ConfigError

DEFAULT_BSP_DELAY_MS = 500  # the SDK's 5 s would make `agentstream trace` lag behind a finished task

TRACE_EXPORTERS = frozenset({"jetstream", "otlp", "console", "none"})
METRIC_EXPORTERS = frozenset({"prometheus", "otlp", "console", "none"})


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


def _otlp_endpoint(config: TelemetryConfig, signal: str) -> str | None:
    specific = config.otlp_traces_endpoint if signal == "traces" else config.otlp_metrics_endpoint
    if specific:
        return specific
    if not config.otlp_endpoint:
        return None
    if config.otlp_protocol == "http/protobuf":
        return config.otlp_endpoint.rstrip("/") + f"/v1/{signal}"
    return config.otlp_endpoint
