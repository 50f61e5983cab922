"""What the CLI tells a newcomer, and with which exit code: an unknown task id
or an agent nobody serves is said at once (not an endless silent wait); a task
parked on a human says so and how to decide it; ``--json`` is only JSON; no
broker configured is an error, not somebody else's 127.0.0.1:4222.

Every command runs as a subprocess against a real nats-server; every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import broker_with_workers, one_line_error, run_cli, worker_env

from agentstream.runtime.interfaces.exit_codes import MEANING, ExitCode, table

pytestmark = pytest.mark.slow


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {k: v for k, v in worker_env(extra).items() if not k.startswith("OPENAI_")}


def run(args: list[str], cwd: Path, extra: dict[str, str] | None = None,
        timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run_cli(args, _env(extra), cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker and one worker serving approval_app's agents and tools."""
    base = tmp_path_factory.mktemp("outcomes")
    with broker_with_workers(base, [(["--agent", "refunds", "--agent", "spendy", "--tools", "all"],
                                     {"AGENTSTREAM_APP": "approval_app:app"})]) as url:
        yield url


def test_watch_of_an_unknown_task_ends_saying_so(desk: str, tmp_path: Path) -> None:
    proc = run(["watch", "no-such-task"], tmp_path, {"AGENTSTREAM_NATS_URL": desk}, timeout=30)
    line = one_line_error(proc, code=ExitCode.NOT_FOUND)
    assert "no task 'no-such-task'" in line and "check the id" in line


def test_submit_wait_to_an_agent_nobody_serves_ends_at_once(desk: str, tmp_path: Path) -> None:
    proc = run(["submit", "nobody", "hi", "--wait"], tmp_path, {"AGENTSTREAM_NATS_URL": desk}, timeout=30)
    line = one_line_error(proc, code=ExitCode.NOT_FOUND)
    task_id = proc.stdout.strip()
    assert "no worker has ever served agent 'nobody'" in line
    assert f"task {task_id} is queued" in line and f"agentstream watch {task_id}" in line


def test_submit_without_wait_to_an_agent_nobody_serves_is_not_success(desk: str, tmp_path: Path) -> None:
    proc = run(["submit", "nobody", "hi"], tmp_path, {"AGENTSTREAM_NATS_URL": desk}, timeout=30)
    assert "no worker has ever served agent 'nobody'" in one_line_error(proc, code=ExitCode.NOT_FOUND)
    served = run(["submit", "refunds", "nothing"], tmp_path, {"AGENTSTREAM_NATS_URL": desk})
    assert served.returncode == ExitCode.OK and served.stderr == "", served.stderr


def test_a_task_waiting_for_approval_says_so_and_how_to_decide(desk: str, tmp_path: Path) -> None:
    proc = run(["submit", "refunds", "refund 150 for order 7", "--wait", "--timeout", "4"], tmp_path,
               {"AGENTSTREAM_NATS_URL": desk}, timeout=40)
    assert proc.returncode == ExitCode.WAIT_TIMEOUT, proc.stderr
    task_id = proc.stdout.strip()
    notice, error = proc.stderr.strip().splitlines()
    assert notice.startswith(f"agentstream: task {task_id} is waiting for approval of issue_refund"), notice
    assert f"agentstream approve {task_id}-1-" in notice and "--as NAME" in notice, notice
    assert error.startswith("agentstream: error: no result") and "waiting for approval" in error, error
    assert f"agentstream watch {task_id}" in error


def test_submit_wait_json_prints_only_json(desk: str, tmp_path: Path) -> None:
    proc = run(["submit", "refunds", "nothing", "--wait", "--json", "--timeout", "30"], tmp_path,
               {"AGENTSTREAM_NATS_URL": desk})
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert json.loads(proc.stdout)["type"] == "agentstream.task.completed.v1"
    queued = run(["submit", "refunds", "nothing", "--json"], tmp_path, {"AGENTSTREAM_NATS_URL": desk})
    assert set(json.loads(queued.stdout)) == {"task_id"}


def test_failed_task_and_timed_out_wait_have_different_codes(desk: str, tmp_path: Path) -> None:
    failed = run(["submit", "spendy", "go", "--wait", "--timeout", "30", "--max-tokens", "2000"], tmp_path,
                 {"AGENTSTREAM_NATS_URL": desk})
    assert failed.returncode == ExitCode.TASK_FAILED, failed.stderr
    waited = run(["result", "never-submitted", "--wait", "0.5"], tmp_path, {"AGENTSTREAM_NATS_URL": desk})
    assert "agentstream watch never-submitted" in one_line_error(waited, code=ExitCode.WAIT_TIMEOUT)


@pytest.mark.parametrize("command", [["submit", "support", "hi"], ["watch", "t-1"], ["approvals"]])
def test_no_broker_configured_is_an_error_not_a_guess(command: list[str], tmp_path: Path) -> None:
    # Something listens on 127.0.0.1:4222 or not: either way the CLI must not go there.
    proc = run(command, tmp_path, {"AGENTSTREAM_DATA_DIR": str(tmp_path / "empty")})
    line = one_line_error(proc, code=ExitCode.BROKER_UNREACHABLE)
    assert "no broker configured" in line and "agentstream up" in line and "AGENTSTREAM_NATS_URL" in line


def test_unreachable_broker_has_its_own_code(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        proc = run(["approvals"], tmp_path, {"AGENTSTREAM_NATS_URL": f"nats://127.0.0.1:{port}"})
    assert "cannot reach NATS" in one_line_error(proc, code=ExitCode.BROKER_UNREACHABLE)


def test_exit_codes_are_distinct_and_documented() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode) == len(MEANING)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert table() in readme, "README's exit-code table differs from exit_codes.table()"


async def test_dashboard_shows_in_flight_tasks_and_pending_approvals(desk: str, tmp_path: Path) -> None:
    import asyncio

    from conftest import until

    from agentstream.runtime.interfaces.client import AgentClient
    from agentstream.runtime.interfaces.dashboard import PAGE, live_state

    async with await AgentClient.connect(desk, provision=False, telemetry=False) as client:
        task_id = await client.submit("refunds", "refund 180 for order 9")

        async def parked() -> dict[str, object] | None:
            live = await live_state(client.js)
            mine = [t for t in live["in_flight"] if t["task_id"] == task_id]
            return live if mine and mine[0]["waiting_for_approval"] else None

        live = await asyncio.wait_for(until(parked, 20, "the task parked on its approval"), 30)
    approval = next(a for a in live["pending_approvals"] if a["task_id"] == task_id)
    assert approval["tool"] == "issue_refund" and approval["arguments"] == {"order_id": 9, "amount": 180.0}
    assert approval["decide"] == f"agentstream approve {approval['approval_id']} --as NAME"
    page = PAGE.read_text()
    assert 'id="in-flight"' in page and 'id="pending-approvals"' in page and "/api/live" in page
