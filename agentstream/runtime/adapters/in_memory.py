"""In-memory implementations of the ports: real, small, and shipped with the
code, for unit tests of handlers and the engine without a broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agentstream.runtime.core.errors import Conflict
from agentstream.runtime.core.ports import Entry


class InMemoryKV:
    """Compare-and-set semantics of a JetStream KV bucket: revisions increase
    across the whole bucket, ``create`` fails if the key exists."""

    def __init__(self) -> None:
        self._data: dict[str, Entry] = {}
        self._rev = 0

    async def get(self, key: str) -> Entry | None:
        return self._data.get(key)

    async def create(self, key: str, value: bytes) -> int:
        if key in self._data:
            raise Conflict(f"{key} already exists")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        cur = self._data.get(key)
        if cur is None or cur.revision != revision:
            raise Conflict(f"{key} changed since revision {revision}")
        return self._write(key, value)

    async def put(self, key: str, value: bytes) -> int:
        return self._write(key, value)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def keys(self) -> Sequence[str]:
        return list(self._data)

    async def items(self) -> list[tuple[str, Entry]]:
        return sorted(self._data.items())

    def _write(self, key: str, value: bytes) -> int:
        self._rev += 1
        self._data[key] = Entry(value, self._rev)
        return self._rev


@dataclass
class Published:
    subject: str
    payload: bytes
    msg_id: str | None


@dataclass
class InMemoryBus:
    """Records publishes and, like JetStream, drops a repeated ``msg_id``."""

    published: list[Published] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    duplicates: int = 0

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        if msg_id is not None:
            if msg_id in self._seen:
                self.duplicates += 1
                return
            self._seen.add(msg_id)
        self.published.append(Published(subject, payload, msg_id))

    def on(self, prefix: str) -> list[Published]:
        return [p for p in self.published if p.subject.startswith(prefix)]


class InMemoryStream:
    """A stream's messages by sequence (1, 2, ...): what a tool runner's
    ``DecisionReader`` reads from EVENTS, for in-process tests and benches."""

    def __init__(self) -> None:
        self.msgs: dict[int, tuple[str, bytes]] = {}

    def add(self, subject: str, body: bytes) -> int:
        self.msgs[len(self.msgs) + 1] = (subject, body)
        return len(self.msgs)

    async def read(self, seq: int) -> tuple[str, bytes] | None:
        return self.msgs.get(seq)


class InMemoryBlobs:
    """``BlobStore`` in a dict: the claim-check store of in-process tests."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes) -> None:
        self.data[name] = bytes(data)

    async def get(self, name: str) -> bytes:
        return self.data[name]
