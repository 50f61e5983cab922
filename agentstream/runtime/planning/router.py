"""The router of the hybrid strategy: ReAct for simple tasks, plan-first for
complex ones, decided per task from cheap deterministic features. Pure.

Complexity must earn its keep: the threshold is not guessed but calibrated
(:func:`calibrate`) on a held-out part of an evaluation dataset, from which
strategy actually did better on each case. Every decision is an event with
its reason and confidence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import msgspec

Strategy = Literal["react", "plan"]

_CONJUNCTIONS = re.compile(r"\b(and|then|also|after that|afterwards|as well|plus|both|each|every)\b", re.I)
_NUMBERS = re.compile(r"\b\d{1,9}\b")
_QUESTIONS = re.compile(r"\?")
_ACTIONS = re.compile(r"\b(check|look up|find|compare|refund|cancel|order|ship|create|update|send|book|list|"
                      r"calculate|sum|total)\b", re.I)


class Features(msgspec.Struct, frozen=True, kw_only=True):
    words: int
    questions: int
    conjunctions: int
    entities: int  # distinct numbers (order ids, amounts)
    actions: int  # distinct action verbs


def features(text: str) -> Features:
    return Features(words=len(text.split()), questions=len(_QUESTIONS.findall(text)),
                    conjunctions=len(_CONJUNCTIONS.findall(text)), entities=len(set(_NUMBERS.findall(text))),
                    actions=len({m.lower() for m in _ACTIONS.findall(text)}))


# Each feature's weight in the complexity score: how many independent pieces
# of work the request names. Fixed, simple and inspectable; the threshold is
# what calibration moves.
WEIGHTS = {"conjunctions": 1.0, "entities": 0.75, "actions": 1.0, "questions": 0.5, "words": 0.02}


def complexity(f: Features) -> float:
    return (WEIGHTS["conjunctions"] * f.conjunctions + WEIGHTS["entities"] * max(0, f.entities - 1)
            + WEIGHTS["actions"] * max(0, f.actions - 1) + WEIGHTS["questions"] * max(0, f.questions - 1)
            + WEIGHTS["words"] * f.words)


class RouterPolicy(msgspec.Struct, frozen=True, kw_only=True):
    threshold: float = 2.5  # complexity at or above: plan-first
    softness: float = 1.0  # how fast confidence grows with distance from the threshold


class RouteDecision(msgspec.Struct, frozen=True, kw_only=True):
    strategy: Strategy
    score: float
    threshold: float
    confidence: float  # 0.5 at the threshold, towards 1 away from it
    reason: str
    features: Features


def route(text: str, policy: RouterPolicy = RouterPolicy()) -> RouteDecision:
    f = features(text)
    score = complexity(f)
    strategy: Strategy = "plan" if score >= policy.threshold else "react"
    confidence = 1.0 / (1.0 + math.exp(-abs(score - policy.threshold) / max(policy.softness, 1e-9)))
    reason = (f"complexity {score:.2f} {'>=' if strategy == 'plan' else '<'} {policy.threshold:.2f} "
              f"({f.conjunctions} conjunctions, {f.entities} entities, {f.actions} actions, {f.questions} questions, "
              f"{f.words} words)")
    return RouteDecision(strategy=strategy, score=score, threshold=policy.threshold, confidence=confidence,
                         reason=reason, features=f)


def calibrate(examples: Sequence[tuple[str, Strategy]]) -> RouterPolicy:
    """The threshold that best separates the cases where plan-first did better
    from those where ReAct did (ties: the higher threshold, i.e. the simpler
    strategy wins). ``examples``: (input, the better strategy) per held-out case."""
    if not examples:
        return RouterPolicy()
    scored = sorted((complexity(features(t)), s) for t, s in examples)
    candidates = sorted({s for s, _ in scored} | {scored[-1][0] + 1.0})
    best_t, best_ok = candidates[-1], -1
    for t in candidates:
        ok = sum((score >= t) == (s == "plan") for score, s in scored)
        if ok >= best_ok:
            best_t, best_ok = t, ok
    return RouterPolicy(threshold=best_t)
