"""Who may do what on the bus: the roles, their NATS subject permissions, and
where a process finds the credentials of the role it plays.

The permissions are NATS's own (``authorization { users = [...] }`` with
``permissions: {publish, subscribe}``), enforced by the server: a role cannot
publish where its list does not allow, whatever client it uses. The same table
renders the embedded broker's config and is what ``ops/nats-auth.conf`` spells
out by hand (a test keeps the two equal). ``docs/security.md`` explains each
line; the README's roles table is the short form.

Credentials, first match wins (see :func:`nats_auth`):

1. ``AGENTSTREAM_NATS_CREDS`` (or ``NATS_CREDS``): a NATS ``.creds`` file (JWT
   and nkey seed, operator mode);
2. ``AGENTSTREAM_NATS_NKEY``: a file holding an nkey user seed (``SU...``);
3. ``AGENTSTREAM_NATS_USER`` with ``AGENTSTREAM_NATS_PASSWORD``;
4. ``AGENTSTREAM_NATS_TOKEN``;
5. a ``user:password@`` in the URL (nats-py's own handling);
6. the embedded broker's per-role seed file, ``<data dir>/nats/auth/<role>.nk``.

TLS: a ``tls://`` URL, with ``AGENTSTREAM_NATS_CA`` (CA bundle) and
``AGENTSTREAM_NATS_CERT`` / ``AGENTSTREAM_NATS_KEY`` (client certificate).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from agentstream.runtime.core.errors import ConfigError

Role = Literal["admin", "client", "observer", "approver", "gateway", "agent", "tool", "worker", "evaluator",
               "memory", "operator"]

# The roles the embedded broker makes credentials for, and ops/nats-auth.conf
# lists. ``gateway`` (client + approver: the HTTP API, which authenticates
# approvers itself) and ``worker`` (agent + tool: one process serving both)
# are unions for processes that play two roles.
PROVISIONED: tuple[Role, ...] = ("admin", "client", "observer", "approver", "gateway", "agent", "tool", "worker",
                                 "evaluator", "memory", "operator")


def inbox_prefix(role: Role) -> str:
    """Each role has its own reply-inbox namespace, so one role cannot read the
    replies (JetStream deliveries, ack subjects) meant for another."""
    return "_INBOX" if role == "admin" else f"_INBOX_{role}"


# Reading JetStream: stream and consumer info, direct and stored gets, short-lived
# consumers (scans, ordered consumers) and their flow control. Reading is not a
# trust boundary here: the boundary is who may write.
_JS_READ = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.CONSUMER.CREATE.>",
    "$JS.API.CONSUMER.INFO.*.*",
    "$JS.API.CONSUMER.MSG.NEXT.*.*",
    "$JS.API.CONSUMER.DELETE.*.*",
    "$JS.FC.>",
)
# Creating or updating the protocol's streams, buckets and durable consumers:
# workers provision what they consume at start-up.
_JS_PROVISION = (
    "$JS.API.STREAM.CREATE.*",
    "$JS.API.STREAM.UPDATE.*",
    "$JS.API.CONSUMER.DURABLE.CREATE.*.*",
)

# The claim-check object store (large task inputs, large tool results): writing
# an object is publishing its chunks and metadata, and purging a replaced one's
# chunks. Result objects are named by their content hash, which the agent checks.
_PAYLOADS = ("$O.agent_payloads.>", "$JS.API.STREAM.PURGE.OBJ_agent_payloads")

# Memory (docs/memory.md): agents ask the memory service by request-reply on
# memory.query|write.<tenant>; the service (in agent processes by default, or
# `agentstream memory serve`) answers on the requester's inbox and keeps its KV
# buckets; only operators may use memory.admin.<tenant>.
_MEMORY_KV = ("$KV.memory_episodes.>", "$KV.memory_conversations.>", "$KV.memory_quarantine.>",
              *(f"$JS.API.STREAM.PURGE.KV_{b}" for b in ("memory_episodes", "memory_conversations",
                                                         "memory_quarantine")))
_MEMORY_ASK = ("memory.query.*", "memory.write.*")
_MEMORY_SERVE = "memory.*.*"

# Safe change (docs/rollout.md): shadow deployments publish only under
# shadow.<label>.>, keep their sessions in shadow_sessions; the comparator writes
# outcomes side by side; canary workers and the canary command share rollout_state.
_ROLLOUT = ("shadow.>", "$KV.shadow_sessions.>", "$KV.rollout_outcomes.>", "$KV.rollout_state.>",
            "$JS.ACK.SHADOW.>", "$JS.ACK.RESULTS.>",
            *(f"$JS.API.STREAM.PURGE.KV_{b}" for b in ("shadow_sessions", "rollout_outcomes", "rollout_state")))

_AGENT_PUB = (
    "agents.*.results.*",
    "agents.*.progress.*",
    "tools.*.calls",
    "approvals.*.requested",
    "$KV.agent_sessions.>",
    "$KV.agent_deadlines.>",
    "$KV.agent_conversations.>",
    "$KV.agent_approvals.>",
    # NatsKV.delete purges a key's messages through the stream API (no marker left behind).
    *(f"$JS.API.STREAM.PURGE.KV_{b}" for b in ("agent_sessions", "agent_deadlines", "agent_conversations",
                                              "agent_approvals")),
    "$JS.ACK.TASKS.>",
    "$JS.ACK.EVENTS.>",
    # The replica heartbeats that split the inbox's partitions (docs/scaling.md;
    # a purge when a replica leaves).
    "$KV.agent_replicas.>",
    "$JS.API.STREAM.PURGE.KV_agent_replicas",
    *_MEMORY_ASK,
    *_MEMORY_KV,
    *_ROLLOUT,
)
_TOOL_PUB = (
    "agents.*.events.*",
    "$KV.tool_breakers.>",
    "$KV.tool_results.>",
    "$JS.API.STREAM.PURGE.KV_tool_breakers",
    "$JS.API.STREAM.PURGE.KV_tool_results",
    "$JS.ACK.TOOLS.>",
    *_PAYLOADS,
)
# Workers make room in a full work stream by deleting what every consumer has
# acknowledged (subjects.StreamDef.trim_acked, docs/storage.md): a purge up to
# the lowest acknowledged sequence, nothing else.
_TRIM = tuple(f"$JS.API.STREAM.PURGE.{s}" for s in ("TASKS", "EVENTS", "TOOLS"))
_WORKER_COMMON = ("audit.>", "deadletter.>", "telemetry.>", *_TRIM)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # May answer requests it received (their reply inboxes), as a service does.
    allow_responses: bool = False


def permissions(role: Role) -> Permissions | None:
    """The role's subject permissions; None: everything (admin)."""
    inbox = f"{inbox_prefix(role)}.>"
    match role:
        case "admin":
            return None
        case "client":
            return Permissions(publish=("agents.*.tasks", "evals.*.feedback.*", *_PAYLOADS, "telemetry.>",
                                        *_JS_READ),
                               subscribe=(inbox, "agents.*.results.*", "agents.*.progress.*"))
        case "observer":
            return Permissions(publish=_JS_READ,
                               subscribe=(inbox, "agents.>", "tools.>", "approvals.>", "audit.>",
                                          "deadletter.>", "telemetry.>"))
        case "approver":
            return Permissions(publish=("agents.*.decisions.*", "audit.>", "telemetry.>", *_JS_READ),
                               subscribe=(inbox, "agents.*.results.*", "agents.*.progress.*"))
        case "gateway":
            return Permissions(publish=("agents.*.tasks", "evals.*.feedback.*", *_PAYLOADS,
                                        "agents.*.decisions.*", "audit.>", "telemetry.>", *_JS_READ),
                               subscribe=(inbox, "agents.*.results.*", "agents.*.progress.*"))
        case "agent":
            return Permissions(publish=(*_AGENT_PUB, *_WORKER_COMMON, *_JS_READ, *_JS_PROVISION),
                               subscribe=(inbox, _MEMORY_SERVE), allow_responses=True)
        case "tool":
            return Permissions(publish=(*_TOOL_PUB, *_WORKER_COMMON, *_JS_READ, *_JS_PROVISION),
                               subscribe=(inbox,))
        case "worker":
            return Permissions(publish=(*_AGENT_PUB, *_TOOL_PUB, *_WORKER_COMMON, *_JS_READ, *_JS_PROVISION),
                               subscribe=(inbox, _MEMORY_SERVE), allow_responses=True)
        case "memory":
            return Permissions(publish=(*_MEMORY_KV, *_WORKER_COMMON, *_JS_READ, *_JS_PROVISION),
                               subscribe=(inbox, _MEMORY_SERVE), allow_responses=True)
        case "operator":
            # memory administration, and the canary command (rollout state, its audit, candidate consumers)
            return Permissions(publish=(*_MEMORY_ASK, "memory.admin.*", "$KV.rollout_state.>", "audit.>",
                                        *_JS_READ, *_JS_PROVISION), subscribe=(inbox,))
        case "evaluator":
            return Permissions(publish=("evals.*.scores.*", "evals.*.drift", "$JS.ACK.RESULTS.>", "$JS.ACK.EVALS.>",
                                        *_WORKER_COMMON, *_JS_READ, *_JS_PROVISION),
                               subscribe=(inbox,))
    raise ConfigError(f"unknown role {role!r}")


def _quoted(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{s}"' for s in items) + "]"


def permissions_conf(role: Role) -> str:
    """The ``permissions`` block of one user, in nats-server config syntax."""
    p = permissions(role)
    if p is None:
        return '{publish: {allow: [">"]}, subscribe: {allow: [">"]}}'
    responses = ", allow_responses: true" if p.allow_responses else ""
    return (f"{{publish: {{allow: {_quoted(p.publish)}}}, subscribe: {{allow: {_quoted(p.subscribe)}}}"
            f"{responses}}}")


def password_variable(role: Role) -> str:
    """The environment variable holding ``role``'s password in ops/ deployments."""
    return f"AGENTSTREAM_{role.upper()}_PASSWORD"


def ops_auth_conf() -> str:
    """``ops/nats-cluster/auth.conf``: every role as a user whose password
    nats-server reads from the environment (an unset one stops the server
    from starting: no accidental open broker). Regenerate with
    ``python -m agentstream.runtime.config.auth > ops/nats-cluster/auth.conf``."""
    lines = ["# agentstream: users and subject permissions, one user per role (docs/security.md).",
             "# Generated from agentstream/runtime/config/auth.py (a test checks it is current):",
             "#   python -m agentstream.runtime.config.auth > ops/nats-cluster/auth.conf",
             "# Each password comes from the server's environment, e.g. AGENTSTREAM_AGENT_PASSWORD.",
             "authorization {", "  users = ["]
    for role in PROVISIONED:
        lines.append(f"    {{user: {role}, password: ${password_variable(role)}, "
                     f"permissions: {permissions_conf(role)}}}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class NatsAuth:
    """How one connection authenticates (at most one method) and its TLS files."""

    role: Role = "admin"
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def method(self) -> str:
        if self.creds_file:
            return f"creds file {self.creds_file}"
        if self.nkey_seed_file:
            return f"nkey seed {self.nkey_seed_file}"
        if self.user:
            return f"user {self.user}"
        if self.token:
            return "token"
        return "none"


def auth_dir(data_dir: Path) -> Path:
    """Where the embedded broker keeps its per-role credentials."""
    return data_dir / "nats" / "auth"


def _readable(name: str, path: str) -> str:
    if not os.path.isfile(path):
        raise ConfigError(f"{name}={path!r}: no such file")
    return path


def nats_auth(role: Role, url: str, data_dir: Path, env: Mapping[str, str] | None = None) -> NatsAuth:
    """The credentials a process playing ``role`` connects to ``url`` with."""
    env = os.environ if env is None else env
    tls = {
        "tls_ca": _readable("AGENTSTREAM_NATS_CA", env["AGENTSTREAM_NATS_CA"])
        if env.get("AGENTSTREAM_NATS_CA") else None,
        "tls_cert": _readable("AGENTSTREAM_NATS_CERT", env["AGENTSTREAM_NATS_CERT"])
        if env.get("AGENTSTREAM_NATS_CERT") else None,
        "tls_key": _readable("AGENTSTREAM_NATS_KEY", env["AGENTSTREAM_NATS_KEY"])
        if env.get("AGENTSTREAM_NATS_KEY") else None,
    }
    if bool(tls["tls_cert"]) != bool(tls["tls_key"]):
        raise ConfigError("AGENTSTREAM_NATS_CERT and AGENTSTREAM_NATS_KEY go together (client certificate and key)")
    creds = env.get("AGENTSTREAM_NATS_CREDS") or env.get("NATS_CREDS")
    if creds:
        return NatsAuth(role=role, creds_file=_readable("AGENTSTREAM_NATS_CREDS", creds), **tls)
    if env.get("AGENTSTREAM_NATS_NKEY"):
        return NatsAuth(role=role, nkey_seed_file=_readable("AGENTSTREAM_NATS_NKEY", env["AGENTSTREAM_NATS_NKEY"]),
                        **tls)
    if env.get("AGENTSTREAM_NATS_USER"):
        if not env.get("AGENTSTREAM_NATS_PASSWORD"):
            raise ConfigError("AGENTSTREAM_NATS_USER is set but AGENTSTREAM_NATS_PASSWORD is not")
        return NatsAuth(role=role, user=env["AGENTSTREAM_NATS_USER"], password=env["AGENTSTREAM_NATS_PASSWORD"],
                        **tls)
    if env.get("AGENTSTREAM_NATS_TOKEN"):
        return NatsAuth(role=role, token=env["AGENTSTREAM_NATS_TOKEN"], **tls)
    if any(urlparse(u.strip()).username for u in url.split(",") if "://" in u):
        return NatsAuth(role=role, **tls)  # nats-py reads user:password@ from the URL
    seed = auth_dir(data_dir) / f"{role}.nk"
    if seed.is_file():
        return NatsAuth(role=role, nkey_seed_file=str(seed), **tls)
    return NatsAuth(role=role, **tls)


if __name__ == "__main__":
    print(ops_auth_conf(), end="")
