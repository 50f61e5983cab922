"""A self-contained HTML dashboard over the telemetry views, for the HTTP API.

Routes (added to an existing aiohttp app by :func:`add_dashboard_routes`)::

    GET /dashboard                 the page (plain HTML + inline JS + SVG, no CDN); ?task=ID preselects a trace
    GET /api/stats?since=1h        latency percentiles, error rates, cost, histograms, time series
    GET /api/tasks?limit=50        recent task results, newest first
    GET /api/traces/{task_id}      a task's spans (from TELEMETRY, else rebuilt from its events)
    GET /api/lag                   consumer lag per durable (pending, ack pending, redelivered, waiting pulls)
    GET /api/live                  tasks in flight and approvals pending, with the command deciding each

Errors are JSON ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from nats.js import JetStreamContext

from agentstream.contracts import subjects
from agentstream.contracts.events import TaskFailed, TaskResult
from agentstream.runtime.adapters.jetstream import bucket
from agentstream.runtime.core.policy import decode_record
from agentstream.runtime.execution.engine import parse_deadline_key
from agentstream.runtime.interfaces.http_common import error_middleware
from agentstream.runtime.observability import views

JsGetter = Callable[[], JetStreamContext]
JS_GETTER_KEY: web.AppKey[JsGetter] = web.AppKey("agentstream_dashboard_js", JsGetter)  # type: ignore[arg-type]

MAX_SINCE_S = 30 * 86400.0
MAX_TASKS = 500
_encoder = msgspec.json.Encoder()


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _error(status: int, message: str) -> web.Response:
    return _json({"error": " ".join(message.split())[:500]}, status=status)


PAGE = Path(__file__).resolve().parent / "static" / "dashboard.html"  # shipped as package data


@functools.cache
def _page() -> bytes:
    # agentstream.runtime is a namespace package (importlib.resources cannot read it
    # under an editable install), so the page is read next to this module.
    return PAGE.read_bytes()


def task_row(r: TaskResult) -> dict[str, Any]:
    failed = isinstance(r, TaskFailed)
    return {
        "task_id": r.task_id, "agent": r.agent, "agent_version": r.agent_version,
        "status": "failed" if failed else "completed",
        "reason": r.reason if isinstance(r, TaskFailed) else "",
        "message": r.message if isinstance(r, TaskFailed) else "",
        "duration_s": max(0.0, r.finished_at - r.started_at), "started_at": r.started_at,
        "finished_at": r.finished_at, "steps": r.steps, "tool_calls": r.tool_calls,
        "input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens,
        "cost_usd": r.usage.cost_usd, "tenant_id": r.tenant_id, "user_id": r.user_id,
    }


async def dashboard_page(request: web.Request) -> web.Response:
    return web.Response(body=_page(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def api_stats(request: web.Request) -> web.Response:
    raw = request.query.get("since", "1h")
    try:
        since = views.parse_duration(raw)
    except ValueError as exc:
        return _error(400, str(exc))
    if since > MAX_SINCE_S:
        return _error(400, f"since must be at most {views.format_duration(MAX_SINCE_S)}, got {raw!r}")
    js = request.app[JS_GETTER_KEY]()
    stats, results, source = await views.load_stats(js, since)
    body = views.stats_json(stats)
    body.update({
        "source": source, "generated_at": time.time(),
        "histograms": {
            "agents": {g.name: views.histogram(g.durations) for g in stats.agents},
            "tools": {g.name: views.histogram(g.durations) for g in stats.tools},
            "models": {g.name: views.histogram(g.durations) for g in stats.models},
        },
        "series": views.time_series(results, since),
    })
    return _json(body)  # msgspec writes non-finite floats as null


async def api_tasks(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError:
        return _error(400, f"limit must be an integer, got {raw!r}")
    if not 1 <= limit <= MAX_TASKS:
        return _error(400, f"limit must be between 1 and {MAX_TASKS}, got {raw!r}")
    js = request.app[JS_GETTER_KEY]()
    results = await views.load_recent_results(js, limit)
    return _json({"tasks": [task_row(r) for r in results]})


async def api_trace(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    if not subjects.is_token(task_id):
        return _error(400, f"invalid task id {task_id!r}")
    js = request.app[JS_GETTER_KEY]()
    trace = await views.load_task_trace(js, task_id)
    if not trace.spans:
        return _error(404, f"no spans or events found for task {task_id}")
    t0 = min(s.start for s in trace.spans)
    parallel = views.parallel_groups(trace.spans)
    rows = views.tree_order(trace.spans)
    spans = []
    for depth, s in rows:
        d = msgspec.to_builtins(s)
        d.update({"depth": depth, "offset_s": s.start - t0, "duration_s": max(0.0, s.end - s.start),
                  "error": views.is_error(s), "error_type": views.error_type(s), "note": views.span_note(s),
                  "parallel": parallel.get(s.span_id, 0)})
        spans.append(d)
    return _json({"task_id": trace.task_id, "source": trace.source, "spans": spans,
                  "result": task_row(trace.result) if trace.result is not None else None,
                  "text": views.render_waterfall(trace.spans, rows=rows, parallel=parallel)})


async def api_lag(request: web.Request) -> web.Response:
    from agentstream.runtime.observability import lag

    lags = await lag.read_lag(request.app[JS_GETTER_KEY]())
    return _json({"consumers": lag.lag_json(lags), "generated_at": time.time()})


async def api_rollout(request: web.Request) -> web.Response:
    """Shadows (agreement with production, verdict) and canaries (status, weight, last window)."""
    from agentstream.runtime.adapters import jetstream as nats_adapters
    from agentstream.runtime.rollout.comparator import summary

    js = request.app[JS_GETTER_KEY]()
    outcomes = await nats_adapters.bucket(js, subjects.OUTCOMES.name)
    rollout = await nats_adapters.bucket(js, subjects.ROLLOUT.name)
    return _json(await summary(outcomes, rollout))
async def live_state(js: JetStreamContext) -> dict[str, Any]:
    """What is running now: every task with a live deadline (the runtime keeps
    one a task until it ends) and every approval still pending. A task parked
    on a human shows in both, so a stuck-looking task explains itself."""
    in_flight: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    try:
        deadlines = await (await bucket(js, subjects.DEADLINES.name)).items()
    except Exception:  # noqa: BLE001 - no bucket yet: no agent has run
        deadlines = []
    waiting: set[str] = set()
    try:
        records = [decode_record(e.value) for _, e in await (await bucket(js, subjects.APPROVALS.name)).items()
                   if e.value]
    except Exception:  # noqa: BLE001 - as above
        records = []
    for r in sorted(records, key=lambda r: r.request.requested_at):
        if r.status != "pending":
            continue
        q = r.request
        waiting.add(q.task_id)
        pending.append({"approval_id": q.approval_id, "task_id": q.task_id, "agent": q.agent, "tool": q.tool,
                        "arguments": q.arguments, "approvers": list(q.approvers), "requested_at": q.requested_at,
                        "deadline_at": q.deadline_at,
                        "decide": f"agentstream approve {q.approval_id} --as NAME"})
    for key, entry in deadlines:
        agent, task_id, call_id = parse_deadline_key(key)
        if call_id:
            continue
        try:
            due = float(entry.value)
        except ValueError:
            continue
        in_flight.append({"task_id": task_id, "agent": agent, "deadline_at": due,
                          "waiting_for_approval": task_id in waiting})
    in_flight.sort(key=lambda t: t["deadline_at"])
    return {"in_flight": in_flight, "pending_approvals": pending, "generated_at": time.time()}


async def api_live(request: web.Request) -> web.Response:
    return _json(await live_state(request.app[JS_GETTER_KEY]()))


async def evaluation_state(js: JetStreamContext, since_s: float) -> dict[str, Any]:
    """Online evaluation in the window: per agent and version, the tasks the
    evaluators scored, their mean groundedness and judge score, unsafe answers,
    drift alarms, and users' thumbs up and down (stream EVALS)."""
    from agentstream.contracts import codec
    from agentstream.contracts.events import DriftDetected, EvaluationScored, FeedbackSubmitted
    from agentstream.runtime.adapters.scan import scan

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    feedback: dict[str, dict[str, int]] = {}
    drift: list[dict[str, Any]] = []
    for raw in await scan(js, "EVALS", "evals.>", start_time=time.time() - since_s):
        try:
            ev = codec.any_event.decode(raw.data)
        except Exception:  # noqa: BLE001 - a foreign message is not ours to show
            continue
        if isinstance(ev, EvaluationScored):
            r = rows.setdefault((ev.agent, ev.agent_version), {"agent": ev.agent, "version": ev.agent_version,
                                                               "scored": 0, "groundedness": 0.0, "judged": 0,
                                                               "judge": 0.0, "unsafe": 0, "failed": 0})
            r["scored"] += 1
            r["groundedness"] += ev.groundedness
            r["unsafe"] += not ev.safety
            r["failed"] += ev.status != "completed"
            if ev.judge is not None:
                r["judged"] += 1
                r["judge"] += ev.judge
        elif isinstance(ev, FeedbackSubmitted):
            f = feedback.setdefault(ev.agent, {"up": 0, "down": 0})
            f[ev.rating] += 1
        elif isinstance(ev, DriftDetected):
            drift.append({"agent": ev.agent, "metric": ev.metric, "baseline": ev.baseline_mean,
                          "window": ev.window_mean, "at": ev.at})
    out = []
    for r in sorted(rows.values(), key=lambda r: (r["agent"], r["version"])):
        r["groundedness"] = r["groundedness"] / r["scored"] if r["scored"] else None
        r["judge"] = r["judge"] / r["judged"] if r["judged"] else None
        fb = feedback.get(r["agent"], {"up": 0, "down": 0})
        r["thumbs_up"], r["thumbs_down"] = fb["up"], fb["down"]
        out.append(r)
    return {"versions": out, "drift": drift[-20:], "feedback": feedback}


async def api_evals(request: web.Request) -> web.Response:
    raw = request.query.get("since", "1h")
    try:
        since = views.parse_duration(raw)
    except ValueError as exc:
        return _error(400, str(exc))
    return _json(await evaluation_state(request.app[JS_GETTER_KEY](), min(since, MAX_SINCE_S)))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Handler:
    """The HTTP API's error middleware around one route, so the routes answer
    JSON errors even on an app without that middleware."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        return await error_middleware(request, handler)

    wrapped.__name__ = handler.__name__
    return wrapped


def add_dashboard_routes(app: web.Application, js_getter: JsGetter) -> None:
    """Add ``GET /dashboard``, ``/api/stats``, ``/api/tasks``, ``/api/traces/{task_id}``
    to ``app``. ``js_getter()`` returns the JetStream context to read from, e.g.
    ``lambda: client.js`` for an :class:`AgentClient`. Call before the app starts."""
    app[JS_GETTER_KEY] = js_getter
    app.router.add_get("/dashboard", _guarded(dashboard_page))
    app.router.add_get("/api/stats", _guarded(api_stats))
    app.router.add_get("/api/tasks", _guarded(api_tasks))
    app.router.add_get("/api/traces/{task_id}", _guarded(api_trace))
    app.router.add_get("/api/lag", _guarded(api_lag))
    app.router.add_get("/api/rollout", _guarded(api_rollout))
    app.router.add_get("/api/evals", _guarded(api_evals))
    app.router.add_get("/api/live", _guarded(api_live))


__all__ = ["JS_GETTER_KEY", "add_dashboard_routes", "api_lag", "api_live", "api_stats", "api_tasks", "api_trace",
           "dashboard_page", "live_state"]
