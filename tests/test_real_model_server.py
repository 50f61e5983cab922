"""The demo app against a real model server (a real model, not the loopback
fake): tasks, tool calls made, failures by reason.

Skipped unless AGENTSTREAM_REAL_MODEL_URL names an OpenAI-compatible server;
``scripts/real_model_server.sh`` builds and starts one (llama-cpp-python with
SmolLM2-135M-Instruct) and writes the variables to source. Run with
``-m real_model -s`` to see the report (docs/models.md).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

import pytest

from agentstream import AgentClient, OpenAIChatModel, Runtime, Settings, TaskCompleted, TaskFailed
from agentstream.contracts.events import FAILURE_REASONS
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.adapters.model_probe import probe_model

URL = os.environ.get("AGENTSTREAM_REAL_MODEL_URL", "")
MODEL = os.environ.get("AGENTSTREAM_MODEL", "smollm2")
pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not URL, reason="no real model server (AGENTSTREAM_REAL_MODEL_URL; "
                                                 "scripts/real_model_server.sh starts one)"),
              pytest.mark.timeout(1800)]

TASKS = [
    "Where is my order 42?",
    "Can I get a refund for order 17?",
    "What is the shipping status of order 8?",
    "Hello!",
    "asdf qwer zxcv",
    "What are your store hours?",
    "Look up order 42, tell me its shipping status, and whether it can be refunded.",
    "My order 12 arrived broken. I want my money back.",
    "Search the knowledge base for the return policy.",
    "Please open a support ticket: my package is late. " + "It is very late. " * 300,
]


async def test_the_demo_app_against_a_real_model(broker: EmbeddedNats, tmp_path: Path) -> None:
    llm = OpenAIChatModel.from_env({**os.environ, "AGENTSTREAM_MODEL": MODEL, "OPENAI_BASE_URL": URL})
    assert llm is not None
    probe = await probe_model(llm, timeout_s=llm.timeout_s)
    settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url)
    rt = Runtime.from_settings(settings, agents=["support"], tools="all", models={"support": llm})
    await rt.start()
    results: list[TaskCompleted | TaskFailed] = []
    try:
        async with await AgentClient.connect(broker.url, telemetry=False) as client:
            ids = [await client.submit("support", q, deadline_s=240) for q in TASKS]
            for task_id in ids:
                results.append(await client.result(task_id, timeout=300))
    finally:
        await rt.stop()
        await llm.close()

    failures = collections.Counter(r.reason for r in results if isinstance(r, TaskFailed))
    tool_calls = sum(r.tool_calls for r in results)
    report = {
        "model": MODEL, "server": URL, "probe": probe.summary(),
        "tasks": len(results), "completed": sum(isinstance(r, TaskCompleted) for r in results),
        "tool_calls": tool_calls,
        "tasks_with_tool_calls": sum(r.tool_calls > 0 for r in results),
        "failures_by_reason": dict(failures),
        "outcomes": [{"input": q[:60], "result": r.output[:120] if isinstance(r, TaskCompleted)
                      else f"FAILED {r.reason}: {r.message[:120]}", "tool_calls": r.tool_calls, "steps": r.steps}
                     for q, r in zip(TASKS, results)],
    }
    text = json.dumps(report, indent=2)
    print("\nreal-model report:\n" + text)
    out = os.environ.get("AGENTSTREAM_REAL_MODEL_REPORT")
    if out:
        Path(out).write_text(text + "\n")
    # Every task ended with a result (no hang, no crashed worker), for a reason the contract knows.
    assert len(results) == len(TASKS)
    assert set(failures) <= set(FAILURE_REASONS), failures
    # The tools reached the model: it called at least one.
    assert tool_calls > 0, text
