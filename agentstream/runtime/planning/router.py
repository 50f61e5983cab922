"""The router of the hybrid strategy: ReAct for simple tasks, plan-first for
complex ones, decided per task from cheap deterministic features. Pure.

Complexity must earn its keep: the threshold is not guessed but calibrated
(:func:`calibrate`) on a held-out part of an evaluation dataset, from which
strategy actually did better on each case. Every decision is an event with
its reason and confidence.

Two kinds of feature. *Breadth* (conjunctions, entities, action verbs,
questions, words) says how much a request asks: where plan-first pays, since
a fan or a chain is one planner turn and one solver turn instead of a turn
per link. *Conditionals* say that an action depends on an outcome nobody has
seen yet ("refund it if it is eligible", "whichever qualifies"): where
plan-first loses, since a static plan cannot branch. It either leaves the
action out (the request fails) or speculates it (a replan, an approval of an
amount it cannot show, often a fall back to ReAct at several times ReAct's
tokens). Breadth pushes towards planning; a conditional pushes away from it.
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
# An action gated on something the request itself says must be found out
# first. Explicit markers only: "please refund order 5" also depends on an
# eligibility check in the support desk, but that is the agent's policy, not
# the text's, and a lexical router cannot know one agent's preconditions.
_CONDITIONALS = re.compile(
    r"\b(if|unless|whether|in case|depending on|whichever|whatever|otherwise|provided( that)?|as long as|"
    r"only when|that (is|are) eligible|(that|which|if) (qualify|qualifies)|eligible ones?|ones that)\b", re.I)


class Features(msgspec.Struct, frozen=True, kw_only=True):
    words: int
    questions: int
    conjunctions: int
    entities: int  # distinct numbers (order ids, amounts)
    actions: int  # distinct action verbs
    # Actions that depend on an outcome not yet seen. A default: sessions
    # stored before this feature decode with none.
    conditionals: int = 0


def features(text: str) -> Features:
    return Features(words=len(text.split()), questions=len(_QUESTIONS.findall(text)),
                    conjunctions=len(_CONJUNCTIONS.findall(text)), entities=len(set(_NUMBERS.findall(text))),
                    actions=len({m.lower() for m in _ACTIONS.findall(text)}),
                    conditionals=len(_CONDITIONALS.findall(text)))


# Each breadth feature's weight in the complexity score: how many independent
# pieces of work the request names. Fixed, simple and inspectable; the
# threshold is what calibration moves.
WEIGHTS = {"conjunctions": 1.0, "entities": 0.75, "actions": 1.0, "questions": 0.5, "words": 0.02}

# A conditional's weight: a veto, not a trade. What breadth buys plan-first is
# tokens (~0.6-0.7x ReAct's on fans and chains, measured); what a conditional
# costs a static plan is the request's success (the action deferred) or a
# replan and a fall back at ~3x ReAct's tokens (speculated). Success ranks
# above tokens however many parts the request has, and any finite additive
# weight would be outweighed by a wide enough request, so a request with a
# conditional scores below every request without one (breadth is >= 0):
# -CONDITIONAL_WEIGHT per conditional, the more the lower. Not calibrated:
# calibration moves only the threshold (it may still put that below zero if
# the data says plan-first wins even these), and a weight fitted on a few
# dozen labels would learn the dataset's phrasing.
CONDITIONAL_WEIGHT = 1.0


def breadth(f: Features) -> float:
    return (WEIGHTS["conjunctions"] * f.conjunctions + WEIGHTS["entities"] * max(0, f.entities - 1)
            + WEIGHTS["actions"] * max(0, f.actions - 1) + WEIGHTS["questions"] * max(0, f.questions - 1)
            + WEIGHTS["words"] * f.words)


def complexity(f: Features) -> float:
    if f.conditionals:
        return -CONDITIONAL_WEIGHT * f.conditionals
    return breadth(f)


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
              f"{f.words} words, {f.conditionals} conditionals)")
    if f.conditionals:
        reason += ": an action depends on an outcome not yet seen, and a static plan cannot branch"
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
