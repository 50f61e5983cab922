"""The CLI as a user meets it: `up` that cannot start cleans up after itself, one
`up` per data dir, exit codes that say whether the work succeeded, one-line
errors for bad configuration and arguments, and the small promises of
`lint`, `deny`, `submit` and `watch`.

Every command runs as a subprocess in a temporary directory, against a real
nats-server; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from conftest import broker_with_workers, cli_command, one_line_error, run_cli, worker_env

from agentstream.contracts import codec
from agentstream.contracts.events import ModelTurnCompleted, TaskCompleted, Usage
from agentstream.runtime.adapters.embedded_broker import _port_open as port_open
from agentstream.runtime.adapters.embedded_broker import free_port

RUN_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 30.0
UP_READY = "agentstream up:"


# --------------------------------------------------------------------------- helpers


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in worker_env(extra).items() if not k.startswith("OPENAI_")}
    return {**env, **(extra or {})}


def run(args: list[str], cwd: Path, extra: dict[str, str] | None = None,
        timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return run_cli(args, _env(extra), cwd=cwd, timeout=timeout)


def brokers_in(cwd: Path) -> list[int]:
    """Pids of nats-servers running with ``cwd`` as their working directory
    (what `up` starts for the data dir under it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if "nats-server" in (proc / "cmdline").read_bytes().decode(errors="replace") \
                    and Path(os.readlink(proc / "cwd")) == cwd:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The cwd of the commands; any broker a failing `up` leaves behind is killed
    afterwards, so a regression fails its test without leaking processes."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    try:
        yield cwd.resolve()
    finally:
        for pid in brokers_in(cwd.resolve()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Up:
    """An `agentstream up` in the background, its output in files."""

    def __init__(self, cwd: Path, extra: dict[str, str], *args: str) -> None:
        self.out, self.err = cwd.parent / f"up-{time.monotonic_ns()}.out", cwd.parent / "up.err"
        with open(self.out, "wb") as fo, open(self.err, "ab") as fe:
            self.proc = subprocess.Popen([*cli_command(), "up", *args], env=_env(extra), cwd=cwd, stdout=fo,
                                         stderr=fe, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out.read_text(errors="replace")
            if UP_READY in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited with {self.proc.returncode}: {self.err.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"up not ready within {timeout:g}s: {self.err.read_text()[-2000:]}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    try:
        yield started
    finally:
        for up in started:
            if up.proc.poll() is None:
                up.proc.kill()
                up.proc.wait(timeout=10)


# --------------------------------------------------------------------------- 1. up that cannot start


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("case", ["port taken", "host not local"])
def test_up_that_cannot_listen_fails_in_one_line_and_stops_its_broker(case: str, workdir: Path,
                                                                      held_port: int) -> None:
    nats_port = free_port()
    env = {"AGENTSTREAM_HTTP_PORT": str(held_port)} if case == "port taken" else \
        {"AGENTSTREAM_HTTP_HOST": "192.0.2.1", "AGENTSTREAM_HTTP_PORT": "0"}  # TEST-NET-1: no host has it
    proc = run(["up", "--nats-port", str(nats_port)], workdir, env)
    line = one_line_error(proc)
    if case == "port taken":
        assert f"cannot listen on 127.0.0.1:{held_port}: address already in use" in line
    else:
        assert "cannot listen on 192.0.2.1:0: cannot assign requested address" in line
    # The broker it had started is gone, and so is the file pointing at it.
    assert not port_open(nats_port)
    assert brokers_in(workdir) == []
    assert not (workdir / ".agentstream" / "nats.url").exists()


def test_up_that_fails_after_its_broker_started_stops_it(workdir: Path) -> None:
    # A model that no agent can use: start-up fails after the broker is up.
    (workdir / "nomodel.py").write_text(
        "from agentstream.runtime.core.app import App\n"
        "app = App()\n"
        "app.agent('bare', instructions='x', tools=[])\n")
    nats_port = free_port()
    proc = run(["up", "--nats-port", str(nats_port)], workdir,
               {"AGENTSTREAM_APP": "nomodel:app", "AGENTSTREAM_HTTP_PORT": "0"})
    assert "has no scripted model" in one_line_error(proc)
    assert not port_open(nats_port)
    assert brokers_in(workdir) == []
    assert not (workdir / ".agentstream" / "nats.url").exists()


@pytest.mark.parametrize(("env", "variable"), [
    ({"AGENTSTREAM_HTTP_PORT": "99999"}, "AGENTSTREAM_HTTP_PORT"),
    ({"AGENTSTREAM_HTTP_PORT": "-1"}, "AGENTSTREAM_HTTP_PORT"),
    ({"AGENTSTREAM_LOG_LEVEL": "LOUD"}, "AGENTSTREAM_LOG_LEVEL"),
    ({"AGENTSTREAM_RUN_WORKERS": "x"}, "AGENTSTREAM_RUN_WORKERS"),
])
def test_bad_configuration_is_one_line_before_anything_starts(env: dict[str, str], variable: str,
                                                              workdir: Path) -> None:
    line = one_line_error(run(["up", "--nats-port", "0"], workdir, env))
    assert variable in line
    assert brokers_in(workdir) == [] and not (workdir / ".agentstream").exists()


def test_nats_port_out_of_range_is_a_usage_error(workdir: Path) -> None:
    assert "--nats-port" in one_line_error(run(["up", "--nats-port", "70000"], workdir), code=2)


# --------------------------------------------------------------------------- 2. one up per data dir


def test_second_up_in_the_same_directory_is_refused_and_a_crashed_one_does_not_block(
        workdir: Path, ups: list[Up]) -> None:
    # RUN_WORKERS=no (an accepted spelling): the API alone, quick to start.
    env = {"AGENTSTREAM_HTTP_PORT": "0", "AGENTSTREAM_RUN_WORKERS": "no"}
    first = Up(workdir, env, "--nats-port", "0")
    ups.append(first)
    assert "agents: -" in first.wait_ready()
    url_file = workdir / ".agentstream" / "nats.url"
    url = url_file.read_text().strip()

    second = run(["up", "--nats-port", "0"], workdir, env)
    line = one_line_error(second)
    assert "already running in this directory" in line and url in line and f"pid {first.proc.pid}" in line
    assert "AGENTSTREAM_DATA_DIR" in line
    # The first one's files and broker are untouched.
    assert url_file.read_text().strip() == url
    assert first.proc.poll() is None and port_open(int(url.rsplit(":", 1)[1]))
    assert len(brokers_in(workdir)) == 1

    assert first.stop() == 0
    assert not url_file.exists() and brokers_in(workdir) == []

    # A crashed up (SIGKILL: no clean-up at all) leaves its lock file, not its
    # lock, and its broker follows it (Linux: a parent-death signal).
    crashed = Up(workdir, env, "--nats-port", "0")
    ups.append(crashed)
    crashed.wait_ready()
    assert crashed.stop(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while brokers_in(workdir):
        assert time.monotonic() < deadline, "the broker of a SIGKILLed up outlived it"
        time.sleep(0.05)
    again = Up(workdir, env, "--nats-port", "0")
    ups.append(again)
    again.wait_ready()
    assert again.stop() == 0


# --------------------------------------------------------------------------- 3, 7, 8, 9 against a worker


@pytest.fixture(scope="module")
def approvals_desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker and one worker serving approval_app's agents and tools."""
    base = tmp_path_factory.mktemp("lifecycle")
    with broker_with_workers(base, [(["--agent", "refunds", "--agent", "spendy", "--tools", "all"],
                                     {"AGENTSTREAM_APP": "approval_app:app",
                                      "APPROVAL_APP_LOG": str(base / "tools.log")})]) as url:
        yield url


def test_submit_of_a_failed_task_exits_1_with_and_without_json(approvals_desk: str, workdir: Path) -> None:
    env = {"AGENTSTREAM_NATS_URL": approvals_desk}
    # spendy's model uses 1,500 tokens a turn: a 2,000-token budget stops it.
    plain = run(["submit", "spendy", "go", "--wait", "--timeout", "30", "--max-tokens", "2000"], workdir, env)
    assert plain.returncode == 1, plain.stderr
    assert "FAILED (budget" in plain.stdout.splitlines()[-1], plain.stdout

    as_json = run(["submit", "spendy", "go", "--wait", "--timeout", "30", "--max-tokens", "2000", "--json"],
                  workdir, env)
    assert as_json.returncode == 1, as_json.stderr
    assert json.loads(as_json.stdout.splitlines()[-1])["type"] == "agentstream.task.failed.v1"


def test_deny_needs_no_reason(approvals_desk: str, workdir: Path) -> None:
    env = {"AGENTSTREAM_NATS_URL": approvals_desk}
    task_id = run(["submit", "refunds", "refund 150 for order 7"], workdir, env).stdout.strip()
    deadline = time.monotonic() + 30
    pending: list[dict[str, object]] = []
    while not pending:
        listed = run(["approvals", "--json"], workdir, env)
        pending = [r for r in json.loads(listed.stdout or "[]") if r["request"]["task_id"] == task_id]
        assert pending or time.monotonic() < deadline, "no approval requested within 30s"
    approval_id = pending[0]["request"]["approval_id"]  # type: ignore[index]

    denied = run(["deny", str(approval_id), "--as", "alice"], workdir, env)
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout.strip() == f"denied {approval_id} as alice"
    result = run(["result", task_id, "--wait", "30"], workdir, env)
    assert result.stdout.strip() == "approval_denied: alice denied this call", result.stdout


def test_submit_to_an_agent_nobody_serves_says_so_and_still_submits(approvals_desk: str, workdir: Path) -> None:
    env = {"AGENTSTREAM_NATS_URL": approvals_desk}
    proc = run(["submit", "nope", "hi"], workdir, env)
    task_id = proc.stdout.strip()
    assert one_line_error(proc, code=5).startswith(
        f"agentstream: error: no worker has ever served agent 'nope'; task {task_id} is queued")
    assert task_id and " " not in task_id

    async def stored() -> int:
        nc = await nats.connect(approvals_desk)
        try:
            info = await nc.jetstream().stream_info("TASKS", subjects_filter="agents.nope.tasks")
            return (info.state.subjects or {}).get("agents.nope.tasks", 0)
        finally:
            await nc.close()

    import asyncio

    assert asyncio.run(stored()) == 1  # submitted all the same
    served = run(["submit", "refunds", "nothing"], workdir, env)
    assert served.returncode == 0 and served.stderr == "", served.stderr


def test_watch_prints_each_events_own_time(approvals_desk: str, workdir: Path) -> None:
    # Events of a task that happened hours ago: watch replays them with their times.
    then = time.time() - 3 * 3600 - 17 * 60
    task_id = f"old-{time.monotonic_ns()}"
    turn = ModelTurnCompleted(task_id=task_id, agent="ghost", step=1, model="m", finish_reason="stop",
                              tool_calls=(), usage=Usage(), started_at=then - 2, finished_at=then - 1)
    done = TaskCompleted(task_id=task_id, agent="ghost", agent_version="v1", output="ok", steps=1,
                         tool_calls=0, usage=Usage(), started_at=then - 3, finished_at=then)

    async def publish() -> None:
        nc = await nats.connect(approvals_desk)
        try:
            js = nc.jetstream()
            await js.publish(f"agents.ghost.progress.{task_id}", codec.encode(turn))
            await js.publish(f"agents.ghost.results.{task_id}", codec.encode(done))
        finally:
            await nc.close()

    import asyncio

    asyncio.run(publish())
    proc = run(["watch", task_id, "--timeout", "20"], workdir, {"AGENTSTREAM_NATS_URL": approvals_desk})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [
        [time.strftime("%H:%M:%S", time.localtime(then - 1)), "ModelTurnCompleted"],
        [time.strftime("%H:%M:%S", time.localtime(then)), "TaskCompleted"]], proc.stdout


# --------------------------------------------------------------------------- 3. demo


def test_demo_that_completes_no_task_exits_non_zero(workdir: Path) -> None:
    proc = run(["demo", "--timeout", "30"], workdir,
               {"AGENTSTREAM_MODEL": "foo", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}, timeout=110)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("0 of 7 tasks completed, 7 failed"), proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- 4, 5. one-line errors


@pytest.mark.parametrize("command", ["asyncapi", "schema"])
def test_out_to_a_missing_directory_is_one_line(command: str, workdir: Path) -> None:
    line = one_line_error(run([command, "--out", "/nonexistent/dir/x.json"], workdir))
    assert "cannot write /nonexistent/dir/x.json: no such file or directory" in line


@pytest.mark.parametrize(("option", "value"), [
    ("--max-tokens", "0"), ("--max-cost", "0"), ("--max-steps", "-1"), ("--timeout", "-1"),
    ("--deadline", "0"), ("--max-cost", "nan"), ("--max-steps", "two"),
])
def test_submit_rejects_non_positive_limits(option: str, value: str, workdir: Path) -> None:
    # No broker at all: the arguments are refused before anything connects.
    proc = run(["submit", "support", "hi", option, value], workdir,
               {"AGENTSTREAM_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    line = one_line_error(proc, code=2)
    assert option in line and "positive" in line


# --------------------------------------------------------------------------- 6. lint --app


def test_lint_app_from_the_current_directory(workdir: Path) -> None:
    (workdir / "badapp.py").write_text(
        "from agentstream.runtime.core.app import App\n"
        "from agentstream.runtime.core.tools import tool\n\n\n"
        "@tool\n"
        "async def mystery(x: int) -> int:\n"
        "    return x\n\n\n"
        "app = App()\n"
        "app.agent('a', instructions='x', tools=[mystery])\n")
    proc = run(["lint", "--app", "badapp:app"], workdir)
    assert proc.returncode == 1, proc.stderr  # the undocumented tool is an error finding
    assert "tool=mystery: no description" in proc.stdout
    # The summary is output, not a diagnostic: on stdout, after the findings.
    assert proc.stdout.strip().splitlines()[-1] == "agentstream lint: 1 error(s), 1 warning(s)"
    assert proc.stderr == ""

    # The error names what the user actually used.
    assert "--app='nosuch:app': cannot import 'nosuch'" in one_line_error(run(["lint", "--app", "nosuch:app"],
                                                                             workdir))
    assert "AGENTSTREAM_APP='nosuch:app'" in one_line_error(run(["lint"], workdir,
                                                                {"AGENTSTREAM_APP": "nosuch:app"}))


def test_up_refuses_a_task_for_an_agent_its_app_does_not_define(workdir: Path, ups: list[Up]) -> None:
    """`up` runs the app's workers, so it knows its agents: a typo is a 404 at
    once, not a task nobody will ever run."""
    import re
    import urllib.error
    import urllib.request

    up = Up(workdir, {"AGENTSTREAM_HTTP_PORT": "0"}, "--nats-port", "0")
    ups.append(up)
    base = re.search(r"HTTP (http://\S+);", up.wait_ready())
    assert base, "the ready line names the HTTP address"

    def post(agent: str) -> tuple[int, dict[str, object]]:
        req = urllib.request.Request(f"{base.group(1)}/v1/tasks", method="POST",
                                     data=json.dumps({"agent": agent, "input": "hi"}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    status, body = post("nope")
    assert status == 404 and body["error"] == "unknown agent 'nope'; this service runs: support", body
    status, body = post("support")
    assert status == 202 and body["task_id"], body
    assert up.stop() == 0


def test_up_whose_embedded_broker_dies_exits_non_zero_in_one_line(workdir: Path, ups: list[Up]) -> None:
    """Nothing works again once its own broker is gone: `up` ends, non-zero,
    so a supervisor restarts it, rather than serving 503s with /healthz green."""
    up = Up(workdir, {"AGENTSTREAM_HTTP_PORT": "0", "AGENTSTREAM_RUN_WORKERS": "0"}, "--nats-port", "0")
    ups.append(up)
    up.wait_ready()
    (broker,) = brokers_in(workdir)
    os.kill(broker, signal.SIGKILL)
    assert up.proc.wait(timeout=30) == 1
    lines = [ln for ln in up.err.read_text().splitlines() if ln.strip()]
    assert lines[-1].startswith("agentstream: error: the embedded nats-server exited (signal 9)"), lines[-5:]
    assert not any("Traceback" in ln for ln in lines), lines
    assert not (workdir / ".agentstream" / "nats.url").exists()
