"""A shadow deployment's view of the bus and of KV: its own tree, its own keys.

A shadow runs the production engine unchanged; what it sees of the outside
world is rewritten here, so nothing it publishes or stores can land where a
production consumer or session lives.
"""

from __future__ import annotations

from collections.abc import Sequence

from agentstream.contracts import subjects
from agentstream.runtime.core.ports import Bus, Entry, SessionStore


class ShadowBus:
    """Every publish goes under ``shadow.<label>.``; msg ids get the label too,
    so a shadow's publish can never be taken for production's duplicate (or
    squat production's msg id in the dedupe window)."""

    def __init__(self, inner: Bus, label: str) -> None:
        self.inner = inner
        self.label = label
        self.prefix = subjects.shadow_prefix(label)

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        await self.inner.publish(self.prefix + subject, payload,
                                 msg_id=f"{self.prefix}{msg_id}" if msg_id else None, headers=headers)


class PrefixedStore:
    """The keys of ``inner`` that start with ``prefix``, seen without it."""

    def __init__(self, inner: SessionStore, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(self.prefix + key)

    async def create(self, key: str, value: bytes) -> int:
        return await self.inner.create(self.prefix + key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        return await self.inner.update(self.prefix + key, value, revision)

    async def put(self, key: str, value: bytes) -> int:
        return await self.inner.put(self.prefix + key, value)

    async def delete(self, key: str) -> None:
        await self.inner.delete(self.prefix + key)

    async def keys(self) -> Sequence[str]:
        return [k[len(self.prefix):] for k in await self.inner.keys() if k.startswith(self.prefix)]

    async def items(self) -> list[tuple[str, Entry]]:
        return [(k[len(self.prefix):], e) for k, e in await self.inner.items() if k.startswith(self.prefix)]


class ReadOnlyStore:
    """Reads production's store, writes nothing: a shadow sees a conversation's
    earlier turns as production does, and never adds its own answers to it."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def create(self, key: str, value: bytes) -> int:
        return 0

    async def update(self, key: str, value: bytes, revision: int) -> int:
        return revision

    async def put(self, key: str, value: bytes) -> int:
        return 0

    async def delete(self, key: str) -> None:
        return None

    async def keys(self) -> Sequence[str]:
        return await self.inner.keys()

    async def items(self) -> list[tuple[str, Entry]]:
        return await self.inner.items()
