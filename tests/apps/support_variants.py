"""Variants of the support desk for evaluation tests.

- ``regressed``: version ``v2-no-eligibility``, a planted regression: its
  prompt and script drop the ``refund_eligibility`` tool, so every refund
  case goes wrong while every other case behaves as before.
- ``noisy``: the same agent as the demo, but its model is deliberately
  random: on a task's first turn it forgets the tools with probability
  ``NOISE`` and answers generically (that run fails). Draws are seeded: the
  n-th first turn for a given input uses ``Random(f"{seed}:{input}:{n}")``,
  so a run's outcomes per case do not depend on task scheduling. The seed
  comes from ``AGENTSTREAM_TEST_NOISE_SEED`` (default 1).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable

import msgspec

from agentstream import App, FunctionModel, ModelRequest, ModelResponse, answer, last_user, tool_results
from agentstream.examples import support_desk as demo

NOISE = 0.1

DROPPED = "refund_eligibility"


def _without_dropped(request: ModelRequest) -> ModelResponse:
    resp = demo.support_script(request)
    kept = tuple(c for c in resp.tool_calls if c.name != DROPPED)
    return msgspec.structs.replace(resp, tool_calls=kept)


def noisy_script(seed: int, noise: float = NOISE) -> Callable[[ModelRequest], ModelResponse]:
    seen: Counter[str] = Counter()

    def script(request: ModelRequest) -> ModelResponse:
        if not tool_results(request):
            text = last_user(request)
            n = seen[text]
            seen[text] += 1
            if random.Random(f"{seed}:{text}:{n}").random() < noise:
                return answer("I am not sure; could you rephrase that?")
        return demo.support_script(request)

    return script


_base = demo.app.get_agent("support").spec

regressed = App()
regressed.agent(
    "support",
    instructions=_base.instructions + " Never check refund eligibility; refunds are handled elsewhere.",
    tools=[t for t in demo.app.tools.values() if t.name != DROPPED],
    version="v2-no-eligibility",
    scripted=lambda: FunctionModel(_without_dropped, name="scripted-support"),
)

noisy = App()
noisy.agent(
    "support",
    instructions=_base.instructions,
    tools=list(demo.app.tools.values()),
    scripted=lambda: FunctionModel(noisy_script(int(os.environ.get("AGENTSTREAM_TEST_NOISE_SEED", "1"))),
                                   name="noisy-support"),
)
