"""OpenAIChatModel against a real loopback HTTP server speaking the OpenAI API."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_openai import HANG, FakeOpenAI, Reply, completion, text_reply, tool_calls_reply

from agentstream.contracts.events import Message, ToolCall, ToolSpec, Usage
from agentstream.runtime.adapters.openai_model import OpenAIChatModel, complete_with_retry
from agentstream.runtime.core.errors import ConfigError, ModelError
from agentstream.runtime.core.ports import ModelRequest

TIMEOUT = 10.0

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def ask(text: str = "hello", **kw: Any) -> ModelRequest:
    return ModelRequest(model="fake-model", messages=(Message(role="user", content=text),), **kw)


@pytest.fixture
async def model_factory() -> AsyncIterator[Any]:
    made: list[OpenAIChatModel] = []

    def make(base_url: str, **kw: Any) -> OpenAIChatModel:
        kw.setdefault("timeout_s", TIMEOUT)
        m = OpenAIChatModel("fake-model", base_url=base_url, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.close()


async def complete(model: OpenAIChatModel, request: ModelRequest) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await model.complete(request)


async def expect_error(model: OpenAIChatModel, request: ModelRequest) -> ModelError:
    with pytest.raises(ModelError) as info:
        await complete(model, request)
    return info.value


# --------------------------------------------------------------------------- happy paths


async def test_plain_text_answer_with_usage(model_factory: Any) -> None:
    async with FakeOpenAI([text_reply("Hi there.", prompt_tokens=12, completion_tokens=3)]) as srv:
        model = model_factory(srv.base_url)
        resp = await complete(model, ask("hello", max_tokens=50, temperature=0.2))

    assert resp.text == "Hi there."
    assert resp.tool_calls == ()
    assert resp.finish_reason == "stop"
    assert resp.model == "fake-model"
    assert resp.usage == Usage(input_tokens=12, output_tokens=3)

    (sent,) = srv.chat_requests
    assert sent["model"] == "fake-model"
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    assert sent["max_tokens"] == 50
    assert sent["temperature"] == 0.2
    assert "tools" not in sent  # empty tools list is omitted
    assert srv.requests[0].path == "/v1/chat/completions"
    assert srv.requests[0].headers["Content-Type"].startswith("application/json")


async def test_optional_sampling_fields_omitted_when_unset(model_factory: Any) -> None:
    async with FakeOpenAI([text_reply("ok")]) as srv:
        await complete(model_factory(srv.base_url), ask())
    (sent,) = srv.chat_requests
    assert "max_tokens" not in sent and "temperature" not in sent and "tools" not in sent


async def test_three_tool_calls_and_request_translation(model_factory: Any) -> None:
    reply = tool_calls_reply(
        [
            ("get_weather", {"city": "Paris"}, "call_a"),
            ("get_weather", {"city": "Oslo"}, "call_b"),
            ("get_weather", {"city": "Lima"}, "call_c"),
        ],
        content="Checking.",
    )
    history = (
        Message(role="system", content="You are terse."),
        Message(role="user", content="Weather in Rome and Bern?"),
        Message(
            role="assistant",
            content="",
            tool_calls=(
                ToolCall(id="call_1", name="get_weather", arguments='{"city": "Rome"}'),
                ToolCall(id="call_2", name="get_weather", arguments='{"city": "Bern"}'),
            ),
        ),
        Message(role="tool", tool_call_id="call_1", content='{"temp_c": 21}'),
        Message(role="tool", tool_call_id="call_2", content='{"temp_c": 17}'),
        Message(role="user", content="And Paris, Oslo, Lima?"),
    )
    request = ModelRequest(model="fake-model", messages=history, tools=(WEATHER,))

    async with FakeOpenAI([reply]) as srv:
        resp = await complete(model_factory(srv.base_url), request)

    assert resp.text == "Checking."
    assert resp.finish_reason == "tool_calls"
    assert [c.id for c in resp.tool_calls] == ["call_a", "call_b", "call_c"]
    assert [c.name for c in resp.tool_calls] == ["get_weather"] * 3
    assert [json.loads(c.arguments)["city"] for c in resp.tool_calls] == ["Paris", "Oslo", "Lima"]

    (sent,) = srv.chat_requests
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    msgs = sent["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert msgs[0] == {"role": "system", "content": "You are terse."}
    assert msgs[2]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bern"}'}},
    ]
    assert msgs[3] == {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "call_1"}
    assert msgs[4] == {"role": "tool", "content": '{"temp_c": 17}', "tool_call_id": "call_2"}
    assert "tool_calls" not in msgs[1] and "tool_call_id" not in msgs[1]


async def test_malformed_arguments_survive_as_raw_string(model_factory: Any) -> None:
    broken = '{"city": "Paris",'  # truncated JSON
    async with FakeOpenAI([tool_calls_reply([("get_weather", broken)])]) as srv:
        resp = await complete(model_factory(srv.base_url), ask(tools=(WEATHER,)))
    (call,) = resp.tool_calls
    assert call.arguments == broken


async def test_arguments_as_object_are_json_encoded(model_factory: Any) -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "n": 2}}}
        ],
    }
    async with FakeOpenAI([completion(message, finish_reason="tool_calls")]) as srv:
        resp = await complete(model_factory(srv.base_url), ask(tools=(WEATHER,)))
    (call,) = resp.tool_calls
    assert isinstance(call.arguments, str)
    assert json.loads(call.arguments) == {"city": "Paris", "n": 2}
    assert resp.text == ""


async def test_missing_ids_usage_and_finish_reason_are_synthesized(model_factory: Any) -> None:
    reply = tool_calls_reply(
        [("get_weather", {"city": "A"}, None), ("get_weather", {"city": "B"}, None)],
        finish_reason=None,
        prompt_tokens=None,
    )
    async with FakeOpenAI([reply, reply]) as srv:
        model = model_factory(srv.base_url)
        first = await complete(model, ask(tools=(WEATHER,)))
        second = await complete(model, ask(tools=(WEATHER,)))
    assert [c.id for c in first.tool_calls] == ["call_0", "call_1"]
    assert first.tool_calls == second.tool_calls  # deterministic across redelivery
    assert first.usage == Usage()
    assert first.finish_reason == "tool_calls"


async def test_finish_reason_length_preserved(model_factory: Any) -> None:
    async with FakeOpenAI([text_reply("The answer is", finish_reason="length")]) as srv:
        resp = await complete(model_factory(srv.base_url), ask(max_tokens=3))
    assert resp.finish_reason == "length"
    assert resp.text == "The answer is"


async def test_auth_header_sent_only_with_key(model_factory: Any) -> None:
    async with FakeOpenAI([text_reply("a"), text_reply("b")]) as srv:
        await complete(model_factory(srv.base_url, api_key="sk-test-123"), ask())
        await complete(model_factory(srv.base_url), ask())
    with_key, without_key = srv.requests
    assert with_key.headers["Authorization"] == "Bearer sk-test-123"
    assert "Authorization" not in without_key.headers


async def test_async_responder_sees_request(model_factory: Any) -> None:
    async def responder(body: dict[str, Any]) -> dict[str, Any]:
        return text_reply(f"echo: {body['messages'][-1]['content']}")

    async with FakeOpenAI(responder) as srv:
        resp = await complete(model_factory(srv.base_url), ask("ping"))
    assert resp.text == "echo: ping"


# --------------------------------------------------------------------------- errors


async def test_http_500_is_transient(model_factory: Any) -> None:
    async with FakeOpenAI([(500, {"error": {"message": "upstream exploded"}})]) as srv:
        err = await expect_error(model_factory(srv.base_url), ask())
    assert err.transient is True
    assert err.status == 500
    assert "500" in str(err) and "upstream exploded" in str(err)


async def test_http_400_is_permanent_and_key_never_leaks(model_factory: Any) -> None:
    key = "sk-secret-abcdef"
    body = {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error"}}
    async with FakeOpenAI([(400, body)]) as srv:
        err = await expect_error(model_factory(srv.base_url, api_key=key), ask())
    assert err.transient is False
    assert err.status == 400
    assert "400" in str(err)
    assert key not in str(err) and key not in repr(err)
    assert "\n" not in str(err)


async def test_429_is_transient(model_factory: Any) -> None:
    async with FakeOpenAI([(429, {"error": {"message": "rate limited"}})]) as srv:
        err = await expect_error(model_factory(srv.base_url), ask())
    assert err.transient is True and err.status == 429


async def test_non_json_body_is_permanent_with_excerpt(model_factory: Any) -> None:
    html = "<html><body>\n<h1>Bad gateway config</h1>\n" + "x" * 5000 + "</body></html>"
    async with FakeOpenAI([(200, html)]) as srv:
        err = await expect_error(model_factory(srv.base_url), ask())
    msg = str(err)
    assert err.transient is False and err.status == 200
    assert "200" in msg and "Bad gateway config" in msg
    assert "\n" not in msg
    assert len(msg) < 600  # an excerpt, not the whole page


async def test_json_without_choices_is_permanent(model_factory: Any) -> None:
    async with FakeOpenAI([{"id": "x", "object": "chat.completion", "choices": []}]) as srv:
        err = await expect_error(model_factory(srv.base_url), ask())
    assert err.transient is False
    assert "no choices" in str(err)


async def test_connection_refused_is_transient(model_factory: Any) -> None:
    # Grab a free port and close it: nothing listens there.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = await expect_error(model_factory(f"http://127.0.0.1:{port}/v1"), ask())
    assert err.transient is True


async def test_timeout_is_transient(model_factory: Any) -> None:
    async with FakeOpenAI([HANG]) as srv:
        err = await expect_error(model_factory(srv.base_url, timeout_s=0.3), ask())
    assert err.transient is True
    assert "timed out" in str(err)


# --------------------------------------------------------------------------- retry helper


async def test_complete_with_retry_recovers_from_429(model_factory: Any) -> None:
    script: list[Reply] = [
        (429, {"error": {"message": "slow down"}}),
        (429, {"error": {"message": "slow down"}}),
        text_reply("finally"),
    ]
    async with FakeOpenAI(script) as srv:
        model = model_factory(srv.base_url)
        async with asyncio.timeout(TIMEOUT):
            resp = await complete_with_retry(model, ask(), attempts=3, max_wait_s=0.05, initial_wait_s=0.01)
    assert resp.text == "finally"
    assert len(srv.chat_requests) == 3


async def test_complete_with_retry_does_not_retry_permanent(model_factory: Any) -> None:
    async with FakeOpenAI([(400, {"error": {"message": "bad"}}), text_reply("never")]) as srv:
        model = model_factory(srv.base_url)
        with pytest.raises(ModelError) as info:
            async with asyncio.timeout(TIMEOUT):
                await complete_with_retry(model, ask(), attempts=3, initial_wait_s=0.01)
    assert info.value.status == 400
    assert len(srv.chat_requests) == 1


async def test_complete_with_retry_gives_up_after_attempts(model_factory: Any) -> None:
    async with FakeOpenAI(lambda body: (503, {"error": {"message": "overloaded"}})) as srv:
        model = model_factory(srv.base_url)
        with pytest.raises(ModelError) as info:
            async with asyncio.timeout(TIMEOUT):
                await complete_with_retry(model, ask(), attempts=2, max_wait_s=0.05, initial_wait_s=0.01)
    assert info.value.transient and info.value.status == 503
    assert len(srv.chat_requests) == 2


# --------------------------------------------------------------------------- configuration


def test_from_env_unset_model_returns_none() -> None:
    assert OpenAIChatModel.from_env({}) is None
    assert OpenAIChatModel.from_env({"OPENAI_API_KEY": "sk-x"}) is None


def test_from_env_defaults() -> None:
    model = OpenAIChatModel.from_env({"AGENTSTREAM_MODEL": "gpt-4o-mini"})
    assert model is not None
    assert model.name == "gpt-4o-mini"
    assert model.base_url == "https://api.openai.com/v1"
    assert model.timeout_s == 60.0


def test_from_env_full() -> None:
    model = OpenAIChatModel.from_env(
        {
            "AGENTSTREAM_MODEL": "qwen2.5",
            "OPENAI_BASE_URL": "http://localhost:11434/v1/",
            "OPENAI_API_KEY": "sk-local",
            "AGENTSTREAM_MODEL_TIMEOUT": "2.5",
        }
    )
    assert model is not None
    assert model.name == "qwen2.5"
    assert model.base_url == "http://localhost:11434/v1"
    assert model.timeout_s == 2.5
    assert "sk-local" not in repr(model)


@pytest.mark.parametrize("bad", ["soon", "-1", "0", "nan", "inf"])
def test_from_env_malformed_timeout(bad: str) -> None:
    with pytest.raises(ConfigError, match="AGENTSTREAM_MODEL_TIMEOUT"):
        OpenAIChatModel.from_env({"AGENTSTREAM_MODEL": "m", "AGENTSTREAM_MODEL_TIMEOUT": bad})


async def test_from_env_model_talks_to_server() -> None:
    async with FakeOpenAI([text_reply("configured")]) as srv:
        model = OpenAIChatModel.from_env(
            {"AGENTSTREAM_MODEL": "env-model", "OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "k1"}
        )
        assert model is not None
        async with model:
            resp = await complete(model, ModelRequest(model="", messages=(Message(role="user", content="x"),)))
    assert resp.text == "configured"
    assert srv.chat_requests[0]["model"] == "env-model"
    assert srv.requests[0].headers["Authorization"] == "Bearer k1"
