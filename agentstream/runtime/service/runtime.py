"""Wires a process: broker (embedded or external), streams, consumers for the
agents and tools it serves, the deadline sweeper, and optionally the HTTP API.

``agentstream up``, ``agentstream worker`` and ``agentstream demo`` are all this
class with different roles; there is no second code path for the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from agentstream.contracts import subjects
from agentstream.handlers.agent import inbox_handler, task_handler, task_rejected
from agentstream.handlers.shadow import (
    comparator_handler,
    routed_task_handler,
    shadow_task_handler,
    shadow_tool_handler,
)
from agentstream.handlers.tools import tool_handler
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters import storage
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.auth import NatsAuth, Role, nats_auth
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import App, load_app
from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.core.policy import Policy, load_prices, parse_approvers
from agentstream.runtime.core.ports import LLM, BlobStore, Bus, SessionStore
from agentstream.runtime.core.tools import Tool
from agentstream.runtime.execution.consumer import ConsumerSettings, DeadLetterHook, Handler, PullConsumer
from agentstream.runtime.execution.engine import AgentEngine, parse_deadline_key
from agentstream.runtime.execution.partitions import PartitionedConsumer, member_id
from agentstream.runtime.execution.pull import Outage
from agentstream.runtime.execution.tool_runner import ToolRunner
from agentstream.runtime.observability.telemetry import Telemetry, setup_telemetry
from agentstream.runtime.observability.telemetry_config import TelemetryConfig
from agentstream.runtime.rollout.canary_control import CanaryStore, Controller, Router, candidate_durables
from agentstream.runtime.rollout.comparator import Comparator
from agentstream.runtime.rollout.namespace import PrefixedStore, ReadOnlyStore, ShadowBus
from agentstream.runtime.rollout.shadow import CostMeter, ShadowBudget, ShadowConfig, ShadowToolRunner

if TYPE_CHECKING:
    from agentstream.runtime.service.memory import MemoryService

log = logging.getLogger("agentstream.service")


def select_model(app: App, agent: str, settings: Settings, version: str | None = None) -> LLM:
    """A real OpenAI-compatible model when AGENTSTREAM_MODEL is set, else the
    agent's (or its version's) scripted model."""
    if settings.model:
        from agentstream.runtime.adapters.openai_model import OpenAIChatModel

        llm = OpenAIChatModel.from_env(os.environ)
        assert llm is not None
        return llm
    spec = app.get_version(agent, version)
    if spec.scripted is None:
        raise ConfigError(f"agent {agent!r} has no scripted model; set AGENTSTREAM_MODEL and OPENAI_BASE_URL")
    return spec.scripted()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Runtime:
    settings: Settings
    app: App
    agents: Sequence[str] = ()
    tools: str | None = None
    embedded_dir: str | None = None
    embedded_port: int | None = None
    models: dict[str, LLM] = field(default_factory=dict)
    # Safe change: which declared version this replica runs (None: production's),
    # as a shadow deployment when ``shadow`` is set; ``comparator``: also join
    # production's and shadows' outcomes (a shadow replica always does).
    version: str | None = None
    shadow: ShadowConfig | None = None
    comparator: bool = False
    canary: bool = False  # run ``version`` as a canary candidate: real traffic, as the canary routes it

    nc: NatsClient | None = None
    js: JetStreamContext | None = None
    broker: EmbeddedNats | None = None
    engines: dict[str, AgentEngine] = field(default_factory=dict)
    runners: list[ToolRunner] = field(default_factory=list)
    consumers: list[PullConsumer] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    # Telemetry: from the environment (OTEL_*, AGENTSTREAM_TRACING) unless given.
    telemetry_config: TelemetryConfig | None = None
    telemetry: Telemetry | None = None
    memory_service: MemoryService | None = None  # when AGENTSTREAM_MEMORY=on
    shadow_tools: ShadowToolRunner | None = None
    _deadlines: SessionStore | None = None
    # How often a worker process deletes acknowledged messages from nearly
    # full discard-new streams (subjects.StreamDef.trim_acked).
    room_interval_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, *, agents: Sequence[str] = (), tools: str | None = None,
                      models: dict[str, LLM] | None = None) -> Runtime:
        return cls(settings=settings, app=load_app(settings.app), agents=list(agents), tools=tools,
                   models=dict(models or {}))

    @property
    def url(self) -> str:
        """The broker's URL, without credentials (each role brings its own)."""
        if self.settings.nats_url:
            return self.settings.nats_url
        assert self.broker is not None
        return self.broker.plain_url

    @property
    def role(self) -> Role:
        """The bus role this process plays (config.auth): agent, tool, or both."""
        if self.agents and not self.tools:
            return "agent"
        if self.tools and not self.agents:
            return "tool"
        if not self.agents and not self.tools and self.settings.nats_url is not None:
            return "gateway"  # API-only `up` against an external broker: it only checks the streams
        return "worker"

    def auth(self, role: Role) -> NatsAuth:
        """Credentials for ``role``: the embedded broker's own files, else the
        environment's (or the data dir's, next to a local `up`)."""
        if self.broker is not None and self.settings.nats_url is None:
            return NatsAuth(role=role, nkey_seed_file=str(self.broker.seed_file(role)))
        return nats_auth(role, self.url, self.settings.data_dir)

    async def start(self) -> None:
        s = self.settings
        for a in self.agents:
            self.app.get_agent(a)  # fail fast on an unknown agent
        from agentstream.runtime.core.lint import warn_at_startup

        warn_at_startup(self.app, self.agents, log)
        tools = self.app.select_tools(self.tools) if self.tools is not None else {}
        if s.nats_url is None:
            port = self.embedded_port or None
            if port is not None and not _port_free(port):
                log.warning("port %d is taken; the embedded broker uses a free port instead", port)
                port = None
            self.broker = EmbeddedNats(store_dir=self.embedded_dir or s.data_dir / "nats", port=port)
            await self.broker.astart()
        self.nc = await nats_adapters.connect(self.url, name=f"agentstream-{s.worker_id}", auth=self.auth(self.role))
        self.js = self.nc.jetstream()
        # A process without workers (API-only `up`, the gateway role) may not
        # create streams: it checks they exist and waits for the workers' (bounded).
        await nats_adapters.provision(self.js, replicas=s.replicas, update=bool(self.agents or self.tools),
                                      limits=s.store_limits, compression=s.store_compression,
                                      partitions=s.inbox_partitions)
        # telemetry: one pipeline for this process; ports are wrapped only when it is on
        self.telemetry = setup_telemetry(self.telemetry_config or os.environ, nc=self.nc, worker_id=s.worker_id,
                                         configure_logs=True)
        tel = self.telemetry if self.telemetry.active else None
        # A full store makes a worker wait for room, not drop or dead-letter work.
        bus: Bus = nats_adapters.NatsBus(self.js, wait_when_full=True)
        if tel is not None:
            bus = tel.wrap_bus(bus)
        sessions = await nats_adapters.bucket(self.js, subjects.SESSIONS.name)
        conversations = await nats_adapters.bucket(self.js, subjects.CONVERSATIONS.name)
        deadlines = await nats_adapters.bucket(self.js, subjects.DEADLINES.name)
        approvals = await nats_adapters.bucket(self.js, subjects.APPROVALS.name)
        blobs = await nats_adapters.blob_store(self.js)
        # A session is one KV value: it must fit the broker's max payload (with
        # room for the message headers); a larger one fails its task at once.
        max_state = max(self.nc.max_payload - 4096, 4096)

        if self.shadow is not None:
            await self._start_shadow(self.shadow, bus=nats_adapters.NatsBus(self.js), conversations=conversations,
                                     blobs=blobs, max_state=max_state)
        elif self.comparator:
            await self._start_comparator()
        policy = self._policy()
        canaries = CanaryStore(await nats_adapters.bucket(self.js, subjects.ROLLOUT.name))
        router = Router(canaries)
        role = "candidate" if self.canary else "baseline"
        if self.canary and not self.version:
            raise ConfigError("a canary candidate needs --version: the declared version it runs")
        for name in self.agents if self.shadow is None else ():
            agent = self.app.get_version(name, self.version)
            llm = self.models.get(name) or select_model(self.app, name, s, self.version)
            model_name = llm.name
            if tel is not None:
                llm = tel.wrap_llm(llm, name)
            # A candidate keeps its sessions and timers under its own keys: both
            # versions' inbox consumers see every inbox event, each resumes only its own tasks.
            prefix = f"canary.{self.version}." if self.canary else ""
            engine = AgentEngine(agent.spec, llm,
                                 sessions=PrefixedStore(sessions, prefix) if prefix else sessions,
                                 conversations=conversations,
                                 deadlines=PrefixedStore(deadlines, prefix) if prefix else deadlines,
                                 bus=bus, worker=s.worker_id, approvals=approvals, policy=policy,
                                 blobs=blobs, max_state_bytes=max_state,
                                 finished_ttl_s=s.finished_session_ttl_s)
            if prefix:
                self._deadlines = engine.deadlines
            engine.owned_elsewhere = self._other_deployment(name, router, sessions)
            if tel is not None:
                engine.telemetry = tel.engine_hooks(agent.spec, model_name)
            self.engines[name] = engine
            # A task body it can never run gets a failed result, not silence.
            tasks_durable, inbox_durable = subjects.agent_durable(name, "tasks"), subjects.agent_durable(name, "events")
            if self.canary:
                assert self.version is not None
                tasks_durable, inbox_durable = candidate_durables(name, self.version)
            self._consumer("TASKS", tasks_durable, subjects.tasks(name),
                           routed_task_handler(router, name, role, task_handler(engine)),
                           on_dead_letter=task_rejected(engine) if not self.canary else None,
                           deliver_new=self.canary)
            if self.canary:
                # A candidate reads the inbox from EVENTS on its own durable (both
                # versions see every event, each resumes its own tasks); it runs
                # few replicas for a short while, so it is not partitioned.
                self._consumer("EVENTS", inbox_durable, subjects.stored(subjects.events(name, "*")),
                               inbox_handler(engine),
                               deliver_new=True)
            else:
                self._inbox(name, inbox_handler(engine))
            # Decisions on their own subject, which only the approval service may publish to.
            decisions_durable = subjects.agent_durable(name, "decisions")
            if self.canary:
                decisions_durable = f"canary_{self.version}_{decisions_durable}"
            self._consumer("EVENTS", decisions_durable, subjects.stored(subjects.decisions(name, "*")),
                           inbox_handler(engine),
                           deliver_new=self.canary)
        if tools:
            runner = ToolRunner(tools, bus, worker=s.worker_id, registry=self.app.tools,
                                breakers=await nats_adapters.bucket(self.js, subjects.TOOL_BREAKERS.name),
                                results=await nats_adapters.bucket(self.js, subjects.TOOL_RESULTS.name),
                                blobs=blobs, claim_check_bytes=min(256 * 1024, self.nc.max_payload // 4),
                                decisions=nats_adapters.event_reader(self.js),
                                approvers=parse_approvers(os.environ))
            if tel is not None:
                tel.instrument_tool_runner(runner)
            self.runners.append(runner)
            for tname in tools:
                self._consumer("TOOLS", subjects.tool_durable(tname), subjects.tool_calls(tname),
                               tool_handler(runner))
        await self._start_memory(bus, tel)
        for c in self.consumers:
            self._tasks.append(asyncio.create_task(c.run(self.stop_event, s.shutdown_timeout_s)))
        if self.engines:
            self._tasks.append(asyncio.create_task(self._sweep(self._deadlines or deadlines)))
            if self.shadow is None:
                controller = Controller(self.js, canaries, bus, self.engines, actor=f"canary:{s.worker_id}")
                self._tasks.append(asyncio.create_task(controller.run(self.stop_event)))
        if self.consumers:
            self._tasks.append(asyncio.create_task(self._keep_room()))
        await asyncio.wait_for(asyncio.gather(*(c.started.wait() for c in self.consumers)), timeout=30)

    async def _start_memory(self, bus: Bus, tel: Telemetry | None) -> None:
        """Memory, only when AGENTSTREAM_MEMORY=on (see runtime.service.memory)."""
        from agentstream.runtime.service import memory

        cfg = memory.MemorySettings.from_env(os.environ, self.settings.data_dir)
        if not cfg.enabled:
            return
        assert self.nc is not None and self.js is not None
        if cfg.serve:
            self.memory_service = await memory.start_memory_service(self.nc, self.js, cfg, bus=bus, tel=tel,
                                                                    replicas=self.settings.replicas)
        for engine in self.engines.values():
            await memory.attach_agent_memory(engine, self.app, self.nc, self.js, cfg, tel=tel)
    def _other_deployment(self, agent: str, router: Router, sessions: SessionStore) -> Callable[[str], Awaitable[bool]]:
        """For an inbox event with no session here: does the other side of a
        canary (the candidate's prefixed keys, or production's) hold the task?"""
        async def owned(task_id: str) -> bool:
            if self.canary:
                return await sessions.get(task_id) is not None
            state = await router.state(agent)
            return state is not None and await sessions.get(f"canary.{state.candidate}.{task_id}") is not None
        return owned

    async def _start_shadow(self, cfg: ShadowConfig, *, bus: Bus, conversations: SessionStore,
                            blobs: BlobStore | None = None, max_state: int | None = None) -> None:
        """The agents of this replica as a shadow deployment: the production
        engine, seeing the world through rollout.namespace (own subject tree,
        own keys, production's conversations read-only), no approvals (a
        shadow never asks a human), no tracing of its own (its spans would
        join production's trace), and its own side-effect-free tool runner."""
        assert self.js is not None
        s = self.settings
        store = await nats_adapters.bucket(self.js, subjects.SHADOW_SESSIONS.name)
        budget = ShadowBudget(await nats_adapters.bucket(self.js, subjects.ROLLOUT.name), cfg.label,
                              cfg.daily_cost_usd)
        shadow_bus = ShadowBus(bus, cfg.label)
        self._deadlines = PrefixedStore(store, f"{cfg.label}.d.")
        prices = self._policy().prices
        tools: dict[str, Tool] = {}
        for name in self.agents:
            agent = self.app.get_version(name, self.version)
            llm = self.models.get(name) or select_model(self.app, name, s, self.version)
            engine = AgentEngine(agent.spec, llm, sessions=PrefixedStore(store, f"{cfg.label}.s."),
                                 conversations=ReadOnlyStore(conversations), deadlines=self._deadlines,
                                 bus=CostMeter(shadow_bus, budget), worker=s.worker_id,
                                 policy=Policy(prices=prices), blobs=blobs, max_state_bytes=max_state)
            self.engines[name] = engine
            self._consumer("TASKS", subjects.shadow_durable(cfg.label, subjects.agent_durable(name, "tasks")),
                           subjects.tasks(name), shadow_task_handler(engine, cfg, budget), deliver_new=True,
                           traced=False)
            self._consumer("SHADOW", subjects.shadow_durable(cfg.label, subjects.agent_durable(name, "events")),
                           subjects.shadowed(cfg.label, subjects.events(name, "*")), inbox_handler(engine),
                           traced=False)
            for spec in agent.spec.tools:
                tools[spec.name] = self.app.tools[spec.name]
        self.shadow_tools = ShadowToolRunner(self.js, self.app.tools, shadow_bus, cfg, worker=s.worker_id)
        for tname in tools:
            self._consumer("SHADOW", subjects.shadow_durable(cfg.label, subjects.tool_durable(tname)),
                           subjects.shadowed(cfg.label, subjects.tool_calls(tname)),
                           shadow_tool_handler(self.shadow_tools), traced=False)
        await self._start_comparator()

    async def _start_comparator(self) -> None:
        assert self.js is not None
        comparator = Comparator(self.js, await nats_adapters.bucket(self.js, subjects.OUTCOMES.name))
        handler = comparator_handler(comparator)
        # Production's results from now on (a comparator started today has no
        # business with last week's); every shadow result, whenever it started.
        self._consumer("RESULTS", "rollout_comparator", subjects.any_production_results(), handler,
                       deliver_new=True, traced=False)
        self._consumer("SHADOW", "rollout_comparator_shadow", subjects.any_shadow_results(), handler, traced=False)

    def _policy(self) -> Policy:
        """Approval rules come from the app's tools, prices and approvers from the environment."""
        tools = self.app.tools

        def needs_approval(name: str, args: dict[str, Any]) -> bool:
            tool = tools.get(name)
            return tool is not None and tool.needs_approval(args)

        def approvers_for(name: str) -> tuple[str, ...]:
            tool = tools.get(name)
            return tool.approvers if tool is not None else ()

        def may_need_approval(name: str) -> bool:
            tool = tools.get(name)
            return tool is not None and tool.requires_approval is not False

        return Policy(prices=load_prices(os.environ), needs_approval=needs_approval,
                      approvers_for=approvers_for, default_approvers=parse_approvers(os.environ),
                      may_need_approval=may_need_approval)

    def _settings(self, stream: str, durable: str, subject: str, *, deliver_new: bool = False,
                  traced: bool = True) -> ConsumerSettings:
        s = self.settings
        cs = ConsumerSettings(stream=stream, durable=durable, filter_subject=subject,
                              max_in_flight=s.max_in_flight,
                              ack_wait_s=s.ack_wait_s, max_deliver=s.max_deliver,
                              max_bytes=s.max_event_bytes, deliver_new=deliver_new)
        # Spans are named by the subject as published (EVENTS stores a partition in it).
        named = subjects.published(subject)
        mw = self.telemetry.consumer_middleware(durable, named) if self.telemetry is not None and traced else None
        if mw is not None:
            cs.middlewares = (*cs.middlewares, mw)  # telemetry: a `process <subject>` span per message
        return cs

    def _consumer(self, stream: str, durable: str, subject: str, handler: object, *,
                  on_dead_letter: DeadLetterHook | None = None, deliver_new: bool = False,
                  traced: bool = True) -> None:
        assert self.js is not None
        cs = self._settings(stream, durable, subject, deliver_new=deliver_new, traced=traced)
        self.consumers.append(PullConsumer(self.js, cs, handler,  # type: ignore[arg-type]
                                           on_dead_letter=on_dead_letter))

    def _inbox(self, agent: str, handler: Handler) -> None:
        """The agent's inbox, partitioned by task, each partition pulled by one
        replica (execution.partitions, docs/scaling.md)."""
        s = self.settings
        js = self.js
        assert js is not None
        # The logical consumer dead letters, logs and spans name; its
        # partitions' durables and filters are PartitionedConsumer's.
        cs = self._settings(subjects.EVENTS_STREAM, subjects.agent_durable(agent, "events"),
                            subjects.stored(subjects.events(agent, "*")))
        self.consumers.append(PartitionedConsumer(
            js, cs, handler, agent=agent, member=member_id(s.worker_id, secrets.token_hex(3)),
            membership=nats_adapters.NatsMembership(js, agent),
            partitions=lambda: nats_adapters.events_partitions(js, replicas=s.replicas)))

    async def _sweep(self, deadlines: SessionStore) -> None:
        """Fail tasks whose deadline passed while nothing arrived for them (a tool
        worker down, say). Every replica sweeps, one pass over the timers for
        all the agents it serves; compare-and-set makes the failure happen once."""
        outage = Outage("deadline sweep", log)
        while not self.stop_event.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=self.settings.sweep_interval_s)
            if self.stop_event.is_set():
                return
            try:
                timers = await deadlines.items()
                now = time.time()
                for key, entry in timers:
                    agent, task_id, call_id = parse_deadline_key(key)
                    engine = self.engines.get(agent)
                    if engine is None or float(entry.value) > now:
                        continue
                    if call_id:
                        await engine.on_approval_expired(task_id, call_id)
                    else:
                        await engine.on_deadline(task_id)
                    # A timer the core found not yet due (the deadline moved) is
                    # rewritten by the core, a finished task's cleared by it; only
                    # one whose session is gone (expired) has nobody to clear it.
                    if (await engine.sessions.get(task_id)) is None:
                        await deadlines.delete(key)
                outage.recovered()
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive a broker hiccup
                outage.failed(f"{type(exc).__name__}: {exc}")  # one line per outage, not per sweep

    async def _keep_room(self) -> None:
        """Every replica, every ``room_interval_s``: processed tasks, tool
        calls and tool results leave a nearly full stream, so it refuses new
        messages only when unprocessed work fills it. Idempotent across replicas."""
        assert self.js is not None
        held_logged: set[str] = set()
        while not self.stop_event.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=self.room_interval_s)
            if self.stop_event.is_set():
                return
            for sd in subjects.STREAMS:
                if not sd.trim_acked:
                    continue
                try:
                    _, held = await storage.trim_acknowledged(self.js, sd.name)
                except Exception as exc:  # noqa: BLE001 - outlive a broker hiccup
                    log.warning("making room in %s failed: %s", sd.name, exc)
                    continue
                if held and held not in held_logged and len(held_logged) < 1000:
                    held_logged.add(held)  # once each: a stalled consumer stays stalled
                    log.warning("%s is nearly full and its oldest messages stay (%s): a consumer nobody runs "
                                "any more should be deleted, an agent or tool nobody serves deployed", sd.name, held)

    async def stop(self) -> None:
        """Graceful: stop fetching, let in-flight steps finish (bounded), leave
        the rest unacked for redelivery, then drain and stop the broker."""
        self.stop_event.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.shutdown_timeout_s + 5)
        for name, e in self.engines.items():  # read by bench/scale.py: what replicas cost each other
            log.info("engine %s: %d session reads, %d compare-and-set conflicts, %d model calls", name,
                     e.session_reads, e.cas_conflicts, e.model_calls)
        # Each model once: one passed in through ``models`` is also an engine's
        # (behind the telemetry wrapper, which passes ``close`` through).
        models = {id(getattr(e.llm, "inner", e.llm)): e.llm for e in self.engines.values()}
        models.update({id(m): m for m in self.models.values()})
        for llm in models.values():
            close = getattr(llm, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        if self.memory_service is not None:
            with contextlib.suppress(Exception):
                await self.memory_service.stop()
        if self.telemetry is not None:  # telemetry: flush spans while the connection is still open
            with contextlib.suppress(Exception):
                await self.telemetry.shutdown()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), timeout=5)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
            self.broker = None
