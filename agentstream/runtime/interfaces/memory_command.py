"""``agentstream memory serve | ingest | search | forget | quarantine``.

Every command but ``serve`` is a request to a running memory service
(``agentstream memory serve``, or any process with ``AGENTSTREAM_MEMORY=on``),
bounded by ``--timeout``; the tenant is the subject the request goes to, so
an operator's credentials decide which tenants they can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from agentstream.contracts.events import (
    MemoryAdminRequested,
    MemoryQueryRequested,
    MemoryReplied,
    MemoryWrite,
    MemoryWriteRequested,
)
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.config.auth import nats_auth
from agentstream.runtime.config.settings import Settings, broker_url
from agentstream.runtime.core.errors import AgentstreamError, ConfigError
from agentstream.runtime.memory.chunking import chunk
from agentstream.runtime.memory.client import BusMemory
from agentstream.runtime.memory.errors import MemoryError_

INGEST_BATCH = 32


def add_parser(subparsers: Any) -> None:
    """Register ``agentstream memory`` on the CLI's subparsers."""
    m = subparsers.add_parser("memory", help="long-term memory: serve, ingest, search, forget, quarantine")
    sub = m.add_subparsers(dest="memory_command", required=True, parser_class=type(m))

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tenant", default="default", help="tenant (a subject token; default: default)")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the memory service")

    s = sub.add_parser("serve", help="run a memory service on the broker (qdrant-edge, or QDRANT_URL)")
    s.set_defaults(fn=cmd_serve)

    i = sub.add_parser("ingest", help="chunk a file (or every file in a folder) and store it as memories")
    i.add_argument("path", type=Path)
    i.add_argument("--source", help="source name (default: the path); `forget --source` removes it all")
    i.add_argument("--scope", choices=("system", "user"), default="system")
    i.add_argument("--user", default="", help="the user the memories are about (scope user)")
    i.add_argument("--trust", choices=("high", "medium", "low"), default="high")
    i.add_argument("--chunk-size", type=int, default=800)
    i.add_argument("--overlap", type=int, default=120)
    common(i)
    i.set_defaults(fn=cmd_ingest)

    q = sub.add_parser("search", help="what memory would recall for a query")
    q.add_argument("query")
    q.add_argument("--user", default="", help="include this user's memories (system knowledge always)")
    q.add_argument("--limit", type=int, default=5)
    q.add_argument("--json", action="store_true")
    common(q)
    q.set_defaults(fn=cmd_search)

    f = sub.add_parser("forget", help="remove every memory derived from a source (a task id, a document)")
    f.add_argument("--source", required=True)
    f.add_argument("--as", dest="as_", default="", help="your identity, for the audit record")
    common(f)
    f.set_defaults(fn=cmd_forget)

    qr = sub.add_parser("quarantine", help="review writes the poisoning gate held back")
    qsub = qr.add_subparsers(dest="quarantine_command", required=True, parser_class=type(m))
    ql = qsub.add_parser("list", help="list quarantined writes")
    ql.add_argument("--all", action="store_true", help="also approved and rejected ones")
    ql.add_argument("--json", action="store_true")
    common(ql)
    ql.set_defaults(fn=cmd_quarantine)
    for verb in ("approve", "reject"):
        qv = qsub.add_parser(verb, help=f"{verb} a quarantined write")
        qv.add_argument("item_id")
        qv.add_argument("--reason", default="")
        qv.add_argument("--as", dest="as_", default="", help="your identity, for the audit record")
        common(qv)
        qv.set_defaults(fn=cmd_quarantine)


async def _api(settings: Settings, timeout: float) -> tuple[Any, BusMemory]:
    url = broker_url(settings)
    nc = await nats_adapters.connect(url, name="agentstream-memory-cli", reconnect=False,
                                     auth=nats_auth("operator", url, settings.data_dir))
    return nc, BusMemory(nc, timeout_s=timeout)


def _check(reply: MemoryReplied) -> MemoryReplied:
    if not reply.ok:
        raise MemoryError_(reply.error or "the memory service refused the request")
    return reply


def _actor(args: argparse.Namespace) -> str:
    return getattr(args, "as_", "") or os.environ.get("AGENTSTREAM_APPROVER") or os.environ.get("USER") or "operator"


async def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.service.memory import MemorySettings, start_memory_service

    url = broker_url(settings)
    nc = await nats_adapters.connect(url, name=f"agentstream-memory-{settings.worker_id}",
                                     auth=nats_auth("memory", url, settings.data_dir))
    cfg = MemorySettings.from_env(os.environ, settings.data_dir)
    service = await start_memory_service(nc, nc.jetstream(), cfg, replicas=settings.replicas)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"agentstream memory: serving memory.*.* on {broker_url(settings)} ({service.store.index.name})",
          flush=True)
    try:
        await stop.wait()
    finally:
        await service.stop()
        await nc.drain()
    return 0


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".md", ".txt", ".rst", ""))
    raise ConfigError(f"{path}: no such file or folder")


async def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import Progress

    if args.scope == "user" and not args.user:
        raise ConfigError("--scope user needs --user")
    writes: list[MemoryWrite] = []
    for path in _files(args.path):
        source = args.source or str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read as UTF-8 text ({exc})") from None
        for n, piece in enumerate(chunk(text, args.chunk_size, args.overlap)):
            digest = hashlib.sha256(piece.encode()).hexdigest()[:16]
            writes.append(MemoryWrite(op="ADD", write_id=f"ingest:{source}:{n}:{digest}", text=piece,
                                      kind="document", scope=args.scope, user_id=args.user, source=source,
                                      trust=args.trust, metadata={"path": str(path), "chunk": str(n)}))
    nc, api = await _api(settings, args.timeout)
    counts: dict[str, int] = {}
    try:
        with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
            bar = progress.add_task(f"ingesting {args.path}", total=len(writes))
            for start in range(0, len(writes), INGEST_BATCH):
                batch = tuple(writes[start:start + INGEST_BATCH])
                reply = _check(await api.request(args.tenant, MemoryWriteRequested(writes=batch, actor=_actor(args)),
                                                 verb="admin"))
                for r in reply.results:
                    counts[r.status] = counts.get(r.status, 0) + 1
                    if r.status in ("quarantined", "rejected"):
                        sys.stderr.write(f"agentstream memory: {r.write_id}: {r.status}: {r.reason}\n")
                progress.advance(bar, len(batch))
    finally:
        await nc.drain()
    print(f"{len(writes)} chunk(s) from {args.path}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


async def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    nc, api = await _api(settings, args.timeout)
    try:
        reply = _check(await api.request(args.tenant, MemoryQueryRequested(query=args.query, user_id=args.user,
                                                                         limit=args.limit)))
    finally:
        await nc.drain()
    if args.json:
        print(json.dumps(msgspec.to_builtins(reply.hits), indent=2))
        return 0
    if not reply.hits:
        print("no memories match")
    for h in reply.hits:
        text = " ".join(h.text.split())
        print(f"{h.score:8.3f}  {h.memory_id}  [{h.scope}/{h.kind}, trust={h.trust}, source={h.source}]\n"
              f"          {text[:200]}")
    return 0


async def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    nc, api = await _api(settings, args.timeout)
    try:
        reply = _check(await api.request(args.tenant, MemoryAdminRequested(action="forget", source=args.source,
                                                                         actor=_actor(args))))
    finally:
        await nc.drain()
    print(f"forgot {reply.count} memor{'y' if reply.count == 1 else 'ies'} from source {args.source}")
    return 0


async def cmd_quarantine(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.quarantine_command
    action = {"list": "quarantine_list", "approve": "quarantine_approve", "reject": "quarantine_reject"}[cmd]
    req = MemoryAdminRequested(action=action, item_id=getattr(args, "item_id", ""),  # type: ignore[arg-type]
                               reason=getattr(args, "reason", ""), actor=_actor(args))
    nc, api = await _api(settings, args.timeout)
    try:
        reply = _check(await api.request(args.tenant, req))
    finally:
        await nc.drain()
    if cmd != "list":
        item = reply.quarantine[0]
        print(f"{item.item_id}: {item.status}" + (f" ({reply.results[0].status})" if reply.results else ""))
        return 0
    items = [i for i in reply.quarantine if args.all or i.status == "pending"]
    if args.json:
        print(json.dumps(msgspec.to_builtins(items), indent=2))
        return 0
    if not items:
        print("nothing in quarantine")
    for it in items:
        text = " ".join(it.write.text.split())
        print(f"{it.item_id}  {it.status:8}  source={it.write.source}  {'; '.join(it.reasons)}\n    {text[:200]}")
    return 0


__all__ = ["add_parser", "AgentstreamError"]
