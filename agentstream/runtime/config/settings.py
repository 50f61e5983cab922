"""Configuration from the environment (twelve-factor). Every variable is in the
README's configuration table; a malformed value is a one-line ConfigError."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
