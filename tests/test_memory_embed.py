"""The OpenAI-compatible embeddings adapter over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agentstream.runtime.memory.embed import OpenAIEmbedder
from agentstream.runtime.memory.errors import MemoryError_


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[Any]]]:
    seen: list[Any] = []

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.headers.get("Authorization"), body))
        if body["model"] == "broken":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if body["model"] == "short":
            return web.json_response({"data": [{"index": 0, "embedding": [1.0]}]})
        # Out of order on purpose: the adapter must sort by index.
        data = [{"index": i, "embedding": [float(i), 1.0, 0.0]} for i in range(len(body["input"]))][::-1]
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


async def test_embeds_in_order_with_the_key(server: tuple[str, list[Any]]) -> None:
    url, seen = server
    e = OpenAIEmbedder.from_env({"AGENTSTREAM_EMBEDDINGS_MODEL": "m", "AGENTSTREAM_EMBEDDINGS_URL": url,
                                 "AGENTSTREAM_EMBEDDINGS_DIM": "3", "OPENAI_API_KEY": "sk-test"})
    assert e is not None
    try:
        assert await e.embed(["a", "b"]) == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    finally:
        await e.close()
    assert seen[0] == ("Bearer sk-test", {"model": "m", "input": ["a", "b"]})


@pytest.mark.parametrize("model, message", [("broken", "HTTP 503"), ("short", "expected 1 of size 3")])
async def test_endpoint_failures_are_memory_errors(server: tuple[str, list[Any]], model: str, message: str) -> None:
    e = OpenAIEmbedder(server[0], model, 3)
    try:
        with pytest.raises(MemoryError_, match=message):
            await e.embed(["a"])
    finally:
        await e.close()


def test_configuration_is_checked() -> None:
    assert OpenAIEmbedder.from_env({}) is None
    with pytest.raises(MemoryError_, match="AGENTSTREAM_EMBEDDINGS_DIM"):
        OpenAIEmbedder.from_env({"AGENTSTREAM_EMBEDDINGS_MODEL": "m", "OPENAI_BASE_URL": "http://x"})
