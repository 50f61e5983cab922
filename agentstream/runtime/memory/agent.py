"""The agent's side of memory, behind the port the engine calls
(:class:`AgentMemoryPort`): context assembly before each model call,
retrieval, the low-trust guard on side-effecting tool calls, and writes after
a task. With no memory attached the engine does exactly what it did before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from agentstream.contracts.events import (
    MemoryHit,
    MemoryQueryRequested,
    MemoryWrite,
    MemoryWriteRequested,
    TaskCompleted,
    TaskFailed,
)
from agentstream.runtime.core import decide as core
from agentstream.runtime.core.errors import AgentstreamError, Conflict, ModelError
from agentstream.runtime.core.ports import LLM, ModelRequest, SessionStore
from agentstream.runtime.core.state import SessionState, Turn
from agentstream.runtime.memory.client import MemoryApi
from agentstream.runtime.memory.context import (
    Assembled,
    Budget,
    ConversationMemory,
    append_turn,
    assemble,
    decode_conversation,
    due_for_summary,
    encode_conversation,
    extractive_summary,
    first_sentence,
    fold,
    summary_prompt,
    summary_usable,
)
from agentstream.runtime.memory.episodic import Episode, EpisodeStore
from agentstream.runtime.memory.gate import Grounds, sole_basis_low_trust
from agentstream.runtime.memory.remember import statements
from agentstream.runtime.memory.tokens import Calibration

log = logging.getLogger("agentstream.memory")

MAX_CAS = 20


class AgentMemoryPort(Protocol):
    """What the engine calls. Every method is best-effort from the task's
    point of view except ``prepare``'s assembly, which is pure."""

    async def prepare(self, state: SessionState, request: ModelRequest) -> ModelRequest: ...

    def guard(self, task_id: str, state: SessionState | None, ctx: core.Context) -> core.Context: ...

    async def after_task(self, state: SessionState | None, result: TaskCompleted | TaskFailed) -> None: ...


@dataclasses.dataclass
class MemoryOptions:
    budgets: dict[str, Budget] = dataclasses.field(default_factory=dict)  # by model name; "*" any other
    retrieve_limit: int = 5
    min_score: float = 0.0
    episode_ttl_s: float = 30 * 86400.0
    summarise_batch: int = 4
    remember_preferences: bool = True

    def budget(self, model: str) -> Budget:
        return self.budgets.get(model) or self.budgets.get("*") or Budget()


class AgentMemory:
    def __init__(self, *, llm: LLM, conversations: SessionStore, api: MemoryApi | None = None,
                 episodes: EpisodeStore | None = None, options: MemoryOptions | None = None,
                 side_effecting: Callable[[str], bool] = lambda _tool: True,
                 clock: Callable[[], float] = time.time) -> None:
        self.llm = llm
        self.conversations = conversations
        self.api = api
        self.episodes = episodes
        self.options = options or MemoryOptions()
        self.side_effecting = side_effecting
        self.clock = clock
        self.calibration = Calibration()
        # Per task: what was recalled (the guard needs it at decision time) and the last estimate.
        self._recalled: OrderedDict[str, tuple[MemoryHit, ...]] = OrderedDict()
        self._estimates: dict[str, int] = {}
        self.last: Assembled | None = None  # the last assembly (the bench and tests read it)

    # ------------------------------------------------------------ before a model call

    async def prepare(self, state: SessionState, request: ModelRequest) -> ModelRequest:
        task = state.task
        budget = self.options.budget(request.model)
        if state.last_input_tokens and task.task_id in self._estimates:
            self.calibration.observe(request.model, self._estimates[task.task_id], state.last_input_tokens)
        conv = await self._conversation(task)
        hits = await self._recall(state)
        scale = self.calibration.ratio.get(request.model, 1.0)
        if scale > 1.0:  # this model's tokenizer counts more than we estimate: budget with its numbers
            budget = dataclasses.replace(budget, context_tokens=int(budget.context_tokens / scale))
        out = assemble(system=request.messages[0], tools=request.tools, current=request.messages[1:],
                       turns=conv.turns, summary=conv.summary, memories=hits,
                       budget=dataclasses.replace(budget, min_score=max(budget.min_score, self.options.min_score)))
        self._estimates[task.task_id] = out.estimated_tokens
        self.last = out
        return msgspec.structs.replace(request, messages=out.messages)

    async def _conversation(self, task: Any) -> ConversationMemory:
        if not task.conversation_id:
            return ConversationMemory()
        entry = await self.conversations.get(conversation_kv_key(task.tenant_id, task.conversation_id))
        return decode_conversation(entry.value) if entry is not None else ConversationMemory()

    async def _recall(self, state: SessionState) -> tuple[MemoryHit, ...]:
        task = state.task
        cached = self._recalled.get(task.task_id)
        if cached is not None:
            return cached
        hits: list[MemoryHit] = []
        if self.api is not None:
            try:
                reply = await self.api.request(task.tenant_id, MemoryQueryRequested(
                    query=task.input, user_id=task.user_id, limit=self.options.retrieve_limit,
                    min_score=self.options.min_score, task_id=task.task_id))
                if reply.ok:
                    hits += reply.hits
                else:
                    log.warning("memory query for task %s refused: %s", task.task_id, reply.error)
            except (AgentstreamError, ValueError) as exc:
                log.warning("memory query for task %s failed, answering without it: %s", task.task_id, exc)
        if self.episodes is not None:
            try:
                eps = await self.episodes.recent(task.tenant_id, task.user_id)
                hits += relevant_episodes(task.input, eps, self.options.retrieve_limit)
            except (AgentstreamError, OSError, TimeoutError) as exc:
                log.warning("episodic recall for task %s failed: %s", task.task_id, exc)
        self._recalled[task.task_id] = result = tuple(hits)
        while len(self._recalled) > 4096:
            self._recalled.popitem(last=False)
        return result

    # ------------------------------------------------------------ deciding on tool calls

    def guard(self, task_id: str, state: SessionState | None, ctx: core.Context) -> core.Context:
        """Low-trust memory can inform an answer, never be the only basis of a
        side-effecting call: such a call goes to a human for approval."""
        recalled = self._recalled.get(task_id)
        low = tuple(h.text for h in recalled or () if h.trust == "low")
        if not low or state is None:
            return ctx
        trusted = (state.task.input, *(m.content for m in state.messages if m.role in ("user", "tool")),
                   *(h.text for h in recalled or () if h.trust != "low"))
        grounds = Grounds(trusted=trusted, low_trust=low)
        inner = ctx.needs_approval

        def needs_approval(tool: str, args: dict[str, Any]) -> bool:
            if inner is not None and inner(tool, args):
                return True
            if not self.side_effecting(tool):
                return False
            culprits = sole_basis_low_trust(args, grounds)
            if culprits:
                log.warning("task %s: %s(%s) rests only on low-trust memory (%s): asking a human",
                            task_id, tool, list(args), ", ".join(culprits[:3]))
            return bool(culprits)

        return dataclasses.replace(ctx, needs_approval=needs_approval)

    # ------------------------------------------------------------ after a task

    async def after_task(self, state: SessionState | None, result: TaskCompleted | TaskFailed) -> None:
        self._recalled.pop(result.task_id, None)
        self._estimates.pop(result.task_id, None)
        if state is None or not isinstance(result, TaskCompleted):
            return
        task = state.task
        if task.conversation_id:
            await self.record_turn(conversation_kv_key(task.tenant_id, task.conversation_id), Turn(task_id=task.task_id, user=task.input, assistant=result.output),
                                   budget=self.options.budget(self.llm.name))
        stated = statements(task.input)
        if self.episodes is not None:
            try:
                # Preferences and corrections as episodes too: recalled for the user
                # whatever the query's words (lexical search misses "contact me" vs "email").
                for i, st in enumerate(stated):
                    await self.episodes.put(task.tenant_id, task.user_id, f"{task.task_id}-{st.slot or i}", Episode(
                        kind=st.kind, text=st.text, task_id=task.task_id, at=result.finished_at,
                        conversation_id=task.conversation_id), ttl_s=self.options.episode_ttl_s)
                await self.episodes.put(task.tenant_id, task.user_id, task.task_id, Episode(
                    kind="session", text=f"User asked: {first_sentence(task.input)} Answer: "
                                         f"{first_sentence(result.output)}",
                    task_id=task.task_id, at=result.finished_at, conversation_id=task.conversation_id),
                    ttl_s=self.options.episode_ttl_s)
            except AgentstreamError as exc:
                log.warning("episode for task %s not stored: %s", task.task_id, exc)
        if self.api is not None and self.options.remember_preferences:
            writes = tuple(
                MemoryWrite(op="UPDATE" if s.slot else "ADD", write_id=f"{task.task_id}:stmt:{i}", text=s.text,
                            slot=s.slot, kind=s.kind, scope="user", user_id=task.user_id, source=task.task_id,
                            task_id=task.task_id, trust="medium")
                for i, s in enumerate(stated))
            if writes:
                try:
                    reply = await self.api.request(task.tenant_id, MemoryWriteRequested(writes=writes,
                                                                                        actor=f"agent:{task.agent}"))
                    if not reply.ok:
                        log.warning("memory writes of task %s refused: %s", task.task_id, reply.error)
                except (AgentstreamError, ValueError) as exc:
                    log.warning("memory writes of task %s failed: %s", task.task_id, exc)

    async def record_turn(self, kv: str, turn: Turn, *, budget: Budget) -> None:
        """Append the turn to the record at key ``kv``, then fold the oldest
        turns into the summary when due. Turns leave the record only in the
        write that stores a summary covering them; a summariser that fails or
        is cut off is replaced by the extractive summary, so nothing is lost."""
        for _ in range(MAX_CAS):
            entry = await self.conversations.get(kv)
            conv = decode_conversation(entry.value) if entry is not None else ConversationMemory()
            new = append_turn(conv, turn)
            if new is None:
                return
            folded = due_for_summary(new, budget, self.options.summarise_batch)
            if folded:
                text, kind = await self.summarise(new.summary, folded, budget.summary_tokens)
                new = fold(new, folded, text, kind)
            try:
                if entry is None:
                    await self.conversations.create(kv, encode_conversation(new))
                else:
                    await self.conversations.update(kv, encode_conversation(new), entry.revision)
                return
            except Conflict:
                continue
        log.warning("conversation %s: turn %s not recorded after %d conflicts", kv, turn.task_id, MAX_CAS)

    async def summarise(self, previous: str, turns: tuple[Turn, ...], max_tokens: int) -> tuple[str, str]:
        """(summary, "model") when the model produced a whole one, else the
        extractive summary and "extractive"."""
        try:
            resp = await self.llm.complete(ModelRequest(model=self.llm.name, max_tokens=max_tokens,
                                                        messages=summary_prompt(previous, turns, max_tokens)))
            if summary_usable(resp.text, resp.finish_reason) and not resp.tool_calls:
                return resp.text.strip(), "model"
            log.info("summary not usable (finish_reason=%s): extractive fallback", resp.finish_reason)
        except (ModelError, AgentstreamError, ValueError, TimeoutError, OSError) as exc:
            log.info("summariser failed (%s): extractive fallback", exc)
        return extractive_summary(previous, turns, max_tokens), "extractive"


_WORD = re.compile(r"[a-z0-9]{3,}")


def relevant_episodes(query: str, episodes: list[Episode], limit: int) -> list[MemoryHit]:
    """Episodes sharing words with the query, by overlap, newest first on a
    tie. Preferences and corrections are kept whatever the overlap."""
    q = set(_WORD.findall(query.lower()))
    scored = []
    for e in episodes:
        words = set(_WORD.findall(e.text.lower()))
        overlap = len(q & words) / (len(q) or 1)
        if overlap > 0 or e.kind in ("preference", "correction"):
            scored.append((overlap, e.at, e))
    scored.sort(key=lambda x: (-x[0], -x[1]))
    return [MemoryHit(memory_id=f"episode:{e.task_id}", text=e.text, score=round(s, 3), kind=f"episode/{e.kind}",
                      source=f"episode:{e.task_id}", task_id=e.task_id, trust="medium", created_at=e.at)
            for s, _, e in scored[:limit]]


def conversation_kv_key(tenant: str, conversation_id: str) -> str:
    """Tenant and conversation ids are free text; a KV key is tokens. Hashed
    with a separator neither can contain, so two conversations (of one tenant
    or of two) never share a record."""
    return hashlib.sha256(f"{tenant}\x00{conversation_id}".encode()).hexdigest()[:40]
