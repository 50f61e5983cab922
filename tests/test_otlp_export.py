"""OTLP export: the protocol a user chose, or the one the endpoint plainly
speaks, reaches a real OTLP/HTTP receiver (a tiny in-process one; no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.observability.metrics import build_metric_readers
from agentstream.runtime.observability.span_export import build_span_exporters
from agentstream.runtime.observability.telemetry import Telemetry
from agentstream.runtime.observability.telemetry_config import TelemetryConfig, otlp_protocol
from agentstream.runtime.observability.trace_ui import TraceUIExporter


def _trace_exporters(env: dict[str, str]) -> list[Any]:
    """The OTLP exporters the variables select, inside their trace-UI wrapper."""
    out = build_span_exporters(TelemetryConfig.from_env({"OTEL_TRACES_EXPORTER": "otlp", **env}))
    inner = [e.inner for e in out if isinstance(e, TraceUIExporter)]
    assert len(inner) == len(out)
    return inner


@pytest.mark.parametrize(("env", "kind", "endpoint"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, GrpcSpanExporter, None),
    ({}, GrpcSpanExporter, None),  # the SDK's default, localhost:4317
    # An OTLP/HTTP endpoint with no protocol set: HTTP, not gRPC into an HTTP port.
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, HttpSpanExporter, "http://collector:4318/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://phoenix:6006/v1/traces"}, HttpSpanExporter,
     "http://phoenix:6006/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, HttpSpanExporter,
     "http://jaeger:4318/v1/traces"),
    # An explicit variable always wins, the signal's own first.
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     GrpcSpanExporter, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:9000", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     HttpSpanExporter, "http://collector:9000/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:9000", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, HttpSpanExporter, "http://collector:9000/v1/traces"),
])
def test_otlp_protocol_from_the_variables_or_the_endpoint(env: dict[str, str], kind: type,
                                                           endpoint: str | None) -> None:
    exporters = _trace_exporters(env)
    try:
        assert [type(e) for e in exporters] == [kind]
        if endpoint is not None:
            assert exporters[0]._endpoint == endpoint
    finally:
        for e in exporters:
            e.shutdown()


def test_metrics_protocol_is_resolved_on_its_own() -> None:
    cfg = TelemetryConfig.from_env({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                                    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"})
    assert otlp_protocol(cfg, "traces") == "grpc" and otlp_protocol(cfg, "metrics") == "http/protobuf"
    _, push = build_metric_readers(cfg)
    try:
        exporter = getattr(push[0], "_exporter", None)
        assert isinstance(exporter, HttpMetricExporter)
        assert exporter._endpoint == "http://c:4317/v1/metrics"
    finally:
        for r in push:
            r.shutdown()


def test_an_unknown_protocol_is_a_config_error() -> None:
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        with pytest.raises(ConfigError, match=name):
            TelemetryConfig.from_env({name: "http/json"})


async def test_spans_reach_an_otlp_http_receiver() -> None:
    """What a user pointing agentstream at an OTLP/HTTP collector gets: the spans."""
    received: list[ExportTraceServiceRequest] = []
    got = asyncio.Event()

    async def traces(request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        received.append(req)
        got.set()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        cfg = TelemetryConfig.from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none",
                                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                                        "OTEL_RESOURCE_ATTRIBUTES": "openinference.project.name=support%20desk"})
        tel = Telemetry(cfg, worker_id="w-otlp")
        with tel.span("invoke_agent support", attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support",
                "agentstream.user_id": "u-7", "gen_ai.conversation.id": "c-1"}):
            pass
        await tel.shutdown(timeout=10)
        await asyncio.wait_for(got.wait(), timeout=10)
    finally:
        await runner.cleanup()
    spans = [s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in spans] == ["invoke_agent support"]
    resource = {a.key: a.value.string_value for a in received[0].resource_spans[0].resource.attributes}
    assert resource["service.instance.id"] == "w-otlp"
    assert resource["openinference.project.name"] == "support desk"  # Phoenix's project
    # What Phoenix and Langfuse read, added on the way out.
    attrs = {a.key: a.value.string_value for a in spans[0].attributes}
    assert attrs["openinference.span.kind"] == "AGENT" and attrs["langfuse.observation.type"] == "agent"
    assert attrs["user.id"] == attrs["langfuse.user.id"] == "u-7"
    assert attrs["session.id"] == attrs["langfuse.session.id"] == "c-1"
    assert attrs["langfuse.trace.name"] == "support"
