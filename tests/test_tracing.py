"""Tracing, metrics and logs (agentstream.runtime.observability.telemetry).

- one trace per task across three worker processes and the client, read back
  from the TELEMETRY stream, with correct parent links and GenAI attributes;
- redaction end to end: hypothesis-generated PII in prompts and tool
  arguments never reaches an exported span or a log line (capture on), and no
  prompt content is exported at all with capture off;
- exporter selection from OTEL_* variables, the Prometheus text, JSON logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from conftest import SpawnWorker, WorkerPool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from test_redact import text_with_pii

from agentstream.contracts.events import TaskCompleted
from agentstream.contracts.telemetry import SpanRecord, decode_spans
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.adapters.scripted_models import FunctionModel, answer, calls, last_user, tool_results
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import App
from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.core.ports import ModelRequest
from agentstream.runtime.core.tools import tool
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability.logs import JsonLogFormatter, RedactingFormatter
from agentstream.runtime.observability.metrics import SERIES_LIMIT, _Metrics, build_metric_readers
from agentstream.runtime.observability.prometheus import LiteMetricsCollector, exposition, prometheus_text
from agentstream.runtime.observability.redact import redact
from agentstream.runtime.observability.span_export import JetStreamSpanExporter, build_span_exporters
from agentstream.runtime.observability.spans import LiteSpan
from agentstream.runtime.observability.telemetry import Telemetry
from agentstream.runtime.observability.telemetry_config import TelemetryConfig
from agentstream.runtime.observability.trace_context import format_traceparent, parse_traceparent
from agentstream.runtime.service.runtime import Runtime

RESULT_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- helpers


async def read_spans(js: JetStreamContext, subject: str = "telemetry.spans.*") -> list[SpanRecord]:
    """Every span stored on ``subject`` in the TELEMETRY stream, now (duplicates kept)."""
    info = await js.stream_info("TELEMETRY", subjects_filter=subject)
    n = sum((info.state.subjects or {}).values())
    if not n:
        return []
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    out: list[SpanRecord] = []
    try:
        for _ in range(n):
            msg = await sub.next_msg(timeout=5)
            out.extend(decode_spans(msg.data))
    finally:
        await sub.unsubscribe()
    return out


async def wait_for_spans(js: JetStreamContext, pred: Any, timeout: float = 20.0,
                         subject: str = "telemetry.spans.*") -> list[SpanRecord]:
    deadline = time.monotonic() + timeout
    spans: list[SpanRecord] = []
    while time.monotonic() < deadline:
        spans = await read_spans(js, subject)
        if pred(spans):
            return spans
        await asyncio.sleep(0.2)
    raise AssertionError(f"spans incomplete after {timeout:g}s: {sorted(s.name for s in spans)}")


def by_name(spans: list[SpanRecord], prefix: str) -> list[SpanRecord]:
    return [s for s in spans if s.name.startswith(prefix)]


def ancestors(span: SpanRecord, index: dict[str, SpanRecord]) -> Iterator[SpanRecord]:
    seen = set()
    cur = index.get(span.parent_span_id)
    while cur is not None and cur.span_id not in seen:
        seen.add(cur.span_id)
        yield cur
        cur = index.get(cur.parent_span_id)


# --------------------------------------------------------------------------- one trace across processes


REFUND = "I want a refund for order 17, and where is it now?"
TOOLS_A = "lookup_order,shipping_status"
TOOLS_B = "refund_eligibility,customer_profile,search_kb,create_ticket,store_hours"


@pytest.mark.slow
async def test_one_trace_across_three_processes(nats_url: str, worker_pool: WorkerPool,
                                                spawn_worker: SpawnWorker) -> None:
    base = {"AGENTSTREAM_NATS_URL": nats_url}
    procs = [spawn_worker(args, {**base, "AGENTSTREAM_WORKER_ID": wid}, wait=False) for args, wid in [
        (["--agent", "support"], "agent-1"), (["--tools", TOOLS_A], "tools-a"), (["--tools", TOOLS_B], "tools-b")]]
    for proc in procs:
        worker_pool.wait_ready(proc)

    async with await AgentClient.connect(nats_url) as client:
        assert client.telemetry is not None and client.telemetry.tracing
        task_id = await client.submit("support", REFUND, tenant_id="acme", user_id="u-7", conversation_id="c-1")
        res = await client.result(task_id, timeout=RESULT_TIMEOUT_S)
        assert isinstance(res, TaskCompleted), res
        assert res.tool_calls == 3 and res.steps == 2
        await client.telemetry.force_flush()

        # The trace id is kept in the task's session state (what `trace` views use).
        entry = await (await client.js.key_value("agent_sessions")).get(task_id)
        assert entry.value is not None
        trace_parent = msgspec.json.decode(entry.value)["trace_parent"]
        trace_id = trace_parent.split("-")[1]

        def complete(spans: list[SpanRecord]) -> bool:
            return (len(by_name(spans, "invoke_agent")) == 1 and len(by_name(spans, "execute_tool")) == 3
                    and len(by_name(spans, "chat")) == 2 and len(by_name(spans, "process")) == 7
                    and len(by_name(spans, "step")) == 2)

        spans = await wait_for_spans(client.js, complete, subject=f"telemetry.spans.{trace_id}")
        # Nothing of this task went to another trace.
        info = await client.js.stream_info("TELEMETRY", subjects_filter="telemetry.spans.*")
        assert list((info.state.subjects or {}).keys()) == [f"telemetry.spans.{trace_id}"]

    assert {s.trace_id for s in spans} == {trace_id}
    index = {s.span_id: s for s in spans}
    assert len(index) == len(spans), "duplicate span ids"
    roots = [s for s in spans if s.parent_span_id not in index]
    assert len(roots) == 1 and roots[0].parent_span_id == "", [(s.name, s.parent_span_id) for s in roots]
    # The root is the task's invoke_agent span: a trace list shows the agent and
    # the task's duration, submit to result. The client sends no span of its own.
    root = roots[0]
    assert root.name == "invoke_agent support" and root.worker == "agent-1"

    workers = {s.worker for s in spans}
    assert workers == {"agent-1", "tools-a", "tools-b"}, workers  # the client records no span
    assert all(s.service == "agentstream" for s in spans)

    # invoke_agent covers the task, on the agent worker, parent of the task's process span.
    [inv] = by_name(spans, "invoke_agent support")
    assert index[next(p.span_id for p in by_name(spans, "process agents.support.tasks"))].parent_span_id \
        == inv.span_id
    assert inv.span_id == trace_parent.split("-")[2]
    assert res.started_at - 5 < inv.start <= res.started_at and inv.end == pytest.approx(res.finished_at, abs=1e-3)
    assert all(inv.start <= s.start for s in spans), "the root starts first"
    a = inv.attributes
    assert a["gen_ai.operation.name"] == "invoke_agent" and a["gen_ai.agent.name"] == "support"
    assert a["gen_ai.usage.input_tokens"] == res.usage.input_tokens
    assert a["gen_ai.usage.output_tokens"] == res.usage.output_tokens
    assert a["agentstream.tenant_id"] == "acme" and a["agentstream.user_id"] == "u-7"
    assert a["gen_ai.conversation.id"] == "c-1" and a["agentstream.task_id"] == task_id

    # Steps are children of invoke_agent; chats are children of a step.
    steps = by_name(spans, "step support")
    assert all(s.parent_span_id == inv.span_id and s.worker == "agent-1" for s in steps)
    assert all(s.links for s in steps), "a step links to the process span of its message"
    chats = by_name(spans, "chat")
    for c in chats:
        assert index[c.parent_span_id].name == "step support"
        assert c.kind == "client" and c.name == "chat scripted-support"
        ca = c.attributes
        assert ca["gen_ai.operation.name"] == "chat" and ca["gen_ai.provider.name"] == "scripted"
        assert ca["gen_ai.request.model"] == ca["gen_ai.response.model"] == "scripted-support"
        assert ca["gen_ai.agent.name"] == "support" and ca["gen_ai.conversation.id"] == "c-1"
        assert "agentstream.user_id" not in ca  # the task's tenant and user are on its root only
        assert "agentstream.cost_usd" in ca and "gen_ai.input.messages" not in ca  # capture is off
    assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == res.usage.input_tokens
    assert sum(c.attributes["gen_ai.usage.output_tokens"] for c in chats) == res.usage.output_tokens
    assert sorted(tuple(c.attributes["gen_ai.response.finish_reasons"]) for c in chats) == [("stop",), ("tool_calls",)]
    [tool_turn] = [c for c in chats if list(c.attributes["gen_ai.response.finish_reasons"]) == ["tool_calls"]]
    dispatching_step = index[tool_turn.parent_span_id]

    # Tool spans descend from the step that published the calls, on the worker serving the tool.
    tools = by_name(spans, "execute_tool")
    where = {"lookup_order": "tools-a", "shipping_status": "tools-a", "refund_eligibility": "tools-b"}
    assert {t.attributes["gen_ai.tool.name"] for t in tools} == set(where)
    for t in tools:
        name = t.attributes["gen_ai.tool.name"]
        assert t.worker == where[name] and t.name == f"execute_tool {name}"
        assert t.attributes["gen_ai.operation.name"] == "execute_tool" and t.attributes["gen_ai.tool.call.id"]
        assert "gen_ai.tool.call.arguments" not in t.attributes
        process = index[t.parent_span_id]
        assert process.name == f"process tools.{name}.calls" and process.kind == "consumer"
        assert dispatching_step.span_id in {x.span_id for x in ancestors(t, index)}

    # Messaging conventions on the consumer spans.
    for p in by_name(spans, "process"):
        pa = p.attributes
        assert pa["messaging.system"] == "nats" and pa["messaging.operation.type"] == "process"
        assert pa["messaging.destination.name"] and pa["messaging.message.id"]
    inbox = by_name(spans, "process agents.support.events.*")
    assert len(inbox) == 3 and all(p.worker == "agent-1" for p in inbox)
    assert {index[p.parent_span_id].worker for p in inbox} == {"tools-a", "tools-b"}


# --------------------------------------------------------------------------- redaction end to end

MARKER = "zqxwvmarker"
log_echo = logging.getLogger("agentstream.tests.echo")


@tool
async def echo(text: str) -> dict[str, str]:
    """Echo the text back.

    Args:
        text: Anything.
    """
    log_echo.warning("echo tool got: %s", text)
    return {"echo": text}


def _echo_script(request: ModelRequest) -> Any:
    if tool_results(request):
        return answer("done")
    return calls(("echo", {"text": last_user(request)}))


def _echo_app() -> App:
    app = App()
    app.agent("echo", "Echo what the user says with the echo tool.", tools=[echo],
              scripted=lambda: FunctionModel(_echo_script, name="echo-model"))
    return app


def _echo_runtime(url: str, tmp: Path, worker_id: str, env: dict[str, str] | None = None) -> Runtime:
    """A runtime serving the echo agent and its tool, telemetry configured from ``env``."""
    s = dataclasses.replace(Settings.from_env({}), nats_url=url, data_dir=tmp, worker_id=worker_id)
    return Runtime(settings=s, app=_echo_app(), agents=["echo"], tools="all",
                   telemetry_config=TelemetryConfig.from_env(env or {}))


async def _run_prompts(tmp: Path, prompts: list[str], capture: bool) -> tuple[list[SpanRecord], str]:
    """Run ``prompts`` through the echo agent on a broker of their own (a runtime
    restarted on the same durables can leave a task waiting, see the report)."""
    broker = EmbeddedNats(store_dir=tmp / f"nats-{uuid.uuid4().hex[:8]}")
    await broker.astart()
    try:
        return await _run_prompts_on(broker.url, tmp, prompts, capture)
    finally:
        await asyncio.to_thread(broker.stop)


async def _run_prompts_on(url: str, tmp: Path, prompts: list[str], capture: bool) -> tuple[list[SpanRecord], str]:
    env = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true" if capture else "false"}
    rt = _echo_runtime(url, tmp, "rt-echo", env)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonLogFormatter(worker="rt-echo"))
    log_echo.addHandler(handler)
    log_echo.propagate = False
    await rt.start()
    try:
        assert rt.telemetry is not None and rt.nc is not None
        client = AgentClient(rt.nc, telemetry=rt.telemetry)  # shares the runtime's connection and pipeline
        ids = [await client.submit("echo", p) for p in prompts]
        for i in ids:
            res = await client.result(i, timeout=RESULT_TIMEOUT_S)
            assert isinstance(res, TaskCompleted), res
        await rt.telemetry.force_flush()
        assert rt.js is not None
        expected = 6 * len(prompts)  # send, process x3, step x2, chat x2, execute_tool, invoke_agent: >= 6 each
        spans = await wait_for_spans(rt.js, lambda s: len(by_name(s, "invoke_agent")) >= len(prompts)
                                     and len(s) >= expected)
    finally:
        log_echo.removeHandler(handler)
        log_echo.propagate = True
        await rt.stop()
    return spans, buf.getvalue()


def _all_strings(spans: list[SpanRecord]) -> list[str]:
    out: list[str] = []
    for s in spans:
        out.append(s.name)
        for k, v in s.attributes.items():
            out.append(k)
            out.append(v if isinstance(v, str) else msgspec.json.encode(v).decode())
    return out


prompt_samples = st.lists(text_with_pii(), min_size=3, max_size=3)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(samples=prompt_samples)
def test_capture_on_exports_content_but_never_pii(tmp_path: Path, samples: list[tuple[str, list[str]]]) -> None:
    prompts = [f"{MARKER} {text}" for text, _ in samples]
    secrets = [s for _, ss in samples for s in ss]
    spans, logs = asyncio.run(_run_prompts(tmp_path, prompts, capture=True))
    strings = _all_strings(spans)
    blob = "\n".join(strings)
    for s in secrets:
        assert re.fullmatch(r"\[REDACTED:\w+\]", redact(s)), (s, redact(s))  # the whole value, one tag
        assert s not in blob, s
        assert s not in logs, s
    # Capture really was on: prompts and tool arguments are there, redacted.
    assert MARKER in blob and "[REDACTED:" in blob
    chats = by_name(spans, "chat")
    assert chats and all("gen_ai.input.messages" in c.attributes for c in chats)
    assert all("gen_ai.tool.call.arguments" in t.attributes for t in by_name(spans, "execute_tool"))
    # Logs: JSON lines with the trace context, redacted.
    lines = [msgspec.json.decode(x) for x in logs.splitlines() if x.strip()]
    assert len(lines) >= len(prompts)
    assert all(line["trace_id"] and line["span_id"] and MARKER in line["message"] for line in lines)
    assert any("[REDACTED:" in line["message"] for line in lines)


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(samples=prompt_samples)
def test_capture_off_exports_no_content(tmp_path: Path, samples: list[tuple[str, list[str]]]) -> None:
    prompts = [f"{MARKER} {text}" for text, _ in samples]
    spans, _ = asyncio.run(_run_prompts(tmp_path, prompts, capture=False))
    blob = "\n".join(_all_strings(spans))
    assert MARKER not in blob
    content_keys = {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments",
                    "gen_ai.tool.call.result"}
    assert not any(content_keys & s.attributes.keys() for s in spans)
    assert by_name(spans, "chat") and by_name(spans, "execute_tool")


# --------------------------------------------------------------------------- a bare publish, and tracing off


async def test_bare_publish_starts_a_trace_at_the_consumer(nats_url: str, tmp_path: Path) -> None:
    """A task from any NATS client (no traceparent) is still one trace, rooted
    at the task's invoke_agent span, over the process span that started it."""
    rt = _echo_runtime(nats_url, tmp_path, "rt-bare")
    await rt.start()
    try:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.publish("agents.echo.tasks", b'{"type":"agentstream.task.submitted.v1","task_id":"bare-1",'
                                              b'"agent":"echo","input":"hello"}')
        client = AgentClient(nc)
        assert client.telemetry is None
        res = await client.result("bare-1", timeout=RESULT_TIMEOUT_S)
        assert isinstance(res, TaskCompleted)
        assert rt.telemetry is not None
        await rt.telemetry.force_flush()
        spans = await wait_for_spans(js, lambda x: len(by_name(x, "invoke_agent")) == 1 and len(x) >= 8)
        await nc.close()
    finally:
        await rt.stop()
    assert len({x.trace_id for x in spans}) == 1
    index = {x.span_id: x for x in spans}
    roots = [x for x in spans if x.parent_span_id not in index]
    assert [r.name for r in roots] == ["invoke_agent echo"] and roots[0].parent_span_id == ""
    [proc] = by_name(spans, "process agents.echo.tasks")
    assert proc.parent_span_id == roots[0].span_id


async def test_tracing_off_wraps_nothing(nats_url: str, tmp_path: Path) -> None:
    rt = _echo_runtime(nats_url, tmp_path, "rt-off", {"AGENTSTREAM_TRACING": "0", "OTEL_METRICS_EXPORTER": "none"})
    await rt.start()
    try:
        assert rt.telemetry is not None and not rt.telemetry.active
        engine = rt.engines["echo"]
        assert engine.telemetry is None and isinstance(engine.llm, FunctionModel)
        assert type(engine.bus).__name__ == "NatsBus"
        assert all(len(c.s.middlewares) == 0 for c in rt.consumers)
        assert not getattr(rt.runners[0], "_agentstream_instrumented", False)
        assert rt.nc is not None
        client = AgentClient(rt.nc, telemetry=None)
        tid = await client.submit("echo", "hi")
        assert isinstance(await client.result(tid, timeout=RESULT_TIMEOUT_S), TaskCompleted)
        assert rt.js is not None
        await rt.telemetry.force_flush()  # any span leaked despite tracing off would now be stored
        assert await read_spans(rt.js) == []
    finally:
        await rt.stop()


# --------------------------------------------------------------------------- configuration and exporters


def _exporters(env: dict[str, str], nc: Any = None) -> list[Any]:
    loop = asyncio.new_event_loop()
    try:
        return build_span_exporters(TelemetryConfig.from_env(env), nc=nc, loop=loop)
    finally:
        loop.close()


def test_exporter_selection_from_env() -> None:
    fake_nc = object()
    assert [type(e) for e in _exporters({}, fake_nc)] == [JetStreamSpanExporter]  # the default
    assert _exporters({}, None) == []  # jetstream needs a connection
    assert _exporters({"OTEL_TRACES_EXPORTER": "none"}, fake_nc) == []
    assert [type(e) for e in _exporters({"OTEL_TRACES_EXPORTER": "console"})] == [ConsoleSpanExporter]
    grpc = [e.inner for e in _exporters({"OTEL_TRACES_EXPORTER": "otlp",
                                          "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})]
    assert [type(e) for e in grpc] == [GrpcSpanExporter]
    http = [e.inner for e in _exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                          "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})]
    assert [type(e) for e in http] == [HttpSpanExporter]
    assert http[0]._endpoint == "http://collector:4318/v1/traces"
    both = _exporters({"OTEL_TRACES_EXPORTER": "jetstream,console"}, fake_nc)
    assert [type(e) for e in both] == [JetStreamSpanExporter, ConsoleSpanExporter]
    for e in grpc + http:
        e.shutdown()


def test_metric_readers_from_env() -> None:
    pull, push = build_metric_readers(TelemetryConfig.from_env({}))
    assert isinstance(pull, InMemoryMetricReader) and push == []
    _, push = build_metric_readers(TelemetryConfig.from_env({"OTEL_METRICS_EXPORTER": "prometheus,console"}))
    assert [type(r) for r in push] == [PeriodicExportingMetricReader]
    for r in push:
        r.shutdown()
    assert not TelemetryConfig.from_env({"OTEL_METRICS_EXPORTER": "none"}).metrics


def test_config_from_env() -> None:
    c = TelemetryConfig.from_env({})
    assert c.tracing and c.metrics and not c.capture_content and c.service_name == "agentstream"
    assert c.traces_exporters == ("jetstream",) and c.log_format == "text"
    c = TelemetryConfig.from_env({"AGENTSTREAM_TRACING": "0", "OTEL_SERVICE_NAME": "desk",
                                    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "True",
                                    "AGENTSTREAM_LOG_FORMAT": "json"})
    assert not c.tracing and c.service_name == "desk" and c.capture_content and c.log_format == "json"
    assert not TelemetryConfig.from_env({"OTEL_SDK_DISABLED": "true"}).tracing
    for bad in ({"OTEL_TRACES_EXPORTER": "zipkin"}, {"OTEL_METRICS_EXPORTER": "statsd"},
                {"AGENTSTREAM_TRACING": "maybe"}, {"AGENTSTREAM_LOG_FORMAT": "xml"},
                {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}):
        with pytest.raises(ConfigError):
            TelemetryConfig.from_env(bad)


def test_traceparent_round_trip() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = parse_traceparent(tp)
    assert ctx is not None and ctx.sampled
    assert format_traceparent(ctx) == tp
    for bad in ("", "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "zz-" + tp[3:],
                "00-00000000000000000000000000000000-b7ad6b7169203331-01", tp[:-3], "ff" + tp[2:]):
        assert parse_traceparent(bad) is None, bad


# --------------------------------------------------------------------------- metrics text, logs


def test_prometheus_exposition_of_the_in_process_metrics() -> None:
    m = _Metrics(TelemetryConfig(metrics_exporters=("prometheus",)), Resource.create({}))
    m.errors.add(2, {"error.type": 'time"out', "gen_ai.tool.name": "x"})
    m.errors.add(1, {"gen_ai.tool.name": "x", "error.type": 'time"out'})  # same series, other order
    m.cost.add(0.25, {"gen_ai.agent.name": "support", "otel.metric.overflow": True})
    m.tool_duration.record(0.005, {"gen_ai.tool.name": "x"})
    m.tool_duration.record(0.015, {"gen_ai.tool.name": "x"})
    m.operation_duration.record(0.5, {"gen_ai.response.finish_reasons": ("stop", "length")})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiteMetricsCollector(m))
    text = generate_latest(registry).decode()
    assert "# TYPE agentstream_errors_total counter" in text
    assert 'agentstream_errors_total{error_type="time\\"out",gen_ai_tool_name="x"} 3.0' in text
    assert 'agentstream_cost_usd_total{gen_ai_agent_name="support",otel_metric_overflow="true"} 0.25' in text
    assert "# TYPE agentstream_tool_duration_seconds histogram" in text
    assert 'agentstream_tool_duration_seconds_bucket{gen_ai_tool_name="x",le="0.01"} 1.0' in text
    assert 'agentstream_tool_duration_seconds_bucket{gen_ai_tool_name="x",le="0.02"} 2.0' in text
    assert 'agentstream_tool_duration_seconds_bucket{gen_ai_tool_name="x",le="+Inf"} 2.0' in text
    assert 'agentstream_tool_duration_seconds_count{gen_ai_tool_name="x"} 2.0' in text
    assert 'gen_ai_response_finish_reasons="stop,length"' in text
    # What a Prometheus scrape asking for OpenMetrics gets.
    body, ctype = exposition("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


async def test_prometheus_text_after_a_task(nats_url: str, tmp_path: Path) -> None:
    rt = _echo_runtime(nats_url, tmp_path, "rt-prom")
    await rt.start()
    try:
        assert rt.nc is not None
        client = AgentClient(rt.nc)
        tid = await client.submit("echo", "count me", tenant_id="t-prom", user_id="u-prom")
        assert isinstance(await client.result(tid, timeout=RESULT_TIMEOUT_S), TaskCompleted)
    finally:
        await rt.stop()
    text = prometheus_text()
    for name in ("gen_ai_client_operation_duration_seconds_bucket", "gen_ai_client_token_usage_bucket",
                 "agentstream_task_duration_seconds_count", "agentstream_tool_duration_seconds_count"):
        assert any(line.startswith(name) and 'agentstream_tenant_id="t-prom"' in line
                   for line in text.splitlines()), name
    assert 'gen_ai_token_type="input"' in text and 'gen_ai_token_type="output"' in text


def test_json_log_lines_carry_trace_context_and_are_redacted() -> None:
    tel = Telemetry(TelemetryConfig(metrics=False, traces_exporters=()), worker_id="w-log")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonLogFormatter(worker="w-log"))
    lg = logging.getLogger("agentstream.tests.jsonlog")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        with tel.span("work") as sp:
            lg.warning("mail %s about card %s", "jane@example.com", "4111 1111 1111 1111")
        lg.warning("outside")
    finally:
        lg.removeHandler(handler)
        lg.propagate = True
    first, second = (msgspec.json.decode(x) for x in buf.getvalue().splitlines())
    assert isinstance(sp, LiteSpan)
    assert first["trace_id"] == sp.context.trace_id and first["span_id"] == sp.context.span_id
    assert first["message"] == "mail [REDACTED:email] about card [REDACTED:card]"
    assert first["level"] == "WARNING" and first["worker"] == "w-log"
    assert "trace_id" not in second


def test_text_logs_are_redacted() -> None:
    fmt = RedactingFormatter("%(levelname)s %(message)s")
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "key %s", ("sk-abcdefghijklmnopqrstu",), None)
    assert fmt.format(rec) == "WARNING key [REDACTED:api_key]"
    try:
        raise ValueError("bad card 4111 1111 1111 1111")
    except ValueError:
        exc_rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = fmt.format(exc_rec)
    assert out.startswith("ERROR failed\n") and "ValueError: bad card [REDACTED:card]" in out
    assert "4111 1111" not in out


def test_metric_series_per_instrument_are_capped_with_an_overflow_series() -> None:
    """Metrics carry user ids: past the cap, new users share one overflow series
    (the OpenTelemetry SDK's rule), so a worker's memory does not grow with its
    users, and no record is lost from the totals."""
    m = _Metrics(TelemetryConfig(), Resource.create({}))  # its own instruments, not the process's
    hist, count = m.task_duration, m.errors
    users = SERIES_LIMIT + 50
    for i in range(users):
        hist.record(0.01, {"agentstream.user_id": f"u-{i}"})
        count.add(1, {"agentstream.user_id": f"u-{i}"})
    hist.record(0.2, {"agentstream.user_id": "u-0"})  # an existing series still gets its own records
    for inst in (hist, count):
        points = dict(inst.points())
        assert len(points) == SERIES_LIMIT + 1
        overflow = points[(("otel.metric.overflow", True),)]
        assert (overflow[1] if inst is hist else overflow) == 50
    hp = dict(hist.points())
    assert hp[(("agentstream.user_id", "u-0"),)][1] == 2
    assert sum(v[1] for v in hp.values()) == users + 1
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiteMetricsCollector(m))
    assert 'agentstream_errors_total{otel_metric_overflow="true"} 50.0' in generate_latest(registry).decode()


def test_error_kind_of_a_model_failure_is_its_http_status_or_invalid_response() -> None:
    """`agentstream stats` groups errors by this kind: an unreadable 200 body is
    the model's invalid response, not an error kind called "200"."""
    from agentstream.runtime.core.errors import ModelError
    from agentstream.runtime.observability.spans import _error_type

    assert _error_type(ModelError("rate limited", status=429, transient=True)) == "429"
    assert _error_type(ModelError("unreadable body", status=200)) == "invalid_response"
    assert _error_type(ModelError("timed out", transient=True)) == "model_unavailable"
