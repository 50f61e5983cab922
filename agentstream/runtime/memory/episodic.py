"""Episodic memory: session summaries, decisions, preferences and
corrections, one KV key per episode, each with its own TTL.

Per-key TTL: nats-server 2.11+ honours a ``Nats-TTL`` header on a message in
a stream with ``allow_msg_ttl``; nats-py 2.16 creates every KV bucket's
stream with ``allow_msg_ttl=True`` and sends the header for
``js.publish(..., msg_ttl=...)`` (``KeyValue.put`` has no TTL argument, so an
episode is written as a publish to the key's subject). The server removes
the key when its TTL runs out; the bucket's max age is only a ceiling.
"""

from __future__ import annotations

import hashlib
import re

import msgspec
import nats.errors
import nats.js.errors as jse
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from agentstream.contracts import subjects
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.memory.errors import MemoryError_

DEFAULT_TTL_S = 30 * 86400.0
MAX_EPISODES = 200  # read per user per retrieval


class Episode(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # session | decision | preference | correction
    text: str
    task_id: str
    at: float
    conversation_id: str = ""


def user_token(user_id: str) -> str:
    """A user id as a KV key token (ids are free text; keys are not)."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:20]


class EpisodeStore:
    def __init__(self, js: JetStreamContext, bucket: str = subjects.EPISODES.name) -> None:
        self.js = js
        self.bucket = bucket

    async def put(self, tenant: str, user_id: str, episode_id: str, episode: Episode,
                  ttl_s: float = DEFAULT_TTL_S) -> None:
        if not subjects.is_token(tenant):
            raise MemoryError_(f"invalid tenant {tenant[:64]!r} for episodic memory")
        key = f"{tenant}.{user_token(user_id)}.{re.sub(r'[^A-Za-z0-9_-]', '_', episode_id)[:100]}"
        try:
            await self.js.publish(f"$KV.{self.bucket}.{key}", msgspec.json.encode(episode),
                                  msg_ttl=max(1.0, ttl_s), timeout=10)
        except (nats.errors.Error, jse.Error) as exc:
            raise MemoryError_(f"cannot store episode {key}: {exc}") from exc

    async def recent(self, tenant: str, user_id: str) -> list[Episode]:
        if not subjects.is_token(tenant):
            return []
        prefix = f"$KV.{self.bucket}.{tenant}.{user_token(user_id)}."
        raws = await scan(self.js, f"KV_{self.bucket}", f"{prefix}>", last_per_subject=True, limit=MAX_EPISODES * 4)
        out = []
        for r in raws:
            if r.headers and r.headers.get("KV-Operation") in ("DEL", "PURGE"):
                continue
            try:
                out.append(msgspec.json.decode(r.data, type=Episode))
            except msgspec.DecodeError:
                continue  # not ours: skip, never fail a retrieval on one bad entry
        return sorted(out, key=lambda e: e.at)[-MAX_EPISODES:]


async def provision_memory_buckets(js: JetStreamContext, replicas: int = 1) -> None:
    """The memory buckets (not in subjects.BUCKETS: deployments without memory need none)."""
    for bd in subjects.MEMORY_BUCKETS:
        try:
            await js.create_key_value(KeyValueConfig(bucket=bd.name, description=bd.description, history=bd.history,
                                                     ttl=bd.max_age_s or None, replicas=replicas,
                                                     storage=StorageType.FILE, direct=True))
        except jse.BadRequestError:
            await js.key_value(bd.name)  # exists already
