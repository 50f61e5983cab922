"""Online evaluators: consumers of the results stream (and of user feedback)
that score finished tasks, publish the scores as events on their own
subject, count them in metrics, and raise drift alarms.

Thin: decoding, trust checks and I/O here; the scoring and the drift logic
are :class:`agentstream.runtime.evaluation.online.OnlineEvaluator`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Histogram

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import DriftDetected, FeedbackSubmitted
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.core.ports import Bus
from agentstream.runtime.evaluation.online import OnlineEvaluator
from agentstream.runtime.evaluation.scoring import TaskEvidence
from agentstream.runtime.execution.consumer import Handler, Reject

log = logging.getLogger("agentstream.evaluator")

RESULTS_STREAM = "RESULTS"
EVENTS_STREAM = "EVENTS"


class EvalMetrics:
    """Prometheus instruments of the online evaluators: scores and feedback
    in the same family of panels (``agentstream_eval_*``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.scored = Counter("agentstream_eval_scored", "Tasks scored online", ["agent", "status"],
                              registry=self.registry)
        self.unsafe = Counter("agentstream_eval_unsafe", "Scored tasks that failed a safety check", ["agent"],
                              registry=self.registry)
        self.groundedness = Histogram("agentstream_eval_groundedness", "Groundedness of scored answers", ["agent"],
                                      buckets=(0.25, 0.5, 0.75, 0.9, 0.99, 1.0), registry=self.registry)
        self.feedback = Counter("agentstream_eval_feedback", "User feedback on tasks", ["agent", "rating"],
                                registry=self.registry)
        self.drift = Counter("agentstream_eval_drift", "Drift alarms raised", ["agent", "metric"],
                             registry=self.registry)


async def _publish_drift(bus: Bus, alarms: list[DriftDetected], metrics: EvalMetrics) -> None:
    for d in alarms:
        log.warning("drift: %s %s fell from %.3f to %.3f", d.agent, d.metric, d.baseline_mean, d.window_mean)
        metrics.drift.labels(d.agent, d.metric).inc()
        await bus.publish(subjects.eval_drift(d.agent), codec.encode(d))


def results_handler(evaluator: OnlineEvaluator, js: JetStreamContext, bus: Bus, metrics: EvalMetrics, *,
                    deployment: str = "production", clock: Callable[[], float] = time.time) -> Handler:
    """Scores each sampled result from its task's events (read back from the
    EVENTS stream) and publishes an EvaluationScored. The result is untrusted:
    the task id in its subject must be the body's."""

    async def handle(msg: Msg) -> None:
        result = codec.task_result.decode(msg.data)
        agent, task_id = _ids(msg.subject, "results")
        if result.task_id != task_id or result.agent != agent:
            raise Reject(f"result for {result.agent}/{result.task_id} published on {msg.subject}")
        if not evaluator.wants(task_id):
            return
        events = []
        for raw in await scan(js, EVENTS_STREAM, subjects.stored(subjects.any_task_activity(task_id))):
            try:
                events.append(codec.task_event.decode(raw.data))
            except codec.DecodeError:
                continue  # a newer producer's event: the rest still tells the story
        evidence = TaskEvidence.from_events([*events, result], task_id=task_id)
        scored = evaluator.score(evidence, now=clock(), deployment=deployment, tenant_id=result.tenant_id)
        # One score per task and evaluator version, however often the result is redelivered.
        await bus.publish(subjects.eval_scores(agent, task_id), codec.encode(scored),
                          msg_id=f"{task_id}:{scored.evaluator}")
        metrics.scored.labels(agent, scored.status).inc()
        metrics.groundedness.labels(agent).observe(scored.groundedness)
        if not scored.safety:
            metrics.unsafe.labels(agent).inc()
        await _publish_drift(bus, evaluator.observe_score(scored, now=clock()), metrics)

    return handle


def feedback_handler(evaluator: OnlineEvaluator, bus: Bus, metrics: EvalMetrics, *,
                     clock: Callable[[], float] = time.time) -> Handler:
    async def handle(msg: Msg) -> None:
        event = codec.evaluation_event.decode(msg.data)
        if not isinstance(event, FeedbackSubmitted):
            raise Reject(f"{type(event).__name__} on the feedback subject {msg.subject}")
        agent, task_id = _ids(msg.subject, "feedback")
        if event.task_id != task_id or event.agent != agent:
            raise Reject(f"feedback for {event.agent}/{event.task_id} published on {msg.subject}")
        metrics.feedback.labels(agent, event.rating).inc()
        await _publish_drift(bus, evaluator.observe_feedback(event, now=clock()), metrics)

    return handle


def _ids(subject: str, kind: str) -> tuple[str, str]:
    """(agent, task id) from ``<root>.<agent>.<kind>.<task_id>``."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[2] != kind:
        raise Reject(f"unexpected subject {subject!r}")
    return parts[1], parts[3]
