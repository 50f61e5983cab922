"""What the core needs to know about a deployment's rules: prices, which tool
calls need a human, and who may decide. Built from the app and the environment."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from agentstream.contracts import codec
from agentstream.contracts.events import ApprovalDecided, ApprovalRequested
from agentstream.runtime.core.errors import ConfigError

# USD per million tokens (input, output). Scripted models are free; real
# models are priced from AGENTSTREAM_PRICES (JSON) or AGENTSTREAM_PRICES_FILE.
# The two defaults are list prices at the time of writing; override them.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
}


@dataclass(frozen=True)
class Policy:
    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    needs_approval: Callable[[str, dict[str, Any]], bool] | None = None
    # Whether a tool has any approval rule at all: a plan step whose arguments
    # are still pointers cannot be judged by needs_approval, so a plan-level
    # approval shows it to the human if its tool may need one.
    may_need_approval: Callable[[str], bool] | None = None
    approvers_for: Callable[[str], tuple[str, ...]] | None = None
    default_approvers: tuple[str, ...] = ()


def load_prices(env: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """``{"model": {"input": 2.5, "output": 10}}`` in USD per million tokens;
    the model ``"*"`` prices any model not listed."""
    prices = dict(DEFAULT_PRICES)
    raw = env.get("AGENTSTREAM_PRICES")
    source = "AGENTSTREAM_PRICES"
    if not raw and env.get("AGENTSTREAM_PRICES_FILE"):
        source = f"AGENTSTREAM_PRICES_FILE={env['AGENTSTREAM_PRICES_FILE']}"
        try:
            raw = Path(env["AGENTSTREAM_PRICES_FILE"]).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read it ({exc.strerror})") from None
    if not raw:
        return prices
    try:
        table = json.loads(raw)
        for model, p in table.items():
            prices[str(model)] = (float(p["input"]), float(p["output"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ConfigError(f'{source} must be JSON like {{"gpt-4o": {{"input": 2.5, "output": 10}}}} '
                          "(USD per million tokens)") from None
    return prices


def parse_approvers(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("AGENTSTREAM_APPROVERS", "")
    return tuple(a.strip() for a in raw.split(",") if a.strip())


class ApprovalRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An approval's listing entry in KV ``agent_approvals``."""

    request: ApprovalRequested
    status: str  # pending | approved | denied | expired | cancelled
    decision: ApprovalDecided | None = None
    # W3C traceparent of the approval's wait span (set when tracing is on):
    # whoever publishes the decision sends it along, so the decision joins the task's trace.
    trace_parent: str = ""


_dec = msgspec.json.Decoder(ApprovalRecord)


def encode_record(record: ApprovalRecord) -> bytes:
    return codec.encode(record)


def decode_record(raw: bytes) -> ApprovalRecord:
    return _dec.decode(raw)
