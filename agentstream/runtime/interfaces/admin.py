"""``agentstream admin storage`` and ``agentstream admin purge``: retention as
an admin process (a one-off command against the running system, audited).

Both write an ``AuditRecord`` to the AUDIT stream (``audit.storage_<verb>.admin``)
saying who did what. A purge is audited before it runs: one that cannot be
audited (AUDIT unreachable or full) does not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import time
import uuid
from typing import Any

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import AuditRecord
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters import storage
from agentstream.runtime.config.settings import Settings, broker_url, parse_duration
from agentstream.runtime.core.errors import AgentstreamError

# The AuditRecord's agent for actions on the whole system, not one agent.
AUDIT_AGENT = "admin"
COMMAND_TIMEOUT_S = 300.0


def add_parser(subparsers: Any) -> None:
    """Register ``agentstream admin ...`` on the CLI's subparsers."""
    p = subparsers.add_parser("admin", help="storage: what each store holds; purge: remove old data (audited)")
    sub = p.add_subparsers(dest="admin_command", required=True, metavar="{storage,purge}")
    st = sub.add_parser("storage", help="size, messages, limits and age of the oldest item of every store")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.add_argument("--as", dest="as_", metavar="NAME", help="who you are, for the audit record (default: your login name)")
    st.set_defaults(fn=cmd_storage)
    pu = sub.add_parser("purge", help="remove data older than a duration from one store or all (audited)")
    pu.add_argument("--older-than", required=True, type=_duration_arg, metavar="DURATION",
                    help="e.g. 12h, 7d: what was stored longer ago than this goes")
    pu.add_argument("--store", action="append", metavar="NAME", choices=subjects.store_names(),
                    help="a stream or bucket (as `admin storage` names it); repeat for several; default: all")
    pu.add_argument("--as", dest="as_", metavar="NAME", help="who you are, for the audit record (default: your login name)")
    pu.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pu.set_defaults(fn=cmd_purge)


def _duration_arg(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be more than zero")
    return value


def _actor(args: argparse.Namespace) -> str:
    who = args.as_ or ""
    if not who:
        with contextlib.suppress(Exception):  # no USER/LOGNAME and no passwd entry
            who = getpass.getuser()
    if not who.strip():
        raise AgentstreamError("say who you are for the audit record: --as NAME")
    return who.strip()[:200]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


async def _audit(client_js: Any, kind: str, actor: str, details: dict[str, Any]) -> None:
    rec = AuditRecord(kind=kind, at=time.time(), actor=actor, agent=AUDIT_AGENT, task_id="", details=details)
    bus = nats_adapters.NatsBus(client_js)  # raises StoreFull at once when AUDIT is full
    await bus.publish(subjects.audit(kind, AUDIT_AGENT), codec.encode(rec), msg_id=f"audit:{kind}:{uuid.uuid4().hex}")


async def _connect(settings: Settings) -> Any:
    from agentstream.runtime.config.auth import nats_auth
    from agentstream.runtime.interfaces.client import AgentClient

    # provision=False: an admin command looks at what is there, it creates nothing.
    # Retention is an administrator's act (docs/security.md): the admin role,
    # the only one allowed to purge any store.
    url = broker_url(settings)
    return await AgentClient.connect(url, provision=False, telemetry=False,
                                     auth=nats_auth("admin", url, settings.data_dir))


async def cmd_storage(args: argparse.Namespace, settings: Settings) -> int:
    actor = _actor(args)
    client = await _connect(settings)
    try:
        rows = await asyncio.wait_for(storage.stats(client.nc), timeout=COMMAND_TIMEOUT_S)
        await _audit(client.js, "storage.inspected", actor, {"stores": len(rows)})
    finally:
        await client.close()
    now = time.time()
    if args.json:
        print(json.dumps([{**r.as_json(), "oldest_age_s": (now - r.oldest_ts) if r.oldest_ts else None}
                          for r in rows], indent=1))
        return 0
    head = ("store", "kind", "messages", "size", "limit", "used", "discard", "max age", "oldest", "s2")
    table = [head]
    for r in rows:
        if not r.exists:
            table.append((r.name, r.kind, "-", "-", "-", "-", "-", "-", "-", "missing"))
            continue
        limit = "none" if r.max_bytes < 0 else _size(r.max_bytes)
        used = "-" if r.max_bytes <= 0 else f"{100 * r.bytes / r.max_bytes:.1f}%"
        table.append((r.name, r.kind, f"{r.messages:,}", _size(r.bytes), limit, used, r.discard or "-",
                      _age(r.max_age_s) if r.max_age_s else "none",
                      _age(now - r.oldest_ts) if r.oldest_ts else "-", "yes" if r.compression == "s2" else "no"))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    total = sum(r.bytes for r in rows)
    print(f"total {_size(total)} (as JetStream counts it, before compression; limits count the same bytes)")
    return 0


async def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    actor = _actor(args)
    names: list[str] = list(dict.fromkeys(args.store or subjects.store_names()))
    cutoff = time.time() - args.older_than
    client = await _connect(settings)
    try:
        # Audited first: a purge that cannot be recorded does not happen.
        await _audit(client.js, "storage.purged", actor,
                     {"older_than_s": args.older_than, "cutoff": cutoff, "stores": names})
        results = []
        for name in names:
            results.append(await asyncio.wait_for(storage.purge(client.nc, client.js, name, cutoff),
                                                  timeout=COMMAND_TIMEOUT_S))
    finally:
        await client.close()
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=1))
        return 0
    for r in results:
        freed = r.bytes_before - r.bytes_after
        line = f"{r.name}: removed {r.removed:,} message(s), freed {_size(max(freed, 0))}"
        print(line + (f" ({r.note})" if r.note else ""))
    return 0
