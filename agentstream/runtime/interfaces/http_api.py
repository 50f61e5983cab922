"""An HTTP API over :class:`AgentClient`: submit tasks, fetch results, stream
a task's events as Server-Sent Events, and health/readiness probes.

It is a thin adapter: it gets a connected client and never touches the engine,
so it can run in any process that can reach the broker.

Routes::

    POST /v1/tasks                      submit; 202 with the task id (?wait=S: 200 with the result);
                                        404 for an agent the serving app does not define
    GET  /v1/tasks/{task_id}/result     the result (?wait=S, default 0, max 300) or 404
    GET  /v1/tasks/{task_id}/events     text/event-stream of the task's events, ending with its result
    POST /v1/tasks/{task_id}/feedback   {"rating": "up"|"down", "comment": "..."}: 202, stored on stream EVALS;
                                        404 while the task has no result
    GET  /healthz                       the process is alive
    GET  /readyz                        the broker is connected and the streams exist, else 503
    GET  /                              this index

Every error is JSON ``{"error": "<one line>"}``, never an HTML page; a broker
that is unreachable or does not answer is a 503 on every route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import nats.errors
from aiohttp import web

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskEvent
from agentstream.runtime.adapters.jetstream import BROKER_ERRORS
from agentstream.runtime.core.errors import (
    BrokerUnavailable,
    PayloadTooLarge,
    ResultTimeout,
    StoreFull,
    SubmitFailed,
)
from agentstream.runtime.interfaces.client import AgentClient

if TYPE_CHECKING:
    from agentstream.runtime.interfaces.approvals import ApproverAuth
from agentstream.runtime.interfaces.http_common import (
    _JSON,
    _BadRequest,
    _encoder,
    _error,
    _json,
    _one_line,
    broker_unavailable,
    error_middleware,
)

log = logging.getLogger("agentstream.http")

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]

MAX_WAIT_S = 300.0
NO_WAIT_PROBE_S = 0.2  # ``wait=0``: look once, briefly, for a result already stored
MAX_STREAM_TIMEOUT_S = 24 * 3600.0
HEARTBEAT_S = 15.0
READY_CHECK_TIMEOUT_S = 3.0
_DISCONNECT_POLL_S = 1.0

CLIENT_KEY: web.AppKey[AgentClient] = web.AppKey("agentstream_client", AgentClient)
READY_KEY: web.AppKey[ReadyCheck | None] = web.AppKey("agentstream_ready")
HEARTBEAT_KEY: web.AppKey[float] = web.AppKey("agentstream_heartbeat_s", float)
SHUTDOWN_KEY: web.AppKey[asyncio.Event] = web.AppKey("agentstream_shutdown", asyncio.Event)
# The agents the serving app defines, when the API knows them (``agentstream
# up``); None: a standalone API, which submits to any agent name.
AGENTS_KEY: web.AppKey[frozenset[str] | None] = web.AppKey("agentstream_agents")

class SubmitRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/tasks``. Unknown fields are ignored."""

    agent: str
    input: str
    task_id: str | None = None
    tenant_id: str = "default"
    user_id: str = "anonymous"
    conversation_id: str = ""
    agent_version: str = ""
    metadata: dict[str, str] = {}
    max_steps: Annotated[int, msgspec.Meta(ge=1)] | None = None
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None


_submit_decoder = msgspec.json.Decoder(SubmitRequest)


# --------------------------------------------------------------------------- helpers


def _seconds(request: web.Request, name: str, *, default: float | None, maximum: float) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _BadRequest(f"query parameter {name!r} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or value > maximum:
        raise _BadRequest(f"query parameter {name!r} must be between 0 and {maximum:g} seconds, got {raw!r}")
    return value


def _task_id(request: web.Request) -> str:
    task_id = request.match_info["task_id"]
    try:
        return subjects.check_token("task id", task_id)
    except ValueError as exc:
        raise _BadRequest(str(exc)) from None


def _links(task_id: str) -> dict[str, str]:
    return {"task_id": task_id, "result_url": f"/v1/tasks/{task_id}/result",
            "events_url": f"/v1/tasks/{task_id}/events"}


def _result_response(result: msgspec.Struct) -> web.Response:
    return web.Response(body=codec.encode(result), status=200, content_type=_JSON,
                        headers={"Cache-Control": "no-store"})


def _event_tag(event: msgspec.Struct) -> str:
    tag = type(event).__struct_config__.tag
    return str(tag) if tag is not None else type(event).__name__


# --------------------------------------------------------------------------- handlers


async def index(request: web.Request) -> web.Response:
    return _json({
        "service": "agentstream",
        "routes": {
            "POST /v1/tasks": "submit a task; JSON {agent, input, ...}; ?wait=SECONDS returns the result",
            "GET /v1/tasks/{task_id}/result": "the task's result; ?wait=SECONDS (default 0, max 300)",
            "GET /v1/tasks/{task_id}/events": "Server-Sent Events of the task, ending with its result; ?timeout=SECONDS",
            "POST /v1/tasks/{task_id}/feedback": "thumbs up or down on a finished task: JSON {rating, comment}",
            "GET /healthz": "liveness",
            "GET /readyz": "readiness: broker connected and streams present",
        },
    })


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def default_ready(client: AgentClient) -> tuple[bool, str]:
    if not client.nc.is_connected:
        return False, "not connected to NATS"
    for stream in subjects.STREAMS:
        try:
            await asyncio.wait_for(client.js.stream_info(stream.name), timeout=READY_CHECK_TIMEOUT_S)
        except TimeoutError:
            return False, f"stream {stream.name}: no answer within {READY_CHECK_TIMEOUT_S:g}s"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return False, f"stream {stream.name}: {exc or type(exc).__name__}"
    return True, "ok"


async def readyz(request: web.Request) -> web.Response:
    check = request.app[READY_KEY]
    try:
        if check is not None:
            ok, reason = await check()
        else:
            ok, reason = await default_ready(request.app[CLIENT_KEY])
    except Exception as exc:  # noqa: BLE001 - a failing probe is "not ready", not a 500
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    if ok:
        return _json({"status": "ready"})
    return _json({"status": "unavailable", "error": _one_line(reason)}, status=503)


async def submit_task(request: web.Request) -> web.Response:
    wait = _seconds(request, "wait", default=None, maximum=MAX_WAIT_S)
    body = await request.read()
    if not body.strip():
        raise _BadRequest("request body must be a JSON object with 'agent' and 'input'")
    try:
        req = _submit_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _BadRequest(f"invalid task: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _BadRequest(f"invalid JSON: {exc}") from None
    agents = request.app[AGENTS_KEY]
    if agents is not None and req.agent not in agents:
        # Nothing here would ever run it: say so rather than accept it.
        return _error(404, f"unknown agent {req.agent!r}; this service runs: {', '.join(sorted(agents)) or '-'}")
    client = request.app[CLIENT_KEY]
    try:
        task_id = await client.submit(
            req.agent, req.input, task_id=req.task_id or None, tenant_id=req.tenant_id, user_id=req.user_id,
            conversation_id=req.conversation_id, agent_version=req.agent_version, metadata=req.metadata,
            max_steps=req.max_steps, deadline_s=req.deadline_s, max_tokens=req.max_tokens,
            max_cost_usd=req.max_cost_usd)
    except ValueError as exc:  # an agent / task / conversation id that is not a subject token
        raise _BadRequest(str(exc)) from None
    except StoreFull as exc:
        # 507 Insufficient Storage: the task was not accepted; retry later.
        return _error(507, str(exc), store=exc.store)
    except PayloadTooLarge as exc:  # a property of the request, not an outage
        return _error(413, str(exc))
    except SubmitFailed as exc:  # the message says whether the task may have been stored
        return _error(503, f"broker unavailable: {exc}", task_id=exc.task_id)
    except (TimeoutError, BrokerUnavailable, nats.errors.Error) as exc:
        return _error(503, f"broker unavailable: could not publish the task ({exc or type(exc).__name__})")
    links = _links(task_id)
    if wait is not None and wait > 0:
        try:
            result = await client.result(task_id, timeout=wait)
        except ResultTimeout:
            pass
        else:
            return _result_response(result)
    return _json(links, status=202, headers={"Location": links["result_url"]})


async def task_result(request: web.Request) -> web.Response:
    task_id = _task_id(request)
    wait = _seconds(request, "wait", default=0.0, maximum=MAX_WAIT_S) or 0.0
    client = request.app[CLIENT_KEY]
    try:
        result = await client.result(task_id, timeout=wait if wait > 0 else NO_WAIT_PROBE_S)
    except ResultTimeout:
        if not client.nc.is_connected:
            # result() waits out a broker that is away (its lookups fail as
            # "not yet"): then "no result yet" would be a guess, not an answer.
            return _error(503, "broker unavailable: not connected to NATS", task_id=task_id)
        return _error(404, "no result yet", task_id=task_id)
    return _result_response(result)


async def _next_event(events: AsyncIterator[TaskEvent]) -> TaskEvent | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None


def _sse(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def task_events(request: web.Request) -> web.StreamResponse:
    task_id = _task_id(request)
    timeout = _seconds(request, "timeout", default=None, maximum=MAX_STREAM_TIMEOUT_S)
    client = request.app[CLIENT_KEY]
    heartbeat = request.app[HEARTBEAT_KEY]
    shutdown = request.app[SHUTDOWN_KEY]

    resp = web.StreamResponse(status=200, headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # tell nginx-style proxies not to buffer the stream
    })
    await resp.prepare(request)
    await resp.write(b": stream open\n\n")

    events: AsyncIterator[TaskEvent] = client.events(task_id, timeout=timeout)
    loop = asyncio.get_running_loop()
    pending: asyncio.Task[TaskEvent | None] | None = None
    try:
        last_write = loop.time()
        while True:
            if pending is None:
                pending = asyncio.create_task(_next_event(events))
            poll = max(0.0, min(_DISCONNECT_POLL_S, last_write + heartbeat - loop.time()))
            done, _ = await asyncio.wait({pending}, timeout=poll)
            if shutdown.is_set() or _client_gone(request):
                break
            if not done:
                if loop.time() - last_write >= heartbeat:
                    await resp.write(b": keep-alive\n\n")
                    last_write = loop.time()
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except ResultTimeout as exc:
                await resp.write(_sse("error", _encoder.encode({"error": _one_line(str(exc)), "task_id": task_id})))
                break
            except BROKER_ERRORS as exc:
                log.warning("event stream for task %s: broker unavailable (%s: %s)", task_id,
                            type(exc).__name__, exc)
                await resp.write(_sse("error", _encoder.encode({"error": broker_unavailable(exc),
                                                                "task_id": task_id})))
                break
            if event is None:
                break
            await resp.write(_sse(_event_tag(event), codec.encode(event)))
            last_write = loop.time()
    except ConnectionError:
        pass  # the client went away mid-write
    except Exception as exc:  # noqa: BLE001 - headers are sent; report in-band, then close
        log.exception("event stream for task %s failed", task_id)
        with contextlib.suppress(Exception):
            await resp.write(_sse("error", _encoder.encode(
                {"error": f"internal error ({type(exc).__name__})", "task_id": task_id})))
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending}, timeout=5)
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


# --------------------------------------------------------------------------- app & server


def create_app(client: AgentClient, *, ready: ReadyCheck | None = None,
               heartbeat_s: float = HEARTBEAT_S, agents: Collection[str] | None = None,
               approver_auth: ApproverAuth | None = None) -> web.Application:
    """The aiohttp application over a connected ``client``. ``ready`` overrides
    the default readiness check (connected + streams present). ``agents``: the
    agents the serving app defines; a task for any other is refused (404)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=4 * 1024 * 1024)
    app[CLIENT_KEY] = client
    app[READY_KEY] = ready
    app[HEARTBEAT_KEY] = float(heartbeat_s)
    app[SHUTDOWN_KEY] = asyncio.Event()
    app[AGENTS_KEY] = frozenset(agents) if agents is not None else None

    async def _on_shutdown(app: web.Application) -> None:
        app[SHUTDOWN_KEY].set()  # open event streams end now rather than at the shutdown timeout

    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/v1/tasks", submit_task)
    app.router.add_get("/v1/tasks/{task_id}/result", task_result)
    app.router.add_get("/v1/tasks/{task_id}/events", task_events)
    from agentstream.runtime.interfaces import approvals, feedback
    from agentstream.runtime.interfaces.dashboard import add_dashboard_routes

    approvals.add_routes(app, client, approver_auth)  # None: from the environment
    feedback.add_routes(app, client)
    add_dashboard_routes(app, lambda: client.js)
    app.router.add_get("/metrics", metrics)
    from agentstream.runtime.observability import lag

    app[LAG_KEY] = lag.LagCache(client.js)
    app.cleanup_ctx.append(_lag_push)
    return app


LAG_KEY: web.AppKey[Any] = web.AppKey("agentstream_lag", object)


async def _lag_push(app: web.Application) -> AsyncIterator[None]:
    """Consumer lag over OTLP too, when OTEL_METRICS_EXPORTER names a push exporter."""
    from agentstream.runtime.observability.lag import otlp_exporter_from_env

    exporter = otlp_exporter_from_env(app[LAG_KEY], os.environ)
    if exporter is not None:
        exporter.start()
    yield
    if exporter is not None:
        await exporter.stop()


async def metrics(request: web.Request) -> web.Response:
    """Prometheus scrape endpoint: this process's OpenTelemetry metrics (through
    prometheus_client, OpenMetrics when asked), and the broker's consumer lag
    per durable (the autoscaling signal)."""
    from agentstream.runtime.observability.lag import prometheus_lines
    from agentstream.runtime.observability.prometheus import exposition

    body, content_type = exposition(request.headers.get("Accept"))
    lag = "".join(line + "\n" for line in prometheus_lines(await request.app[LAG_KEY].get())).encode()
    eof = b"# EOF\n"  # OpenMetrics ends with it: the lag gauges go before
    body = body[:-len(eof)] + lag + eof if body.endswith(eof) else body + lag
    return web.Response(body=body, headers={"Content-Type": content_type})


class HttpServer:
    """Runs :func:`create_app` on a TCP port. ``port=0`` picks a free one; read
    ``.port`` / ``.url`` after :meth:`start`."""

    def __init__(self, client: AgentClient, *, ready: ReadyCheck | None = None,
                 heartbeat_s: float = HEARTBEAT_S, shutdown_timeout_s: float = 5.0,
                 agents: Collection[str] | None = None, approver_auth: ApproverAuth | None = None) -> None:
        self.app = create_app(client, ready=ready, heartbeat_s=heartbeat_s, agents=agents,
                              approver_auth=approver_auth)
        self.shutdown_timeout_s = shutdown_timeout_s
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("HttpServer is not started")
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("HttpServer is already started")
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.shutdown_timeout_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        bound = [a for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2]
        self.port = int(bound[0][1]) if bound else port
        log.info("HTTP API listening on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


__all__ = ["HttpServer", "SubmitRequest", "create_app", "default_ready", "error_middleware"]
