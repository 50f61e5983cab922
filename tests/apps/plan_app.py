"""A test app for the plan-first strategy (tests/test_plan_bus.py).

Agent ``planner`` (strategy ``plan``): its scripted planner plans, for "order
N", a lookup and a shipping check in parallel, then a refund: for order 42 of
the total the lookup returns ($120), by pointer; for others $80, literally.
``issue_refund`` needs a human above $100 (approver alice), so a plan whose
refund amount is a pointer is approved as a whole.
"fail" in the task makes the shipping check fail on the first plan, so the
planner replans without it; "stubborn" makes every plan fail, so the task
falls back to ReAct (which looks the order up and answers). The solver answers from the plan's results.

Tool runs are appended to the file named by ``PLAN_APP_LOG``.
"""

from __future__ import annotations

import json
import re

from applog import append_line

from agentstream import App, FunctionModel, ModelRequest, ModelResponse, answer, calls, last_user, tool, tool_results
from agentstream.runtime.core.tools import ToolFailure
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME, turn_kind


def _log(line: str) -> None:
    append_line("PLAN_APP_LOG", line)


@tool(read_only=True)
async def lookup_order(order_id: int) -> dict[str, object]:
    """Look up an order.

    Args:
        order_id: The order number.
    """
    _log(f"lookup_order {order_id}")
    return {"order": {"id": order_id, "total": {42: 120.0, 4242: 9000.0}.get(order_id, 80.0)}}


@tool(read_only=True)
async def shipping_status(order_id: int, fail: bool = False) -> dict[str, object]:
    """Where an order is.

    Args:
        order_id: The order number.
        fail: Fail on purpose (tests).
    """
    _log(f"shipping_status {order_id}")
    if fail:
        raise ToolFailure("the carrier's API is down")
    return {"order_id": order_id, "status": "in transit"}


@tool(requires_approval=lambda a: a.amount > 100, approvers=("alice",))
async def issue_refund(order_id: int, amount: float) -> dict[str, object]:
    """Refund money to the customer's card.

    Args:
        order_id: The order to refund.
        amount: How much, in USD.
    """
    _log(f"issue_refund {order_id} {amount}")
    return {"order_id": order_id, "refunded": amount}


def _order(question: str) -> int:
    m = re.search(r"order (\d+)", question)
    return int(m.group(1)) if m else 1


def _plan(question: str, replans: int) -> dict[str, object]:
    n = _order(question)
    if "stubborn" in question:
        # Every plan fails (the carrier is down for every order it asks about):
        # replanning runs out and the task falls back to ReAct.
        return {"steps": [{"id": "ship", "tool": "shipping_status", "args": {"order_id": n + replans, "fail": True}}],
                "rationale": "ask the carrier"}
    replanning = replans > 0
    total = {"$ref": "look", "path": ["order", "total"]}
    steps: list[dict[str, object]] = [{"id": "look", "tool": "lookup_order", "args": {"order_id": n}}]
    if not replanning:
        steps.append({"id": "ship", "tool": "shipping_status",
                      "args": {"order_id": n, "fail": "fail" in question}})
    # Order 42's refund takes its amount from the lookup by pointer: a human
    # approves the plan with the pointer spelled out. Other orders' refunds are
    # literal and small: no approval.
    args: dict[str, object] = {"order_id": {"$ref": "look", "path": ["order", "id"]}, "amount": total} \
        if n == 42 else {"order_id": n, "amount": 80.0}
    steps.append({"id": "refund", "tool": "issue_refund", "args": args,
                  "depends_on": (["look"] if n != 42 else []) + ([] if replanning else ["ship"])})
    # "huge": a planner that writes far more than a session can hold.
    rationale = "look the order up, then refund its total" + (" and more" * 50_000 if "huge" in question else "")
    return {"steps": steps, "rationale": rationale}


def plan_script(request: ModelRequest) -> ModelResponse:
    kind = turn_kind(request.tools, request.tool_choice)
    if kind == "planner":
        replans = sum(1 for m in request.messages if m.role == "tool" and m.name == SUBMIT_PLAN_NAME)
        return calls((SUBMIT_PLAN_NAME, _plan(last_user(request), replans)))
    if kind == "solver":
        parts = []
        for r in tool_results(request):
            data = json.loads(r.content) if r.content.startswith("{") else {}
            if r.name == "issue_refund" and "refunded" in data:
                parts.append(f"refunded {data['refunded']} on order {data['order_id']}")
            elif r.name == "shipping_status" and "status" in data:
                parts.append(f"order {data['order_id']} is {data['status']}")
        return answer("; ".join(parts) or "nothing done")
    if "stubborn" in last_user(request):  # the ReAct fallback: look the order up, answer from it
        looked = [r for r in tool_results(request) if r.name == "lookup_order"]
        if not looked:
            return calls(("lookup_order", {"order_id": _order(last_user(request))}))
        return answer(f"(react) {looked[-1].content}")
    return answer("(react) I can only plan.")


app = App()
app.agent("planner", instructions="You plan, then act.", tools=[lookup_order, shipping_status, issue_refund],
          scripted=lambda: FunctionModel(plan_script, name="scripted-planner"), strategy="plan")
# The same tools and script, routed per task: a short question goes to ReAct
# (the script answers it directly), a multi-part request is planned.
app.agent("router", instructions="You plan when it pays.", tools=[lookup_order, shipping_status, issue_refund],
          scripted=lambda: FunctionModel(plan_script, name="scripted-planner"), strategy="routed",
          router_threshold=2.5)
