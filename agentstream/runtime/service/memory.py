"""Wiring memory into a process, from the environment.

``AGENTSTREAM_MEMORY=on``: agents in this process use memory, and (unless
``AGENTSTREAM_MEMORY_SERVE=0``) the process also runs a memory service.
Backend: ``QDRANT_URL`` (and ``QDRANT_API_KEY``) for a Qdrant server or
cluster shared by several memory-service replicas; else qdrant-edge in
process, its shard under ``AGENTSTREAM_MEMORY_DIR`` (default
``<data dir>/memory``). ``AGENTSTREAM_CONTEXT_BUDGETS="gpt-4o=24000,*=8000"``
sets each model's context budget in tokens; ``AGENTSTREAM_MEMORY_MIN_SCORE`` the
relevance below which a recalled memory stays out. Memory is off by default: a
process without it behaves exactly as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from agentstream.contracts import subjects
from agentstream.handlers.memory import audit_sink, serve_memory
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.config.settings import env_bool
from agentstream.runtime.core.app import App
from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.core.ports import LLM, Bus
from agentstream.runtime.execution.engine import AgentEngine
from agentstream.runtime.memory.agent import AgentMemory, MemoryOptions
from agentstream.runtime.memory.client import BusMemory
from agentstream.runtime.memory.context import Budget
from agentstream.runtime.memory.embed import Lexical, OpenAIEmbedder
from agentstream.runtime.memory.episodic import EpisodeStore, provision_memory_buckets
from agentstream.runtime.memory.index import VectorIndex
from agentstream.runtime.memory.store import MemoryStore
from agentstream.runtime.observability.telemetry import Telemetry


@dataclass
class MemorySettings:
    enabled: bool = False
    serve: bool = True
    qdrant_url: str = ""
    qdrant_api_key: str | None = None
    path: Path = Path(".agentstream/memory")
    budgets: dict[str, Budget] = field(default_factory=dict)
    min_score: float = 0.0  # retrieved memories below this relevance stay out of the context
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, data_dir: Path = Path(".agentstream")) -> MemorySettings:
        env = os.environ if env is None else env
        mode = env.get("AGENTSTREAM_MEMORY", "off").strip().lower()
        if mode not in ("on", "off", "1", "0", "true", "false", ""):
            raise ConfigError(f"AGENTSTREAM_MEMORY={mode!r}: use on or off")
        return cls(enabled=mode in ("on", "1", "true"), serve=env_bool(env, "AGENTSTREAM_MEMORY_SERVE", True),
                   qdrant_url=env.get("QDRANT_URL", "").strip(),
                   qdrant_api_key=env.get("QDRANT_API_KEY", "").strip() or None,
                   path=Path(env.get("AGENTSTREAM_MEMORY_DIR") or data_dir / "memory"),
                   budgets=parse_budgets(env.get("AGENTSTREAM_CONTEXT_BUDGETS", "")),
                   min_score=_min_score(env.get("AGENTSTREAM_MEMORY_MIN_SCORE", "")), env=dict(env))


def _min_score(raw: str) -> float:
    try:
        value = float(raw) if raw.strip() else 0.0
    except ValueError:
        raise ConfigError(f"AGENTSTREAM_MEMORY_MIN_SCORE={raw!r} is not a number") from None
    if not value >= 0.0:
        raise ConfigError(f"AGENTSTREAM_MEMORY_MIN_SCORE={raw!r} must be >= 0")
    return value


def parse_budgets(raw: str) -> dict[str, Budget]:
    out: dict[str, Budget] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        model, _, tokens = part.rpartition("=")
        if not model or not tokens.strip().isdigit() or int(tokens) < 512:
            raise ConfigError(f"AGENTSTREAM_CONTEXT_BUDGETS: {part!r} is not model=tokens (tokens >= 512)")
        n = int(tokens)
        out[model.strip()] = Budget(context_tokens=n, reserve_output=min(1024, n // 4),
                                    summary_tokens=max(200, n // 20), memory_tokens=max(300, n // 12))
    return out


def build_index(settings: MemorySettings) -> VectorIndex:
    if settings.qdrant_url:
        from agentstream.runtime.memory.client_index import QdrantClientIndex

        return QdrantClientIndex(settings.qdrant_url, api_key=settings.qdrant_api_key)
    from agentstream.runtime.memory.edge_index import EdgeIndex

    return EdgeIndex(settings.path / "edge")


@dataclass
class MemoryService:
    store: MemoryStore
    subs: list[Subscription]

    async def stop(self) -> None:
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.store.close()


async def start_memory_service(nc: NatsClient, js: JetStreamContext, settings: MemorySettings, *,
                               bus: Bus | None = None, tel: Telemetry | None = None,
                               replicas: int = 1) -> MemoryService:
    await provision_memory_buckets(js, replicas)
    bus = bus or nats_adapters.NatsBus(js)
    store = MemoryStore(build_index(settings), lexical=Lexical(), embedder=OpenAIEmbedder.from_env(settings.env),
                        quarantine=await nats_adapters.bucket(js, subjects.MEMORY_QUARANTINE.name),
                        audit=audit_sink(bus))
    await store.open()
    return MemoryService(store=store, subs=await serve_memory(nc, store, tel=tel, bus=bus))


async def attach_agent_memory(engine: AgentEngine, app: App, nc: NatsClient, js: JetStreamContext,
                              settings: MemorySettings, *, llm: LLM | None = None,
                              tel: Telemetry | None = None) -> AgentMemory:
    await provision_memory_buckets(js)
    tools = app.tools

    def side_effecting(name: str) -> bool:
        tool = tools.get(name)
        return tool is None or tool.side_effects

    mem = AgentMemory(llm=llm or engine.llm,
                      conversations=await nats_adapters.bucket(js, subjects.MEMORY_CONVERSATIONS.name),
                      api=BusMemory(nc, inject=tel.inject if tel is not None and tel.tracing else None),
                      episodes=EpisodeStore(js),
                      options=MemoryOptions(budgets=settings.budgets, min_score=settings.min_score),
                      side_effecting=side_effecting)
    engine.memory = mem
    return mem
