"""``agentstream``: demo, up, worker, submit, watch, result, timeline, asyncapi.

User errors (bad arguments, an unreachable broker, bad configuration) print one
line and exit non-zero; tracebacks are for bugs only. Exit codes live in
:mod:`agentstream.runtime.interfaces.exit_codes`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import msgspec

from agentstream.contracts import codec
from agentstream.contracts.events import TaskCompleted, TaskEvent, TaskFailed, TaskResult
from agentstream.runtime.adapters.embedded_broker import DirLock, EmbeddedNats
from agentstream.runtime.adapters.jetstream import redact_url
from agentstream.runtime.config.auth import NatsAuth, Role, nats_auth
from agentstream.runtime.config.settings import Settings, broker_url
from agentstream.runtime.core.errors import AgentstreamError, ResultTimeout
from agentstream.runtime.interfaces.doctor import probe_at_start_up
from agentstream.runtime.interfaces.exit_codes import CommandExit, ExitCode, for_error

if TYPE_CHECKING:
    from agentstream.runtime.interfaces.client import AgentClient

# Older names, kept for subcommands written against them.
EXIT_USAGE = ExitCode.USAGE
EXIT_FAILED = ExitCode.TASK_FAILED

_N = TypeVar("_N", int, float)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"agentstream: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def _number(kind: type[_N], what: str, ok: Callable[[_N], bool]) -> Callable[[str], _N]:
    """An argparse type: ``kind`` parsed and checked, else a usage error (exit 2).
    A budget or limit of 0 would otherwise be taken for 'none set' downstream."""
    noun = "whole number" if kind is int else "number"

    def parse(raw: str) -> _N:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} {noun}, got {raw!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected a {what} {noun}, got {raw!r}")
        return value

    return parse


_positive_int = _number(int, "positive", lambda v: v > 0)
_positive_float = _number(float, "positive", lambda v: v > 0)
_non_negative_float = _number(float, "non-negative", lambda v: v >= 0)
_port = _number(int, "port (0-65535)", lambda v: 0 <= v <= 65535)


def _setup_logging(settings: Settings) -> None:
    from agentstream.runtime.observability.logs import configure_logging
    from agentstream.runtime.observability.telemetry_config import TelemetryConfig

    logging.basicConfig(level=getattr(logging, settings.log_level, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # JSON logs with trace and span ids (AGENTSTREAM_LOG_FORMAT=json); PII redacted either way.
    configure_logging(TelemetryConfig.from_env(), worker=settings.worker_id)


# ----------------------------------------------------------------- output


def _result_line(res: TaskResult) -> str:
    if isinstance(res, TaskCompleted):
        return res.output
    return f"FAILED ({res.reason}): {res.message}"


def _print_result(res: TaskResult, as_json: bool) -> int:
    """Print a task's result (its event as JSON with ``as_json``); the exit code."""
    print(codec.encode(res).decode() if as_json else _result_line(res))
    return 0 if isinstance(res, TaskCompleted) else EXIT_FAILED


def _write_or_print(text: str, out: str | None, *, end: str = "\n") -> int:
    """Write ``text`` to the file ``out`` as it is, or print it followed by ``end``."""
    if out:
        try:
            Path(out).write_text(text)
        except OSError as exc:
            raise AgentstreamError(f"cannot write {out}: {_os_reason(exc)}") from None
        print(f"wrote {out}")
    else:
        print(text, end=end)
    return 0


# When each kind of event happened, by its own fields; first non-zero wins
# (a ToolCallCompleted from an old producer has no times).
_EVENT_TIMES = ("finished_at", "decided_at", "at", "requested_at", "submitted_at", "started_at")


def _event_time(ev: TaskEvent) -> float | None:
    for attr in _EVENT_TIMES:
        value = getattr(ev, attr, None)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def _event_line(ev: TaskEvent) -> str:
    """The event's own time, not now: `watch` replays a task's past events too."""
    name = type(ev).__name__
    body = msgspec.json.encode(ev).decode()
    at = _event_time(ev)
    clock = time.strftime("%H:%M:%S", time.localtime(at)) if at is not None else "--:--:--"
    return f"{clock} {name:<20} {body}"


def _os_reason(exc: BaseException) -> str:
    """'address already in use', not Python's '[Errno 98] error while attempting to bind ...'."""
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return str(exc)


# ----------------------------------------------------------------- commands


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.adapters.openai_model import DEFAULT_BASE_URL
    from agentstream.runtime.interfaces.client import AgentClient
    from agentstream.runtime.observability.timeline import render
    from agentstream.runtime.service.runtime import Runtime

    with tempfile.TemporaryDirectory(prefix="agentstream-demo-") as tmp:
        settings = dataclasses.replace(settings, data_dir=Path(tmp))
        rt = Runtime.from_settings(settings, agents=[args.agent], tools="all")
        print("agentstream demo")
        print(f"  broker : {'external ' + redact_url(settings.nats_url) if settings.nats_url else 'embedded nats-server (JetStream, temp dir)'}")
        failures = 0
        try:
            # Inside the try: a start-up that fails half way must not leave its broker behind.
            await rt.start()
            engine = rt.engines[args.agent]
            if settings.model:
                print(f"  model  : {engine.llm.name} at {os.environ.get('OPENAI_BASE_URL', DEFAULT_BASE_URL)}")
            else:
                print(f"  model  : scripted ({engine.llm.name}); no model configured: set AGENTSTREAM_MODEL, "
                      "OPENAI_BASE_URL and OPENAI_API_KEY to use a real one")
            print(f"  agent  : {args.agent} with {len(engine.spec.tools)} tools: "
                  + ", ".join(t.name for t in engine.spec.tools))
            print(f"  workers: 1 agent consumer, {len(rt.app.tools)} tool consumers (in this process)\n")
            samples = rt.app.samples.get(args.agent) or ["Hello"]
            # rt.start() provisioned the streams and buckets already.
            async with await AgentClient.connect(rt.url, provision=False, auth=rt.auth("gateway")) as client:
                supervisor = asyncio.create_task(_demo_supervisor(client))
                try:
                    # Submitted together: the agent and tool workers run them concurrently.
                    # Conversation ids fresh per run: trace UIs group by them (sessions),
                    # and the agent would otherwise see an earlier run's turns as history.
                    run = os.urandom(3).hex()
                    ids = [await client.submit(args.agent, q, user_id="demo-user",
                                               conversation_id=f"demo-{run}-{i}")
                           for i, q in enumerate(samples)]
                    # A follow-up that continues the first conversation.
                    first = await client.result(ids[0], timeout=args.timeout)
                    follow = await client.submit(args.agent, "Please refund it.", user_id="demo-user",
                                                 conversation_id=f"demo-{run}-0")
                    pairs = list(zip([*samples, "Please refund it. (same conversation as task 1)"],
                                     [*ids, follow]))
                    for n, (question, task_id) in enumerate(pairs, 1):
                        res = first if task_id == ids[0] else await client.result(task_id, timeout=args.timeout)
                        events = [ev async for ev in client.events(task_id, timeout=args.timeout)]
                        print(f"[{n}/{len(pairs)}] {question}")
                        print(f"      -> {_result_line(res)}")
                        print("      " + render(events).replace("\n", "\n      "))
                        print()
                        failures += isinstance(res, TaskFailed)
                finally:
                    supervisor.cancel()  # also when a result times out: not left running on a closed client
                    with contextlib.suppress(asyncio.CancelledError):
                        await supervisor
        finally:
            await rt.stop()
        if failures:
            print(f"{len(pairs) - failures} of {len(pairs)} tasks completed, {failures} failed: "
                  "see the FAILED lines above.")
            return EXIT_FAILED
        print(f"{len(pairs)} of {len(pairs)} tasks completed; parallel tool calls are marked '||'.")
        return 0


async def _demo_supervisor(client: AgentClient) -> None:
    """Plays the human in the loop: approves each pending approval as
    'supervisor', printing what it approved (the session waited parked in KV)."""
    from agentstream.runtime.interfaces import approvals

    seen: set[str] = set()
    while True:
        try:
            pending = await approvals.list_approvals(client)
        except approvals.ApprovalError:
            pending = []
        for rec in pending:
            q = rec.request
            if q.approval_id in seen:
                continue
            seen.add(q.approval_id)
            args_text = msgspec.json.encode(q.arguments).decode()
            print(f"  [approval] {q.tool}{args_text} needs a supervisor: approving as 'supervisor' "
                  f"(agentstream approve {q.approval_id} --as supervisor)", flush=True)
            await approvals.decide(client, q.approval_id, approved=True, approver="supervisor",
                                   reason="demo")
        await asyncio.sleep(0.1)


async def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.interfaces.client import AgentClient
    from agentstream.runtime.interfaces.http_api import HttpServer
    from agentstream.runtime.service.runtime import Runtime

    # Before anything can fail half way: a signal during start-up then stops
    # it right after, through the clean-up below, instead of killing the
    # process and orphaning its nats-server.
    stop = _stop_on_signal()
    embedded = settings.nats_url is None
    url_file = settings.data_dir / "nats.url"
    lock = DirLock(settings.data_dir / "agentstream.lock") if embedded else None
    if lock is not None:
        _lock_data_dir(lock, settings)
    rt: Runtime | None = None
    client: AgentClient | None = None
    server: HttpServer | None = None
    probe: asyncio.Task[None] | None = None
    try:
        agents = (args.agent or list_agents(settings)) if settings.run_workers else []
        tools = args.tools if settings.run_workers else None
        rt = Runtime.from_settings(settings, agents=agents, tools=tools)
        if embedded:
            rt.embedded_port = args.nats_port
        await rt.start()
        if embedded:
            url_file.write_text(rt.url + "\n")
        # rt.start() provisioned already; the API plays client and approval service
        client = await AgentClient.connect(rt.url, provision=False, auth=rt.auth("gateway"))
        # With its workers, `up` knows the app: a task for an agent it does not
        # define is refused (404) instead of waiting forever. API-only, workers
        # elsewhere may run any app, so every agent is accepted.
        server = HttpServer(client, agents=rt.app.agents if settings.run_workers else None)
        try:
            await server.start(settings.http_host, settings.http_port)
        except (OSError, OverflowError) as exc:
            raise AgentstreamError(f"cannot listen on {settings.http_host}:{settings.http_port}: "
                                   f"{_os_reason(exc)} (AGENTSTREAM_HTTP_HOST, AGENTSTREAM_HTTP_PORT)") from None
        print(f"agentstream up: NATS {redact_url(rt.url)}; HTTP {server.url}; agents: {', '.join(agents) or '-'}; "
              f"tools: {tools or '-'}. Ctrl-C or SIGTERM stops gracefully.", flush=True)
        probe = probe_at_start_up(rt.engines)  # warns when the model cannot call tools
        await _until_stopped(stop, rt.broker)
        print("agentstream: shutting down (finishing in-flight steps)...", file=sys.stderr, flush=True)
    finally:
        # Whatever failed: stop what was started, newest first, and leave no
        # nats.url pointing at a broker that is gone. The broker is stopped
        # even if closing the API or the client fails.
        if probe is not None:
            probe.cancel()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.stop()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        if rt is not None:
            await rt.stop()
        if embedded:  # ours, or a crashed predecessor's: we hold the data dir's lock
            with contextlib.suppress(OSError):
                url_file.unlink()
        if lock is not None:
            lock.release()
    return 0


async def _until_stopped(stop: asyncio.Event, broker: EmbeddedNats | None) -> None:
    """Until SIGTERM/SIGINT, or until the embedded broker dies: then nothing
    can work again in this process, so end it (non-zero) for a supervisor to
    restart, instead of serving 503s while /healthz says all is well."""
    if broker is None:
        await stop.wait()
        return
    stopped = asyncio.create_task(stop.wait())
    died = asyncio.create_task(broker.exited())
    try:
        await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        died.cancel()
    if died.done() and not died.cancelled() and not stop.is_set():
        code = died.result()
        how = f"signal {-code}" if code < 0 else f"code {code}"
        raise AgentstreamError(f"the embedded nats-server exited ({how}); see {broker.log_path}")


def _lock_data_dir(lock: DirLock, settings: Settings) -> None:
    """One `up` per data dir: a second would start another nats-server on the
    same store and overwrite the first one's nats.url."""
    try:
        acquired = lock.acquire()
    except OSError as exc:
        raise AgentstreamError(f"cannot use data dir {settings.data_dir}: {_os_reason(exc)} "
                               "(AGENTSTREAM_DATA_DIR)") from None
    if acquired:
        return
    try:
        url = (settings.data_dir / "nats.url").read_text().strip() or "starting"
    except OSError:
        url = "starting"
    pid = lock.holder()
    raise AgentstreamError(
        f"agentstream is already running in this directory (data dir {settings.data_dir}; broker {url}, "
        f"pid {pid if pid is not None else '?'}); stop it first or set AGENTSTREAM_DATA_DIR")


def _auth(settings: Settings, role: Role) -> NatsAuth:
    """The credentials of ``role`` for this command (config.auth.nats_auth)."""
    return nats_auth(role, broker_url(settings), settings.data_dir)


def list_agents(settings: Settings) -> list[str]:
    from agentstream.runtime.core.app import load_app

    return sorted(load_app(settings.app).agents)


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.interfaces.rollout_commands import shadow_config
    from agentstream.runtime.service.runtime import Runtime

    if not args.agent and args.tools is None and not args.comparator:
        raise AgentstreamError("say what to run: --agent NAME (repeatable) and/or --tools all|name,name")
    shadow = shadow_config(args)
    if shadow is not None and args.tools is not None:
        raise AgentstreamError("a shadow serves its own tool calls; run --tools in a separate production worker")
    settings = dataclasses.replace(settings, nats_url=broker_url(settings))
    rt = Runtime.from_settings(settings, agents=args.agent or [], tools=args.tools)
    rt.version, rt.shadow, rt.comparator, rt.canary = args.version, shadow, args.comparator, args.canary
    if args.canary and (shadow is not None or not args.version):
        raise AgentstreamError("--canary runs a declared candidate for real: give --version, and no --shadow")
    for name in args.agent or []:
        rt.app.get_version(name, args.version)  # an unknown version is a usage error, before connecting
    stop = _stop_on_signal()
    probe: asyncio.Task[None] | None = None
    try:
        await rt.start()
        role = f" shadow={shadow.label} sample={shadow.sample_pct:g}%" if shadow is not None else ""
        print(f"agentstream worker {settings.worker_id}: agents={','.join(args.agent or []) or '-'} "
              f"tools={args.tools or '-'}{role} on {redact_url(rt.url)}", flush=True)
        probe = probe_at_start_up(rt.engines)  # warns when the model cannot call tools
        await stop.wait()
    finally:
        if probe is not None:
            probe.cancel()
        await rt.stop()
    return 0


async def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.interfaces import waiting
    from agentstream.runtime.interfaces.client import AgentClient

    meta = {}
    for kv in args.meta or []:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise AgentstreamError(f"--meta {kv!r}: expected KEY=VALUE")
        meta[k] = v
    async with await AgentClient.connect(broker_url(settings), auth=_auth(settings, "client")) as client:
        try:
            task_id = await client.submit(args.agent, args.input, task_id=args.task_id, tenant_id=args.tenant,
                                          user_id=args.user, conversation_id=args.conversation, metadata=meta,
                                          max_steps=args.max_steps, deadline_s=args.deadline,
                                          max_tokens=args.max_tokens, max_cost_usd=args.max_cost)
        except ValueError as exc:
            raise AgentstreamError(str(exc)) from None
        # With --json stdout is one JSON document and nothing else.
        if not (args.json and args.wait):
            print(msgspec.json.encode({"task_id": task_id}).decode() if args.json else task_id, flush=True)
        why = await waiting.unserved(client, args.agent)
        if why:
            raise CommandExit(f"{why}; task {task_id} is queued and runs when a worker for {args.agent!r} starts "
                              f"(`agentstream worker --agent {args.agent}`; check the name: "
                              f"`agentstream watch {task_id}` follows it)", ExitCode.NOT_FOUND)
        if not args.wait:
            return 0
        res = await waiting.await_result(client, task_id, args.timeout)
        return _print_result(res, args.json)



async def cmd_result(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.interfaces.client import AgentClient

    async with await AgentClient.connect(broker_url(settings), auth=_auth(settings, "client")) as client:
        try:
            res = await client.result(args.task_id, timeout=args.wait)
        except ResultTimeout:
            raise CommandExit(f"no result for task {args.task_id} within {args.wait:g}s; if it is running, "
                              f"`agentstream watch {args.task_id}` follows it", ExitCode.WAIT_TIMEOUT) from None
        return _print_result(res, args.json)


async def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.interfaces import waiting
    from agentstream.runtime.interfaces.client import AgentClient

    async with await AgentClient.connect(broker_url(settings), auth=_auth(settings, "client")) as client:
        grace = waiting.UNKNOWN_TASK_GRACE_S
        await waiting.require_task(client, args.task_id, min(args.timeout or grace, grace))
        code = 0
        async for ev in client.events(args.task_id, timeout=args.timeout):
            print(_event_line(ev), flush=True)
            if isinstance(ev, TaskFailed):
                code = EXIT_FAILED
        return code



async def cmd_timeline(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.interfaces.client import AgentClient
    from agentstream.runtime.observability.timeline import render

    async with await AgentClient.connect(broker_url(settings), auth=_auth(settings, "client")) as client:
        events = [ev async for ev in client.events(args.task_id, timeout=args.timeout)]
        print(render(events))
        return 0


async def cmd_approvals(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.interfaces import approvals
    from agentstream.runtime.interfaces.client import AgentClient

    async with await AgentClient.connect(broker_url(settings), auth=_auth(settings, "approver")) as client:
        records = await approvals.list_approvals(client, status=None if args.all else "pending")
        if args.json:
            print(msgspec.json.encode(records).decode())
            return 0
        if not records:
            print("no pending approvals" if not args.all else "no approvals")
            return 0
        for r in records:
            q = r.request
            args_text = msgspec.json.encode(q.arguments).decode()
            due = max(0.0, q.deadline_at - time.time())
            who = ", ".join(q.approvers) or "any allowed identity"
            steps = approvals.plan_lines(q)
            if steps:  # a whole plan: its digest here, each step with its arguments below
                args_text = f"plan {q.arguments.get('plan_digest', '')} ({len(steps)} steps)"
            line = f"{q.approval_id}  {r.status:<9} {q.agent}/{q.tool} {args_text}  task {q.task_id}"
            line += f"  (approvers: {who}; expires in {due:.0f}s)" if r.status == "pending" else \
                (f"  by {r.decision.approver}" if r.decision else "")
            print(line)
            for s in steps:
                print(s)
        return 0


async def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.interfaces import approvals
    from agentstream.runtime.interfaces.client import AgentClient

    approved = args.command == "approve"
    async with await AgentClient.connect(broker_url(settings), auth=_auth(settings, "approver")) as client:
        d = await approvals.decide(client, args.approval_id, approved=approved,
                                   approver=args.as_ or approvals.default_identity(), reason=args.reason or "")
    print(f"{'approved' if approved else 'denied'} {d.approval_id} as {d.approver}")
    return 0


async def cmd_asyncapi(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.handlers.protocol import asyncapi_json

    return _write_or_print(asyncapi_json(), args.out)


async def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.contracts.schema import dumps, json_schema

    return _write_or_print(dumps(json_schema()).rstrip("\n") + "\n", args.out, end="")


def _stop_on_signal() -> asyncio.Event:
    """An event SIGTERM or SIGINT sets (instead of ending the process)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


# ----------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="agentstream", description="Event-driven LLM agents on NATS JetStream.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="run the sample support desk end to end on an embedded broker")
    d.add_argument("--agent", default="support")
    d.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds to wait for each result")
    d.set_defaults(fn=cmd_demo)

    u = sub.add_parser("up", help="run the runtime as a service: broker, workers, HTTP API")
    u.add_argument("--agent", action="append", help="agents to serve (default: all in the app)")
    u.add_argument("--tools", default="all", help="tools to serve: all, or name,name")
    u.add_argument("--nats-port", type=_port, default=4222, help="embedded broker port (0: any free port)")
    u.set_defaults(fn=cmd_up)

    w = sub.add_parser("worker", help="run one replica: an agent consumer and/or tool consumers")
    w.add_argument("--agent", action="append", help="agent to serve (repeatable)")
    w.add_argument("--tools", help="tools to serve: all, or name,name")
    from agentstream.runtime.interfaces import rollout_commands

    rollout_commands.add_worker_flags(w)
    w.set_defaults(fn=cmd_worker)

    s = sub.add_parser("submit", help="submit a task; prints its id (and result with --wait)")
    s.add_argument("agent")
    s.add_argument("input")
    s.add_argument("--wait", action="store_true", help="wait for and print the result")
    s.add_argument("--timeout", type=_positive_float, default=120.0)
    s.add_argument("--json", action="store_true", help="print the result event as JSON")
    s.add_argument("--task-id")
    s.add_argument("--tenant", default="default")
    s.add_argument("--user", default="anonymous")
    s.add_argument("--conversation", default="")
    s.add_argument("--meta", action="append", metavar="KEY=VALUE")
    s.add_argument("--max-steps", type=_positive_int)
    s.add_argument("--deadline", type=_positive_float, help="seconds")
    s.add_argument("--max-tokens", type=_positive_int, help="token budget for the task (input + output)")
    s.add_argument("--max-cost", type=_positive_float, help="cost budget for the task, USD")
    s.set_defaults(fn=cmd_submit)

    r = sub.add_parser("result", help="print a task's result")
    r.add_argument("task_id")
    r.add_argument("--wait", type=_non_negative_float, default=5.0, help="seconds (0: only look)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=cmd_result)

    wa = sub.add_parser("watch", help="stream a task's events as they happen, until its result")
    wa.add_argument("task_id")
    wa.add_argument("--timeout", type=_positive_float, default=None)
    wa.set_defaults(fn=cmd_watch)

    t = sub.add_parser("timeline", help="draw a task's timeline: model turns and parallel tool calls")
    t.add_argument("task_id")
    t.add_argument("--timeout", type=_positive_float, default=10.0)
    t.set_defaults(fn=cmd_timeline)

    ap = sub.add_parser("approvals", help="list tool calls waiting for a human decision")
    ap.add_argument("--all", action="store_true", help="also decided, expired and cancelled ones")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(fn=cmd_approvals)

    for verb, text in (("approve", "approve a pending tool call"), ("deny", "deny a pending tool call")):
        dp = sub.add_parser(verb, help=text)
        dp.add_argument("approval_id")
        dp.add_argument("--as", dest="as_", metavar="NAME",
                        help="your identity (default: $AGENTSTREAM_APPROVER, else $USER)")
        dp.add_argument("--reason", default="", help="why (optional, as over HTTP)")
        dp.set_defaults(fn=cmd_decide)

    from agentstream.runtime.interfaces.admin import add_parser as add_admin
    from agentstream.runtime.interfaces.doctor import add_parser as add_doctor
    from agentstream.runtime.interfaces.eval_command import add_parser as add_eval
    from agentstream.runtime.interfaces.lint_command import add_parser as add_lint
    from agentstream.runtime.interfaces.view_commands import add_stats_parser, add_trace_parser

    add_lint(sub)
    add_admin(sub)
    rollout_commands.add_parsers(sub)
    add_doctor(sub)
    add_trace_parser(sub)
    add_stats_parser(sub)
    add_eval(sub)
    from agentstream.runtime.interfaces.memory_command import add_parser as add_memory

    add_memory(sub)

    a = sub.add_parser("asyncapi", help="export the AsyncAPI document of the protocol")
    a.add_argument("--out")
    a.set_defaults(fn=cmd_asyncapi)

    sc = sub.add_parser("schema", help="export the JSON Schema of every event")
    sc.add_argument("--out")
    sc.set_defaults(fn=cmd_schema)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        _setup_logging(settings)
        code: int = asyncio.run(args.fn(args, settings))
    except AgentstreamError as exc:
        sys.stderr.write(f"agentstream: error: {exc}\n")
        return for_error(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return code


if __name__ == "__main__":
    raise SystemExit(main())
