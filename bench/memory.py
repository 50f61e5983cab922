"""Memory figures: recall latency (p50/p95/p99) and ingest rate for both
VectorIndex adapters, and tokens sent per turn over a 100-turn conversation,
naive full history against tiered working memory; writes bench/memory_tokens.svg
(and .png with --png, rendered by headless Chromium).

    .venv/bin/python bench/memory.py [--n 100000] [--n-local 5000] [--png]

qdrant-client's local mode is brute force (the stand-in for a Qdrant server
on machines without one), so it runs at --n-local points, printed beside the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from agentstream.contracts.events import Message
from agentstream.runtime.core.state import Turn
from agentstream.runtime.memory.client_index import QdrantClientIndex
from agentstream.runtime.memory.context import Budget, ConversationMemory, assemble, extractive_summary
from agentstream.runtime.memory.edge_index import EdgeIndex
from agentstream.runtime.memory.embed import Lexical
from agentstream.runtime.memory.index import IndexPoint, VectorIndex, Where
from agentstream.runtime.memory.tokens import estimate_messages

WORDS = ("order refund shipping email phone invoice charger cable headphones delivery address password "
         "account ticket warranty return exchange discount coupon express courier parcel damaged late "
         "missing replacement battery screen laptop tablet monitor keyboard mouse printer subscription").split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def bench_index(index: VectorIndex, n: int, queries: int, rng: random.Random) -> dict[str, float]:
    lex = Lexical()
    await index.open(None)
    tenants = [f"t{i}" for i in range(10)]
    t0 = time.perf_counter()
    batch: dict[str, list[IndexPoint]] = {}
    for i in range(n):
        tenant = tenants[i % len(tenants)]
        text = sentence(rng)
        batch.setdefault(tenant, []).append(IndexPoint(id=str(uuid.UUID(int=i + 1)), sparse=lex.document(text), payload={
            "tenant": tenant, "state": "current", "scope": "user", "user_id": f"u{i % 100}", "text": text,
            "source": f"s{i % 500}"}))
        if sum(len(v) for v in batch.values()) >= 512:
            for t, pts in batch.items():
                await index.upsert(t, pts)
            batch = {}
    for t, pts in batch.items():
        await index.upsert(t, pts)
    if isinstance(index, EdgeIndex):
        index.optimize()
    ingest_s = time.perf_counter() - t0
    lat = []
    for _ in range(queries):
        q = lex.query(" ".join(rng.choice(WORDS) for _ in range(4)))
        t = rng.choice(tenants)
        s = time.perf_counter()
        await index.search(t, where=Where(any_of=(("user_id", f"u{rng.randrange(100)}"), ("scope", "system"))),
                           limit=10, sparse=q)
        lat.append((time.perf_counter() - s) * 1000)
    await index.close()
    return {"n": n, "ingest_per_s": n / ingest_s, "p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99)}


def token_curves(turns: int = 100) -> tuple[list[int], list[int]]:
    rng = random.Random(7)
    system = Message(role="system", content="You are the support desk of an online shop. " * 8)
    history: list[Turn] = []
    conv = ConversationMemory()
    budget = Budget(context_tokens=4000, recent_turns=6)
    naive, tiered = [], []
    for i in range(turns):
        user = f"Turn {i}: " + " ".join(sentence(rng) for _ in range(3))
        msgs = [system]
        for t in history:
            msgs += [Message(role="user", content=t.user), Message(role="assistant", content=t.assistant)]
        msgs.append(Message(role="user", content=user))
        naive.append(estimate_messages(msgs))
        out = assemble(system=system, tools=(), current=(Message(role="user", content=user),), turns=conv.turns,
                       summary=conv.summary, memories=(), budget=budget)
        tiered.append(out.estimated_tokens)
        turn = Turn(task_id=f"t{i}", user=user, assistant=" ".join(sentence(rng) for _ in range(3)))
        history.append(turn)
        conv = ConversationMemory(summary=conv.summary, summarised=conv.summarised, turns=(*conv.turns, turn))
        spare = len(conv.turns) - budget.recent_turns
        if spare >= 4:  # what record_turn does, with the extractive summariser
            folded = conv.turns[:spare]
            conv = ConversationMemory(summary=extractive_summary(conv.summary, folded, budget.summary_tokens),
                                      summarised=conv.summarised + spare, turns=conv.turns[spare:])
    return naive, tiered


def svg(naive: list[int], tiered: list[int]) -> str:
    w, h, pad = 720, 400, 60
    top = max(naive) * 1.05
    def pts(ys: list[int]) -> str:
        return " ".join(f"{pad + i * (w - 2 * pad) / (len(ys) - 1):.1f},{h - pad - y / top * (h - 2 * pad):.1f}"
                        for i, y in enumerate(ys))
    ticks = "".join(f'<text x="{pad - 8}" y="{h - pad - v / top * (h - 2 * pad) + 4:.0f}" text-anchor="end" '
                    f'font-size="11">{v}</text>' for v in range(0, int(top), max(1, int(top) // 5 // 1000 * 1000 or 1000)))
    xt = "".join(f'<text x="{pad + t / (len(naive) - 1) * (w - 2 * pad):.0f}" y="{h - pad + 18}" '
                 f'text-anchor="middle" font-size="11">{t}</text>' for t in range(0, len(naive), 20))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="{w / 2}" y="24" text-anchor="middle" font-size="15">Input tokens sent per turn, '
            f'100-turn conversation</text>'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>{ticks}{xt}'
            f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle" font-size="12">turn</text>'
            f'<polyline fill="none" stroke="#d62728" stroke-width="2" points="{pts(naive)}"/>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{pts(tiered)}"/>'
            f'<text x="{pad + 12}" y="{pad + 4}" fill="#d62728" font-size="12">naive: full history '
            f'({naive[-1]} at turn {len(naive)})</text>'
            f'<text x="{pad + 12}" y="{pad + 22}" fill="#1f77b4" font-size="12">tiered working memory '
            f'({tiered[-1]} at turn {len(tiered)})</text></svg>\n')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-local", type=int, default=5_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--png", action="store_true")
    args = ap.parse_args()
    here = Path(__file__).parent
    naive, tiered = token_curves()
    print("tokens per turn (naive vs tiered):")
    for t in (1, 10, 25, 50, 75, 100):
        print(f"  turn {t:3}: naive {naive[t - 1]:6}  tiered {tiered[t - 1]:5}  ratio {tiered[t - 1] / naive[t - 1]:.2f}")
    print(f"  tiered spread over turns 20-100: {min(tiered[19:])}-{max(tiered[19:])} tokens")
    (here / "memory_tokens.svg").write_text(svg(naive, tiered))
    if args.png and shutil.which("chromium"):
        prof = tempfile.mkdtemp()
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={prof}", "--window-size=720,400",
                        f"--screenshot={here / 'memory_tokens.png'}", f"file://{(here / 'memory_tokens.svg').resolve()}"],
                       check=True, capture_output=True, timeout=120)
        shutil.rmtree(prof, ignore_errors=True)
    rng = random.Random(1)
    tmp = tempfile.mkdtemp()
    try:
        for name, index, n in (("qdrant-edge (HNSW/inverted, in process)", EdgeIndex(os.path.join(tmp, "edge")), args.n),
                               ("qdrant-client local mode (brute force)", QdrantClientIndex(":memory:"), args.n_local)):
            r = asyncio.run(bench_index(index, n, args.queries, rng))
            print(f"{name}: {int(r['n'])} memories, ingest {r['ingest_per_s']:.0f}/s, filtered BM25 query "
                  f"p50 {r['p50']:.2f} ms  p95 {r['p95']:.2f} ms  p99 {r['p99']:.2f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
