"""Runs a dataset as real tasks on the bus, concurrently, and scores them.

The runner talks to the system through :class:`TaskHarness`, which
:class:`agentstream.AgentClient` satisfies for submit and events (the CLI
adds approval decisions): every case is a ``TaskSubmitted`` on the agent's
task subject, handled by whatever workers serve it, and its evidence is the
task's own event stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgspec

from agentstream.contracts.events import ApprovalRequested, TaskCompleted, TaskEvent, TaskFailed
from agentstream.runtime.core.errors import ResultTimeout
from agentstream.runtime.evaluation.dataset import Case, Dataset
from agentstream.runtime.evaluation.results import CaseRun, EvalRun
from agentstream.runtime.evaluation.scoring import TaskEvidence, score_outcome


class TaskHarness(Protocol):
    async def submit(self, agent: str, input: str, *, task_id: str | None = None, conversation_id: str = "",
                     agent_version: str = "", metadata: Mapping[str, str] | None = None) -> str: ...

    def events(self, task_id: str, *, timeout: float | None = None) -> AsyncIterator[TaskEvent]: ...

    async def decide(self, request: ApprovalRequested, *, approved: bool) -> None:
        """Answer an approval request as the evaluation's stand-in supervisor."""
        ...


class Judge(Protocol):
    @property
    def version(self) -> str: ...

    async def grade(self, case: Case, evidence: TaskEvidence) -> tuple[float, str]: ...


@dataclass(frozen=True)
class RunConfig:
    agent: str
    version: str
    runs: int = 1
    concurrency: int = 8
    timeout_s: float = 60.0
    seed: int = 0
    behaviour_hash: str = ""
    model: str = ""


Progress = Callable[[int, int], None]  # (done, total)


async def _run_task(harness: TaskHarness, cfg: RunConfig, text: str, *, task_id: str, conversation_id: str,
                    approval: str, metadata: dict[str, str]) -> tuple[list[TaskEvent], float]:
    submitted = time.time()
    await harness.submit(cfg.agent, text, task_id=task_id, conversation_id=conversation_id,
                         agent_version=cfg.version, metadata=metadata)
    events: list[TaskEvent] = []
    async for ev in harness.events(task_id, timeout=cfg.timeout_s):
        events.append(ev)
        if isinstance(ev, ApprovalRequested) and ev.task_id == task_id:
            await harness.decide(ev, approved=approval == "approve")
        if isinstance(ev, (TaskCompleted, TaskFailed)):
            break
    return events, submitted


async def run_case(harness: TaskHarness, cfg: RunConfig, case: Case, index: int, run: int, run_id: str,
                   dataset: Dataset, judge: Judge | None = None) -> CaseRun:
    """One run of one case: earlier turns of its conversation first, then its
    input; the last task is scored. A task that does not finish in time is
    scored as a timeout (it fails), not dropped: dropping it would flatter."""
    task_id = f"eval-{run_id}-{index}-{run}"
    meta = {"eval_run": run_id, "eval_case": case.id[:128], "eval_attempt": str(run)}
    inputs: list[str] = []
    try:
        for turn, text in enumerate(case.conversation):
            await _run_task(harness, cfg, text, task_id=f"{task_id}-t{turn}", conversation_id=task_id,
                            approval=case.approval, metadata=meta)
            inputs.append(text)
        inputs.append(case.input)
        events, submitted = await _run_task(harness, cfg, case.input, task_id=task_id, conversation_id=task_id,
                                            approval=case.approval, metadata=meta)
    except (TimeoutError, ResultTimeout):
        events, submitted = [], time.time()
    evidence = TaskEvidence.from_events(events, task_id=task_id, inputs=inputs or [case.input],
                                        submitted_at=submitted)
    verdict = None
    if judge is not None and case.judge is not None and evidence.status == "completed":
        verdict = await judge.grade(case, evidence)
    score = score_outcome(evidence, case, budget=dataset.budget_for(case), judge=verdict)
    return CaseRun(case_id=case.id, run=run, task_id=task_id, score=score, output=evidence.output,
                   status=evidence.status, calls=evidence.calls, trace=f"agentstream trace {task_id}")


async def run_dataset(dataset: Dataset, harness: TaskHarness, cfg: RunConfig, *, judge: Judge | None = None,
                      progress: Progress | None = None, run_id: str | None = None) -> EvalRun:
    """Every case ``cfg.runs`` times, at most ``cfg.concurrency`` tasks at once."""
    run_id = run_id or uuid.uuid4().hex[:12]
    started = time.time()
    sem = asyncio.Semaphore(cfg.concurrency)
    total = len(dataset.cases) * cfg.runs
    done = 0

    async def one(case: Case, index: int, run: int) -> CaseRun:
        nonlocal done
        async with sem:
            out = await run_case(harness, cfg, case, index, run, run_id, dataset, judge)
        done += 1
        if progress is not None:
            progress(done, total)
        return out

    jobs = [one(case, i, r) for r in range(cfg.runs) for i, case in enumerate(dataset.cases)]
    results = await asyncio.gather(*jobs)
    position = {c.id: i for i, c in enumerate(dataset.cases)}
    results.sort(key=lambda r: (position[r.case_id], r.run))
    return EvalRun(run_id=run_id, dataset=dataset.name, dataset_hash=dataset.hash, agent=cfg.agent,
                   version=cfg.version, behaviour_hash=cfg.behaviour_hash, model=cfg.model,
                   runs_per_case=cfg.runs, seed=cfg.seed, started_at=started, finished_at=time.time(),
                   case_ids=tuple(c.id for c in dataset.cases), results=tuple(results),
                   judge_version=judge.version if judge is not None else "")


def behaviour_hash(spec: msgspec.Struct, model: str) -> str:
    """A hash of what defines an agent's behaviour: its spec (instructions,
    tools, limits) and its model."""
    import hashlib

    raw = msgspec.json.encode({"spec": spec, "model": model}, order="sorted")
    return hashlib.sha256(raw).hexdigest()[:16]
