"""A real 3-node NATS JetStream cluster for tests, built from the SAME configs that
docker-compose.yml mounts (``ops/nats-cluster/n1.conf`` .. ``n3.conf``).

Rendering is a plain, checked text substitution of the literals documented at the
top of each config (every literal must be present, so a config edit that breaks the
substitution fails loudly instead of starting a cluster with the wrong ports)::

    0.0.0.0:4222             -> 127.0.0.1:<client port>
    0.0.0.0:6222             -> 127.0.0.1:<cluster port>
    0.0.0.0:8222             -> 127.0.0.1:<monitoring port>
    nats-route://natsN:6222  -> nats-route://127.0.0.1:<cluster port of node N>
    "/data"                  -> "<temp dir>/nN/data"

Usage::

    with NatsCluster() as cluster:          # or cluster = NatsCluster().start() ... cluster.stop()
        nc = await nats.connect(servers=cluster.client_urls)
        cluster.kill(0)                     # SIGKILL node n1 (indexes are 0-based)
        cluster.restart(0)                  # same config, same store dir, same ports

``cluster.urls`` is the comma-joined form accepted by ``AGENTSTREAM_NATS_URL``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from agentstream.runtime.adapters.embedded_broker import find_nats_server, free_port
from agentstream.runtime.config.auth import PROVISIONED, password_variable

OPS_CLUSTER_DIR = Path(__file__).resolve().parent.parent / "ops" / "nats-cluster"
NODE_NAMES = ("n1", "n2", "n3")
HOST = "127.0.0.1"

_ROUTE_RE = re.compile(r"nats-route://nats(\d+):6222")


class ClusterError(RuntimeError):
    pass


def render_node_config(text: str, *, client_port: int, cluster_port: int, http_port: int,
                       route_ports: dict[int, int], store_dir: str | Path,
                       host: str = HOST) -> str:
    """Render one ops/nats-cluster/nX.conf for a local run.

    ``route_ports`` maps a node number (1..3, as in the ``natsN`` hostnames) to that
    node's cluster port. Full-line comments are dropped first, so each literal must
    occur in a real setting.
    """
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")) + "\n"
    replacements = {
        "0.0.0.0:4222": f"{host}:{client_port}",
        "0.0.0.0:6222": f"{host}:{cluster_port}",
        "0.0.0.0:8222": f"{host}:{http_port}",
        '"/data"': json.dumps(str(store_dir)),
    }
    for literal, value in replacements.items():
        if literal not in text:
            raise ClusterError(f"cluster config is missing the literal {literal!r} that tests substitute")
        text = text.replace(literal, value)

    def route(m: re.Match[str]) -> str:
        n = int(m.group(1))
        if n not in route_ports:
            raise ClusterError(f"route to nats{n} has no port")
        return f"nats-route://{host}:{route_ports[n]}"

    text, count = _ROUTE_RE.subn(route, text)
    if count == 0:
        raise ClusterError("cluster config has no nats-route://natsN:6222 routes")
    return text


@dataclass
class Node:
    index: int
    name: str
    client_port: int
    cluster_port: int
    http_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    admin_password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        """With the admin credentials (all permissions) of ops/nats-cluster/auth.conf."""
        return f"nats://admin:{self.admin_password}@{HOST}:{self.client_port}"

    @property
    def conf(self) -> Path:
        return self.dir / f"{self.name}.conf"

    @property
    def log(self) -> Path:
        return self.dir / "nats-server.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


class NatsCluster:
    """Three ``nats-server -c <rendered conf>`` processes forming the JetStream
    cluster ``agentstream``. Sync context manager, or start()/stop()."""

    def __init__(self, config_dir: str | Path = OPS_CLUSTER_DIR, *,
                 base_dir: str | Path | None = None) -> None:
        self.config_dir = Path(config_dir)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="agentstream-cluster-")
            base_dir = self._tmp.name
        self.base_dir = Path(base_dir)
        ports = _distinct_free_ports(3 * len(NODE_NAMES))
        # The auth.conf users' passwords, as the servers' environment (as compose passes them).
        # nats-server parses an environment value as a config value: a password
        # must start with a letter ("7j..." would be a malformed number).
        self.passwords = {role: f"pw{secrets.token_hex(16)}" for role in PROVISIONED}
        self.nodes = [
            Node(index=i, name=name, client_port=ports[3 * i], cluster_port=ports[3 * i + 1],
                 http_port=ports[3 * i + 2], dir=self.base_dir / name, admin_password=self.passwords["admin"])
            for i, name in enumerate(NODE_NAMES)
        ]

    # -- addresses ---------------------------------------------------------------
    @property
    def client_urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def urls(self) -> str:
        """Comma-joined client URLs, the form ``AGENTSTREAM_NATS_URL`` accepts."""
        return ",".join(self.client_urls)

    # -- lifecycle -----------------------------------------------------------------
    def _render(self) -> None:
        route_ports = {i + 1: n.cluster_port for i, n in enumerate(self.nodes)}
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            src = (self.config_dir / f"{node.name}.conf").read_text()
            node.conf.write_text(render_node_config(
                src, client_port=node.client_port, cluster_port=node.cluster_port,
                http_port=node.http_port, route_ports=route_ports, store_dir=node.dir / "data"))
            shutil.copyfile(self.config_dir / "auth.conf", node.dir / "auth.conf")  # included by nX.conf

    def _spawn(self, node: Node) -> None:
        if node.alive:
            raise ClusterError(f"{node.name} is already running")
        log = open(node.log, "ab")  # noqa: SIM115 - owned by the child
        try:
            env = {**os.environ, **{password_variable(r): pw for r, pw in self.passwords.items()}}
            node.proc = subprocess.Popen([find_nats_server(), "-c", str(node.conf)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        finally:
            log.close()

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> NatsCluster:
        """Spawn all three nodes; with ``wait`` (the default) return only once
        the cluster is ready, without it at once, as ``docker compose up`` does."""
        try:
            self._render()
            for node in self.nodes:
                self._spawn(node)
            if wait:
                self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                assert node.proc is not None
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout=5)
                node.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (0-based): no lame duck, no flush, like a power cut of
        the process. Its store dir and ports are kept for restart()."""
        node = self.nodes[i]
        if not node.alive:
            raise ClusterError(f"{node.name} is not running")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=10)
        node.proc = None  # not expected to run: wait_ready() skips it

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again (after kill) with the same config and store dir, and
        wait until it is healthy (rejoined, JetStream assets current)."""
        node = self.nodes[i]
        if node.alive:
            self.kill(i)
        self._spawn(node)
        self.wait_ready(timeout)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- monitoring ------------------------------------------------------------------
    def monitor(self, i: int, path: str, timeout: float = 1.0) -> Any:
        """GET ``path`` (e.g. ``/jsz?streams=true``) from node ``i``'s monitoring port."""
        url = f"http://{HOST}:{self.nodes[i].http_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local
            return json.load(resp)

    def _node_status(self, node: Node) -> tuple[bool, str]:
        try:
            health = self.monitor(node.index, "/healthz")
            jsz = self.monitor(node.index, "/jsz")
        except urllib.error.HTTPError as exc:  # /healthz answers 503 while not ready
            return False, f"{node.name}: HTTP {exc.code} {exc.read()[:200]!r}"
        except (OSError, ValueError) as exc:
            return False, f"{node.name}: {exc}"
        leader = (jsz.get("meta_cluster") or {}).get("leader")
        if health.get("status") != "ok" or not leader:
            return False, f"{node.name}: health={health} meta_leader={leader!r}"
        return True, leader

    def _peers_not_current(self, leader: str, live: list[Node]) -> list[str]:
        """Running nodes the meta leader does not yet count as current peers. A
        leader is elected with a quorum of two; until the third has caught up,
        an R3 stream cannot be placed ('no suitable peers for placement')."""
        try:
            meta = self.monitor(self.index_of(leader), "/jsz").get("meta_cluster") or {}
        except (OSError, ValueError, KeyError) as exc:
            return [f"(leader {leader} unreadable: {exc})"]
        current = {r.get("name") for r in meta.get("replicas") or []
                   if r.get("current") and not r.get("offline")}
        return [n.name for n in live if n.name != leader and n.name not in current]

    def meta_leader(self) -> str | None:
        for node in self.nodes:
            if node.alive:
                ok, leader = self._node_status(node)
                if ok:
                    return leader
        return None

    def index_of(self, server_name: str) -> int:
        for node in self.nodes:
            if node.name == server_name:
                return node.index
        raise KeyError(server_name)

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.05) -> None:
        """Poll every running node until each is healthy (``/healthz``) and all agree
        on a JetStream meta leader. Raises ClusterError with log tails on timeout."""
        deadline = time.monotonic() + timeout
        last: list[str] = []
        while True:
            live = [n for n in self.nodes if n.proc is not None]  # expected to be running
            for node in live:
                assert node.proc is not None
                if node.proc.poll() is not None:  # died on its own
                    raise ClusterError(f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}")
            statuses = [self._node_status(n) for n in live]
            leaders = {s for ok, s in statuses if ok}
            if live and all(ok for ok, _ in statuses) and len(leaders) == 1:
                lagging = self._peers_not_current(next(iter(leaders)), live)
                if not lagging:
                    return
                statuses = [(False, f"meta leader does not yet see {', '.join(lagging)} as current")]
            last = [s for _, s in statuses]
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {n.name} ---\n{n.log_tail()}" for n in live)
                raise ClusterError(f"cluster not ready within {timeout}s: {last}\n{tails}")
            time.sleep(interval)
