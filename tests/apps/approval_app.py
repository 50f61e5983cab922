"""A test app for human-in-the-loop and budgets.

- agent ``refunds``: ``issue_refund`` needs a human's approval above $100
  (approvers alice and bob); a task mentioning "two refunds" asks for two at once.
- agent ``spendy``: its scripted model reports 1,500 tokens a turn, so a task
  with a 2,000-token budget is stopped before its second model call.

Tool runs are appended to the file named by ``APPROVAL_APP_LOG``.
"""

from __future__ import annotations

import json
import re

from applog import append_line

from agentstream import App, FunctionModel, ModelRequest, ModelResponse, answer, calls, last_user, tool, tool_results
from agentstream.contracts.events import Usage


def _log(line: str) -> None:
    append_line("APPROVAL_APP_LOG", line)


@tool(requires_approval=lambda a: a.amount > 100, approvers=("alice", "bob"))
async def issue_refund(order_id: int, amount: float) -> dict[str, object]:
    """Refund money to the customer's card.

    Args:
        order_id: The order to refund.
        amount: How much, in USD.
    """
    _log(f"issue_refund {order_id} {amount}")
    return {"order_id": order_id, "refunded": amount}


@tool(read_only=True)
async def lookup_order(order_id: int) -> dict[str, object]:
    """Look up an order.

    Args:
        order_id: The order number.
    """
    _log(f"lookup_order {order_id}")
    return {"order_id": order_id, "total": 42.0}


def refunds_script(request: ModelRequest) -> ModelResponse:
    question = last_user(request)
    results = tool_results(request)
    if not results:
        if "two refunds" in question:
            return calls(("issue_refund", {"order_id": 1, "amount": 150.0}),
                         ("issue_refund", {"order_id": 2, "amount": 250.0}))
        m = re.search(r"refund (\d+) for order (\d+)", question)
        if m:
            return calls(("issue_refund", {"order_id": int(m.group(2)), "amount": float(m.group(1))}))
        return answer("Nothing to do.")
    parts = []
    for r in results:
        data = json.loads(r.content)
        if "error" in data:
            parts.append(f"{data['error']['kind']}: {data['error']['message']}")
        else:
            parts.append(f"refunded {data['refunded']} on order {data['order_id']}")
    return answer("; ".join(parts))


def spendy_script(request: ModelRequest) -> ModelResponse:
    usage = Usage(input_tokens=1_200, output_tokens=300)
    if not tool_results(request):
        return ModelResponse(tool_calls=calls(("lookup_order", {"order_id": 5})).tool_calls,
                             finish_reason="tool_calls", usage=usage)
    return ModelResponse(text="done", usage=usage)


app = App()
app.agent("refunds", instructions="You issue refunds.", tools=[issue_refund, lookup_order],
          scripted=lambda: FunctionModel(refunds_script, name="scripted-refunds"))
app.agent("spendy", instructions="You use many tokens.", tools=[lookup_order],
          scripted=lambda: FunctionModel(spendy_script, name="scripted-spendy"))
