"""Shared fixtures: a real nats-server, and worker processes.

Kept lean on purpose: test modules keep their own specialised fixtures
(test_http_api.py uses ``http_*`` names, test_cluster_harness.py ``cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.auth import NatsAuth, Role
from agentstream.runtime.interfaces.client import AgentClient

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
# The test apps import each other and tests/apps/applog.py as top-level
# modules, as worker processes do (APPS_DIR is on their PYTHONPATH).
if str(APPS_DIR) not in sys.path:
    sys.path.insert(0, str(APPS_DIR))
READY_MARKER = "agentstream worker "
READY_TIMEOUT_S = 20.0

# Every property test reproduces: the same examples on every run and machine,
# no example database, no wall-clock deadline on a shared, noisy machine.
settings.register_profile("agentstream", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("agentstream")

SpawnWorker = Callable[..., subprocess.Popen[bytes]]


def cli_command() -> list[str]:
    """The installed ``agentstream`` script, as users run it: its sys.path[0] is
    the venv's bin, not the cwd (which ``python -m`` would add, hiding bugs)."""
    exe = Path(sys.executable).with_name("agentstream")
    return [str(exe)] if exe.is_file() else [sys.executable, "-P", "-m", "agentstream.runtime.interfaces.cli"]


def run_cli(args: Sequence[str], env: Mapping[str, str], *, cwd: Path = REPO_ROOT,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """One CLI command to completion, its output captured as text."""
    return subprocess.run([*cli_command(), *args], env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str], *, code: int | None = None) -> str:
    """The single stderr line of a failed command (asserting that is all there is)."""
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentstream: error:"), proc.stderr
    return lines[0]


def worker_env(extra: Mapping[str, str] | None = None, *, data_dir: Path | None = None) -> dict[str, str]:
    """The environment of a child process: ours without AGENTSTREAM_* (a developer's
    own settings must not leak into a test), the repo and tests/apps importable,
    short ack wait and shutdown timeout, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    path = [str(REPO_ROOT), str(APPS_DIR)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env.update({
        "PYTHONPATH": os.pathsep.join(path),
        "PYTHONUNBUFFERED": "1",
        "AGENTSTREAM_ACK_WAIT": "2",
        "AGENTSTREAM_SHUTDOWN_TIMEOUT": "5",
        "AGENTSTREAM_SWEEP_INTERVAL": "1",
        "AGENTSTREAM_LOG_LEVEL": "WARNING",
    })
    if data_dir is not None:
        env["AGENTSTREAM_DATA_DIR"] = str(data_dir)
    env.update(extra or {})
    return env


class WorkerPool:
    """Spawns ``agentstream worker`` processes logging to files in ``log_dir`` and
    kills whatever is left at close()."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, tuple[Path, Path]] = {}
        self._n = 0

    def spawn(self, args: Sequence[str], env: Mapping[str, str] | None = None, *,
              wait: bool = True, timeout: float = READY_TIMEOUT_S) -> subprocess.Popen[bytes]:
        env = dict(env or {})
        if not env.get("AGENTSTREAM_NATS_URL"):
            raise ValueError("spawn_worker needs AGENTSTREAM_NATS_URL in env")
        self._n += 1
        name = env.get("AGENTSTREAM_WORKER_ID") or f"worker{self._n}"
        out = self.log_dir / f"{name}.{self._n}.out"
        err = self.log_dir / f"{name}.{self._n}.err"
        data_dir = self.log_dir / f"{name}.{self._n}.data"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agentstream.runtime.interfaces.cli", "worker", *args],
                env=worker_env(env, data_dir=data_dir), stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                cwd=str(REPO_ROOT))
        self.procs.append(proc)
        self.logs[proc.pid] = (out, err)
        if wait:
            self.wait_ready(proc, timeout)
        return proc

    def spawn_all(self, specs: Sequence[tuple[Sequence[str], Mapping[str, str]]]) -> list[subprocess.Popen[bytes]]:
        """Start several workers at once (they start in parallel), then wait for each to be ready."""
        procs = [self.spawn(args, env, wait=False) for args, env in specs]
        for p in procs:
            self.wait_ready(p)
        return procs

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S) -> None:
        out, _ = self.logs[proc.pid]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARKER in out.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode} before it was ready:\n{self.output(proc)}")
            time.sleep(0.05)
        raise TimeoutError(f"worker not ready within {timeout:g}s:\n{self.output(proc)}")

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        out, err = self.logs[proc.pid]
        return (f"--- stdout ---\n{out.read_text(errors='replace')[-3000:]}"
                f"--- stderr ---\n{err.read_text(errors='replace')[-3000:]}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


async def until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` (a function or a coroutine function) until it returns
    something truthy, or fail after ``timeout`` seconds saying what was
    awaited. (Import it: ``from conftest import until``.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def broker_with_workers(base: Path, specs: Sequence[tuple[Sequence[str], Mapping[str, str]]]) -> Iterator[str]:
    """A nats-server (its store under ``base``) and worker processes on it,
    ``(args, env)`` each; yields the broker URL once every worker is ready.
    For module-scoped fixtures that share one set of workers between tests."""
    server = EmbeddedNats(store_dir=base / "nats").start()
    pool = WorkerPool(base)
    try:
        pool.spawn_all([(args, {"AGENTSTREAM_NATS_URL": server.url, **env}) for args, env in specs])
        yield server.url
    finally:
        pool.close()
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream on a free port, its store in tmp_path."""
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker(nats_server: EmbeddedNats) -> EmbeddedNats:
    """The same broker, by the name the end-to-end tests use."""
    return nats_server


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    """The broker's URL with the admin (all-permissions) credentials in it, so
    a plain ``nats.connect(url)`` works; role identities: ``role_auth``."""
    return nats_server.url


@pytest.fixture
def role_auth(nats_server: EmbeddedNats) -> Callable[[Role], NatsAuth]:
    """``role_auth("client")``: the restricted credentials of a role on
    ``nats_server`` (whose ``url`` carries the all-permissions admin identity),
    for ``nats_adapters.connect(nats_server.plain_url, auth=...)``, ``Runtime``
    or ``AgentClient.connect``. See agentstream.runtime.config.auth."""
    def auth(role: Role) -> NatsAuth:
        if role == "admin":
            return NatsAuth(role="admin", user="admin", password=nats_server.admin_password)
        return NatsAuth(role=role, nkey_seed_file=str(nats_server.seed_file(role)))
    return auth


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[AgentClient]:
    """An AgentClient connected to ``nats_server`` (streams provisioned)."""
    c = await asyncio.wait_for(AgentClient.connect(nats_server.url), timeout=20)
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.close(), timeout=5)


@pytest.fixture
def worker_pool(tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def spawn_worker(worker_pool: WorkerPool) -> SpawnWorker:
    """``spawn_worker(args, env)``: start ``agentstream worker *args`` and wait for
    its ready line; leftovers are killed at teardown."""
    return worker_pool.spawn
