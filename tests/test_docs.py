"""The documents a newcomer reads must match the code: the checked-in AsyncAPI
document, and the JSON examples in the README."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agentstream.contracts import codec
from agentstream.contracts.events import TaskCompleted, TaskSubmitted
from agentstream.handlers.protocol import CHANNELS, asyncapi_document, asyncapi_json

ROOT = Path(__file__).resolve().parent.parent


def test_checked_in_asyncapi_document_is_current() -> None:
    # Regenerate with: agentstream asyncapi --out docs/asyncapi.json
    assert (ROOT / "docs" / "asyncapi.json").read_text() == asyncapi_json()


def test_asyncapi_describes_every_subject_with_its_event_schema() -> None:
    doc = asyncapi_document()
    addresses = {ch["address"] for ch in doc["channels"].values()}
    assert {"agents.{agent}.tasks", "agents.{agent}.results.{task_id}", "tools.{tool}.calls"} <= addresses
    payloads = json.dumps(doc["components"]["messages"])
    for name in ("TaskSubmitted", "TaskCompleted", "TaskFailed", "ToolCallRequested", "ToolCallCompleted"):
        assert f"#/components/schemas/{name}" in payloads
    assert doc["components"]["schemas"]["TaskSubmitted"]["required"] == ["type", "agent", "input"]
    # Every subject of the protocol, each with exactly its event types' schemas.
    channels = {ch["address"]: ch for ch in doc["channels"].values()}
    assert set(channels) == {address for address, _, _, _ in CHANNELS}
    for address, _, types, _ in CHANNELS:
        refs: set[str] = set()
        for message in channels[address]["messages"].values():
            payload = doc["components"]["messages"][message["$ref"].rsplit("/", 1)[1]]["payload"]
            refs |= {r["$ref"] for r in payload.get("oneOf", [payload])}
        assert refs == {f"#/components/schemas/{t.__name__}" for t in types}, address
        for t in types:
            assert t.__name__ in doc["components"]["schemas"], t


def _json_blocks(text: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", text, flags=re.S)


def test_readme_json_examples_are_valid_events() -> None:
    blocks = _json_blocks((ROOT / "README.md").read_text())
    decoded = [codec.any_event.decode(b.encode()) for b in blocks]
    assert any(isinstance(e, TaskSubmitted) and e.agent == "support" for e in decoded)
    assert any(isinstance(e, TaskCompleted) for e in decoded)


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_ci_runs_the_readmes_test_command_and_both_commands_install_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [line for block in _sh_blocks(readme) for line in block.splitlines()
                if line.startswith("python3 -m venv .venv")]
    demo, test = commands[0], commands[1]
    assert "requirements/demo.txt" in demo and demo.endswith("agentstream demo")
    assert "requirements/test.txt" in test and "pytest" in test
    assert "--require-hashes" in demo and "--require-hashes" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci


_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
            "ten": 10}


def test_readme_says_how_many_tool_workers_the_demo_starts() -> None:
    from agentstream.runtime.core.app import load_app

    readme = (ROOT / "README.md").read_text()
    said = re.search(r"the agent and (\w+) tool workers", readme)
    assert said, "the README no longer says how many tool workers the demo starts"
    assert _NUMBERS.get(said.group(1)) == len(load_app(None).tools), said.group(0)


def test_readme_documents_the_embedded_brokers_port() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "--nats-port" in readme and "free port when 4222 is" in readme.replace("\n", " ")
