"""``VectorIndex`` on qdrant-client: a Qdrant server or cluster at
``QDRANT_URL`` (several memory-service replicas share it), or qdrant-client's
local mode (``":memory:"`` or a path) which the tests use in place of a server.
Local mode is brute force and ignores payload indexes; the code path is the
same as against a server."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from agentstream.runtime.memory.errors import IndexFailure
from agentstream.runtime.memory.index import (
    DENSE,
    KEYWORD_FIELDS,
    SPARSE,
    TENANT_FIELD,
    IndexPoint,
    IndexRecord,
    Sparse,
    Where,
    filter_terms,
)

_ERRORS: tuple[type[BaseException], ...] = (ApiException, UnexpectedResponse, ValueError, ConnectionError,
                                            TimeoutError, OSError)


class QdrantClientIndex:
    name = "qdrant-client"

    def __init__(self, location: str = ":memory:", *, collection: str = "agentstream_memory",
                 api_key: str | None = None) -> None:
        self.location = location
        self.collection = collection
        if location == ":memory:" or not location.startswith(("http://", "https://")):
            self.client = AsyncQdrantClient(location=location) if location == ":memory:" \
                else AsyncQdrantClient(path=location)
        else:
            self.client = AsyncQdrantClient(url=location, api_key=api_key)

    async def open(self, dense_dim: int | None) -> None:
        try:
            if await self.client.collection_exists(self.collection):
                return
            vectors = {DENSE: models.VectorParams(size=dense_dim, distance=models.Distance.COSINE)} if dense_dim else {}
            await self.client.create_collection(
                self.collection, vectors_config=vectors,
                sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                await self.client.create_payload_index(
                    self.collection, TENANT_FIELD,
                    field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True))
            with warnings.catch_warnings():  # local mode: "payload indexes have no effect", known
                warnings.simplefilter("ignore", UserWarning)
                for f in KEYWORD_FIELDS:
                    await self.client.create_payload_index(self.collection, f,
                                                           field_schema=models.PayloadSchemaType.KEYWORD)
        except _ERRORS as exc:
            raise IndexFailure(f"cannot open Qdrant collection {self.collection!r} at {self.location}: {exc}") from exc

    @staticmethod
    def _filter(tenant: str, where: Where) -> models.Filter:
        all_of, any_of = filter_terms(tenant, where)
        must: list[Any] = [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in all_of]
        if any_of:
            must.append(models.Filter(should=[models.FieldCondition(key=k, match=models.MatchValue(value=v))
                                              for k, v in any_of]))
        return models.Filter(must=must)

    async def upsert(self, tenant: str, points: Sequence[IndexPoint]) -> None:
        pts = []
        for p in points:
            if p.payload.get(TENANT_FIELD) != tenant:
                raise IndexFailure("a point's tenant differs from the request's")
            vec: dict[str, Any] = {}
            if p.sparse is not None:
                vec[SPARSE] = models.SparseVector(indices=p.sparse.indices, values=p.sparse.values)
            if p.dense is not None:
                vec[DENSE] = p.dense
            pts.append(models.PointStruct(id=p.id, vector=vec, payload=p.payload))
        if pts:
            try:
                await self.client.upsert(self.collection, points=pts, wait=True)
            except _ERRORS as exc:
                raise IndexFailure(f"Qdrant upsert failed: {exc}") from exc

    async def get(self, tenant: str, ids: Sequence[str]) -> list[IndexRecord]:
        if not ids:
            return []
        try:
            recs = await self.client.retrieve(self.collection, ids=[str(uuid.UUID(i)) for i in ids], with_payload=True)
        except _ERRORS as exc:
            raise IndexFailure(f"Qdrant retrieve failed: {exc}") from exc
        return [IndexRecord(id=str(r.id), payload=dict(r.payload or {})) for r in recs
                if (r.payload or {}).get(TENANT_FIELD) == tenant]

    async def search(self, tenant: str, *, where: Where, limit: int, sparse: Sparse | None = None,
                     dense: list[float] | None = None) -> list[IndexRecord]:
        flt = self._filter(tenant, where)
        queries: list[tuple[Any, str]] = []
        if sparse is not None and sparse.indices:
            queries.append((models.SparseVector(indices=sparse.indices, values=sparse.values), SPARSE))
        if dense is not None:
            queries.append((dense, DENSE))
        if not queries:
            return []
        try:
            if len(queries) == 1:
                res = await self.client.query_points(self.collection, query=queries[0][0], using=queries[0][1],
                                                     query_filter=flt, limit=limit, with_payload=True)
            else:
                res = await self.client.query_points(
                    self.collection, limit=limit, with_payload=True,
                    prefetch=[models.Prefetch(query=q, using=u, filter=flt, limit=limit * 4) for q, u in queries],
                    query=models.FusionQuery(fusion=models.Fusion.RRF))
        except _ERRORS as exc:
            raise IndexFailure(f"Qdrant query failed: {exc}") from exc
        return [IndexRecord(id=str(h.id), payload=dict(h.payload or {}), score=float(h.score)) for h in res.points]

    async def set_fields(self, tenant: str, ids: Sequence[str], fields: dict[str, Any]) -> None:
        owned: list[Any] = [r.id for r in await self.get(tenant, ids)]
        if owned:
            try:
                await self.client.set_payload(self.collection, payload=fields, points=owned, wait=True)
            except _ERRORS as exc:
                raise IndexFailure(f"Qdrant set_payload failed: {exc}") from exc

    async def scroll(self, tenant: str, where: Where, limit: int = 10_000) -> list[IndexRecord]:
        out: list[IndexRecord] = []
        offset: Any = None
        flt = self._filter(tenant, where)
        try:
            while len(out) < limit:
                recs, offset = await self.client.scroll(self.collection, scroll_filter=flt, offset=offset,
                                                        limit=min(256, limit - len(out)), with_payload=True)
                out += [IndexRecord(id=str(r.id), payload=dict(r.payload or {})) for r in recs]
                if offset is None or not recs:
                    break
        except _ERRORS as exc:
            raise IndexFailure(f"Qdrant scroll failed: {exc}") from exc
        return out

    async def delete(self, tenant: str, ids: Sequence[str]) -> None:
        owned: list[Any] = [r.id for r in await self.get(tenant, ids)]
        if owned:
            try:
                await self.client.delete(self.collection, points_selector=models.PointIdsList(points=owned), wait=True)
            except _ERRORS as exc:
                raise IndexFailure(f"Qdrant delete failed: {exc}") from exc

    async def count(self, tenant: str) -> int:
        res = await self.client.count(self.collection, count_filter=self._filter(tenant, Where(valid_only=False)),
                                      exact=True)
        return int(res.count)

    async def close(self) -> None:
        await self.client.close()
