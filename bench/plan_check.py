#!/usr/bin/env python
"""What a tool worker's approval check costs per gated call: a per-call
approval, a whole plan's approval whose step takes one pointer, and one whose
step sits at the end of a chain of pointers (each input read and checked
against its step's approved arguments, docs/planning.md).

No broker: the worker reads decisions and results from an in-memory stream,
so the figures are the check's own CPU cost, not the broker's reads (which
add one direct get per input on the bus). Modes alternate within one run;
ratios are against the per-call approval.

    python bench/plan_check.py [--calls 3000] [--rounds 3] [--depth 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import ApprovalDecided, ToolCallCompleted, ToolCallRequested
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryStream
from agentstream.runtime.core.plan_approval import approval_arguments
from agentstream.runtime.core.tools import tool
from agentstream.runtime.execution.tool_runner import ToolRunner
from agentstream.runtime.planning.plan import Plan, PlanStep

AGENT, TASK = "bench", "t-bench"


@tool(read_only=True)
async def lookup(n: int) -> dict[str, int]:
    """Look n up.

    Args:
        n: What to look up.
    """
    return {"n": n}


@tool(requires_approval=True)
async def act(n: int) -> dict[str, int]:
    """Act on n.

    Args:
        n: What to act on.
    """
    return {"done": n}


def world(mode: str, depth: int) -> tuple[InMemoryStream, ToolCallRequested]:
    """The stream a gated call's check reads, and the call."""
    ev = InMemoryStream()
    if mode == "per-call":
        d = ApprovalDecided(approval_id="a", task_id=TASK, agent=AGENT, step=1, call_id="c1", approved=True,
                            approver="alice", tool="act", arguments_digest=codec.arguments_digest({"n": 7}))
        seq = ev.add(subjects.decisions(AGENT, TASK), codec.encode(d))
        return ev, _call("c1", {"n": 7}, seq, {})
    chain = depth if mode == "plan chain" else 1
    steps = [PlanStep(id="s0", tool="lookup", args={"n": 7})]
    steps += [PlanStep(id=f"s{i}", tool="lookup", args={"n": {"$ref": f"s{i - 1}", "path": ["n"]}})
              for i in range(1, chain)]
    steps.append(PlanStep(id="x", tool="act", args={"n": {"$ref": f"s{chain - 1}", "path": ["n"]}}))
    shown = approval_arguments(Plan(steps=tuple(steps)))
    d = ApprovalDecided(approval_id="p", task_id=TASK, agent=AGENT, step=1, call_id="plan-1", approved=True,
                        approver="alice", tool="submit_plan", arguments_digest=codec.arguments_digest(shown),
                        plan=shown)
    seq = ev.add(subjects.decisions(AGENT, TASK), codec.encode(d))
    inputs = {}
    for s in steps[:-1]:
        done = ToolCallCompleted(task_id=TASK, agent=AGENT, step=1, call_id=f"p1-{s.id}", tool="lookup", ok=True,
                                 result={"n": 7}, arguments_digest=codec.arguments_digest({"n": 7}))
        inputs[s.id] = ev.add(subjects.events(AGENT, TASK), codec.encode(done))
    return ev, _call("p1-x", {"n": 7}, seq, inputs)


def _call(call_id: str, args: dict[str, Any], seq: int, inputs: dict[str, int]) -> ToolCallRequested:
    return ToolCallRequested(task_id=TASK, agent=AGENT, step=1, call_id=call_id, tool="act", arguments=args,
                             approval_seq=seq, plan_inputs=inputs, idempotency_key=f"{TASK}:1:{call_id}", requested_at=0.0,
                             reply_subject=subjects.events(AGENT, TASK))


async def per_call_us(mode: str, calls: int, depth: int) -> float:
    ev, req = world(mode, depth)
    runner = ToolRunner({t.name: t for t in (lookup, act)}, InMemoryBus(), decisions=ev.read)
    assert await runner._check_approval(req, act) is None, mode
    start = time.perf_counter()
    for _ in range(calls):
        await runner._check_approval(req, act)
    return (time.perf_counter() - start) / calls * 1e6


async def main(args: argparse.Namespace) -> None:
    modes = ["per-call", "plan 1 pointer", "plan chain"]
    got: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m in modes:
            got[m].append(await per_call_us(m, args.calls, args.depth))
    base = statistics.median(got["per-call"])
    print(f"approval check per gated call ({args.calls} calls x {args.rounds} rounds, median; chain depth {args.depth})")
    for m in modes:
        med = statistics.median(got[m])
        print(f"  {m:<15} {med:8.1f} us   x{med / base:5.2f} of per-call")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--depth", type=int, default=4)
    asyncio.run(main(p.parse_args()))
