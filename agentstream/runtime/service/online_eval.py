"""Wires the online evaluators: durable consumers of the results stream and
of user feedback, each message through the evaluator handlers.

Replicas of ``agentstream eval online`` share the durable consumers, so
results are split among them; each keeps its own drift windows (a replica
sees its share of traffic, which is a sample of the same distribution).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from agentstream.handlers.evaluator import EvalMetrics, feedback_handler, results_handler
from agentstream.runtime.adapters.jetstream import NatsBus
from agentstream.runtime.evaluation.online import OnlineEvaluator
from agentstream.runtime.execution.consumer import ConsumerSettings, PullConsumer


@dataclass
class OnlineEvaluation:
    js: JetStreamContext
    evaluator: OnlineEvaluator
    agent: str | None = None  # None: every agent
    deployment: str = "production"
    metrics: EvalMetrics = field(default_factory=EvalMetrics)
    ack_wait_s: float = 30.0
    consumers: list[PullConsumer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        bus = NatsBus(self.js)
        who = self.agent or "all"
        agent = self.agent or "*"
        for stream, durable, subject, handler in (
            ("RESULTS", f"eval_online_results_{who}", f"agents.{agent}.results.*",
             results_handler(self.evaluator, self.js, bus, self.metrics, deployment=self.deployment)),
            ("EVALS", f"eval_online_feedback_{who}", f"evals.{agent}.feedback.*",
             feedback_handler(self.evaluator, bus, self.metrics)),
        ):
            cs = ConsumerSettings(stream=stream, durable=durable, filter_subject=subject, max_in_flight=8,
                                  ack_wait_s=self.ack_wait_s)
            self.consumers.append(PullConsumer(self.js, cs, handler))
        self._tasks = [asyncio.create_task(c.run(self._stop)) for c in self.consumers]
        await asyncio.wait_for(asyncio.gather(*(c.started.wait() for c in self.consumers)), timeout=30)

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=15)
