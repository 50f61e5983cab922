"""Configuration from the environment (twelve-factor). Every variable is in the
README's configuration table; a malformed value is a one-line ConfigError."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agentstream.contracts.subjects import store_names
from agentstream.runtime.core.errors import BrokerUnavailable, ConfigError


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum or value != value or value in (float("inf"),):
        raise ConfigError(f"{name}={raw!r} must be a finite number >= {minimum:g}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0,
         maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={raw!r} must be between {minimum} and {maximum}")
    return value


# The spellings AGENTSTREAM_TRACING and friends accept too.
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def inbox_partitions(env: Mapping[str, str]) -> int:
    """AGENTSTREAM_INBOX_PARTITIONS: the partition count EVENTS gets from
    whichever process creates it, worker or client (docs/scaling.md)."""
    return _int(env, "AGENTSTREAM_INBOX_PARTITIONS", 16, minimum=1, maximum=256)


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}={env.get(name)!r} must be one of 1, true, yes, on or 0, false, no, off")


def _log_level(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name) or default
    level = raw.strip().upper()
    # Named levels only: logging.getLevelName() would turn a typo into "Level LOUD".
    names = logging.getLevelNamesMapping()
    if level not in names:
        raise ConfigError(f"{name}={raw!r} is not a log level: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mi": 1024**2, "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
               "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4}
UNLIMITED = -1


def parse_size(text: str) -> int:
    """``512MiB``, ``2GB``, ``1048576`` -> bytes; ``-1``, ``none`` or ``unlimited``
    -> -1 (no limit). ValueError otherwise."""
    raw = text.strip().lower()
    if raw in ("-1", "none", "unlimited"):
        return UNLIMITED
    m = _SIZE.match(raw)
    if not m:
        raise ValueError(f"invalid size {text!r}: use e.g. 512MiB, 2GB, 1048576 or unlimited")
    value = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
    if value < 1:
        raise ValueError(f"invalid size {text!r}: must be at least 1 byte")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``7d`` or bare seconds -> seconds (>= 0). ValueError otherwise."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 15m, 12h or 7d")
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "").lower()]


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def parse_store_limits(raw: str, known: tuple[str, ...]) -> dict[str, int]:
    """``TASKS=1GiB,agent_sessions=2GiB`` -> {store: bytes}; names as in
    ``agentstream admin storage``. A typo is an error, not an ignored limit."""
    limits: dict[str, int] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, sep, size = part.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ValueError(f"{part!r}: expected STORE=SIZE with STORE one of {', '.join(known)}")
        limits[name] = parse_size(size)
    return limits


def _store_limits(env: Mapping[str, str], name: str) -> dict[str, int]:
    try:
        return parse_store_limits(env.get(name) or "", store_names())
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _compression(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "default"):
        return None
    if raw not in ("s2", "none"):
        raise ConfigError(f"{name}={env.get(name)!r} must be default, s2 or none")
    return raw


@dataclass(frozen=True)
class Settings:
    nats_url: str | None
    data_dir: Path
    app: str | None
    replicas: int
    ack_wait_s: float
    max_in_flight: int
    max_deliver: int
    max_event_bytes: int
    http_host: str
    http_port: int
    worker_id: str
    sweep_interval_s: float
    shutdown_timeout_s: float
    model: str | None
    log_level: str
    # False: `up` serves only the HTTP API, workers run elsewhere.
    run_workers: bool = True
    # Byte limit per store (stream or bucket name) overriding the protocol's
    # defaults (agentstream.contracts.subjects), from AGENTSTREAM_STORE_LIMITS.
    store_limits: Mapping[str, int] = field(default_factory=dict)
    # None: each store's own choice; "s2" or "none": every store.
    store_compression: str | None = None
    # How long a finished session stays in agent_sessions (0: the bucket's max age).
    finished_session_ttl_s: float = 3600.0
    # Partitions of the agents' inbox (docs/scaling.md); the inbox stream's
    # own count wins once it exists.
    inbox_partitions: int = 16

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        replicas = _int(env, "AGENTSTREAM_REPLICAS", 1, minimum=1)
        if replicas not in (1, 3, 5):
            raise ConfigError(f"AGENTSTREAM_REPLICAS={replicas} must be 1, 3 or 5")
        return cls(
            nats_url=env.get("AGENTSTREAM_NATS_URL") or None,
            data_dir=Path(env.get("AGENTSTREAM_DATA_DIR") or ".agentstream"),
            app=env.get("AGENTSTREAM_APP") or None,
            replicas=replicas,
            ack_wait_s=_float(env, "AGENTSTREAM_ACK_WAIT", 30.0, minimum=0.5),
            max_in_flight=_int(env, "AGENTSTREAM_MAX_IN_FLIGHT", 64, minimum=1),
            max_deliver=_int(env, "AGENTSTREAM_MAX_DELIVER", 5, minimum=1),
            max_event_bytes=_int(env, "AGENTSTREAM_MAX_EVENT_BYTES", 1024 * 1024, minimum=1024),
            http_host=env.get("AGENTSTREAM_HTTP_HOST") or "127.0.0.1",
            http_port=_int(env, "AGENTSTREAM_HTTP_PORT", 8080, minimum=0, maximum=65535),
            worker_id=env.get("AGENTSTREAM_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
            sweep_interval_s=_float(env, "AGENTSTREAM_SWEEP_INTERVAL", 5.0, minimum=0.05),
            shutdown_timeout_s=_float(env, "AGENTSTREAM_SHUTDOWN_TIMEOUT", 20.0, minimum=0.0),
            model=env.get("AGENTSTREAM_MODEL") or None,
            log_level=_log_level(env, "AGENTSTREAM_LOG_LEVEL", "WARNING"),
            run_workers=env_bool(env, "AGENTSTREAM_RUN_WORKERS", True),
            store_limits=_store_limits(env, "AGENTSTREAM_STORE_LIMITS"),
            store_compression=_compression(env, "AGENTSTREAM_STORE_COMPRESSION"),
            finished_session_ttl_s=_duration(env, "AGENTSTREAM_FINISHED_SESSION_TTL", 3600.0),
            inbox_partitions=inbox_partitions(env),
        )


def broker_url(settings: Settings) -> str:
    """AGENTSTREAM_NATS_URL, else the broker a local `agentstream up` started.

    Never a guess: falling back to ``nats://127.0.0.1:4222`` would silently
    submit to (or serve tasks from) whatever broker someone else runs there."""
    if settings.nats_url:
        return settings.nats_url
    url_file = settings.data_dir / "nats.url"
    try:
        url = url_file.read_text().strip() if url_file.is_file() else ""
    except OSError:
        url = ""
    if url:
        return url
    raise BrokerUnavailable(
        f"no broker configured: no AGENTSTREAM_NATS_URL and no {url_file} (written while `agentstream up` "
        "runs with that data dir); start one with `agentstream up`, or set AGENTSTREAM_NATS_URL=nats://HOST:PORT")
