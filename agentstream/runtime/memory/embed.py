"""Text to vectors. BM25 sparse vectors always (computed here, with
qdrant-edge's tokenizer and stemmer, no download); dense vectors from any
OpenAI-compatible ``/embeddings`` endpoint when configured."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import aiohttp
import msgspec

from agentstream.runtime.memory.errors import LexicalUnavailable, MemoryError_
from agentstream.runtime.memory.index import Sparse

_PROBE = "Lexical retrieval self-check: refunds are issued within thirty days."


class Lexical:
    """BM25 term weights. Built at start-up with a self-check, and raises
    :class:`LexicalUnavailable` if it cannot run: retrieval never silently
    degrades to dense-only."""

    def __init__(self, language: str = "english") -> None:
        try:
            import qdrant_edge

            self._bm25 = qdrant_edge.Bm25(qdrant_edge.Bm25Config(language=language))
            probe = self._bm25.embed_document(_PROBE)
        except Exception as exc:  # noqa: BLE001 - any failure here means no lexical retrieval
            raise LexicalUnavailable(f"BM25 cannot run ({type(exc).__name__}: {exc}); refusing to start memory "
                                     "without lexical retrieval") from exc
        if not probe.indices:
            raise LexicalUnavailable("BM25 self-check produced an empty vector; refusing to start memory")

    def document(self, text: str) -> Sparse:
        v = self._bm25.embed_document(text)
        return Sparse(list(v.indices), list(v.values))

    def query(self, text: str) -> Sparse:
        v = self._bm25.embed_query(text)
        return Sparse(list(v.indices), list(v.values))


class Embedder(Protocol):
    """Dense embeddings (the design's ``Embedder`` port)."""

    dim: int

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def close(self) -> None: ...


class _EmbeddingItem(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _EmbeddingResponse(msgspec.Struct):
    data: list[_EmbeddingItem]


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint (OpenAI, vLLM, Ollama, TEI)."""

    def __init__(self, base_url: str, model: str, dim: int, *, api_key: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dim = dim
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._dec = msgspec.json.Decoder(_EmbeddingResponse)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OpenAIEmbedder | None:
        model = env.get("AGENTSTREAM_EMBEDDINGS_MODEL", "").strip()
        if not model:
            return None
        base = env.get("AGENTSTREAM_EMBEDDINGS_URL", "").strip() or env.get("OPENAI_BASE_URL", "").strip()
        dim = env.get("AGENTSTREAM_EMBEDDINGS_DIM", "").strip()
        if not base or not dim.isdigit():
            raise MemoryError_("AGENTSTREAM_EMBEDDINGS_MODEL needs AGENTSTREAM_EMBEDDINGS_URL (or OPENAI_BASE_URL) "
                               "and AGENTSTREAM_EMBEDDINGS_DIM (the vector size)")
        key = env.get("AGENTSTREAM_EMBEDDINGS_KEY", "").strip() or env.get("OPENAI_API_KEY", "").strip() or None
        return cls(base, model, int(dim), api_key=key)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                                  headers=headers)
        try:
            async with self._session.post(f"{self.base_url}/embeddings",
                                          json={"model": self.model, "input": list(texts)}) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise MemoryError_(f"embeddings endpoint returned HTTP {resp.status}: {body[:200]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MemoryError_(f"embeddings endpoint unreachable: {exc}") from exc
        try:
            items = sorted(self._dec.decode(body).data, key=lambda i: i.index)
        except msgspec.DecodeError as exc:
            raise MemoryError_(f"embeddings endpoint sent an unexpected body: {exc}") from exc
        vectors = [i.embedding for i in items]
        if len(vectors) != len(texts) or any(len(v) != self.dim for v in vectors):
            raise MemoryError_(f"embeddings endpoint returned {len(vectors)} vectors, expected {len(texts)} of "
                               f"size {self.dim}")
        return vectors

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
