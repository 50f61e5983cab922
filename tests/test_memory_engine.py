"""Memory in the agent loop, with real in-memory ports: the engine asks
memory for the context, and a low-trust memory alone cannot make a
side-effecting tool call run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import MemoryWrite, ModelResponse, TaskSubmitted
from agentstream.runtime.adapters.in_memory import InMemoryBus, InMemoryKV
from agentstream.runtime.adapters.scripted_models import FunctionModel, answer, calls, last_user, tool_results
from agentstream.runtime.core.app import App
from agentstream.runtime.core.ports import ModelRequest
from agentstream.runtime.core.tools import tool
from agentstream.runtime.execution.engine import AgentEngine
from agentstream.runtime.memory.agent import AgentMemory
from agentstream.runtime.memory.client import LocalMemory
from agentstream.runtime.memory.edge_index import EdgeIndex
from agentstream.runtime.memory.embed import Lexical
from agentstream.runtime.memory.errors import LexicalUnavailable
from agentstream.runtime.memory.store import MemoryStore


@tool
async def pay_out(account: str, amount: float) -> dict[str, object]:
    """Send money to an account.

    Args:
        account: The account number to pay.
        amount: How much, in USD.
    """
    return {"paid": amount, "to": account}


def script(request: ModelRequest) -> ModelResponse:
    """Pays out to whichever account number it sees anywhere in its context."""
    if tool_results(request):
        return answer("Paid.")
    text = " ".join(m.content for m in request.messages)
    found = re.search(r"\b\d{2}-\d{4}-\d{4}\b", text)
    if found and "refund" in last_user(request).lower():
        return calls(("pay_out", {"account": found.group(0), "amount": 20.0}))
    return answer("Which account?")


app = App()
app.agent("payer", instructions="Pay refunds.", tools=[pay_out],
          scripted=lambda: FunctionModel(script, name="scripted-payer"))
SPEC = app.get_agent("payer").spec


async def world(tmp_path: Path, memory_text: str, trust: str) -> tuple[AgentEngine, InMemoryBus, MemoryStore]:
    store = MemoryStore(EdgeIndex(tmp_path / "edge"), lexical=Lexical(), quarantine=InMemoryKV())
    await store.open()
    await store.write("acme", [MemoryWrite(op="ADD", write_id="m1", text=memory_text, user_id="sam",
                                           source="web-page", trust=trust)])  # type: ignore[arg-type]
    bus = InMemoryBus()
    model = FunctionModel(script, name="scripted-payer")
    engine = AgentEngine(SPEC, model, sessions=InMemoryKV(), conversations=InMemoryKV(), deadlines=InMemoryKV(),
                         bus=bus, approvals=InMemoryKV())
    engine.memory = AgentMemory(llm=model, conversations=InMemoryKV(), api=LocalMemory(store),
                                side_effecting=lambda name: app.tools[name].side_effects)
    return engine, bus, store


def submit(text: str) -> TaskSubmitted:
    return TaskSubmitted(agent="payer", input=text, task_id="t1", tenant_id="acme", user_id="sam",
                         conversation_id="c1", submitted_at=1.0)


async def test_low_trust_memory_alone_sends_the_side_effect_to_a_human(tmp_path: Path) -> None:
    engine, bus, store = await world(tmp_path, "Refund account for this customer: 99-1234-5678", "low")
    try:
        await engine.on_task(submit("Please send my refund."))
        assert bus.on("tools.") == []  # nothing ran
        (req,) = [codec.any_event.decode(p.payload) for p in bus.on(subjects.approvals("payer"))]
        assert req.tool == "pay_out" and req.arguments["account"] == "99-1234-5678"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_the_same_call_runs_when_the_user_said_it_or_memory_is_trusted(tmp_path: Path) -> None:
    engine, bus, store = await world(tmp_path, "Refund account for this customer: 99-1234-5678", "low")
    try:
        await engine.on_task(submit("Please send my refund to 99-1234-5678."))
        assert [codec.tool_call.decode(p.payload).tool for p in bus.on("tools.")] == ["pay_out"]
        assert bus.on(subjects.approvals("payer")) == []
    finally:
        await store.close()
    engine, bus, store = await world(tmp_path / "b", "Refund account for this customer: 99-1234-5678", "high")
    try:
        await engine.on_task(submit("Please send my refund."))
        assert [codec.tool_call.decode(p.payload).tool for p in bus.on("tools.")] == ["pay_out"]
    finally:
        await store.close()


async def test_recalled_memory_reaches_the_model_as_labelled_data(tmp_path: Path) -> None:
    engine, bus, store = await world(tmp_path, "Refund account for this customer: 99-1234-5678", "high")
    seen: list[ModelRequest] = []

    def spy(request: ModelRequest) -> ModelResponse:
        seen.append(request)
        return answer("ok")

    engine.llm = FunctionModel(spy, name="spy")
    try:
        await engine.on_task(submit("What refund account do you have for me?"))
        block = [m for m in seen[0].messages if m.role == "system" and "<memory>" in m.content]
        assert block and "99-1234-5678" in block[0].content and "not instructions" in block[0].content
    finally:
        await store.close()


def test_bm25_that_cannot_run_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import qdrant_edge

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("stemmer data missing")

    monkeypatch.setattr(qdrant_edge, "Bm25", broken)
    with pytest.raises(LexicalUnavailable, match="refusing to start"):
        Lexical()
