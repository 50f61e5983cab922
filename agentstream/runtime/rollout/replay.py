"""Counterfactual replay: re-run logged production tasks with a candidate.

Each task runs through the real engine and core, in process, on in-memory
stores: nothing is published to the bus and no session is written. Tool
calls are served from production's recording where the tool and arguments
match; a read-only tool runs live only when asked; anything else gets a stub
error marked as such. The model is the candidate's, or, with
``recorded_model``, production's own responses played back (the determinism
check: replaying production's version that way must reproduce production).

Plan-first and routed tasks replay too: a planner turn is played back from
its ``PlanProposed`` (the plan as the model submitted it), the plan's waves
are served from the recording like any tool call, replans and the ReAct
fallback are model turns like the others, and the router decides again from
the task's input. A divergence names the route, a plan (its digest) or a
step's calls, whichever differs first.

What a recording cannot bring back, and so what breaks the determinism
check: tool calls production never made (a replayed model asking for other
tools gets stubs), the text a model wrote beside its tool calls (not kept on
the bus), calls a planner made beside ``submit_plan`` (answered "not run",
never run), a plan over ``SUBMITTED_MAX`` bytes, time (the clock is replay time, so deadlines and budgets that
depend on elapsed time may differ), and a real model's sampling.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
from nats.js import JetStreamContext

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import (
    ModelResponse,
    ModelTurnCompleted,
    PlanProposed,
    RouteDecided,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCall,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolCallRequested,
    ToolError,
    Usage,
)
from agentstream.runtime.adapters.in_memory import InMemoryKV
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.core.policy import Policy
from agentstream.runtime.core.ports import LLM, ModelRequest
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.core.tools import Tool
from agentstream.runtime.execution.engine import AgentEngine, decode_task
from agentstream.runtime.execution.tool_runner import ToolRunner
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME
from agentstream.runtime.rollout.compare import (
    Outcome,
    PairRecord,
    ShadowReport,
    canonical_args,
    outcome_of,
    shadow_report,
)

TaskResult = TaskCompleted | TaskFailed


@dataclass
class Recording:
    """What production left on the streams for one task."""

    task: TaskSubmitted
    dispatches: list[ToolCallDispatched] = field(default_factory=list)
    completions: dict[str, ToolCallCompleted] = field(default_factory=dict)
    turns: list[ModelTurnCompleted] = field(default_factory=list)
    result: TaskResult | None = None
    plans: list[PlanProposed] = field(default_factory=list)  # plan-first: one per planner turn
    route: RouteDecided | None = None  # routed: the router's choice


async def load_recordings(js: JetStreamContext, agent: str, *, since_s: float, sample: int | None = None,
                          seed: int = 1) -> list[Recording]:
    """Production's finished tasks of ``agent`` in the window, a stable sample of ``sample``."""
    start = time.time() - since_s
    tasks: dict[str, Recording] = {}
    for raw in await scan(js, "TASKS", subjects.tasks(agent), start_time=start):
        try:
            task = decode_task(raw.data, raw.seq)
        except Exception:  # noqa: BLE001 - a body production rejected is not a task to replay
            continue
        tasks.setdefault(task.task_id, Recording(task=task))
    for raw in await scan(js, "RESULTS", subjects.results(agent, "*"), start_time=start):
        ev = _decode(raw.data)
        if isinstance(ev, (TaskCompleted, TaskFailed)) and ev.task_id in tasks:
            tasks[ev.task_id].result = ev
    done = [r for r in tasks.values() if r.result is not None]
    if sample is not None and sample < len(done):
        done.sort(key=lambda r: hashlib.sha256(f"{seed}:{r.task.task_id}".encode()).digest())
        done = done[:sample]
    for rec in done:
        for raw in await scan(js, subjects.EVENTS_STREAM, subjects.stored(subjects.any_task_activity(rec.task.task_id)),
                                   timeout=10.0):
            ev = _decode(raw.data)
            if getattr(ev, "agent", None) != agent:
                continue
            if isinstance(ev, ToolCallDispatched):
                rec.dispatches.append(ev)
            elif isinstance(ev, ToolCallCompleted):
                rec.completions.setdefault(ev.call_id, ev)
            elif isinstance(ev, ModelTurnCompleted):
                rec.turns.append(ev)
            elif isinstance(ev, PlanProposed):
                rec.plans.append(ev)
            elif isinstance(ev, RouteDecided):
                rec.route = ev
    return sorted(done, key=lambda r: r.task.submitted_at)


def _decode(raw: bytes) -> object:
    try:
        return codec.any_event.decode(raw)
    except Exception:  # noqa: BLE001
        return None


class RecordedModel:
    """Production's model responses for one task, played back by turn.

    A ReAct turn is its dispatched calls; a planner turn its submitted plan
    (whose waves were dispatched at the same turn, by the plan, not the
    model); the last turn of a completed task its answer. Turns are asked in
    order, one model call per turn (the core's ``step``), so the n-th call
    gets production's n-th turn."""

    def __init__(self, rec: Recording, name: str = "recorded") -> None:
        self._name = name
        self.by_step: dict[int, ModelResponse] = {}
        self._asked = 0
        turns = {t.step: t for t in rec.turns}

        def response(step: int, finish_reason: str, *, text: str = "",
                     tool_calls: tuple[ToolCall, ...] = ()) -> ModelResponse:
            t = turns.get(step)
            return ModelResponse(text=text, tool_calls=tool_calls, finish_reason=finish_reason,
                                 model=t.model if t else name, usage=t.usage if t else Usage())

        planned = {p.step: p for p in rec.plans}
        for d in rec.dispatches:
            if d.step not in planned:
                self.by_step[d.step] = response(d.step, "tool_calls", tool_calls=d.calls)
        for step, plan in planned.items():
            submitted = (ToolCall(id=f"plan_{step}", name=SUBMIT_PLAN_NAME, arguments=plan.submitted),) \
                if plan.submitted else ()
            self.by_step[step] = response(step, "tool_calls", tool_calls=submitted)
        if isinstance(rec.result, TaskCompleted):
            self.by_step[rec.result.steps] = response(rec.result.steps, "stop", text=rec.result.output)

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self._asked += 1
        resp = self.by_step.get(self._asked)
        if resp is None:
            from agentstream.runtime.core.errors import ModelError

            raise ModelError(f"no recorded model response for step {self._asked}")
        return resp


class _ReplayBus:
    """Captures what the engine publishes; tool calls become work for the replayer."""

    def __init__(self) -> None:
        self.calls: list[ToolCallRequested] = []
        self.dispatches: list[ToolCallDispatched] = []
        self.plans: list[PlanProposed] = []
        self.route: RouteDecided | None = None
        self.result: TaskResult | None = None

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        ev = _decode(payload)
        if isinstance(ev, ToolCallRequested):
            self.calls.append(ev)
        elif isinstance(ev, ToolCallDispatched):
            self.dispatches.append(ev)
        elif isinstance(ev, PlanProposed):
            self.plans.append(ev)
        elif isinstance(ev, RouteDecided):
            self.route = ev
        elif isinstance(ev, (TaskCompleted, TaskFailed)):
            self.result = ev


@dataclass
class Divergence:
    task_id: str
    step: int  # 0: none
    what: str


@dataclass
class Replayed:
    recording: Recording
    result: TaskResult | None
    dispatches: list[ToolCallDispatched]
    served: dict[str, int]
    divergence: Divergence
    plans: list[PlanProposed] = field(default_factory=list)
    route: RouteDecided | None = None


def _step_calls(dispatches: Sequence[ToolCallDispatched]) -> dict[int, list[str]]:
    """Each model turn's calls; a plan's waves all belong to its planner's turn."""
    out: dict[int, list[str]] = {}
    for d in dispatches:
        out.setdefault(d.step, []).extend(f"{c.name}({canonical_args(c.arguments)})" for c in d.calls)
    return {step: sorted(calls) for step, calls in out.items()}


def _step_plans(plans: Sequence[PlanProposed]) -> dict[int, str]:
    return {p.step: p.digest if p.valid else f"invalid ({'; '.join(e.get('kind', '') for e in p.errors)})"
            for p in plans}


def first_divergence(rec: Recording, dispatches: Sequence[ToolCallDispatched], result: TaskResult | None,
                     plans: Sequence[PlanProposed] = (), route: RouteDecided | None = None) -> Divergence:
    tid = rec.task.task_id
    if (rec.route.strategy if rec.route else None) != (route.strategy if route else None):
        return Divergence(tid, 1, f"route: {rec.route.strategy if rec.route else '-'} -> "
                                  f"{route.strategy if route else '-'}")
    prod, cand = _step_calls(rec.dispatches), _step_calls(dispatches)
    prod_plans, cand_plans = _step_plans(rec.plans), _step_plans(plans)
    for step in sorted(set(prod) | set(cand) | set(prod_plans) | set(cand_plans)):
        if prod_plans.get(step) != cand_plans.get(step):
            return Divergence(tid, step, f"step {step} plan: {prod_plans.get(step, '-')} -> "
                                         f"{cand_plans.get(step, '-')}")
        if prod.get(step) != cand.get(step):
            return Divergence(tid, step, f"step {step} tools: {', '.join(prod.get(step, [])) or '-'} -> "
                                         f"{', '.join(cand.get(step, [])) or '-'}")
    assert rec.result is not None
    if result is None:
        return Divergence(tid, max(prod, default=0) + 1, "no result")
    if type(result) is not type(rec.result):
        return Divergence(tid, result.steps, f"outcome: {type(rec.result).__name__} -> {type(result).__name__}")
    if isinstance(result, TaskCompleted) and isinstance(rec.result, TaskCompleted) and result.output != rec.result.output:
        return Divergence(tid, result.steps, f"answer: {rec.result.output[:60]!r} -> {result.output[:60]!r}")
    if isinstance(result, TaskFailed) and isinstance(rec.result, TaskFailed) and result.reason != rec.result.reason:
        return Divergence(tid, result.steps, f"failure: {rec.result.reason} -> {result.reason}")
    return Divergence(tid, 0, "")


async def replay_one(spec: AgentSpec, llm: LLM, rec: Recording, tools: Mapping[str, Tool], *,
                     live_read_only: bool = False, prices: Mapping[str, tuple[float, float]] | None = None,
                     max_rounds: int = 64) -> Replayed:
    bus = _ReplayBus()
    engine = AgentEngine(spec, llm, sessions=InMemoryKV(), conversations=InMemoryKV(), deadlines=InMemoryKV(),
                         bus=bus, worker="replay", policy=Policy(prices=dict(prices or {})))
    runner = ToolRunner(tools, bus, worker="replay")
    served = {"recorded": 0, "live": 0, "stub": 0}
    used: set[str] = set()
    # The task as production saw it, in a fresh session of the replayer's own.
    await engine.on_task(msgspec.structs.replace(rec.task, agent_version=""))
    for _ in range(max_rounds):
        if not bus.calls:
            break
        calls, bus.calls = bus.calls, []
        for req in calls:
            done = _from_recording(rec, req, used)
            if done is not None:
                served["recorded"] += 1
            else:
                tool = tools.get(req.tool)
                if live_read_only and tool is not None and tool.read_only:
                    out = await runner.run(req)
                    served["live"] += 1
                    done = ToolCallCompleted(task_id=req.task_id, agent=req.agent, step=req.step,
                                             call_id=req.call_id, tool=req.tool, ok=out.error is None,
                                             result=out.result if out.error is None else None, error=out.error,
                                             attempts=out.attempts, worker="replay", shadow="live")
                else:
                    served["stub"] += 1
                    done = ToolCallCompleted(task_id=req.task_id, agent=req.agent, step=req.step, call_id=req.call_id,
                                             tool=req.tool, ok=False, worker="replay", shadow="stub",
                                             error=ToolError(kind="replay_stub", message=(
                                                 f"production recorded no {req.tool} call with these arguments; "
                                                 "replay does not run tools with side effects")))
            await engine.on_event(msgspec.structs.replace(done, task_id=req.task_id, step=req.step,
                                                          call_id=req.call_id))
    return Replayed(recording=rec, result=bus.result, dispatches=bus.dispatches, served=served,
                    divergence=first_divergence(rec, bus.dispatches, bus.result, bus.plans, bus.route),
                    plans=bus.plans, route=bus.route)


def _from_recording(rec: Recording, req: ToolCallRequested, used: set[str]) -> ToolCallCompleted | None:
    want = canonical_args(req.arguments)
    for d in rec.dispatches:
        for c in d.calls:
            if c.id in used or c.name != req.tool or canonical_args(c.arguments) != want:
                continue
            done = rec.completions.get(c.id)
            if done is not None:
                used.add(c.id)
                return msgspec.structs.replace(done, shadow="recorded")
    return None


def report(replayed: Sequence[Replayed], *, agent: str, candidate: str) -> ShadowReport:
    records = []
    for r in replayed:
        assert r.recording.result is not None
        prod = outcome_of(r.recording.result, label="", dispatches=r.recording.dispatches)
        shadows: dict[str, Outcome] = {}
        if r.result is not None:
            shadows[candidate] = outcome_of(r.result, label=candidate, dispatches=r.dispatches)
        records.append(PairRecord(agent=agent, task_id=r.recording.task.task_id, production=prod, shadows=shadows))
    return shadow_report(records, agent=agent, candidate=candidate, min_pairs=1)


__all__ = ["Recording", "RecordedModel", "Replayed", "first_divergence", "load_recordings", "replay_one",
           "report"]
