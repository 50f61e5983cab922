"""Real model servers differ from OpenAI's API; the runtime copes, and says so
when it cannot. Each quirk is played by the loopback fake server
(tests/fake_openai.py) against the real runtime on a real nats-server:

- a server that renders tools only when the request carries ``tool_choice``;
- a server that hangs: the task's deadline bounds the model call, and the task
  fails with ``model_timeout`` (attempts and durations), not ``deadline``;
- a server that drops ``max_tokens``: the per-call timeout stops a runaway generation;
- a server that returns malformed tool calls: structured errors, no crash.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pytest
from fake_openai import (
    MADE_UP,
    FakeOpenAI,
    drops_max_tokens,
    hangs,
    ignores_tools_without_tool_choice,
    malformed_calls,
    text_reply,
    tool_calls_reply,
)
from hypothesis import given
from hypothesis import strategies as st

from agentstream import AgentClient, OpenAIChatModel, Runtime, Settings, TaskCompleted, TaskFailed
from agentstream.contracts.events import Message, ToolSpec
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.adapters.openai_model import RequestOptions, build_request_body
from agentstream.runtime.core.app import App
from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.core.ports import ModelRequest

TOOL = ToolSpec(name="lookup_order", description="Look up an order.",
                parameters={"type": "object", "properties": {"order_id": {"type": "integer"}}})
HELLO = (Message(role="user", content="where is order 42?"),)


async def _run(broker: EmbeddedNats, srv: FakeOpenAI, question: str = "where is order 42?", *,
               timeout_s: float = 60.0, deadline_s: float | None = None,
               wait: float = 20.0) -> TaskCompleted | TaskFailed:
    settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url)
    llm = OpenAIChatModel("fake-model", base_url=srv.base_url, api_key="sk-test", timeout_s=timeout_s)
    rt = Runtime.from_settings(settings, agents=["support"], tools="all", models={"support": llm})
    await rt.start()
    try:
        async with await AgentClient.connect(broker.url) as client:
            task_id = await client.submit("support", question, deadline_s=deadline_s)
            return await client.result(task_id, timeout=wait)
    finally:
        await rt.stop()


def _looks_up_then_answers(req: dict[str, Any]) -> dict[str, Any]:
    if not [m for m in req["messages"] if m["role"] == "tool"]:
        return tool_calls_reply([("lookup_order", {"order_id": 42})])
    return text_reply("Order 42 is processing.")


# --------------------------------------------------------------------------- request fields


def test_tool_choice_is_auto_whenever_tools_are_offered_and_absent_otherwise() -> None:
    body = build_request_body(ModelRequest(model="m", messages=HELLO, tools=(TOOL,)), "m")
    assert body["tool_choice"] == "auto"
    assert "parallel_tool_calls" not in body  # not sent unless configured: not every server knows it
    bare = build_request_body(ModelRequest(model="m", messages=HELLO), "m")
    assert "tool_choice" not in bare and "tools" not in bare  # OpenAI rejects tool_choice without tools


def test_an_agent_chooses_its_tool_choice_and_sampling_over_the_deployments() -> None:
    opts = RequestOptions.from_env({"AGENTSTREAM_MODEL_TOOL_CHOICE": "required", "AGENTSTREAM_MODEL_TEMPERATURE": "0.2",
                                    "AGENTSTREAM_MODEL_TOP_P": "0.9", "AGENTSTREAM_MODEL_SEED": "7",
                                    "AGENTSTREAM_MODEL_PARALLEL_TOOL_CALLS": "false"}, "http://localhost:8000/v1")
    env_only = build_request_body(ModelRequest(model="m", messages=HELLO, tools=(TOOL,), max_tokens=99), "m", opts)
    assert (env_only["tool_choice"], env_only["temperature"], env_only["top_p"], env_only["seed"],
            env_only["parallel_tool_calls"], env_only["max_tokens"]) == ("required", 0.2, 0.9, 7, False, 99)
    agent = build_request_body(ModelRequest(model="m", messages=HELLO, tools=(TOOL,), tool_choice="lookup_order",
                                            temperature=0.0, seed=1, parallel_tool_calls=True), "m", opts)
    assert agent["tool_choice"] == {"type": "function", "function": {"name": "lookup_order"}}
    assert (agent["temperature"], agent["seed"], agent["parallel_tool_calls"]) == (0.0, 1, True)


def test_the_output_cap_goes_under_the_name_the_server_reads() -> None:
    req = ModelRequest(model="m", messages=HELLO, max_tokens=50)
    openai = OpenAIChatModel.from_env({"AGENTSTREAM_MODEL": "gpt-4o-mini"})
    local = OpenAIChatModel.from_env({"AGENTSTREAM_MODEL": "qwen", "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"})
    forced = OpenAIChatModel.from_env({"AGENTSTREAM_MODEL": "qwen", "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1",
                                       "AGENTSTREAM_MODEL_MAX_TOKENS_FIELD": "max_completion_tokens"})
    assert openai is not None and local is not None and forced is not None
    assert build_request_body(req, "m", openai.options) == {"model": "m", "messages": [{"role": "user", "content":
                                                            "where is order 42?"}], "max_completion_tokens": 50}
    assert build_request_body(req, "m", local.options)["max_tokens"] == 50
    assert "max_tokens" not in build_request_body(req, "m", forced.options)


@pytest.mark.parametrize(("env", "variable"), [
    ({"AGENTSTREAM_MODEL_TOOL_CHOICE": "sometimes"}, "AGENTSTREAM_MODEL_TOOL_CHOICE"),
    ({"AGENTSTREAM_MODEL_TEMPERATURE": "warm"}, "AGENTSTREAM_MODEL_TEMPERATURE"),
    ({"AGENTSTREAM_MODEL_SEED": "1.5"}, "AGENTSTREAM_MODEL_SEED"),
    ({"AGENTSTREAM_MODEL_MAX_TOKENS_FIELD": "n_predict"}, "AGENTSTREAM_MODEL_MAX_TOKENS_FIELD"),
    ({"AGENTSTREAM_MODEL_PARALLEL_TOOL_CALLS": "maybe"}, "AGENTSTREAM_MODEL_PARALLEL_TOOL_CALLS"),
])
def test_bad_request_settings_are_one_clear_error(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        OpenAIChatModel.from_env({"AGENTSTREAM_MODEL": "m", **env})


def test_an_agent_naming_a_tool_it_does_not_have_is_refused() -> None:
    with pytest.raises(ConfigError, match="tool_choice='teleport'"):
        App().agent("a", instructions="x", tools=[], tool_choice="teleport")


# --------------------------------------------------------------------------- quirky servers


async def test_a_server_that_needs_tool_choice_still_gets_the_tools(broker: EmbeddedNats) -> None:
    async with FakeOpenAI(ignores_tools_without_tool_choice(_looks_up_then_answers)) as srv:
        res = await _run(broker, srv)
        first = srv.chat_requests[0]
    assert isinstance(res, TaskCompleted), res
    assert res.tool_calls == 1 and res.output == "Order 42 is processing." and MADE_UP not in res.output
    assert first["tool_choice"] == "auto"


async def test_a_hanging_model_is_bounded_by_the_tasks_deadline(broker: EmbeddedNats) -> None:
    async with FakeOpenAI(hangs) as srv:
        started = time.monotonic()
        res = await _run(broker, srv, timeout_s=60, deadline_s=1.5, wait=30)
        took = time.monotonic() - started
    assert isinstance(res, TaskFailed), res
    assert res.reason == "model_timeout", res  # not `deadline`: the model is what did not answer
    assert [a.outcome for a in res.model_attempts] == ["timeout"]  # the deadline left no time for a retry
    assert 1.0 <= res.model_attempts[0].duration_s < 10  # the deadline's 1.5 s, not the per-call 60 s
    assert "did not answer" in res.message and "1 attempt" in res.message
    assert took < 30  # bounded by the result wait above in any case


async def test_each_attempt_is_bounded_by_the_per_call_timeout(broker: EmbeddedNats) -> None:
    async with FakeOpenAI(hangs) as srv:
        res = await _run(broker, srv, timeout_s=0.3, deadline_s=60)
        asked = len(srv.chat_requests)
    assert isinstance(res, TaskFailed) and res.reason == "model_timeout", res
    assert asked == 3 and [a.outcome for a in res.model_attempts] == ["timeout"] * 3
    assert all(a.duration_s < 5 for a in res.model_attempts)
    assert "3 attempt(s)" in res.message and "per-call timeout 0.3s" in res.message


async def test_a_runaway_generation_is_stopped_by_the_timeout(broker: EmbeddedNats) -> None:
    # The server ignores the output cap and would take 60 s to generate.
    async with FakeOpenAI(drops_max_tokens(_looks_up_then_answers, takes_s=60)) as srv:
        res = await _run(broker, srv, timeout_s=0.5, deadline_s=60)
        first = srv.chat_requests[0]
    assert isinstance(res, TaskFailed) and res.reason == "model_timeout", res
    assert first["max_tokens"] == 1024  # the cap was asked for; the server dropped it


async def test_a_server_ignoring_the_cap_is_reported(broker: EmbeddedNats, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentstream.model")
    async with FakeOpenAI(drops_max_tokens(_looks_up_then_answers)) as srv:
        res = await _run(broker, srv)
    assert isinstance(res, TaskCompleted), res
    warned = [r.getMessage() for r in caplog.records if "ignored the output cap" in r.getMessage()]
    assert len(warned) == 1 and "max_tokens=1024, it generated 5000 tokens" in warned[0], warned


async def test_malformed_tool_calls_come_back_as_errors_and_the_task_ends(broker: EmbeddedNats) -> None:
    async with FakeOpenAI(malformed_calls) as srv:
        res = await _run(broker, srv)
        second = srv.chat_requests[1]
    assert isinstance(res, TaskCompleted) and res.output == "I could not look that up.", res
    import json

    kinds = [json.loads(m["content"])["error"]["kind"] for m in second["messages"] if m["role"] == "tool"]
    assert kinds == ["invalid_arguments", "invalid_arguments", "unknown_tool", "unknown_tool"], kinds


async def test_a_model_error_after_a_timeout_is_a_model_error(broker: EmbeddedNats) -> None:
    replies: list[Any] = [(503, {"error": {"message": "loading"}}), (400, {"error": {"message": "bad request"}})]
    async with FakeOpenAI(replies) as srv:
        res = await _run(broker, srv)
    assert isinstance(res, TaskFailed) and res.reason == "model_error", res
    assert [a.outcome for a in res.model_attempts] == ["error", "error"]


async def test_tools_offered_and_never_called_is_a_warning_metric_and_a_stats_line(
        broker: EmbeddedNats, caplog: pytest.LogCaptureFixture) -> None:
    """A model that never calls tools (it cannot see them, or cannot emit calls):
    after TOOLS_UNUSED_TURNS such turns the worker warns and counts it, and
    `stats` says so from the stored spans."""
    from agentstream.runtime.observability import views
    from agentstream.runtime.observability.instrumentation import TOOLS_UNUSED_TURNS
    from agentstream.runtime.observability.prometheus import prometheus_text

    caplog.set_level(logging.WARNING, logger="agentstream.telemetry")
    settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url)
    async with FakeOpenAI(lambda req: text_reply(MADE_UP, prompt_tokens=63)) as srv:
        llm = OpenAIChatModel("fake-model", base_url=srv.base_url)
        rt = Runtime.from_settings(settings, agents=["support"], tools="all", models={"support": llm})
        await rt.start()
        try:
            async with await AgentClient.connect(broker.url, telemetry=False) as client:
                ids = [await client.submit("support", f"is order {n} refundable?") for n in range(TOOLS_UNUSED_TURNS)]
                for task_id in ids:
                    assert isinstance(await client.result(task_id, timeout=20), TaskCompleted)
                metrics = prometheus_text()
        finally:
            await rt.stop()
    warned = [r.getMessage() for r in caplog.records if "called none" in r.getMessage()]
    assert len(warned) == 1 and "agent support" in warned[0], warned
    assert 'agentstream_tools_unused' in metrics and 'gen_ai_agent_name="support"' in metrics
    async with await AgentClient.connect(broker.url, telemetry=False) as client:
        stats, _, source = await views.load_stats(client.js, 3600)
    assert source == "telemetry" or stats.tools_unused, source
    assert stats.tools_unused == (("support", "fake-model", TOOLS_UNUSED_TURNS),)
    assert "warning: agent support: model fake-model was offered tools at the start of its last 20 tasks and called none" \
        in views.render_stats(stats)

async def test_a_model_that_calls_tools_is_not_warned_about_however_its_turns_interleave(
        caplog: pytest.LogCaptureFixture) -> None:
    """With many tasks in flight, a model that calls tools on each task's first
    turn and answers on its second produces long runs of answering turns (W1 at
    32 in flight logged the warning 21 times in 1000 tasks); only opening turns
    count, so it is never warned about. One that calls nothing is, once per
    TOOLS_UNUSED_TURNS tasks."""
    from agentstream.contracts.events import ModelResponse, ToolCall
    from agentstream.runtime.observability.instrumentation import TOOLS_UNUSED_TURNS
    from agentstream.runtime.observability.telemetry import Telemetry
    from agentstream.runtime.observability.telemetry_config import TelemetryConfig

    class Scripted:
        name = "two-turn"

        def __init__(self, calls: bool) -> None:
            self.calls = calls

        async def complete(self, request: ModelRequest) -> ModelResponse:
            opening = not any(m.role == "assistant" for m in request.messages)
            if opening and self.calls:
                return ModelResponse(tool_calls=(ToolCall(id="c1", name="t", arguments="{}"),))
            return ModelResponse(text="done")

    tool = ToolSpec(name="t", description="d", parameters={"type": "object", "properties": {}})
    opening = ModelRequest(model="m", messages=(Message(role="user", content="q"),), tools=(tool,))
    answering = ModelRequest(model="m", tools=(tool,), messages=(
        Message(role="user", content="q"), Message(role="assistant", tool_calls=(ToolCall(id="c1", name="t"),)),
        Message(role="tool", content="{}", tool_call_id="c1")))
    tel = Telemetry(TelemetryConfig(metrics=False, traces_exporters=()), worker_id="w-unused")
    caplog.set_level(logging.WARNING, logger="agentstream.telemetry")
    works = tel.wrap_llm(Scripted(calls=True), "a")
    for _ in range(32):  # the first turns of 32 tasks, then their answers, in a burst
        await works.complete(opening)
    for _ in range(3 * TOOLS_UNUSED_TURNS):
        await works.complete(answering)
    assert not [r for r in caplog.records if "called none" in r.getMessage()]
    silent = tel.wrap_llm(Scripted(calls=False), "b")
    for _ in range(TOOLS_UNUSED_TURNS):
        await silent.complete(opening)
        await silent.complete(answering)
    warned = [r.getMessage() for r in caplog.records if "called none" in r.getMessage()]
    assert len(warned) == 1 and "agent b" in warned[0], warned


_maybe_float = st.none() | st.floats(min_value=0, max_value=2, allow_nan=False)


@given(tools=st.booleans(), agent_choice=st.none() | st.sampled_from(["auto", "required", "none", "lookup_order"]),
       env_choice=st.sampled_from(["auto", "required", "none"]), parallel=st.none() | st.booleans(),
       env_parallel=st.none() | st.booleans(), cap=st.none() | st.integers(1, 10_000),
       field=st.sampled_from(["max_tokens", "max_completion_tokens"]), temperature=_maybe_float,
       env_temperature=_maybe_float, seed=st.none() | st.integers(0, 2**31))
def test_request_fields_follow_the_rules_whatever_the_settings(
        tools: bool, agent_choice: str | None, env_choice: str, parallel: bool | None, env_parallel: bool | None,
        cap: int | None, field: str, temperature: float | None, env_temperature: float | None,
        seed: int | None) -> None:
    opts = RequestOptions(tool_choice=env_choice, parallel_tool_calls=env_parallel, temperature=env_temperature,
                          max_tokens_field=field)
    req = ModelRequest(model="m", messages=HELLO, tools=(TOOL,) if tools else (), tool_choice=agent_choice,
                       parallel_tool_calls=parallel, max_tokens=cap, temperature=temperature, seed=seed)
    body = build_request_body(req, "m", opts)
    # tool_choice and parallel_tool_calls only ever travel with tools.
    assert ("tool_choice" in body) == tools
    if tools:
        choice = agent_choice or env_choice
        assert body["tool_choice"] == (choice if choice != "lookup_order"
                                       else {"type": "function", "function": {"name": "lookup_order"}})
        want_parallel = parallel if parallel is not None else env_parallel
        assert body.get("parallel_tool_calls") == want_parallel
    else:
        assert "parallel_tool_calls" not in body
    # The cap under exactly one name, the configured one.
    caps = {k for k in ("max_tokens", "max_completion_tokens") if k in body}
    assert caps == ({field} if cap is not None else set())
    # The agent's sampling wins over the deployment's; nothing is invented.
    want_t = temperature if temperature is not None else env_temperature
    assert body.get("temperature") == want_t and ("temperature" in body) == (want_t is not None)
    assert body.get("seed") == seed
