"""The ``trace`` and ``stats`` commands: the CLI face of :mod:`agentstream.runtime.observability.views`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from agentstream.contracts.events import TaskFailed
from agentstream.runtime.config.auth import nats_auth
from agentstream.runtime.config.settings import Settings, broker_url
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability.views import (
    load_stats,
    load_task_trace,
    parse_duration,
    render_stats,
    render_waterfall,
    stats_json,
)
from agentstream.runtime.observability.waterfall import WATERFALL_WIDTH


def _since_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_trace_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``agentstream trace TASK_ID``: register on the CLI's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "trace", help="draw a task's spans as a waterfall: hops, parallel tool calls, tokens, cost, failures")
    p.add_argument("task_id", help="task id (or a 32-hex trace id)")
    p.add_argument("--width", type=int, default=WATERFALL_WIDTH, help="bar width in characters")
    p.add_argument("--json", action="store_true", help="print the spans as JSON lines instead")
    p.set_defaults(fn=cmd_trace)
    return p


def add_stats_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``agentstream stats [--since 1h]``: register on the CLI's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "stats", help="latency percentiles, error rates and cost per agent, model and tool")
    p.add_argument("--since", type=_since_arg, default=3600.0, metavar="DURATION",
                   help="window: 30s, 15m, 1h (default), 2d")
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.set_defaults(fn=cmd_stats)
    return p


async def cmd_trace(args: argparse.Namespace, settings: Settings) -> int:
    async with await AgentClient.connect(broker_url(settings), provision=False,
                                        auth=nats_auth("observer", broker_url(settings), settings.data_dir)) as client:
        trace = await load_task_trace(client.js, args.task_id)
    if not trace.spans:
        sys.stderr.write(f"agentstream: error: no spans or events found for task {args.task_id!r}\n")
        return 1
    if getattr(args, "json", False):
        for s in trace.spans:
            print(msgspec.json.encode(s).decode())
    else:
        print(render_waterfall(trace.spans, width=getattr(args, "width", WATERFALL_WIDTH)))
        if isinstance(trace.result, TaskFailed):
            print(f"reason: {trace.result.reason}: {trace.result.message}")
    return 0


async def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.observability.lag import lag_json, read_lag, render_lag

    async with await AgentClient.connect(broker_url(settings), provision=False,
                                        auth=nats_auth("observer", broker_url(settings), settings.data_dir)) as client:
        stats, _results, source = await load_stats(client.js, args.since)
        lags = await read_lag(client.js)
    if getattr(args, "json", False):
        print(msgspec.json.encode({**stats_json(stats), "source": source, "consumer_lag": lag_json(lags)}).decode())
    else:
        print(render_stats(stats))
        if source == "events" and stats.tasks:
            print("\n(no telemetry spans stored: model and tool figures rebuilt from task events)")
        print()
        print(render_lag(lags))
    return 0
