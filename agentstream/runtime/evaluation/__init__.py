"""Evaluation: datasets run as real tasks, scored apart, compared paired by case.

The small API other subsystems use (the shadow/canary comparator, online
evaluators)::

    from agentstream.runtime.evaluation import TaskEvidence, score_outcome

    evidence = TaskEvidence.from_events(events)   # one task's events, its result among them
    score = score_outcome(evidence)                # safety, groundedness, latency, tokens, cost
    score = score_outcome(evidence, case)          # plus action and outcome against a Case

and, for comparing two versions on the same inputs,
:func:`agentstream.runtime.evaluation.stats.non_inferiority` (paired
bootstrap + McNemar). See docs/evaluation.md.
"""

from __future__ import annotations

from agentstream.runtime.evaluation.dataset import Case, Dataset, load_dataset
from agentstream.runtime.evaluation.scoring import Check, OutcomeScore, TaskEvidence, score_outcome

__all__ = ["Case", "Check", "Dataset", "OutcomeScore", "TaskEvidence", "load_dataset", "score_outcome"]
