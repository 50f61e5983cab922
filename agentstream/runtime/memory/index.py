"""The ``VectorIndex`` port: what the memory service needs from a vector
store, and the payload layout both adapters share.

Every call takes the tenant as its own argument and every adapter turns it
into a ``must`` condition on the ``tenant`` payload field (indexed with
``is_tenant``): there is no way to ask an index for "any tenant's" points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

DENSE = "dense"
SPARSE = "bm25"
TENANT_FIELD = "tenant"
# ``state``: "current" or "invalidated" (a keyword, not a bool: qdrant-edge 0.9
# does not match bool payloads). Keyword payload fields with an index (filters on them stay fast at scale).
KEYWORD_FIELDS = ("state", "scope", "user_id", "source")


class Sparse(msgspec.Struct, frozen=True):
    indices: list[int]
    values: list[float]


class IndexPoint(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # a UUID
    payload: dict[str, Any]
    sparse: Sparse | None = None
    dense: list[float] | None = None


class IndexRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    payload: dict[str, Any]
    score: float = 0.0


class Where(msgspec.Struct, frozen=True, kw_only=True):
    """A filter inside one tenant: every ``equals`` must hold; when ``any_of``
    is given, at least one of its (field, value) pairs must; ``valid_only``
    leaves out invalidated memories."""

    equals: dict[str, str] = {}
    any_of: tuple[tuple[str, str], ...] = ()
    valid_only: bool = True


def filter_terms(tenant: str, where: Where) -> tuple[list[tuple[str, str]], tuple[tuple[str, str], ...]]:
    """The store-neutral form of a tenant's ``where``: the (field, value) pairs
    every match must have, and the pairs of which at least one must hold
    (empty: no such clause). Each index adapter turns them into its filter type."""
    must = [(TENANT_FIELD, tenant), *where.equals.items()]
    if where.valid_only:
        must.append(("state", "current"))
    return must, where.any_of


class VectorIndex(Protocol):
    """Raises :class:`agentstream.runtime.memory.errors.IndexFailure` on store failures."""

    name: str

    async def open(self, dense_dim: int | None) -> None:
        """Create the collection and payload indexes if absent. ``dense_dim``
        None: sparse (BM25) only."""
        ...

    async def upsert(self, tenant: str, points: Sequence[IndexPoint]) -> None: ...

    async def get(self, tenant: str, ids: Sequence[str]) -> list[IndexRecord]: ...

    async def search(self, tenant: str, *, where: Where, limit: int, sparse: Sparse | None = None,
                     dense: list[float] | None = None) -> list[IndexRecord]:
        """Best first. With both vectors the adapter fuses the two rankings (RRF)."""
        ...

    async def set_fields(self, tenant: str, ids: Sequence[str], fields: dict[str, Any]) -> None: ...

    async def scroll(self, tenant: str, where: Where, limit: int = 10_000) -> list[IndexRecord]: ...

    async def delete(self, tenant: str, ids: Sequence[str]) -> None: ...

    async def count(self, tenant: str) -> int: ...

    async def close(self) -> None: ...
