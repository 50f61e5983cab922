"""A test app for shadow deployments: agent ``shop`` checks stock (read-only)
and charges a card (a side effect) in one turn, then answers.

Versions declared, for the rollout tests:

- ``v1`` (production): both tools, then "charged <amount> for <item>; <stock> left";
- ``v2`` (a regression): skips the stock check and answers differently;
- ``v1b``: a relabelled v1 (the same behaviour), for "no change" comparisons;
- with ``ROLLOUT_APP_RANDOM=1`` v1 and v1b phrase their answer at random (a
  noisy model), each model instance seeded by ``ROLLOUT_APP_SEED`` + its label.

Every tool execution is appended to ``ROLLOUT_APP_LOG`` (``"<tool> <task>"``),
one write a line, so processes can share the file and a test counts effects
at the tool itself.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Callable

from applog import append_line

from agentstream import App, FunctionModel, ModelRequest, ModelResponse, answer, calls, last_user, tool, tool_results

COUNTS: dict[str, int] = {"check_stock": 0, "charge": 0}


def _log(line: str) -> None:
    append_line("ROLLOUT_APP_LOG", line)


@tool(read_only=True)
async def check_stock(item: str) -> dict[str, object]:
    """How many of an item are in stock.

    Args:
        item: The item's name.
    """
    COUNTS["check_stock"] += 1
    _log(f"check_stock {item}")
    return {"item": item, "stock": 7 + len(item)}


@tool
async def charge(item: str, amount: float) -> dict[str, object]:
    """Charge the customer's card. A real side effect: it must never run twice, nor in a shadow.

    Args:
        item: What the customer buys.
        amount: How much, in USD.
    """
    COUNTS["charge"] += 1
    _log(f"charge {item} {amount}")
    return {"charged": amount, "item": item}


def _order(text: str) -> tuple[str, float]:
    m = re.search(r"buy (\w+) for (\d+)", text)
    return (m.group(1), float(m.group(2))) if m else ("thing", 1.0)


def _script(*, check: bool, noisy: Callable[[str], float] | None, regressed: bool = False):  # type: ignore[no-untyped-def]
    def script(request: ModelRequest) -> ModelResponse:
        item, amount = _order(last_user(request))
        results = tool_results(request)
        if not results:
            wanted = [("charge", {"item": item, "amount": amount})]
            if check:
                wanted.insert(0, ("check_stock", {"item": item}))
            return calls(*wanted)
        if regressed:
            return answer(f"done: {item}")
        stock = 7 + len(item)
        if noisy is not None and noisy(last_user(request)) < 0.3:
            return answer(f"Your card was charged {amount:.2f} for the {item}; {stock} remain in stock.")
        return answer(f"charged {amount:.2f} for {item}; {stock} left")
    return script


_INSTANCES: dict[str, itertools.count[int]] = {}


def _model(label: str, *, check: bool = True, regressed: bool = False) -> FunctionModel:
    noisy = None
    if os.environ.get("ROLLOUT_APP_RANDOM") == "1":
        # A draw per (seed, label, instance, request), not a stateful generator:
        # the same tasks give the same noise whatever order they arrive in, so
        # the test is deterministic; two instances of one label (production and
        # a noise shadow) still differ.
        counter = _INSTANCES.setdefault(label, itertools.count())
        key = f"{os.environ.get('ROLLOUT_APP_SEED', '1')}:{label}:{next(counter)}"

        def noisy(text: str) -> float:
            return int.from_bytes(hashlib.sha256(f"{key}:{text}".encode()).digest()[:8], "big") / 2**64
    return FunctionModel(_script(check=check, noisy=noisy, regressed=regressed), name=f"shop-{label}")


app = App()
_TOOLS = [check_stock, charge]
app.agent("shop", "Sell things.", _TOOLS, version="v1", scripted=lambda: _model("v1"))
app.agent("shop", "Sell things.", _TOOLS, version="v1b", candidate=True, scripted=lambda: _model("v1b"))
app.agent("shop", "Sell things, fast.", _TOOLS, version="v2", candidate=True,
          scripted=lambda: _model("v2", check=False, regressed=True))


def _broken(request: ModelRequest) -> ModelResponse:
    """A candidate whose prompt broke tool use: it never stops asking for a tool that does not exist."""
    return calls(("chargee", {"item": "x"}))


app.agent("shop", "Sell things, broken.", _TOOLS, version="broken", candidate=True, max_steps=2,
          scripted=lambda: FunctionModel(_broken, name="shop-broken"))
