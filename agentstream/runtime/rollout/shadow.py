"""Shadow deployments: a candidate version beside production, on the same
traffic, with no side effects.

- Traffic: its own durable consumer on production's task subject (it sees
  every task, takes none), sampled by a stable hash of the task id, and
  stopped for the day by a cost cap (a CAS counter in KV).
- Writes: only under ``shadow.<label>.`` (ShadowBus) and its own KV keys.
- Tools: its tool calls go to ``shadow.<label>.tools.<tool>.calls``, which only
  its own :class:`ShadowToolRunner` consumes, so a shadow call can never reach
  a production tool worker. A tool that is not ``read_only`` never runs: the
  result is production's recorded result for the same task, tool and
  arguments, else a stub error marked as such. Read-only tools run live, or
  are served from the recording too (``read_only="replay"``).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec
from nats.js import JetStreamContext

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import TaskCompleted, TaskFailed, ToolCallCompleted, ToolCallRequested, ToolError
from agentstream.runtime.core.errors import ConfigError, Conflict
from agentstream.runtime.core.ports import Bus, SessionStore
from agentstream.runtime.core.tools import Tool
from agentstream.runtime.execution.consumer import Reject
from agentstream.runtime.execution.tool_runner import ToolRunner
from agentstream.runtime.rollout.recorded import find_recorded

log = logging.getLogger("agentstream.shadow")


@dataclass(frozen=True)
class ShadowConfig:
    label: str  # names the shadow's subject tree and keys: shadow.<label>.
    sample_pct: float = 100.0  # share of production's tasks the shadow runs
    daily_cost_usd: float | None = None  # stop taking tasks for the day once spent
    read_only: Literal["live", "replay"] = "live"  # read-only tools: run them, or serve the recording
    recorded_wait_s: float = 30.0  # how long a shadow call waits for production's result

    def __post_init__(self) -> None:
        subjects.check_token("shadow label", self.label)
        if not 0.0 <= self.sample_pct <= 100.0:
            raise ConfigError(f"shadow sample must be a percentage 0-100, got {self.sample_pct}")
        if self.daily_cost_usd is not None and self.daily_cost_usd < 0:
            raise ConfigError("shadow daily cost cap must not be negative")


def sampled(task_id: str, pct: float) -> bool:
    """Stable: the same task is in or out of the sample on every replica."""
    if pct >= 100.0:
        return True
    bucket = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:4], "big") / 2**32 * 100.0
    return bucket < pct


class ShadowBudget:
    """The day's shadow spend, one CAS counter per label and UTC day in KV, shared by replicas."""

    def __init__(self, store: SessionStore, label: str, cap_usd: float | None,
                 clock: object = time.time) -> None:
        self.store = store
        self.label = label
        self.cap = cap_usd
        self.clock = clock
        self.skipped = 0

    def _key(self) -> str:
        day = datetime.datetime.fromtimestamp(self.clock(), tz=datetime.UTC).strftime("%Y-%m-%d")  # type: ignore[operator]
        return f"shadow_cost.{self.label}.{day}"

    async def spent(self) -> float:
        entry = await self.store.get(self._key())
        return float(entry.value) if entry is not None else 0.0

    async def allows(self) -> bool:
        if self.cap is None:
            return True
        ok = await self.spent() < self.cap
        if not ok:
            self.skipped += 1
        return ok

    async def add(self, usd: float) -> None:
        if usd <= 0:
            return
        key = self._key()
        for _ in range(50):
            entry = await self.store.get(key)
            try:
                if entry is None:
                    await self.store.create(key, repr(usd).encode())
                else:
                    await self.store.update(key, repr(float(entry.value) + usd).encode(), entry.revision)
                return
            except Conflict:
                continue
        log.warning("shadow %s: cost counter kept conflicting; %.6f USD not counted", self.label, usd)


class CostMeter:
    """Counts the cost of every result the shadow publishes toward its daily cap."""

    def __init__(self, inner: Bus, budget: ShadowBudget) -> None:
        self.inner = inner
        self.budget = budget

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        await self.inner.publish(subject, payload, msg_id=msg_id, headers=headers)
        if ".results." in subject:
            try:
                ev = codec.any_event.decode(payload)
            except Exception:  # noqa: BLE001 - never fail a publish over accounting
                return
            if isinstance(ev, (TaskCompleted, TaskFailed)):
                await self.budget.add(ev.usage.cost_usd)


class ShadowToolRunner:
    """Serves a shadow's tool calls without side effects (see the module doc)."""

    def __init__(self, js: JetStreamContext, registry: Mapping[str, Tool], bus: Bus, config: ShadowConfig, *,
                 worker: str = "") -> None:
        self.js = js
        self.registry = registry
        self.bus = bus  # a ShadowBus: replies land under shadow.<label>.
        self.config = config
        self.worker = worker
        # Live read-only calls: the ordinary runner, with process-local breakers and
        # no stored results, so a shadow neither trips nor feeds production's state.
        self.runner = ToolRunner(registry, bus, worker=worker, registry=registry)
        self.counts = {"live": 0, "recorded": 0, "stub": 0}
        self._used: dict[str, dict[str, str]] = {}  # task -> shadow call id -> production call id

    async def on_call(self, req: ToolCallRequested) -> None:
        if req.reply_subject != subjects.events(req.agent, req.task_id) or not subjects.is_token(req.agent) \
                or not subjects.is_token(req.task_id):
            raise Reject(f"reply_subject {req.reply_subject!r} is not the inbox of task {req.task_id!r}")
        tool = self.registry.get(req.tool)
        started = time.time()
        if tool is not None and tool.read_only and self.config.read_only == "live":
            out = await self.runner.run(req)
            how, result, error, attempts = "live", out.result, out.error, out.attempts
        else:
            used = self._used.setdefault(req.task_id, {})
            rec = await find_recorded(self.js, req.agent, req.task_id, req.tool, req.arguments,
                                      wait_s=self.config.recorded_wait_s, call_id=req.call_id, used=used)
            if len(self._used) > 10_000:  # bounded: a task's calls are served within minutes
                self._used.pop(next(iter(self._used)))
            if rec is not None:
                how, result, error, attempts = "recorded", rec.result, rec.error, 0
            else:
                how, result, attempts = "stub", None, 0
                error = ToolError(kind="shadow_stub", message=(
                    f"{req.tool} has side effects and does not run in a shadow, and production recorded no "
                    "call of it with these arguments for this task"))
        self.counts[how] += 1
        done = ToolCallCompleted(task_id=req.task_id, agent=req.agent, step=req.step, call_id=req.call_id,
                                 tool=req.tool, ok=error is None, result=result if error is None else None,
                                 error=error, started_at=started, finished_at=time.time(), attempts=attempts,
                                 worker=self.worker, shadow=how)
        try:
            payload = codec.encode(done)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            payload = codec.encode(msgspec.structs.replace(done, ok=False, result=None, error=ToolError(
                kind="execution_error", message=f"{req.tool} returned a value that is not JSON: {exc}")))
        await self.bus.publish(req.reply_subject, payload, msg_id=f"{req.idempotency_key}:result")
