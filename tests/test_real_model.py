"""The whole runtime driven by a real OpenAI-compatible model over HTTP (a
loopback server speaking the chat-completions protocol), on a real nats-server."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fake_openai import FakeOpenAI, text_reply, tool_calls_reply

from agentstream import AgentClient, OpenAIChatModel, Runtime, Settings, TaskCompleted, TaskFailed
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats


def _tool_messages(req: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in req["messages"] if m["role"] == "tool"]


async def _run(broker: EmbeddedNats, srv: FakeOpenAI, question: str, *, max_steps: int | None = None,
               timeout: float = 20.0) -> TaskCompleted | TaskFailed:
    settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url)
    llm = OpenAIChatModel("fake-model", base_url=srv.base_url, api_key="sk-test")
    rt = Runtime.from_settings(settings, agents=["support"], tools="all", models={"support": llm})
    await rt.start()
    try:
        async with await AgentClient.connect(broker.url) as client:
            task_id = await client.submit("support", question, max_steps=max_steps)
            return await client.result(task_id, timeout=timeout)
    finally:
        await rt.stop()


async def test_parallel_tool_calls_from_a_real_model(broker: EmbeddedNats) -> None:
    def respond(req: dict[str, Any]) -> dict[str, Any]:
        tools = _tool_messages(req)
        if not tools:
            return tool_calls_reply([("lookup_order", {"order_id": 17}), ("shipping_status", {"order_id": 17}),
                                     ("refund_eligibility", {"order_id": 17})], prompt_tokens=100,
                                    completion_tokens=30)
        eligible = json.loads(next(t["content"] for t in tools if t["name"] == "refund_eligibility"))
        return text_reply(f"refund of {eligible['amount']}", prompt_tokens=200, completion_tokens=10)

    async with FakeOpenAI(respond) as srv:
        res = await _run(broker, srv, "refund for order 17?")
        reqs = srv.chat_requests
    assert isinstance(res, TaskCompleted), res
    assert res.output == "refund of 74.75"
    assert res.tool_calls == 3 and res.steps == 2
    # Usage is what the server reported, summed over both turns.
    assert (res.usage.input_tokens, res.usage.output_tokens) == (300, 40)
    assert len(reqs) == 2
    # The model saw its tools, and every call id paired with a result, in its own order.
    assert {t["function"]["name"] for t in reqs[0]["tools"]} >= {"lookup_order", "refund_eligibility"}
    assert [m["tool_call_id"] for m in _tool_messages(reqs[1])] == ["call_fake_0", "call_fake_1", "call_fake_2"]
    assert reqs[0]["messages"][0]["role"] == "system"


async def test_malformed_tool_calls_are_fed_back_as_structured_errors(broker: EmbeddedNats) -> None:
    def respond(req: dict[str, Any]) -> dict[str, Any]:
        tools = _tool_messages(req)
        if not tools:
            return tool_calls_reply([("lookup_order", '{"order_id": 4'), ("teleport", {"where": "moon"}),
                                     ("lookup_order", {"order_id": "forty-two"})])
        if len(tools) == 3:
            return tool_calls_reply([("lookup_order", {"order_id": 42}, "fixed")])
        return text_reply("found it")

    async with FakeOpenAI(respond) as srv:
        res = await _run(broker, srv, "where is order 42?")
        second = srv.chat_requests[1]
    assert isinstance(res, TaskCompleted) and res.output == "found it"
    errors = [json.loads(t["content"])["error"] for t in _tool_messages(second)]
    assert [e["kind"] for e in errors] == ["invalid_arguments", "unknown_tool", "invalid_arguments"]
    assert "lookup_order" in errors[1]["hint"]
    assert errors[2]["field"] == "order_id"


async def test_model_http_error_ends_the_task_with_a_clear_failure(broker: EmbeddedNats) -> None:
    async with FakeOpenAI([(400, {"error": {"message": "model 'x' does not support tools"}})]) as srv:
        res = await _run(broker, srv, "hello")
    assert isinstance(res, TaskFailed)
    assert res.reason == "model_error"
    assert "400" in res.message and "does not support tools" in res.message


async def test_length_cut_off_and_runaway_tool_loops_fail_with_reasons(broker: EmbeddedNats) -> None:
    async with FakeOpenAI([text_reply("Your order is on its wa", finish_reason="length")]) as srv:
        res = await _run(broker, srv, "where is order 42?")
    assert isinstance(res, TaskFailed) and res.reason == "model_output" and "cut off" in res.message

    # A model that never stops asking for tools hits the step limit...
    def wander(req: dict[str, Any]) -> dict[str, Any]:
        return tool_calls_reply([("lookup_order", {"order_id": len(_tool_messages(req)) + 1})])

    async with FakeOpenAI(wander) as srv:
        res = await _run(broker, srv, "hours?", max_steps=3)
        calls = len(srv.chat_requests)
    assert isinstance(res, TaskFailed) and res.reason == "max_steps" and "3" in res.message
    assert calls == 3

    # ...and one that repeats the same call is stopped by the loop breaker first.
    async with FakeOpenAI(lambda req: tool_calls_reply([("store_hours", {})])) as srv:
        res = await _run(broker, srv, "hours?", max_steps=8)
        calls = len(srv.chat_requests)
    assert isinstance(res, TaskFailed) and res.reason == "loop_detected" and "store_hours" in res.message
    assert calls == 3
