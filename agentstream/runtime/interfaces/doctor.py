"""``agentstream doctor``: one line per backing service a deployment uses, so a
newcomer learns what is wrong before a task fails silently.

Checked: the broker (reachable, credentials accepted, JetStream on, streams
and buckets present, the agents' partitioned inbox), the model server (a probe with one tool: answers? calls
the tool? reports usage? how long?), whether agents with tools can use that
model, and the OTLP endpoint when an OTLP exporter is configured. The vector
store gets its line when memory lands.

Exit code: 0 when nothing failed (warnings allowed), 4 when the broker cannot
be reached, 1 when another check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agentstream.contracts import subjects
from agentstream.runtime.config.settings import Settings, broker_url
from agentstream.runtime.core.errors import AgentstreamError
from agentstream.runtime.interfaces.exit_codes import ExitCode

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "-"


@dataclass(frozen=True)
class Check:
    level: str
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.level:<4}  {self.name:<10}  {self.detail}"


async def _inbox_check(js: Any) -> Check:
    """The agents' partitioned inbox (EVENTS' subject transform, docs/scaling.md):
    made by whichever worker or client first provisions, so its absence before
    then is not a fault."""
    from agentstream.runtime.adapters import jetstream
    from agentstream.runtime.observability.lag import partition_of

    stream = subjects.EVENTS_STREAM
    try:
        info = await js.stream_info(stream)
    except Exception:  # noqa: BLE001 - not found, or no permission: not there to us
        return Check(SKIP, "inbox", f"{stream} not created yet (the first worker or client creates it)")
    parts = jetstream.inbox_partitions(info.config)
    if parts is None:
        return Check(FAIL, "inbox", f"stream {stream} is not partitioned (no subject transform): start a "
                                    "worker of this version to add it (docs/scaling.md, 'Upgrading')")
    try:
        consumers = [c for c in await js.consumers_info(stream) if partition_of(str(c.name)) is not None]
    except Exception:  # noqa: BLE001 - a role that may not list consumers still gets the count
        return Check(OK, "inbox", f"{parts} partitions in {stream}")
    waiting = sum(int(c.num_pending or 0) + int(c.num_ack_pending or 0) for c in consumers)
    return Check(OK, "inbox", f"{parts} partitions in {stream}, {waiting} tool result(s) waiting, "
                              f"{len(consumers)} partition consumer(s)")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("doctor", help="check the broker, the model server and the OTLP endpoint, one line each")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for the model probe (default 30)")
    p.set_defaults(fn=cmd_doctor)


async def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    checks: list[Check] = []
    broker_ok = await _broker_checks(settings, checks)
    probe = await _model_check(args.timeout, checks)
    _agents_check(settings, probe, checks)
    checks.append(await _otlp_check())
    checks.append(Check(SKIP, "vectors", "no vector store in this deployment"))
    for c in checks:
        print(c.line(), flush=True)
    if not broker_ok:
        return ExitCode.BROKER_UNREACHABLE
    return ExitCode.TASK_FAILED if any(c.level == FAIL for c in checks) else ExitCode.OK


async def _broker_checks(settings: Settings, checks: list[Check]) -> bool:
    from agentstream.runtime.adapters import jetstream
    from agentstream.runtime.config.auth import nats_auth

    try:
        url = broker_url(settings)
    except AgentstreamError as exc:
        checks.append(Check(FAIL, "broker", str(exc)))
        return False
    t0 = time.monotonic()
    try:
        nc = await jetstream.connect(url, name="agentstream-doctor", reconnect=False,
                                     auth=nats_auth("observer", url, settings.data_dir))
    except AgentstreamError as exc:
        text = str(exc)
        if "uthorization" in text:
            text += " (credentials missing or rejected)"
        checks.append(Check(FAIL, "broker", text))
        return False
    try:
        creds = " with the credentials in the URL" if urlsplit(url.split(",")[0]).username else ""
        checks.append(Check(OK, "broker", f"{url} reachable{creds} in {(time.monotonic() - t0) * 1000:.0f} ms "
                                          f"(nats-server {nc.connected_server_version})"))
        js = nc.jetstream()
        try:
            info = await js.account_info()
        except Exception as exc:  # noqa: BLE001 - any failure here means: no JetStream for us
            checks.append(Check(FAIL, "jetstream", f"not available: {exc or type(exc).__name__} "
                                                   "(start nats-server with -js)"))
            return True
        checks.append(Check(OK, "jetstream", f"on: {info.streams} streams, {info.consumers} consumers, "
                                             f"{info.storage / 1e6:.1f} MB stored"))
        missing: list[str] = []
        for sd in subjects.STREAMS:
            try:
                await js.stream_info(sd.name)
            except Exception:  # noqa: BLE001 - not found, or no permission: missing to us
                missing.append(sd.name)
        for bd in subjects.BUCKETS:
            try:
                await js.stream_info(f"KV_{bd.name}")
            except Exception:  # noqa: BLE001
                missing.append(f"KV {bd.name}")
        total = len(subjects.STREAMS) + len(subjects.BUCKETS)
        if missing:
            checks.append(Check(WARN, "streams", f"{len(missing)} of {total} missing: {', '.join(missing)} "
                                                 "(`agentstream up` or any worker creates them)"))
        else:
            checks.append(Check(OK, "streams", f"all {len(subjects.STREAMS)} streams and "
                                               f"{len(subjects.BUCKETS)} buckets present"))
        checks.append(await _inbox_check(js))
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return True


async def _model_check(timeout_s: float, checks: list[Check]) -> Any:
    from agentstream.runtime.adapters.model_probe import probe_model
    from agentstream.runtime.adapters.openai_model import OpenAIChatModel

    try:
        llm = OpenAIChatModel.from_env(os.environ)
    except AgentstreamError as exc:
        checks.append(Check(FAIL, "model", str(exc)))
        return None
    if llm is None:
        checks.append(Check(SKIP, "model", "scripted models (AGENTSTREAM_MODEL unset): nothing to probe"))
        return None
    async with llm:
        result = await probe_model(llm, timeout_s=min(timeout_s, llm.timeout_s))
    where = f" at {llm.base_url}"
    if not result.answered:
        checks.append(Check(FAIL, "model", result.summary() + where))
    elif not result.called_tool or not result.reported_usage or result.ignored_cap:
        checks.append(Check(WARN, "model", result.summary() + where))
    else:
        checks.append(Check(OK, "model", result.summary() + where))
    return result


def _agents_check(settings: Settings, probe: Any, checks: list[Check]) -> None:
    if probe is None or not probe.answered:
        return
    try:
        from agentstream.runtime.core.app import load_app

        app = load_app(settings.app)
    except AgentstreamError as exc:
        checks.append(Check(WARN, "agents", f"cannot load the app: {exc}"))
        return
    with_tools = sorted(name for name, a in app.agents.items() if a.spec.tools)
    if not with_tools:
        checks.append(Check(OK, "agents", "no agent has tools"))
    elif probe.called_tool:
        checks.append(Check(OK, "agents", f"{', '.join(with_tools)}: have tools, and the model calls tools"))
    else:
        checks.append(Check(WARN, "agents", f"{', '.join(with_tools)} have tools, but model {probe.model} did not "
                                            "call one: they will answer without their tools (made-up answers). "
                                            "Use a model or chat format with tool calling (docs/models.md)"))


async def _otlp_check() -> Check:
    from agentstream.runtime.observability.telemetry_config import TelemetryConfig, otlp_protocol

    try:
        cfg = TelemetryConfig.from_env()
    except AgentstreamError as exc:
        return Check(FAIL, "otlp", str(exc))
    uses = [kind for kind, names in (("traces", cfg.traces_exporters), ("metrics", cfg.metrics_exporters))
            if "otlp" in names]
    if not uses:
        return Check(SKIP, "otlp", f"not used (traces: {','.join(cfg.traces_exporters) or 'none'}; "
                                   f"metrics: {','.join(cfg.metrics_exporters) or 'none'})")
    # The protocol the exporters will use: the variables, else what the endpoint says (port 4318: HTTP).
    protocol = otlp_protocol(cfg, uses[0])
    default = "http://localhost:4318" if protocol == "http/protobuf" else "http://localhost:4317"
    endpoint = cfg.otlp_endpoint or default
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 4318 if protocol == "http/protobuf" else 4317)
    t0 = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=3)
    except (OSError, TimeoutError) as exc:
        why = "no answer within 3s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
        return Check(FAIL, "otlp", f"{endpoint} ({protocol}, for {' and '.join(uses)}) unreachable: {why}")
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return Check(OK, "otlp", f"{endpoint} ({protocol}, for {' and '.join(uses)}) accepts connections "
                             f"({(time.monotonic() - t0) * 1000:.0f} ms; protocol not verified)")


def probe_at_start_up(engines: dict[str, Any], env: Any = None) -> asyncio.Task[None] | None:
    """In the background, probe the real model of the agents that have tools,
    and log a warning if it does not call the offered tool: otherwise such an
    agent answers without its tools and nothing says why. Off with
    AGENTSTREAM_MODEL_PROBE=0; scripted models are not probed."""
    import logging

    from agentstream.runtime.adapters.model_probe import probe_model
    from agentstream.runtime.adapters.openai_model import OpenAIChatModel
    from agentstream.runtime.config.settings import env_bool

    if not env_bool(os.environ if env is None else env, "AGENTSTREAM_MODEL_PROBE", True):
        return None
    by_model: dict[int, tuple[OpenAIChatModel, list[str]]] = {}
    for name, engine in engines.items():
        llm = getattr(engine.llm, "inner", engine.llm)
        if isinstance(llm, OpenAIChatModel) and engine.spec.tools:
            by_model.setdefault(id(llm), (llm, []))[1].append(name)
    if not by_model:
        return None
    log = logging.getLogger("agentstream.doctor")

    async def run() -> None:
        for llm, agents in by_model.values():
            result = await probe_model(llm, timeout_s=llm.timeout_s)
            if not result.answered:
                log.warning("model probe: %s; agents %s cannot work until it answers (agentstream doctor)",
                            result.summary(), ", ".join(agents))
            elif not result.called_tool:
                log.warning("model %s at %s did not call the tool it was offered in a probe; agents with tools "
                            "(%s) will answer without them. Use a model or chat format with tool calling "
                            "(docs/models.md; agentstream doctor)", llm.name, llm.base_url, ", ".join(agents))

    return asyncio.get_running_loop().create_task(run(), name="agentstream-model-probe")
