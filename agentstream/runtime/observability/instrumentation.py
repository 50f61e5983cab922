"""What the runtime's code calls to be traced: the traced ports (:class:`TracedBus`,
:class:`TracedLLM`) wrapped around the bus and the model, and the engine's hooks
(:class:`EngineHooks`: session creation, each step, the result)."""

from __future__ import annotations

import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry.trace import SpanKind

from agentstream.runtime.observability.metrics import AttributeSets, keyed
from agentstream.runtime.observability.redact import redact
from agentstream.runtime.observability.spans import _PROCESS, LiteSpan, _error_type, _json
from agentstream.runtime.observability.trace_context import (
    _CUR,
    _TASK,
    TRACEPARENT,
    Ctx,
    _current,
    _TaskInfo,
    _trace_id,
    approval_span_id,
    format_traceparent,
    parse_traceparent,
    task_span_id,
)
from agentstream.runtime.planning.protocol import turn_kind

log = logging.getLogger("agentstream.telemetry")

if TYPE_CHECKING:
    from agentstream.contracts.events import TaskCompleted, TaskFailed
    from agentstream.runtime.core.decide import Decision
    from agentstream.runtime.core.policy import ApprovalRecord
    from agentstream.runtime.core.ports import LLM, Bus, ModelRequest
    from agentstream.runtime.core.spec import AgentSpec
    from agentstream.runtime.core.state import SessionState
    from agentstream.runtime.observability.telemetry import Telemetry


def _provider_name(llm: object) -> str:
    name = getattr(llm, "provider", None)
    if isinstance(name, str) and name:
        return name
    return "openai" if type(llm).__name__ == "OpenAIChatModel" else "scripted"


class TracedBus:
    """``Bus`` that injects the current trace context into every publish, in a
    ``send <subject>`` PRODUCER span when ``AGENTSTREAM_TRACE_PUBLISH=1`` (by
    default context only: a span per publish costs more than it tells)."""

    def __init__(self, inner: Bus, tel: Telemetry) -> None:
        self.inner = inner
        self.tel = tel
        self.spans = tel.config.producer_spans

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        if not self.tel.tracing:
            await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)
            return
        hdrs = dict(headers) if headers else {}
        if not self.spans or TRACEPARENT in hdrs:  # a message that continues a span of its own (approvals)
            self.tel.inject(hdrs)
            await self.inner.publish(subject, payload, msg_id=msg_id, headers=hdrs)
            return
        sp = self.tel.producer_span(subject, hdrs, msg_id, {"messaging.message.body.size": len(payload)})
        try:
            await self.inner.publish(subject, payload, msg_id=msg_id, headers=hdrs)
        except BaseException as exc:
            sp.set_error(_error_type(exc), str(exc))
            raise
        finally:
            sp.end()


# An agent whose model was offered tools at the start of this many tasks in a
# row and called none (in any turn since) gets a warning (log and the
# agentstream.tools.unused metric): a model or chat format that cannot call
# tools answers without them, plausibly. Only a task's opening turn counts:
# with many tasks in flight, runs of twenty answering turns (after the tools)
# are ordinary, and counting them warned about models that call tools fine.
TOOLS_UNUSED_TURNS = 20


def opening_turn(request: ModelRequest) -> bool:
    """A task's first model turn: nothing has been answered yet."""
    return not any(m.role == "assistant" for m in request.messages)


class TracedLLM:
    """``LLM`` with a ``chat {model}`` CLIENT span and the GenAI metrics per call."""

    def __init__(self, inner: LLM, tel: Telemetry, agent: str) -> None:
        self.inner = inner
        self.tel = tel
        self.agent = agent
        self.name = inner.name
        self.provider = _provider_name(inner)
        self._turns_without_calls = 0  # opening turns offered tools since a model last called one
        self._attr_sets = AttributeSets()

    def _note_tool_use(self, model: str, offered: int, called: int, opening: bool) -> None:
        if not offered:
            return
        if called:
            self._turns_without_calls = 0
            return
        if not opening:
            return
        self._turns_without_calls += 1
        if self._turns_without_calls % TOOLS_UNUSED_TURNS == 0:
            log.warning("agent %s: model %s was offered tools at the start of its last %d tasks and called none; it may not "
                        "support tool calling (agentstream doctor)", self.agent, model, self._turns_without_calls)
            m = self.tel.metrics
            if m is not None:
                m.tools_unused.add(1, {"gen_ai.agent.name": self.agent, "gen_ai.request.model": model})

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    async def complete(self, request: ModelRequest) -> Any:
        tel = self.tel
        info = _TASK.get()
        sp: LiteSpan | None = None
        if tel.tracing:
            attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider,
                                     "gen_ai.request.model": request.model, "gen_ai.agent.name": self.agent}
            if request.max_tokens is not None:
                attrs["gen_ai.request.max_tokens"] = request.max_tokens
            if request.temperature is not None:
                attrs["gen_ai.request.temperature"] = request.temperature
            turn = turn_kind(request.tools, request.tool_choice)
            if turn != "react":  # plan-first: which of its two model turns this call is
                attrs["agentstream.turn"] = turn
            if info is not None:
                # The task's id, tenant and user are on its root and step spans: a
                # trace is one task, and each copy costs 30-65 bytes in TELEMETRY.
                if info.conversation:
                    attrs["gen_ai.conversation.id"] = info.conversation
            if tel.capture:
                attrs["gen_ai.input.messages"] = redact(_json(_input_messages(request)))
                if request.tools:
                    # The conventions' shape (type, name, description, parameters):
                    # UIs validate it and show a Tools section from it.
                    attrs["gen_ai.tool.definitions"] = _json([
                        {"type": "function", "name": t.name, "description": t.description,
                         "parameters": t.parameters} for t in request.tools])
            sp = tel.start_span(f"chat {request.model}", SpanKind.CLIENT, attributes=attrs).activate(foreign=True)
        t0 = time.perf_counter()
        try:
            resp = await self.inner.complete(request)
        except BaseException as exc:
            etype = _error_type(exc)
            if sp is not None:
                sp.set_error(etype, str(exc))
                sp.end()
            self._metrics(request.model, "", info, time.perf_counter() - t0, etype, None)
            raise
        opening = bool(request.tools) and opening_turn(request)  # only turns offered tools are counted
        if sp is not None:
            a = sp.attributes
            a["gen_ai.response.model"] = resp.model or request.model
            a["gen_ai.usage.input_tokens"] = resp.usage.input_tokens
            a["gen_ai.usage.output_tokens"] = resp.usage.output_tokens
            a["gen_ai.response.finish_reasons"] = (resp.finish_reason,)
            a["agentstream.cost_usd"] = resp.usage.cost_usd
            # Read by `stats`: turns offered tools and turns that called one.
            a["agentstream.tools_offered"] = len(request.tools)
            a["agentstream.tool_calls"] = len(resp.tool_calls)
            if opening:
                a["agentstream.opening_turn"] = True
            if tel.capture:
                a["gen_ai.output.messages"] = redact(_json([_output_message(resp)]))
            sp.end()
        self._metrics(request.model, resp.model, info, time.perf_counter() - t0, None, resp)
        self._note_tool_use(request.model, len(request.tools), len(resp.tool_calls), opening)
        return resp

    def _metrics(self, model: str, response_model: str, info: _TaskInfo | None, seconds: float,
                 error_type: str | None, resp: Any) -> None:
        m = self.tel.metrics
        if m is None:
            return
        tenant, user = (info.tenant, info.user) if info is not None else (None, None)
        sets = self._attr_sets.get((model, response_model, tenant, user, error_type))
        if sets is None:
            attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider,
                     "gen_ai.request.model": model, "gen_ai.agent.name": self.agent}
            if response_model:
                attrs["gen_ai.response.model"] = response_model
            if info is not None:
                attrs["agentstream.tenant_id"] = info.tenant
                attrs["agentstream.user_id"] = info.user
            if error_type is not None:
                attrs["error.type"] = error_type
            sets = self._attr_sets.put((model, response_model, tenant, user, error_type), (
                keyed(attrs), keyed({**attrs, "gen_ai.token.type": "input"}),
                keyed({**attrs, "gen_ai.token.type": "output"})))
        (attrs, key), (in_attrs, in_key), (out_attrs, out_key) = sets
        if error_type is not None:
            m.errors.add(1, attrs, key)
        m.operation_duration.record(seconds, attrs, key)
        if resp is not None:
            u = resp.usage
            m.token_usage.record(u.input_tokens, in_attrs, in_key)
            m.token_usage.record(u.output_tokens, out_attrs, out_key)
            if u.cost_usd:
                m.cost.add(u.cost_usd, attrs, key)


def _input_messages(request: ModelRequest) -> list[dict[str, Any]]:
    """The request's messages in the GenAI conventions' message shape."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        parts: list[dict[str, Any]] = []
        if m.role == "tool":
            parts.append({"type": "tool_call_response", "id": m.tool_call_id, "response": m.content})
        elif m.content:
            parts.append({"type": "text", "content": m.content})
        for c in m.tool_calls:
            parts.append({"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments})
        out.append({"role": m.role, "parts": parts})
    return out


def _output_message(resp: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if resp.text:
        parts.append({"type": "text", "content": resp.text})
    for c in resp.tool_calls:
        parts.append({"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments})
    return {"role": "assistant", "parts": parts, "finish_reason": resp.finish_reason}


# --------------------------------------------------------------------------- engine hooks


class StepScope:
    __slots__ = ("_task_token", "_span")

    def __init__(self, task_token: contextvars.Token[_TaskInfo | None], span: LiteSpan | None) -> None:
        self._task_token = task_token
        self._span = span

    def close(self, exc: BaseException | None = None) -> None:
        sp = self._span
        if sp is not None:
            if exc is not None:
                sp.set_error(_error_type(exc), str(exc))
            sp.end()
        _TASK.reset(self._task_token)


class EngineHooks:
    """What the engine calls (``AgentEngine.telemetry``): at session creation,
    around each step's effects, and when the result is published."""

    def __init__(self, tel: Telemetry, spec: AgentSpec, model: str = "") -> None:
        self.tel = tel
        self.agent = spec.name
        self.model = model
        self.step_name = f"step {spec.name}"
        self.invoke_name = f"invoke_agent {spec.name}"

    def stamp(self, decision: Decision) -> Decision:
        """Fix the task's trace context in its new session state: the id of
        its ``invoke_agent`` span (derived from the trace and task ids), and
        the id of that span's parent, empty when it is the trace's root.

        It is the root when our client started the trace (the task message's
        parent is that derived id, :meth:`Telemetry.task_context`) and when
        the task came without trace context (then the ``process`` span that
        started the trace is put under it: it is still open, so not yet
        recorded). Under a caller's own span, the task continues the
        caller's trace below the ``process`` span."""
        state = decision.state
        if not self.tel.tracing or state is None or state.trace_parent:
            return decision
        task_id = state.task.task_id
        cur = _current()
        caller = ""
        if cur is not None:
            tid, flags = cur.trace_id, cur.flags & 1
            root = task_span_id(tid, task_id)
            proc = _PROCESS.get()
            if proc is None or proc.context != cur:
                caller = cur.span_id  # driven from elsewhere (a test, an embedding): under the current span
            elif proc.parent is None:
                proc.parent = Ctx(tid, root, flags)
            elif proc.parent.span_id != root:
                caller = cur.span_id
        else:
            tid_int, tid = _trace_id()
            sampled = self.tel.sample_root(tid_int, self.invoke_name, SpanKind.INTERNAL)
            flags, root = int(sampled), task_span_id(tid, task_id)
        tp = format_traceparent(Ctx(tid, root, flags))
        new_state = msgspec.structs.replace(state, trace_parent=tp, trace_caller_span=caller)
        return msgspec.structs.replace(decision, state=new_state)

    def step(self, state: SessionState) -> StepScope:
        task = state.task
        info = _TaskInfo(self.agent, task.task_id, task.tenant_id, task.user_id, task.conversation_id)
        token = _TASK.set(info)
        sp: LiteSpan | None = None
        if self.tel.tracing:
            parent = parse_traceparent(state.trace_parent)
            if parent is not None:
                _adopt(parent)
            cur = _current()
            links = (cur,) if parent is not None and cur is not None else ()
            # The task id finds a trace still in progress (no root yet); the
            # agent, tenant, user and conversation are on the root.
            attrs: dict[str, Any] = {"agentstream.task_id": task.task_id, "agentstream.step": state.step,
                                     "agentstream.status": state.status}
            attrs.update(plan_attributes(state))
            sp = self.tel.start_span(self.step_name, SpanKind.INTERNAL, parent, attrs, links=links).activate()
        return StepScope(token, sp)

    def finished(self, state: SessionState | None, result: TaskCompleted | TaskFailed) -> None:
        """The task ended: its ``invoke_agent`` span (built with the ids kept in
        the state, from task start to result) and the task metrics."""
        reason = getattr(result, "reason", None)
        m = self.tel.metrics
        if m is not None:
            attrs = {"gen_ai.agent.name": self.agent, "agentstream.tenant_id": result.tenant_id,
                     "agentstream.user_id": result.user_id, "agentstream.outcome": "failed" if reason else "completed"}
            if reason:
                attrs["error.type"] = reason
                m.errors.add(1, attrs)
            m.task_duration.record(max(0.0, result.finished_at - result.started_at), attrs)
        if not self.tel.tracing:
            return
        stored = parse_traceparent(state.trace_parent) if state is not None else None
        u = result.usage
        attrs2: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.agent,
            "agentstream.task_id": result.task_id, "agentstream.tenant_id": result.tenant_id,
            "agentstream.user_id": result.user_id, "agentstream.steps": result.steps,
            "agentstream.tool_calls": result.tool_calls, "gen_ai.usage.input_tokens": u.input_tokens,
            "gen_ai.usage.output_tokens": u.output_tokens, "agentstream.cost_usd": u.cost_usd,
        }
        if state is not None:
            attrs2.update(plan_attributes(state))
        if result.agent_version:
            attrs2["gen_ai.agent.version"] = result.agent_version
        if self.model:
            attrs2["gen_ai.request.model"] = self.model
        if result.conversation_id:
            attrs2["gen_ai.conversation.id"] = result.conversation_id
        if self.tel.capture:
            if state is not None:
                attrs2["gen_ai.input.messages"] = redact(_json([_text_message("user", state.task.input)]))
            output = getattr(result, "output", None)
            if output is not None:
                attrs2["gen_ai.output.messages"] = redact(_json([{**_text_message("assistant", output),
                                                                  "finish_reason": "stop"}]))
        # From submit (the latency the submitter sees, queueing included) to
        # result; from the first step when the submitter's clock is ahead.
        submitted = state.task.submitted_at if state is not None else 0.0
        start = submitted if 0 < submitted <= result.started_at else result.started_at
        start_ns = int(start * 1e9)
        end_ns = int(result.finished_at * 1e9) or time.time_ns()
        if stored is not None:
            caller = state.trace_caller_span if state is not None else ""
            parent = Ctx(stored.trace_id, caller, stored.flags) if caller else None
            ctx = Ctx(stored.trace_id, stored.span_id, stored.flags)
            sp = LiteSpan(self.tel, self.invoke_name, SpanKind.INTERNAL, ctx, parent, attrs2, start_ns)
        else:  # a task started while tracing was off: no stored id, best effort
            sp = self.tel.start_span(self.invoke_name, SpanKind.INTERNAL, attributes=attrs2, start_ns=start_ns)
        # Tail keep rules: a failed or slow task keeps its root span whatever the sampler said.
        sp.keep = bool(reason) or (end_ns - start_ns) >= self.tel.config.slow_s * 1e9
        if reason:
            sp.set_error(str(reason), getattr(result, "message", ""))
        sp.end(end_ns)

    def approval_headers(self, state: SessionState, approval_id: str) -> dict[str, str]:
        """Trace context to publish an approval request with (and to keep in
        its record), so the decision, from whichever path, continues the
        approval's ``await_approval`` span (id derived from the approval id)."""
        stored = parse_traceparent(state.trace_parent) if self.tel.tracing else None
        if stored is None:
            return {}
        wait = Ctx(stored.trace_id, approval_span_id(stored.trace_id, approval_id), stored.flags)
        return {TRACEPARENT: format_traceparent(wait)}

    def approval_resolved(self, state: SessionState, record: ApprovalRecord) -> None:
        """An approval left ``pending``: its ``await_approval {tool}`` span, from
        request to decision (or expiry, or cancellation), under the task's root."""
        stored = parse_traceparent(state.trace_parent) if self.tel.tracing else None
        if stored is None or record.status == "pending":
            return
        req, dec = record.request, record.decision
        attrs: dict[str, Any] = {
            "gen_ai.tool.name": req.tool, "gen_ai.tool.call.id": req.call_id, "agentstream.task_id": req.task_id,
            "agentstream.approval.id": req.approval_id, "agentstream.approval.outcome": record.status,
            "agentstream.approval.approver": dec.approver if dec is not None else "system",
        }
        if dec is not None and dec.reason:
            attrs["agentstream.approval.reason"] = redact(dec.reason)[:500]
        ctx = Ctx(stored.trace_id, approval_span_id(stored.trace_id, req.approval_id), stored.flags)
        parent = Ctx(stored.trace_id, stored.span_id, stored.flags)
        sp = LiteSpan(self.tel, f"await_approval {req.tool}", SpanKind.INTERNAL, ctx, parent, attrs,
                      int(req.requested_at * 1e9))
        if record.status == "expired":
            sp.set_error("approval_expired", f"no decision on {req.tool} before its deadline")
        end = dec.decided_at if dec is not None and dec.decided_at >= req.requested_at else time.time()
        sp.end(int(end * 1e9))


def plan_attributes(state: SessionState) -> dict[str, Any]:
    """A plan-first or routed session's strategy on its spans: the router's
    choice, the plan's digest and attempt, what it waits for, a fallback."""
    p = state.planning
    if p is None:
        return {}
    attrs: dict[str, Any] = {"agentstream.plan.phase": p.phase, "agentstream.plan.attempt": p.attempt}
    if p.digest:
        attrs["agentstream.plan.digest"] = p.digest
    if p.route is not None:
        attrs["agentstream.route.strategy"] = p.route.strategy
        attrs["agentstream.route.score"] = round(p.route.score, 4)
    if p.fallback:
        attrs["agentstream.plan.fallback"] = p.fallback[:300]
    return attrs


def _adopt(task: Ctx) -> None:
    """A message about this task that came with no trace context (a decision
    or tool result published by a bare client) started a trace of its own in
    its ``process`` span: that span, still open, joins the task's trace
    under its root instead, so the task stays one trace with no orphans."""
    proc = _PROCESS.get()
    if proc is None or proc.parent is not None or proc.context.trace_id == task.trace_id:
        return
    ctx = Ctx(task.trace_id, proc.context.span_id, task.flags)
    if _CUR.get() == proc.context:
        _CUR.set(ctx)  # the process span's own activation token still restores what was before it
    proc.context, proc.parent = ctx, task


def _text_message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": text}]}
