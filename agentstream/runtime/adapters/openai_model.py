"""An ``LLM`` adapter for any OpenAI-compatible chat-completions server.

Works against OpenAI, vLLM, Ollama and the llama.cpp servers. The request sends
the fields those servers differ on explicitly (``tool_choice`` whenever tools
are offered: llama-cpp-python's function-calling chat format renders the tools
into the prompt only when it is present; the output cap under the name the
server reads), and the response decoder is deliberately tolerant of the ways
they differ (arguments as an object instead of a string, missing tool call
ids, missing usage). docs/models.md has the compatibility table.

The adapter never retries: retrying is the caller's policy (the runtime may
prefer to fail a task over blocking a worker). :func:`complete_with_retry` is
provided for callers that do want the usual backoff.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec

from agentstream.contracts.events import Message, ModelResponse, ToolCall, ToolSpec, Usage
from agentstream.runtime.adapters.retry import complete_with_retry  # re-exported: the adapter's callers use it
from agentstream.runtime.core.errors import ConfigError, ModelError
from agentstream.runtime.core.ports import ModelRequest

__all__ = ["OpenAIChatModel", "RequestOptions", "complete_with_retry", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

TOOL_CHOICES = ("auto", "required", "none")
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")


class RequestOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The deployment's defaults for what a request carries; an agent's own
    setting (in the ``ModelRequest``) wins. None: the field is not sent."""

    tool_choice: str = "auto"  # sent only when the request offers tools
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    # OpenAI's current name is max_completion_tokens (its reasoning models
    # reject max_tokens); vLLM, Ollama and the llama.cpp servers read max_tokens.
    max_tokens_field: str = "max_tokens"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], base_url: str = DEFAULT_BASE_URL) -> RequestOptions:
        def number(name: str, kind: type[float] | type[int]) -> float | int | None:
            raw = environ.get(name, "").strip()
            if not raw:
                return None
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
            if not math.isfinite(value):
                raise ConfigError(f"{name}={raw!r} must be finite")
            return value

        choice = environ.get("AGENTSTREAM_MODEL_TOOL_CHOICE", "").strip() or "auto"
        if choice not in TOOL_CHOICES:  # a tool's name is an agent's setting, not a deployment's
            raise ConfigError(f"AGENTSTREAM_MODEL_TOOL_CHOICE={choice!r} must be auto, required or none")
        field = environ.get("AGENTSTREAM_MODEL_MAX_TOKENS_FIELD", "").strip() or "auto"
        if field == "auto":
            field = "max_completion_tokens" if "api.openai.com" in base_url else "max_tokens"
        if field not in MAX_TOKENS_FIELDS:
            raise ConfigError(f"AGENTSTREAM_MODEL_MAX_TOKENS_FIELD={field!r} must be auto, max_tokens or "
                              "max_completion_tokens")
        raw_parallel = environ.get("AGENTSTREAM_MODEL_PARALLEL_TOOL_CALLS", "").strip().lower()
        parallel: bool | None = None
        if raw_parallel:
            if raw_parallel not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigError(f"AGENTSTREAM_MODEL_PARALLEL_TOOL_CALLS={raw_parallel!r} must be 1/true/yes/on "
                                  "or 0/false/no/off")
            parallel = raw_parallel in ("1", "true", "yes", "on")
        temperature = number("AGENTSTREAM_MODEL_TEMPERATURE", float)
        top_p = number("AGENTSTREAM_MODEL_TOP_P", float)
        seed = number("AGENTSTREAM_MODEL_SEED", int)
        return cls(tool_choice=choice, parallel_tool_calls=parallel,
                   temperature=None if temperature is None else float(temperature),
                   top_p=None if top_p is None else float(top_p),
                   seed=None if seed is None else int(seed), max_tokens_field=field)

# Long enough to recognise the server's complaint, short enough that a whole
# HTML error page never ends up in a task failure message or a log line.
_EXCERPT_CHARS = 200

log = logging.getLogger("agentstream.model")


# --------------------------------------------------------------------------- wire (response)
# Only the fields we read are declared; msgspec ignores the rest, so servers
# that add vendor fields (reasoning_content, logprobs, ...) still decode.


class _WireFunction(msgspec.Struct):
    name: str = ""
    # Some servers (older Ollama, some llama.cpp builds) send an object here
    # instead of the JSON-encoded string the OpenAI API specifies.
    arguments: str | dict[str, Any] | list[Any] | None = None


class _WireToolCall(msgspec.Struct):
    id: str | None = None
    function: _WireFunction | None = None


class _WireMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_WireToolCall] | None = None


class _WireChoice(msgspec.Struct):
    message: _WireMessage | None = None
    finish_reason: str | None = None


class _WireUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _WireResponse(msgspec.Struct):
    choices: list[_WireChoice] | None = None
    model: str | None = None
    usage: _WireUsage | None = None


class _WireErrorDetail(msgspec.Struct):
    message: str | None = None


class _WireErrorBody(msgspec.Struct):
    # OpenAI nests {"error": {"message": ...}}; some servers send a bare string.
    error: _WireErrorDetail | str | None = None
    message: str | None = None


_response_decoder = msgspec.json.Decoder(_WireResponse)
_error_decoder = msgspec.json.Decoder(_WireErrorBody)
_encoder = msgspec.json.Encoder()


# --------------------------------------------------------------------------- translation


def _message_to_wire(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.role == "tool" and message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _tool_to_wire(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def _tool_choice_to_wire(choice: str) -> str | dict[str, Any]:
    if choice in TOOL_CHOICES:
        return choice
    return {"type": "function", "function": {"name": choice}}


def build_request_body(request: ModelRequest, default_model: str,
                       options: RequestOptions | None = None) -> dict[str, Any]:
    """The JSON object POSTed for ``request`` (exposed for tests and debugging).
    The request's own fields win over ``options``, the deployment's defaults."""
    o = options or RequestOptions()
    body: dict[str, Any] = {
        "model": request.model or default_model,
        "messages": [_message_to_wire(m) for m in request.messages],
    }
    # An empty "tools" array is rejected by some servers (OpenAI returns 400),
    # and so is tool_choice or parallel_tool_calls without tools.
    if request.tools:
        body["tools"] = [_tool_to_wire(t) for t in request.tools]
        body["tool_choice"] = _tool_choice_to_wire(request.tool_choice or o.tool_choice)
        parallel = request.parallel_tool_calls if request.parallel_tool_calls is not None else o.parallel_tool_calls
        if parallel is not None:
            body["parallel_tool_calls"] = parallel
    if request.max_tokens is not None:
        body[o.max_tokens_field] = request.max_tokens
    for name, value, default in (("temperature", request.temperature, o.temperature),
                                 ("top_p", request.top_p, o.top_p), ("seed", request.seed, o.seed)):
        chosen = value if value is not None else default
        if chosen is not None:
            body[name] = chosen
    return body


def _arguments_text(raw: str | dict[str, Any] | list[Any] | None) -> str:
    if raw is None:
        return "{}"
    if isinstance(raw, str):
        # A blank string is how several servers say "no arguments"; it is not
        # malformed output worth bouncing back to the model. Anything else is
        # kept verbatim so the runtime can quote invalid JSON back to the model.
        return raw if raw.strip() else "{}"
    return _encoder.encode(raw).decode("utf-8")


def parse_response_body(body: bytes, *, status: int, fallback_model: str) -> ModelResponse:
    """Decode a 2xx chat-completions body; raises a permanent ``ModelError``."""
    try:
        wire = _response_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(
            f"model endpoint returned an unreadable body (HTTP {status}): "
            f"{_one_line(str(exc))}; body: {_excerpt(body)}",
            transient=False,
            status=status,
        ) from None
    if not wire.choices:
        raise ModelError(
            f"model endpoint returned no choices (HTTP {status}); body: {_excerpt(body)}",
            transient=False,
            status=status,
        )
    choice = wire.choices[0]
    message = choice.message or _WireMessage()
    calls = tuple(
        ToolCall(
            # Deterministic so a redelivered turn yields the same ids (the
            # runtime derives idempotency keys from them).
            id=call.id or f"call_{index}",
            name=(call.function.name if call.function else ""),
            arguments=_arguments_text(call.function.arguments if call.function else None),
        )
        for index, call in enumerate(message.tool_calls or ())
    )
    finish_reason = choice.finish_reason or ("tool_calls" if calls else "stop")
    usage = wire.usage or _WireUsage()
    return ModelResponse(
        text=message.content or "",
        tool_calls=calls,
        finish_reason=finish_reason,
        model=wire.model or fallback_model,
        usage=Usage(
            input_tokens=usage.prompt_tokens or 0,
            output_tokens=usage.completion_tokens or 0,
        ),
    )


# --------------------------------------------------------------------------- error text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _excerpt(body: bytes) -> str:
    text = _one_line(body[: _EXCERPT_CHARS * 4].decode("utf-8", errors="replace"))
    if not text:
        return "<empty>"
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _error_summary(body: bytes) -> str:
    """The server's own error message when it sent a JSON one, else an excerpt."""
    try:
        parsed = _error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _excerpt(body)
    detail: str | None
    if isinstance(parsed.error, _WireErrorDetail):
        detail = parsed.error.message
    else:
        detail = parsed.error or parsed.message
    return _excerpt(detail.encode("utf-8")) if detail else _excerpt(body)


def _positive_seconds(value: float) -> bool:
    return value > 0 and math.isfinite(value)


def _is_transient_status(status: int) -> bool:
    # 408 is a server-side timeout in all but name; treat it like a 5xx.
    return status in (408, 429) or status >= 500


# --------------------------------------------------------------------------- adapter


class OpenAIChatModel:
    """``LLM`` over HTTP to an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        options: RequestOptions | None = None,
    ) -> None:
        if not model:
            raise ConfigError("model name must not be empty")
        if not _positive_seconds(timeout_s):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.options = options or RequestOptions(
            max_tokens_field="max_completion_tokens" if "api.openai.com" in self.base_url else "max_tokens")
        self._api_key = api_key or None
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._warned_uncapped = False

    def __repr__(self) -> str:
        # Never show the key: reprs end up in logs and tracebacks.
        key = "set" if self._api_key else "unset"
        return f"OpenAIChatModel(model={self.name!r}, base_url={self.base_url!r}, api_key={key})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OpenAIChatModel | None:
        """Build from ``AGENTSTREAM_MODEL`` & co; ``None`` when no model is configured."""
        model = environ.get("AGENTSTREAM_MODEL", "").strip()
        if not model:
            return None
        base_url = environ.get("OPENAI_BASE_URL", "").strip() or DEFAULT_BASE_URL
        api_key = environ.get("OPENAI_API_KEY", "").strip() or None
        timeout_s = 60.0
        raw_timeout = environ.get("AGENTSTREAM_MODEL_TIMEOUT", "").strip()
        if raw_timeout:
            try:
                timeout_s = float(raw_timeout)
            except ValueError:
                timeout_s = math.nan
            if not _positive_seconds(timeout_s):
                raise ConfigError(
                    "AGENTSTREAM_MODEL_TIMEOUT must be a positive number of seconds, "
                    f"got {raw_timeout!r}"
                )
        return cls(model, base_url=base_url, api_key=api_key, timeout_s=timeout_s,
                   options=RequestOptions.from_env(environ, base_url))

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession binds to the running loop, and the
        # adapter is usually constructed before any loop exists.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> OpenAIChatModel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        payload = _encoder.encode(build_request_body(request, self.name, self.options))
        session = self._get_session()
        try:
            async with session.post(self._url, data=payload, headers=self._headers) as resp:
                status = resp.status
                body = await resp.read()
        except TimeoutError:
            raise ModelError(
                f"model endpoint {self._url} timed out after {self.timeout_s:g}s",
                transient=True, timed_out=True,
            ) from None
        except aiohttp.ClientError as exc:
            raise ModelError(
                f"model endpoint {self._url} unreachable: {type(exc).__name__}: "
                f"{self._scrub(_one_line(str(exc)))}",
                transient=True,
            ) from None

        if status >= 400 or status < 200:
            raise ModelError(
                f"model endpoint {self._url} returned HTTP {status}: "
                f"{self._scrub(_error_summary(body))}",
                transient=_is_transient_status(status),
                status=status,
            )
        try:
            response = parse_response_body(body, status=status, fallback_model=request.model or self.name)
        except ModelError as exc:
            raise ModelError(
                self._scrub(str(exc)), transient=exc.transient, status=exc.status
            ) from None
        cap = request.max_tokens
        if cap is not None and response.usage.output_tokens > cap and not self._warned_uncapped:
            # Some servers drop the cap on their tool-calling path: then only the
            # per-call timeout (AGENTSTREAM_MODEL_TIMEOUT) bounds a generation.
            self._warned_uncapped = True
            log.warning("model %s at %s ignored the output cap (%s=%d, it generated %d tokens); the per-call "
                        "timeout of %gs is what bounds its generations", self.name, self.base_url,
                        self.options.max_tokens_field, cap, response.usage.output_tokens, self.timeout_s)
        return response

    def _scrub(self, text: str) -> str:
        # Some servers echo the rejected key back ("Incorrect API key provided: sk-...").
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text
