"""The README's first command ends in `agentstream demo`: it must run end to end
on an embedded broker and show what the README promises."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import run_cli


def test_demo_runs_end_to_end_with_the_scripted_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTREAM_", "OPENAI_"))}
    proc = run_cli(["demo"], env, cwd=tmp_path, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scripted" in out and "AGENTSTREAM_MODEL" in out  # says no model is configured
    assert "embedded nats-server" in out
    assert "7 of 7 tasks completed" in out
    assert "1 tool calls" not in out and "1 model turns" not in out  # counts read as English
    assert "|| overlapped with 2 other call(s)" in out  # a turn with three parallel tool calls
    assert "approved by supervisor" in out  # the human-in-the-loop step
    assert "Order 42 is processing" in out and "Refunded $156.00 on order 42" in out  # conversation continued
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_each_demo_run_has_fresh_conversation_ids(tmp_path: Path) -> None:
    """Trace UIs group traces into sessions by conversation id: two demo runs
    exported to the same UI must not merge into one session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTREAM_", "OPENAI_", "OTEL_"))}
    env["OTEL_TRACES_EXPORTER"] = "console"  # spans as JSON on stderr
    runs = []
    for n in range(2):
        cwd = tmp_path / str(n)
        cwd.mkdir()
        proc = run_cli(["demo"], env, cwd=cwd, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ids = set(re.findall(r'"gen_ai\.conversation\.id": "([^"]+)"', proc.stderr))
        assert len(ids) >= 2, proc.stderr[-2000:]
        runs.append(ids)
    assert not runs[0] & runs[1]
