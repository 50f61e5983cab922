"""Attributes third-party trace UIs read, added to spans on their way out over OTLP.

Our spans follow the OpenTelemetry GenAI and messaging conventions. Arize
Phoenix reads OpenInference attributes and Langfuse its own ``langfuse.*``
ones where the GenAI conventions leave a gap (the span's kind in the UI, a
plain input/output panel, the session and user columns, a trace's name).
They are derived here from the GenAI attributes by :class:`TraceUIExporter`,
which wraps the OTLP exporter only: the TELEMETRY stream and the views do not
need them, so they cost no stored bytes. Which UI shows which field is in
``docs/tracing.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["TraceUIExporter", "ui_attributes"]

# gen_ai.operation.name -> (OpenInference span kind, Langfuse observation type)
_KINDS = {"chat": ("LLM", "generation"), "text_completion": ("LLM", "generation"),
          "execute_tool": ("TOOL", "tool"), "invoke_agent": ("AGENT", "agent"),
          "embeddings": ("EMBEDDING", "embedding")}
_DEFAULT_KIND = ("CHAIN", "span")  # step, process, await_approval: a unit of work that is none of the above
_JSON, _TEXT = "application/json", "text/plain"


def _loads(value: Any) -> Any:
    if not isinstance(value, str):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _text(message: Mapping[str, Any]) -> str:
    parts = message.get("parts") or []
    return "".join(str(p.get("content", "")) for p in parts if isinstance(p, dict) and p.get("type") == "text")


def _flatten_messages(prefix: str, messages: Sequence[Any], out: dict[str, Any]) -> None:
    """GenAI conventions' messages as OpenInference's flattened message attributes."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        key = f"{prefix}.{i}.message"
        parts = [p for p in (m.get("parts") or []) if isinstance(p, dict)]
        responses = [p for p in parts if p.get("type") == "tool_call_response"]
        out[f"{key}.role"] = "tool" if responses else str(m.get("role", ""))
        content = _text(m)
        if responses:
            content = content or json.dumps(responses[0].get("response"), default=str)
            out[f"{key}.tool_call_id"] = str(responses[0].get("id", ""))
        if content:
            out[f"{key}.content"] = content
        calls = [p for p in parts if p.get("type") == "tool_call"]
        for j, c in enumerate(calls):
            ck = f"{key}.tool_calls.{j}.tool_call"
            out[f"{ck}.id"] = str(c.get("id", ""))
            out[f"{ck}.function.name"] = str(c.get("name", ""))
            out[f"{ck}.function.arguments"] = json.dumps(c.get("arguments"), default=str)


def _io(out: dict[str, Any], side: str, value: Any) -> None:
    """``input.value`` / ``output.value`` (OpenInference; Langfuse reads them too)."""
    if value is None or value == "":
        return
    if isinstance(value, str):
        out[f"{side}.value"], out[f"{side}.mime_type"] = value, _TEXT
    else:
        out[f"{side}.value"], out[f"{side}.mime_type"] = json.dumps(value, default=str), _JSON


def ui_attributes(attrs: Mapping[str, Any], *, root: bool) -> dict[str, Any]:
    """The OpenInference and Langfuse attributes for a span with these
    GenAI / agentstream attributes (``root``: it has no parent)."""
    op = str(attrs.get("gen_ai.operation.name", ""))
    oi_kind, lf_type = _KINDS.get(op, _DEFAULT_KIND)
    out: dict[str, Any] = {"openinference.span.kind": oi_kind, "langfuse.observation.type": lf_type}
    session = attrs.get("gen_ai.conversation.id")
    if session:
        out["session.id"] = out["langfuse.session.id"] = str(session)
    user = attrs.get("agentstream.user_id")
    if user:
        out["user.id"] = out["langfuse.user.id"] = str(user)
    inputs = _loads(attrs.get("gen_ai.input.messages"))
    outputs = _loads(attrs.get("gen_ai.output.messages"))
    if op in ("chat", "text_completion"):
        model = attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")
        if model:
            out["llm.model_name"] = str(model)
        provider = attrs.get("gen_ai.provider.name")
        if provider:
            out["llm.provider"] = out["llm.system"] = str(provider)
        tin, tout = attrs.get("gen_ai.usage.input_tokens"), attrs.get("gen_ai.usage.output_tokens")
        if isinstance(tin, int) and isinstance(tout, int):
            out["llm.token_count.prompt"], out["llm.token_count.completion"] = tin, tout
            out["llm.token_count.total"] = tin + tout
        params = {k.rsplit(".", 1)[1]: attrs[k] for k in ("gen_ai.request.max_tokens", "gen_ai.request.temperature")
                  if k in attrs}
        if params:
            out["llm.invocation_parameters"] = json.dumps(params)
        tools = _loads(attrs.get("gen_ai.tool.definitions"))
        for i, t in enumerate(tools if isinstance(tools, list) else ()):
            if isinstance(t, dict):  # OpenInference wants the OpenAI tool schema
                fn = {"name": t.get("name"), "description": t.get("description"), "parameters": t.get("parameters")}
                out[f"llm.tools.{i}.tool.json_schema"] = json.dumps({"type": "function", "function": fn})
        if isinstance(inputs, list):
            _flatten_messages("llm.input_messages", inputs, out)
            _io(out, "input", inputs)
        if isinstance(outputs, list):
            _flatten_messages("llm.output_messages", outputs, out)
            text = "".join(_text(m) for m in outputs if isinstance(m, dict))
            _io(out, "output", text or outputs)
    elif op == "execute_tool":
        name = attrs.get("gen_ai.tool.name")
        if name:
            out["tool.name"] = str(name)
        args, result = attrs.get("gen_ai.tool.call.arguments"), attrs.get("gen_ai.tool.call.result")
        if isinstance(args, str):
            out["input.value"], out["input.mime_type"] = args, _JSON
        if isinstance(result, str):
            out["output.value"], out["output.mime_type"] = result, _JSON
    elif op == "invoke_agent":
        agent = attrs.get("gen_ai.agent.name")
        if agent:
            out["agent.name"] = str(agent)
        if isinstance(inputs, list):
            _io(out, "input", "".join(_text(m) for m in inputs if isinstance(m, dict)))
        if isinstance(outputs, list):
            _io(out, "output", "".join(_text(m) for m in outputs if isinstance(m, dict)))
    if root:
        out["langfuse.trace.name"] = str(attrs.get("gen_ai.agent.name") or op or "trace")
        for side in ("input", "output"):
            if f"{side}.value" in out:
                out[f"langfuse.trace.{side}"] = out[f"{side}.value"]
    return out


def with_ui_attributes(span: ReadableSpan) -> ReadableSpan:
    attrs = dict(span.attributes or {})
    extra = ui_attributes(attrs, root=span.parent is None)
    return ReadableSpan(span.name, span.context, span.parent, span.resource, {**extra, **attrs}, span.events,
                        span.links, span.kind, None, span.status, span.start_time, span.end_time,
                        span.instrumentation_scope)


class TraceUIExporter(SpanExporter):
    """An exporter (the OTLP one) whose spans get :func:`ui_attributes` first."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([with_ui_attributes(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
