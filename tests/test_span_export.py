"""The built-in span exporter's wire format and context hand-off:
- a trace's spans travel in ``SpanBatch`` messages that always fit the
  server's payload limit and decode back to exactly the spans written;
- readers count a span once, however often it arrived;
- code running inside a tool (user code, other instrumentation) sees the
  ``execute_tool`` span as OpenTelemetry's current span, so its own spans
  join the task's trace under it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from test_tracing import RESULT_TIMEOUT_S, by_name, wait_for_spans

from agentstream.contracts.codec import encode
from agentstream.contracts.events import TaskCompleted
from agentstream.contracts.telemetry import SpanBatch, SpanRecord, decode_spans, span_subject
from agentstream.runtime.adapters.scan import Raw
from agentstream.runtime.adapters.scripted_models import FunctionModel, answer, calls, last_user, tool_results
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import App
from agentstream.runtime.core.ports import ModelRequest
from agentstream.runtime.core.tools import tool
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability import views
from agentstream.runtime.observability.span_export import _batches, batch_head
from agentstream.runtime.observability.telemetry import Telemetry
from agentstream.runtime.observability.telemetry_config import TelemetryConfig
from agentstream.runtime.observability.trace_context import format_traceparent, parse_traceparent, to_otel
from agentstream.runtime.service.runtime import Runtime

TRACE_IDS = [f"{i:032x}" for i in range(1, 4)]

span_records = st.builds(
    SpanRecord,
    trace_id=st.sampled_from(TRACE_IDS),
    span_id=st.integers(1, 2**64 - 1).map(lambda v: f"{v:016x}"),
    name=st.text(max_size=40),
    start=st.floats(0, 2e9),
    end=st.floats(0, 2e9),
    attributes=st.dictionaries(st.text(max_size=10), st.text(max_size=300) | st.integers(), max_size=6),
)


@settings(max_examples=200, deadline=None)
@given(recs=st.lists(span_records, max_size=40), max_bytes=st.integers(2048, 20_000))
def test_batches_fit_the_limit_and_decode_to_the_spans_written(recs: list[SpanRecord], max_bytes: int) -> None:
    encoded = [(r.trace_id, encode(r)) for r in recs if len(encode(r)) < max_bytes - 64]
    messages = _batches(encoded, max_bytes)
    back: dict[str, list[SpanRecord]] = {}
    for subject, payload, n in messages:
        assert len(payload) <= max_bytes
        spans = decode_spans(payload)
        assert len(spans) == n and n > 0
        assert {span_subject(s.trace_id) for s in spans} == {subject}
        back.setdefault(subject, []).extend(spans)
    want: dict[str, list[SpanRecord]] = {}
    for trace_id, data in encoded:
        want.setdefault(span_subject(trace_id), []).append(decode_spans(data)[0])
    assert back == want  # every span, once, in the order written, under its own trace's subject
    assert len(messages) <= len(encoded)


@settings(max_examples=25, deadline=None)
@given(recs=st.lists(span_records, min_size=1, max_size=5),
       service=st.text(max_size=12), worker=st.text(max_size=12))
def test_a_batch_says_its_process_once_and_readers_fill_it_in(recs: list[SpanRecord], service: str,
                                                             worker: str) -> None:
    """The exporter leaves service and worker out of each record and writes them
    once for the batch (~45 bytes a span); readers see every span with them."""
    bare = [msgspec.structs.replace(r, service="", worker="") for r in recs]
    encoded = [(r.trace_id, encode(r)) for r in bare]
    assert all(b'"service"' not in data and b'"worker"' not in data for _, data in encoded)
    got = [s for _, payload, _ in _batches(encoded, 1 << 20, batch_head(service, worker))
           for s in decode_spans(payload)]
    # Span ids are unique within a trace, not across traces: compare by both.
    assert sorted(got, key=lambda s: (s.trace_id, s.span_id)) == sorted(
        (msgspec.structs.replace(r, service=service, worker=worker) for r in bare),
        key=lambda s: (s.trace_id, s.span_id))
    # A record that names another process keeps its own.
    other = msgspec.structs.replace(recs[0], service="elsewhere", worker="w-2")
    [(_, payload, _)] = _batches([(other.trace_id, encode(other))], 1 << 20, batch_head(service, worker))
    assert decode_spans(payload) == [other]


def test_readers_count_a_span_once_and_accept_bare_records() -> None:
    a = SpanRecord(trace_id=TRACE_IDS[0], span_id="a" * 16, name="invoke_agent x", start=1, end=2)
    b = SpanRecord(trace_id=TRACE_IDS[0], span_id="b" * 16, name="chat m", start=1, end=2)
    raws = [Raw(1, 0.0, span_subject(a.trace_id), encode(SpanBatch(spans=[a, b]))),
            Raw(2, 0.0, span_subject(a.trace_id), encode(a)),  # a redelivered final step re-emitted it
            Raw(3, 0.0, span_subject(a.trace_id), b"not json")]
    assert sorted(s.span_id for s in views._decode_spans(raws)) == ["a" * 16, "b" * 16]


# --------------------------------------------------------------------------- context inside a tool

_seen: list[tuple[int, int]] = []
_tracer: list[Any] = []


@tool
async def probe(text: str) -> dict[str, str]:
    """Record the span current inside a tool, and open one of our own under it.

    Args:
        text: Anything.
    """
    sc = trace_api.get_current_span().get_span_context()
    _seen.append((sc.trace_id, sc.span_id))
    with _tracer[0].start_as_current_span("user db query"):
        pass
    return {"ok": text}


def _script(request: ModelRequest) -> Any:
    if tool_results(request):
        return answer("done")
    return calls(("probe", {"text": last_user(request)}))


async def test_code_inside_a_tool_continues_the_task_trace(nats_url: str, tmp_path: Path) -> None:
    app = App()
    app.agent("prober", "Probe the tracing context.", tools=[probe],
              scripted=lambda: FunctionModel(_script, name="probe-model"))
    s = dataclasses.replace(Settings.from_env({}), nats_url=nats_url, data_dir=tmp_path, worker_id="rt-probe")
    rt = Runtime(settings=s, app=app, agents=["prober"], tools="all", telemetry_config=TelemetryConfig.from_env({}))
    await rt.start()
    try:
        assert rt.telemetry is not None and rt.nc is not None
        _tracer[:] = [rt.telemetry.tracer]
        _seen.clear()
        client = AgentClient(rt.nc, telemetry=rt.telemetry)
        task_id = await client.submit("prober", "hello")
        assert isinstance(await client.result(task_id, timeout=RESULT_TIMEOUT_S), TaskCompleted)
        await rt.telemetry.force_flush()
        spans = await wait_for_spans(client.js, lambda x: bool(by_name(x, "user db query"))
                                     and bool(by_name(x, "invoke_agent")))
        messages = await client.js.stream_info("TELEMETRY", subjects_filter="telemetry.spans.*")
    finally:
        await rt.stop()
    [tool_span] = by_name(spans, "execute_tool probe")
    [user_span] = by_name(spans, "user db query")
    assert _seen == [(int(tool_span.trace_id, 16), int(tool_span.span_id, 16))]
    assert user_span.trace_id == tool_span.trace_id and user_span.parent_span_id == tool_span.span_id
    assert len({s.trace_id for s in spans}) == 1
    # Batched: the task's spans took fewer messages than there are spans.
    assert sum((messages.state.subjects or {}).values()) < len(spans)


hex_ids = st.integers(1, 2**128 - 1).map(lambda v: f"{v:032x}"), st.integers(1, 2**64 - 1).map(lambda v: f"{v:016x}")


@settings(max_examples=300, deadline=None)
@given(tid=hex_ids[0], sid=hex_ids[1], flags=st.integers(0, 255))
def test_traceparent_round_trips(tid: str, sid: str, flags: int) -> None:
    tp = f"00-{tid}-{sid}-{flags:02x}"
    ctx = parse_traceparent(tp)
    assert ctx is not None and (ctx.trace_id, ctx.span_id, ctx.flags) == (tid, sid, flags)
    assert format_traceparent(ctx) == tp
    assert to_otel(ctx).trace_id == int(tid, 16) and to_otel(ctx).span_id == int(sid, 16)


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=80) | st.from_regex(r"[0-9a-fA-F-]{50,60}", fullmatch=True))
def test_any_traceparent_header_parses_or_is_ignored(value: str) -> None:
    ctx = parse_traceparent(value)
    if ctx is not None:  # only well-formed lowercase hex with non-zero ids gets through
        assert len(ctx.trace_id) == 32 and len(ctx.span_id) == 16 and int(ctx.trace_id, 16) and int(ctx.span_id, 16)


def test_span_batches_validate_against_the_published_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from agentstream.contracts.schema import json_schema

    rec = SpanRecord(trace_id=TRACE_IDS[0], span_id="c" * 16, name="chat m", start=1.0, end=2.0,
                     attributes={"gen_ai.usage.input_tokens": 3}, links=[{"trace_id": TRACE_IDS[1], "span_id": "d" * 16}])
    validator = jsonschema.Draft202012Validator(json_schema())
    for msg in (SpanBatch(spans=[rec, rec]), rec):
        validator.validate(json.loads(encode(msg)))


async def test_spans_reach_sdk_exporters_with_ids_parents_links_and_status() -> None:
    """With an OTLP or console exporter configured, lite spans go through the
    SDK's processors as ReadableSpans: ids, remote parent, tracestate, links,
    kind and error status must survive the conversion."""
    mem = InMemorySpanExporter()
    tel = Telemetry(TelemetryConfig(metrics=False), span_exporters=[mem])
    tid, sid = TRACE_IDS[2], "e" * 16
    parent = parse_traceparent(f"00-{tid}-{sid}-01", "vendor=x")
    assert parent is not None
    sp = tel.start_span("process x", SpanKind.CONSUMER, parent, {"a": 1}, use_current=False, links=[parent]).activate()
    child = tel.start_span("chat m", SpanKind.CLIENT, attributes={"b": 2})
    child.set_error("timeout", "took too long")
    child.end()
    sp.end()
    await tel.shutdown()
    spans = {s.name: s for s in mem.get_finished_spans()}
    p, c = spans["process x"], spans["chat m"]
    assert p.context is not None and c.context is not None and p.parent is not None and c.parent is not None
    assert f"{p.context.trace_id:032x}" == tid and f"{p.parent.span_id:016x}" == sid and p.parent.is_remote
    assert p.context.trace_state.get("vendor") == "x" and p.kind is SpanKind.CONSUMER
    assert [f"{lk.context.span_id:016x}" for lk in p.links] == [sid]
    assert c.parent.span_id == p.context.span_id and c.context.trace_id == p.context.trace_id
    assert c.status.status_code is StatusCode.ERROR and c.status.description == "took too long"
    assert c.attributes is not None and c.attributes["error.type"] == "timeout" and c.kind is SpanKind.CLIENT
    assert p.status.status_code is StatusCode.UNSET
