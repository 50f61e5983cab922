"""``VectorIndex`` on qdrant-edge: the Qdrant engine in this process (HNSW
for dense vectors, an inverted index with IDF for BM25), the embedded
default. One shard directory per memory service; a shard is opened by one
process at a time, so replicas of an embedded memory service do not share
it (use QDRANT_URL for several replicas)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

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


class EdgeIndex:
    name = "qdrant-edge"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.shard: qe.EdgeShard | None = None

    async def open(self, dense_dim: int | None) -> None:
        sparse = {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
        vectors = {DENSE: qe.EdgeVectorParams(size=dense_dim, distance=qe.Distance.Cosine)} if dense_dim else None
        cfg = qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse)
        try:
            if (self.path / "edge_config.json").exists() or any(self.path.glob("segments*")):
                self.shard = qe.EdgeShard.load(str(self.path), cfg)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self.shard = qe.EdgeShard.create(str(self.path), cfg)
                self._op(qe.UpdateOperation.create_field_index(TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True)))
                for f in KEYWORD_FIELDS:
                    self._op(qe.UpdateOperation.create_field_index(f, qe.PayloadSchemaType.Keyword))
        except (ValueError, RuntimeError, OSError) as exc:
            raise IndexFailure(f"cannot open the qdrant-edge shard at {self.path}: {exc}") from exc

    def _s(self) -> qe.EdgeShard:
        if self.shard is None:
            raise IndexFailure("the qdrant-edge index is not open")
        return self.shard

    def _op(self, op: qe.UpdateOperation) -> None:
        try:
            self._s().update(op)
        except (ValueError, RuntimeError) as exc:
            raise IndexFailure(f"qdrant-edge update failed: {exc}") from exc

    @staticmethod
    def _filter(tenant: str, where: Where) -> qe.Filter:
        all_of, any_of = filter_terms(tenant, where)
        must: list[Any] = [qe.FieldCondition(k, match=qe.MatchValue(v)) for k, v in all_of]
        if any_of:
            must.append(qe.Filter(should=[qe.FieldCondition(k, match=qe.MatchValue(v)) for k, v in any_of]))
        return qe.Filter(must=must)

    async def upsert(self, tenant: str, points: Sequence[IndexPoint]) -> None:
        pts = []
        for p in points:
            if p.payload.get(TENANT_FIELD) != tenant:
                raise IndexFailure("a point's tenant differs from the request's")
            vec: dict[str, Any] = {}
            if p.sparse is not None:
                vec[SPARSE] = qe.SparseVector(p.sparse.indices, p.sparse.values)
            if p.dense is not None:
                vec[DENSE] = p.dense
            pts.append(qe.Point(uuid.UUID(p.id), vec, p.payload))
        if pts:
            self._op(qe.UpdateOperation.upsert_points(pts))

    async def get(self, tenant: str, ids: Sequence[str]) -> list[IndexRecord]:
        if not ids:
            return []
        recs = self._s().retrieve([uuid.UUID(i) for i in ids], with_payload=True, with_vector=False)
        return [IndexRecord(id=str(r.id), payload=dict(r.payload or {})) for r in recs
                if (r.payload or {}).get(TENANT_FIELD) == tenant]

    async def search(self, tenant: str, *, where: Where, limit: int, sparse: Sparse | None = None,
                     dense: list[float] | None = None) -> list[IndexRecord]:
        flt = self._filter(tenant, where)
        queries = []
        if sparse is not None and sparse.indices:
            queries.append(qe.Query.Nearest(qe.SparseVector(sparse.indices, sparse.values), using=SPARSE))
        if dense is not None:
            queries.append(qe.Query.Nearest(dense, using=DENSE))
        if not queries:
            return []
        try:
            if len(queries) == 1:
                req = qe.QueryRequest(limit=limit, query=queries[0], filter=flt, with_payload=True)
            else:
                req = qe.QueryRequest(limit=limit, query=qe.Fusion.Rrf(k=60), with_payload=True,  # type: ignore[arg-type]
                                      prefetches=[qe.Prefetch(query=q, limit=limit * 4, filter=flt) for q in queries])
            hits = self._s().query(req)
        except (ValueError, RuntimeError) as exc:
            raise IndexFailure(f"qdrant-edge query failed: {exc}") from exc
        return [IndexRecord(id=str(h.id), payload=dict(h.payload or {}), score=float(h.score)) for h in hits]

    async def set_fields(self, tenant: str, ids: Sequence[str], fields: dict[str, Any]) -> None:
        owned = [r.id for r in await self.get(tenant, ids)]
        if owned:
            self._op(qe.UpdateOperation.set_payload([uuid.UUID(i) for i in owned], fields))

    async def scroll(self, tenant: str, where: Where, limit: int = 10_000) -> list[IndexRecord]:
        out: list[IndexRecord] = []
        offset: Any = None
        flt = self._filter(tenant, where)
        while len(out) < limit:
            recs, offset = self._s().scroll(qe.ScrollRequest(offset=offset, limit=min(256, limit - len(out)),
                                                             filter=flt, with_payload=True, with_vector=False))
            out += [IndexRecord(id=str(r.id), payload=dict(r.payload or {})) for r in recs]
            if offset is None or not recs:
                break
        return out

    async def delete(self, tenant: str, ids: Sequence[str]) -> None:
        owned = [r.id for r in await self.get(tenant, ids)]
        if owned:
            self._op(qe.UpdateOperation.delete_points([uuid.UUID(i) for i in owned]))

    async def count(self, tenant: str) -> int:
        return int(self._s().count(qe.CountRequest(filter=self._filter(tenant, Where(valid_only=False)), exact=True)))

    def optimize(self) -> None:
        """Build the HNSW index now (the bench; a service lets Qdrant decide when)."""
        self._s().optimize()

    async def close(self) -> None:
        if self.shard is not None:
            self.shard.flush()
            self.shard.close()
            self.shard = None
