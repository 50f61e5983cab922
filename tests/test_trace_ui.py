"""What trace UIs (Phoenix, Langfuse, Jaeger) are given: one trace per task
rooted at its invoke_agent span, approvals and their wait inside it, and the
attributes each UI reads. Against a real nats-server; the Phoenix test at the
end runs only where ``arize-phoenix`` is installed (it is not in the lock)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_tracing import by_name, wait_for_spans

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import ApprovalDecided, TaskCompleted
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.adapters.jetstream import MSG_ID
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import load_app
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability import views
from agentstream.runtime.observability.telemetry_config import TelemetryConfig
from agentstream.runtime.observability.trace_ui import ui_attributes
from agentstream.runtime.service.runtime import Runtime

APPS = Path(__file__).resolve().parent / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

WAIT_S = 30.0


@pytest.fixture
async def refunds(tmp_path: Path) -> AsyncIterator[tuple[Runtime, AgentClient]]:
    """The approval test app with tracing on (spans to TELEMETRY), content captured."""
    broker = await EmbeddedNats(store_dir=tmp_path / "nats").astart()
    os.environ["APPROVAL_APP_LOG"] = str(tmp_path / "tools.log")
    settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url, worker_id="agent-1")
    cfg = TelemetryConfig.from_env({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    rt = Runtime(settings=settings, app=load_app("approval_app:app"), agents=["refunds"], tools="all",
                 telemetry_config=cfg)
    await rt.start()
    assert rt.telemetry is not None
    client = await AgentClient.connect(broker.url, telemetry=rt.telemetry)
    try:
        yield rt, client
    finally:
        os.environ.pop("APPROVAL_APP_LOG", None)
        await client.close()
        await rt.stop()
        await asyncio.to_thread(broker.stop)


async def _pending(client: AgentClient, n: int) -> list[approvals.ApprovalRecord]:
    for _ in range(600):  # bounded: 30 s
        try:
            pending = await approvals.list_approvals(client)
        except approvals.ApprovalError:
            pending = []
        if len(pending) >= n:
            return pending
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} pending approvals did not appear")


async def test_approvals_and_their_wait_are_in_the_task_trace(refunds: tuple[Runtime, AgentClient]) -> None:
    """Two approvals of one task: one decided through ``approvals.decide`` (the
    CLI's and HTTP API's path), one published by a bare NATS client with no
    trace context. The task is still one trace with one root, and each wait
    is an ``await_approval`` span with its approver and outcome."""
    rt, client = refunds
    task_id = await client.submit("refunds", "two refunds please", user_id="u-9", conversation_id="conv-9")
    pending = await _pending(client, 2)
    by_order = {p.request.arguments["order_id"]: p for p in pending}
    assert all(p.trace_parent for p in pending), "the record keeps the wait span's context"
    # While it waits, the views show one tree under a stand-in root, in progress.
    assert rt.telemetry is not None and rt.js is not None
    await rt.telemetry.force_flush()
    await wait_for_spans(rt.js, lambda s: len(by_name(s, "chat")) == 1 and len(by_name(s, "step")) == 1)
    waiting = await views.load_task_trace(rt.js, task_id)
    assert waiting.source == "telemetry" and waiting.result is None
    [(depth, head), *_] = views.tree_order(waiting.spans)
    assert head.name == "invoke_agent refunds" and head.attributes["agentstream.in_progress"]
    assert [s.name for d, s in views.tree_order(waiting.spans) if d == 0] == ["invoke_agent refunds"]
    assert "in progress" in views.render_waterfall(waiting.spans)
    await approvals.decide(client, by_order[1].request.approval_id, approved=True, approver="alice")
    req = by_order[2].request
    # A decision from another approval service (with the approver role): no trace context.
    bare = ApprovalDecided(approval_id=req.approval_id, task_id=req.task_id, agent=req.agent, step=req.step,
                           call_id=req.call_id, approved=False, approver="bob", reason="too much",
                           decided_at=req.requested_at + 1, tool=req.tool,
                           arguments_digest=codec.arguments_digest(req.arguments))
    await client.js.publish(subjects.decisions(req.agent, req.task_id), codec.encode(bare),
                            headers={MSG_ID: f"{req.approval_id}:decision:bare"})
    res = await client.result(task_id, timeout=WAIT_S)
    assert isinstance(res, TaskCompleted), res
    await rt.telemetry.force_flush()
    spans = await wait_for_spans(rt.js, lambda s: len(by_name(s, "invoke_agent")) == 1
                                 and len(by_name(s, "await_approval")) == 2
                                 and len(by_name(s, "process agents.refunds.events")) >= 1
                                 and len(by_name(s, "process agents.refunds.decisions")) >= 2)

    assert len({s.trace_id for s in spans}) == 1, "no orphan traces"
    index = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_span_id not in index]
    assert [r.name for r in roots] == ["invoke_agent refunds"] and roots[0].parent_span_id == ""
    root = roots[0]
    assert root.attributes["agentstream.user_id"] == "u-9" and root.attributes["gen_ai.conversation.id"] == "conv-9"
    # Captured: the task's input and final output on the agent span.
    assert "two refunds please" in root.attributes["gen_ai.input.messages"]
    assert json.loads(root.attributes["gen_ai.output.messages"])[0]["parts"][0]["content"] == res.output

    waits = {s.attributes["agentstream.approval.id"]: s for s in by_name(spans, "await_approval issue_refund")}
    ok, denied = waits[by_order[1].request.approval_id], waits[req.approval_id]
    assert ok.parent_span_id == denied.parent_span_id == root.span_id
    assert ok.attributes["agentstream.approval.approver"] == "alice"
    assert ok.attributes["agentstream.approval.outcome"] == "approved"
    assert denied.attributes["agentstream.approval.approver"] == "bob"
    assert denied.attributes["agentstream.approval.outcome"] == "denied"
    assert ok.start == pytest.approx(by_order[1].request.requested_at, abs=1e-3)
    assert denied.end == pytest.approx(bare.decided_at, abs=1e-3)

    # Each decision's process span: under its wait span when it carried the
    # context (approvals.decide), under the root when it came without.
    decisions = by_name(spans, "process agents.refunds.decisions")
    parents = {str(s.attributes["messaging.message.id"]).split(":decision")[0]: s.parent_span_id for s in decisions}
    assert parents == {by_order[1].request.approval_id: ok.span_id, req.approval_id: root.span_id}


def test_ui_attributes_of_a_chat_span_with_content() -> None:
    """Phoenix's LLM view (messages, tools, tokens) and Langfuse's generation,
    from the GenAI conventions' attributes of a captured chat span."""
    tool = {"type": "function", "name": "lookup_order", "description": "Look up an order.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "integer"}}}}
    attrs = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024", "gen_ai.usage.input_tokens": 30,
        "gen_ai.usage.output_tokens": 12, "gen_ai.request.max_tokens": 256, "gen_ai.conversation.id": "c-1",
        "agentstream.user_id": "u-1", "gen_ai.tool.definitions": json.dumps([tool]),
        "gen_ai.input.messages": json.dumps([
            {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
            {"role": "user", "parts": [{"type": "text", "content": "Where is order 7?"}]},
            {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "lookup_order",
                                             "arguments": {"order_id": 7}}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": {"total": 42}}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "finish_reason": "stop",
                                               "parts": [{"type": "text", "content": "It ships today."}]}]),
    }
    ui = ui_attributes(attrs, root=False)
    assert ui["openinference.span.kind"] == "LLM" and ui["langfuse.observation.type"] == "generation"
    assert ui["llm.model_name"] == "gpt-4o-mini-2024" and ui["llm.provider"] == "openai"
    assert (ui["llm.token_count.prompt"], ui["llm.token_count.completion"], ui["llm.token_count.total"]) == (30, 12, 42)
    assert json.loads(ui["llm.tools.0.tool.json_schema"])["function"]["name"] == "lookup_order"
    assert ui["llm.input_messages.1.message.role"] == "user"
    assert ui["llm.input_messages.1.message.content"] == "Where is order 7?"
    assert ui["llm.input_messages.2.message.tool_calls.0.tool_call.function.name"] == "lookup_order"
    assert ui["llm.input_messages.3.message.role"] == "tool"
    assert ui["llm.output_messages.0.message.content"] == "It ships today."
    assert ui["output.value"] == "It ships today." and ui["output.mime_type"] == "text/plain"
    assert ui["input.mime_type"] == "application/json"
    assert ui["session.id"] == "c-1" and ui["user.id"] == "u-1"
    assert "langfuse.trace.name" not in ui  # only the root names the trace
    # No content captured: kinds and ids only, never an empty panel filled with guesses.
    bare = ui_attributes({"gen_ai.operation.name": "chat"}, root=False)
    assert "input.value" not in bare and "output.value" not in bare
    assert ui_attributes({}, root=False)["openinference.span.kind"] == "CHAIN"  # step, process, await_approval


# --------------------------------------------------------------------------- a real Phoenix, when installed


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Phoenix may return attributes nested ({"llm": {"token_count": ...}}) or dotted."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("phoenix") is None,
                    reason="arize-phoenix is not installed (not in the lock): pip install arize-phoenix to run")
async def test_phoenix_renders_the_task_trace(tmp_path: Path) -> None:  # pragma: no cover - needs Phoenix
    """Phoenix on free ports, the approval app's tasks exported to it over
    OTLP/HTTP, checked through Phoenix's own REST API: one trace per task and
    no orphans, root latency within 10% of the task's duration, LLM spans
    with token counts and tools, the approval wait present. Installs nothing."""
    import socket
    import subprocess
    from datetime import datetime

    import aiohttp

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PHOENIX_PORT": str(http_port), "PHOENIX_GRPC_PORT": str(grpc_port),
           "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"), "PHOENIX_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "phoenix.server.main", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{http_port}"
    project = "agentstream-test"
    broker = await EmbeddedNats(store_dir=tmp_path / "nats").astart()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for _ in range(300):  # bounded: about 60 s for Phoenix to come up
                try:
                    async with http.get(f"{base}/v1/projects") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            os.environ["APPROVAL_APP_LOG"] = str(tmp_path / "tools.log")
            cfg = TelemetryConfig.from_env({
                "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"{base}/v1/traces",
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
                "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}"})
            settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url)
            rt = Runtime(settings=settings, app=load_app("approval_app:app"), agents=["refunds"], tools="all",
                         telemetry_config=cfg)
            await rt.start()
            assert rt.telemetry is not None
            client = await AgentClient.connect(broker.url, telemetry=rt.telemetry)
            try:
                submitted = time.time()
                plain = await client.submit("refunds", "where is order 5?")
                gated = await client.submit("refunds", "please refund 150 for order 7")
                (p,) = await _pending(client, 1)
                await approvals.decide(client, p.request.approval_id, approved=True, approver="alice")
                results = {t: await client.result(t, timeout=WAIT_S) for t in (plain, gated)}
                assert rt.telemetry is not None
                await rt.telemetry.force_flush(timeout=10)
            finally:
                await client.close()
                await rt.stop()
            spans: list[dict[str, Any]] = []
            for _ in range(150):  # bounded: about 30 s for Phoenix to ingest
                async with http.get(f"{base}/v1/projects/{project}/spans", params={"limit": "1000"}) as resp:
                    spans = (await resp.json()).get("data", []) if resp.status == 200 else []
                if sum(1 for s in spans if str(s["name"]).startswith("invoke_agent")) >= 2:
                    break
                await asyncio.sleep(0.2)
    finally:
        os.environ.pop("APPROVAL_APP_LOG", None)
        proc.terminate()
        proc.wait(timeout=30)
        await asyncio.to_thread(broker.stop)

    def seconds(s: dict[str, Any], key: str) -> float:
        return datetime.fromisoformat(str(s[key]).replace("Z", "+00:00")).timestamp()

    roots = [s for s in spans if not s.get("parent_id")]
    assert sorted(str(r["name"]) for r in roots) == ["invoke_agent refunds"] * 2, "one trace per task, no orphans"
    for r in roots:
        # The root spans submit to result: the task's duration as its submitter saw it.
        res = results[str(_flat(r["attributes"])["agentstream.task_id"])]
        took = res.finished_at - submitted
        assert abs((seconds(r, "end_time") - seconds(r, "start_time")) - took) <= 0.1 * took
    llm = [_flat(s["attributes"]) for s in spans if s.get("span_kind") == "LLM"]
    assert llm and all(a.get("llm.token_count.total") for a in llm)
    assert any("llm.tools.0.tool.json_schema" in a for a in llm)
    assert any(str(s["name"]).startswith("await_approval") for s in spans)
