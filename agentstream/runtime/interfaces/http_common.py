"""What every HTTP route shares: JSON responses, one-line errors, and the error
middleware that turns exceptions into them (never an HTML page)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from agentstream.runtime.adapters.jetstream import BROKER_ERRORS

log = logging.getLogger("agentstream.http")

_JSON = "application/json"
_encoder = msgspec.json.Encoder()


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type=_JSON, headers=headers)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": _one_line(message), **extra}, status=status)


def broker_unavailable(exc: BaseException) -> str:
    return f"broker unavailable: {_one_line(str(exc), 200) or 'no answer'} ({type(exc).__name__})"


class _BadRequest(Exception):
    """Turned into a 400 by the error middleware."""


# --------------------------------------------------------------------------- middleware


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like pass through untouched
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        resp = _error(exc.status, exc.reason or "error")
        resp.headers.update(headers)
        return resp
    except BROKER_ERRORS as exc:
        # Expected while the broker is away: a warning line, not a traceback.
        log.warning("%s %s: broker unavailable (%s: %s)", request.method, request.path, type(exc).__name__, exc)
        return _error(503, broker_unavailable(exc))
    except Exception as exc:  # noqa: BLE001 - the point: never an HTML traceback
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, f"internal error ({type(exc).__name__})")
