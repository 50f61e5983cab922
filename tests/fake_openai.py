"""A small OpenAI-compatible chat-completions server on loopback, for tests.

Real HTTP over a real socket, so the adapter under test runs exactly as it
would against vLLM or OpenAI. Typical use::

    async with FakeOpenAI([text_reply("hi"), (429, {"error": {"message": "slow"}})]) as srv:
        model = OpenAIChatModel("fake", base_url=srv.base_url)
        ...
        assert srv.requests[0].json["messages"][0]["role"] == "user"

The server is driven either by a *script* (a sequence of replies served in
order; a 500 "script exhausted" once it runs out) or by a *responder*: a sync
or async callable taking the decoded request JSON and returning a reply.

A reply is one of:

* a ``dict``: served as a 200 JSON body;
* ``(status, body)`` or ``(status, body, headers)``: ``body`` a dict (JSON)
  or a str (served verbatim as text/plain, e.g. to simulate an HTML error page);
* :data:`HANG`: never answer until the server stops (to exercise client timeouts).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from aiohttp import web

JSON = dict[str, Any]


class _Hang:
    def __repr__(self) -> str:
        return "HANG"


HANG = _Hang()

Reply = Union[JSON, tuple[int, Union[JSON, str]], tuple[int, Union[JSON, str], Mapping[str, str]], _Hang]
Responder = Callable[[JSON], Union[Reply, Awaitable[Reply]]]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    json: Any = field(default=None)


# --------------------------------------------------------------------------- reply builders


def usage(prompt_tokens: int = 0, completion_tokens: int = 0) -> JSON:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    message: JSON,
    *,
    finish_reason: str | None = "stop",
    model: str = "fake-model",
    prompt_tokens: int | None = 10,
    completion_tokens: int | None = 5,
) -> JSON:
    """A full chat.completion body around one assistant ``message``.
    Pass ``prompt_tokens=None`` to omit usage entirely."""
    body: JSON = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if prompt_tokens is not None:
        body["usage"] = usage(prompt_tokens, completion_tokens or 0)
    return body


def text_reply(text: str, *, finish_reason: str = "stop", **kw: Any) -> JSON:
    return completion({"role": "assistant", "content": text}, finish_reason=finish_reason, **kw)


def tool_calls_reply(
    calls: Sequence[tuple[str, Any]] | Sequence[tuple[str, Any, str | None]],
    *,
    content: str | None = None,
    **kw: Any,
) -> JSON:
    """Assistant turn asking for tools. Each call is ``(name, arguments)`` or
    ``(name, arguments, id)``; a dict ``arguments`` is JSON-encoded as OpenAI
    does, a str is sent verbatim (use it for malformed JSON); id ``None`` omits it."""
    wire_calls = []
    for index, call in enumerate(calls):
        name, arguments = call[0], call[1]
        call_id = call[2] if len(call) > 2 else f"call_fake_{index}"  # type: ignore[misc]
        wire: JSON = {
            "type": "function",
            "function": {
                "name": name,
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            },
        }
        if call_id is not None:
            wire["id"] = call_id
        wire_calls.append(wire)
    kw.setdefault("finish_reason", "tool_calls")
    return completion({"role": "assistant", "content": content, "tool_calls": wire_calls}, **kw)


# --------------------------------------------------------------------------- server


class FakeOpenAI:
    """Loopback OpenAI-compatible server. ``base_url`` ends in ``/v1``."""

    def __init__(self, responder: Responder | Sequence[Reply], *, model: str = "fake-model") -> None:
        if callable(responder):
            self._responder: Responder | None = responder
            self._script: list[Reply] = []
        else:
            self._responder = None
            self._script = list(responder)
        self.model = model
        self.requests: list[RecordedRequest] = []
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def chat_requests(self) -> list[JSON]:
        """Decoded JSON bodies of the chat-completions requests, in order."""
        return [r.json for r in self.requests if r.path.endswith("/chat/completions")]

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # Bind the socket ourselves: port 0 gives a free port with no race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        return self

    async def stop(self) -> None:
        self._stopping.set()  # releases HANG handlers so shutdown is quick
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ helpers

    def push(self, *replies: Reply) -> None:
        """Append replies to the script (script mode only)."""
        if self._responder is not None:
            raise RuntimeError("push() needs a scripted FakeOpenAI, not a responder")
        self._script.extend(replies)

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait (bounded) until at least ``n`` requests have arrived."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.requests) >= n)
        return list(self.requests)

    # ------------------------------------------------------------------ handlers

    async def _record(self, request: web.Request) -> RecordedRequest:
        body = await request.read()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body,
            json=parsed,
        )
        async with self._changed:
            self.requests.append(rec)
            self._changed.notify_all()
        return rec

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _next_reply(self, payload: JSON) -> Reply:
        if self._responder is not None:
            reply = self._responder(payload)
            if inspect.isawaitable(reply):
                reply = await reply
            return reply  # type: ignore[return-value]
        if not self._script:
            return (500, {"error": {"message": "FakeOpenAI script exhausted", "type": "fake"}})
        return self._script.pop(0)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if not isinstance(rec.json, dict):
            return web.json_response({"error": {"message": "body is not a JSON object"}}, status=400)
        reply = await self._next_reply(rec.json)
        if isinstance(reply, _Hang):
            await self._stopping.wait()
            return web.json_response({"error": {"message": "server stopping"}}, status=503)
        headers: Mapping[str, str] = {}
        if isinstance(reply, tuple):
            status, body = reply[0], reply[1]
            if len(reply) > 2:
                headers = reply[2]  # type: ignore[misc]
        else:
            status, body = 200, reply
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/plain", headers=headers)
        return web.json_response(body, status=status, headers=headers)


# --------------------------------------------------------------------------- server quirks
# Responders that behave like real servers do when they deviate from OpenAI's
# API (see docs/models.md). Each wraps or replaces a well-behaved responder.

MADE_UP = "Order 12 is not eligible for a refund: it was discontinued on January 30th."


def ignores_tools_without_tool_choice(respond: Responder) -> Responder:
    """llama-cpp-python's ``chatml-function-calling`` format: the tools reach
    the prompt only when the request carries ``tool_choice``; without it the
    model never sees them and makes an answer up."""

    def reply(req: JSON) -> Union[Reply, Awaitable[Reply]]:
        if req.get("tools") and "tool_choice" not in req:
            return text_reply(MADE_UP, prompt_tokens=63, completion_tokens=20)
        return respond(req)

    return reply


def hangs(req: JSON) -> Reply:
    """A paused or overloaded server: accepts the request, never answers."""
    return HANG


def drops_max_tokens(respond: Responder, *, generated: int = 5000, takes_s: float = 0.0) -> Responder:
    """A server that ignores the output cap (llama-cpp-python on its tool path):
    it reports ``generated`` completion tokens whatever ``max_tokens`` said, and
    takes ``takes_s`` seconds to generate them (a runaway generation)."""

    async def reply(req: JSON) -> Reply:
        if takes_s:
            await asyncio.sleep(takes_s)
        out = respond(req)
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, dict) and "usage" in out:
            out = {**out, "usage": usage(out["usage"]["prompt_tokens"], generated)}
        return out  # type: ignore[return-value]

    return reply


def malformed_calls(req: JSON) -> Reply:
    """Tool calls that break the API's rules in every way small models do:
    arguments that are not JSON, a JSON array, a tool that does not exist, a
    call with no name. After the structured errors come back, a plain answer."""
    if not [m for m in req["messages"] if m["role"] == "tool"]:
        return tool_calls_reply([("lookup_order", '{"order_id": 4'), ("lookup_order", "[42]"),
                                 ("teleport", {"where": "moon"}), ("", {})])
    return text_reply("I could not look that up.")
