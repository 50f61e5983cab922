"""The support desk's scripted model for multi-step requests and for the
plan-first turns, with its behavioural assumptions named in one place.

This is what the strategy comparison (``bench/strategies.py``, README
"Strategies: does planning pay?") runs. It is a simulation, so every
difference it produces must come from a mechanism a reader can point at:

- **usage** is computed from the actual request (every message, every tool
  call's arguments and every offered tool's schema, ~4 characters a token)
  and the actual reply, so a strategy that takes more turns or re-reads a
  longer context pays for it in tokens and cost, and one that offers an
  extra tool (the planner's ``submit_plan``) pays for its schema;
- **latency** of a model turn is ``turn_latency_s`` plus prefill and decode
  time proportional to those token counts, with seeded jitter
  (:class:`SimulatedModel`); tools keep their own simulated latency;
- **behaviour** differs only where :class:`Assumptions` says so: ReAct asks
  for at most ``react_calls_per_turn`` calls a turn and only for calls whose
  inputs it has seen; a planner writes every step before anything runs, so
  it cannot branch on a result it has not seen (``planner_conditionals``);
  any tool-calling turn (ReAct or planner) gets one argument wrong with
  probability ``error_rate`` (seeded by the request's content), which schema
  validation or the tool worker catches and the next turn corrects.

The parser understands the phrasings of the bundled datasets
(``support.yaml``, ``multistep.yaml``), not English in general.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from agentstream.contracts.events import Message, ModelResponse, ToolCall, Usage
from agentstream.runtime.adapters.scripted_models import estimate_tokens, last_user
from agentstream.runtime.core.ports import ModelRequest
from agentstream.runtime.planning.protocol import SUBMIT_PLAN_NAME, turn_kind


@dataclass(frozen=True)
class Assumptions:
    """Every behavioural assumption of the simulation (docs/planning.md, "Measured")."""

    # ReAct: calls a turn at most (models batch independent calls, but not unboundedly).
    react_calls_per_turn: int = 3
    # Plan-first: a step that depends on a result the planner has not seen
    # ("refund it if eligible"). "defer": leave the action out and say so in
    # the answer (the solver cannot call tools); "speculate": plan it with a
    # pointer at the check's output and let the tool refuse (a refused
    # side-effecting call still counts as attempted, and triggers a replan).
    planner_conditionals: Literal["defer", "speculate"] = "defer"
    # Chance that a tool-calling turn gets one argument wrong (an order id
    # sent as "#17"); caught by validation, fixed on the next turn.
    error_rate: float = 0.0
    # Model latency: fixed per turn + prefill per 1k input tokens + decode per output token.
    turn_latency_s: float = 0.0
    prefill_s_per_1k: float = 0.0
    decode_s_per_token: float = 0.0
    jitter: float = 0.0  # each turn's latency times a uniform draw in [1 - jitter, 1 + jitter]
    seed: int = 0


DEFAULT = Assumptions()
# The bench's figures: a small hosted model (about 0.35 s to first token,
# ~80 output tokens/s), 5% of tool-calling turns with one wrong argument.
BENCH = Assumptions(error_rate=0.05, turn_latency_s=0.35, prefill_s_per_1k=0.05, decode_s_per_token=0.0125,
                    jitter=0.2)


# ----------------------------------------------------------------- usage


def request_tokens(request: ModelRequest) -> int:
    """What a provider bills as input: every message (and the arguments of the
    calls in it) plus the schema of every tool offered."""
    n = 0
    for m in request.messages:
        n += 8 + estimate_tokens(m.content) + sum(estimate_tokens(c.arguments) + 4 for c in m.tool_calls)
    for t in request.tools:
        n += estimate_tokens(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}))
    return n


def response_tokens(resp: ModelResponse) -> int:
    return estimate_tokens(resp.text) + sum(estimate_tokens(c.arguments) + 4 for c in resp.tool_calls)


def with_usage(request: ModelRequest, resp: ModelResponse) -> ModelResponse:
    return msgspec.structs.replace(resp, usage=Usage(input_tokens=request_tokens(request),
                                                     output_tokens=response_tokens(resp)))


def _draw(request: ModelRequest, seed: int, salt: str) -> random.Random:
    """A generator seeded by the request's content: the same request draws the
    same, concurrently or not, and a retried turn (longer context) draws anew."""
    h = hashlib.sha256(f"{seed}:{salt}".encode())
    for m in request.messages:
        h.update(m.role.encode())
        h.update(m.content.encode())
        for c in m.tool_calls:
            h.update(c.arguments.encode())
    return random.Random(h.digest())


class SimulatedModel:
    """An ``LLM`` that runs the scripted model under ``assumptions``, taking the
    latency they give (fixed + prefill + decode, seeded jitter).

    Draws (mistakes, jitter) are seeded by the request's content, the seed and
    how many times this model has seen that same request before: the k-th run
    of a case draws afresh (runs are independent, so pass^k means something),
    and a whole evaluation draws the same multiset whatever the concurrency."""

    def __init__(self, script_for: Callable[[Assumptions], Callable[[ModelRequest], ModelResponse]],
                 assumptions: Assumptions = DEFAULT, name: str = "scripted-support") -> None:
        self.script_for = script_for
        self.assumptions = assumptions
        self.name = name
        self.calls = 0
        self._seen: dict[bytes, int] = {}

    def _occurrence(self, request: ModelRequest) -> int:
        key = _draw(request, 0, "occurrence").getrandbits(128).to_bytes(16, "big")
        n = self._seen.get(key, 0)
        self._seen[key] = n + 1
        return n

    def assumptions_for(self, occurrence: int) -> Assumptions:
        a = self.assumptions
        return a if occurrence == 0 else dataclasses.replace(a, seed=a.seed * 1_000_003 + occurrence)

    def latency(self, request: ModelRequest, resp: ModelResponse, a: Assumptions | None = None) -> float:
        a = a or self.assumptions
        base = (a.turn_latency_s + a.prefill_s_per_1k * resp.usage.input_tokens / 1000
                + a.decode_s_per_token * resp.usage.output_tokens)
        if a.jitter:
            base *= _draw(request, a.seed, "latency").uniform(1 - a.jitter, 1 + a.jitter)
        return max(base, 0.0)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        a = self.assumptions_for(self._occurrence(request))
        resp = self.script_for(a)(request)
        if resp.usage == Usage():
            resp = with_usage(request, resp)
        if not resp.model:
            resp = msgspec.structs.replace(resp, model=self.name)
        delay = self.latency(request, resp, a)
        if delay:
            await asyncio.sleep(delay)  # the simulated model's own time, not a synchronisation
        return resp


# ----------------------------------------------------------------- requests as jobs

Aspect = Literal["status", "shipping", "eligibility", "refund", "customer"]
_ASPECT_ORDER: tuple[Aspect, ...] = ("status", "shipping", "eligibility", "refund", "customer")

_ORDER_LIST = re.compile(r"\borders?\b((?:[\s,#]*(?:and\s+|or\s+)?#?\d+\b)+)", re.I)
_HASH_ID = re.compile(r"#(\d+)\b")
_REFUND_ACTION = re.compile(r"\b(please refund|refund (it|them|order|orders|both|whichever|each|all|the|#\d))", re.I)
_KEYWORDS: dict[Aspect, re.Pattern[str]] = {
    "status": re.compile(r"\bwhere\b|\bstatus\b|look up|what'?s in|\btotal\b", re.I),
    "shipping": re.compile(r"\barriv|when will|\beta\b|in transit|\bshipping\b", re.I),
    "eligibility": re.compile(r"refunded|refundable|eligible|qualif|\ba refund\b", re.I),
    "customer": re.compile(r"who placed|customer|\btier\b|\bgold\b", re.I),
}


@dataclass(frozen=True)
class Request:
    """What a request asks for: per order, the aspects; and the order-free jobs."""

    order_ids: tuple[int, ...]
    aspects: tuple[Aspect, ...]  # for every order named
    ticket: str | None = None  # subject
    kb: str | None = None  # query
    hours: bool = False

    def calls_needed(self) -> int:
        per = {"status": 1, "shipping": 1, "eligibility": 1, "refund": 2, "customer": 2}
        asp = set(self.aspects)
        if "refund" in asp:
            asp.discard("eligibility")
        n = sum(per[a] for a in asp)
        if "status" in asp and "customer" in asp:
            n -= 1  # the customer's lookup is the status lookup
        return n * len(self.order_ids) + (self.ticket is not None) + (self.kb is not None) + self.hours


def order_ids(text: str) -> list[int]:
    found: list[int] = []
    for m in _ORDER_LIST.finditer(text):
        found += [int(x) for x in re.findall(r"\d+", m.group(1))]
    found += [int(x) for x in _HASH_ID.findall(text)]
    return list(dict.fromkeys(found))


def parse(text: str) -> Request:
    ids = order_ids(text)
    aspects: list[Aspect] = []
    if ids:
        for a in _ASPECT_ORDER:
            if a == "refund":
                if _REFUND_ACTION.search(text):
                    aspects.append("refund")
            elif _KEYWORDS[a].search(text):
                aspects.append(a)
        if "refund" in aspects and "eligibility" in aspects:
            aspects.remove("eligibility")  # the action checks first anyway
        if not aspects:
            aspects.append("status")
    low = text.lower()
    ticket = text[:80] if re.search(r"ticket|human|complain", low) else None
    kb_match = re.search(r"how do i [^,?.;]*", text, re.I)
    hours = bool(re.search(r"opening hours|\bhours\b|\bopen on\b", low))
    return Request(order_ids=tuple(ids), aspects=tuple(aspects),
                   ticket=ticket, kb=kb_match.group(0) if kb_match else None, hours=hours)


def is_multistep(request: ModelRequest) -> bool:
    """Whether this request is beyond the support desk's one-turn script: two
    or more orders, or three or more tool calls."""
    r = parse(last_user(request))
    return len(r.order_ids) >= 2 or r.calls_needed() >= 3


# ----------------------------------------------------------------- what the conversation holds


def _key(name: str, args: dict[str, Any]) -> str:
    return f"{name}:{json.dumps(args, sort_keys=True)}"


@dataclass(frozen=True)
class Outcome:
    name: str
    args: dict[str, Any]
    result: Any = None  # the tool's output when it succeeded
    error: dict[str, Any] | None = None  # its structured error otherwise


@dataclass
class Seen:
    """This task's calls so far and their outcomes. An argument mistake
    (``invalid_arguments``) is not kept: the call is simply made again."""

    outcomes: list[Outcome] = field(default_factory=list)
    turns: int = 0

    def find(self, name: str, **args: Any) -> Outcome | None:
        """The outcome of ``name`` whose arguments include ``args``."""
        for o in reversed(self.outcomes):
            if o.name == name and all(o.args.get(k) == v for k, v in args.items()):
                return o
        return None

    def ok(self, name: str, **args: Any) -> Any:
        o = self.find(name, **args)
        return o.result if o is not None and o.error is None else None

    def error(self, name: str, **args: Any) -> dict[str, Any] | None:
        o = self.find(name, **args)
        return o.error if o is not None else None

    def done(self, name: str, **args: Any) -> bool:
        return self.find(name, **args) is not None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def record(out: Seen, name: str, args: dict[str, Any], content: Any) -> None:
    err = content.get("error") if isinstance(content, dict) else None
    if isinstance(err, dict):
        if err.get("kind") != "invalid_arguments":
            out.outcomes.append(Outcome(name, dict(args), error=err))
    else:
        out.outcomes.append(Outcome(name, dict(args), result=content))


def observed(request: ModelRequest) -> Seen:
    """Calls and outcomes since the last user message: assistant tool calls
    matched to tool messages by call id (the core gives the solver a plan's
    calls that way too), and the ``done``/``failed`` steps of a replanning reply."""
    start = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=-1) + 1
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    steps: dict[str, dict[str, Any]] = {}
    out = Seen()
    for m in request.messages[start:]:
        if m.role == "assistant" and m.tool_calls:
            out.turns += 1
            for c in m.tool_calls:
                args = _loads(c.arguments)
                calls[c.id] = (c.name, args if isinstance(args, dict) else {})
                if c.name == SUBMIT_PLAN_NAME and isinstance(args, dict):
                    steps.update({str(st.get("id")): st for st in args.get("steps", []) if isinstance(st, dict)})
        elif m.role == "tool":
            content = _loads(m.content)
            known = calls.get(m.tool_call_id or "")
            if known is not None and known[0] == SUBMIT_PLAN_NAME:
                _absorb_feedback(out, steps, content)
            elif known is not None:
                record(out, known[0], known[1], content)
    return out


def _absorb_feedback(out: Seen, steps: dict[str, dict[str, Any]], body: Any) -> None:
    """A replanning turn's tool message: the outputs of the steps that ran
    (``done``, by step id) and the step that failed."""
    if not isinstance(body, dict):
        return
    done = body.get("done")
    for sid, output in (done.items() if isinstance(done, dict) else ()):
        st = steps.get(str(sid))
        if st is not None and not out.done(str(st.get("tool")), **_resolved_args(st, output)):
            record(out, str(st.get("tool")), _resolved_args(st, output), output)
    failed = body.get("failed")
    if not isinstance(failed, dict):
        return
    # {step id: {"tool": ..., "error": the tool message}}; the older single
    # shape {"step": id, "error": ...} is read too.
    entries = {str(failed.get("step")): failed} if "step" in failed else failed
    for sid, entry in entries.items():
        st = steps.get(str(sid))
        err = entry.get("error") if isinstance(entry, dict) else None
        if isinstance(err, dict) and isinstance(err.get("error"), dict):
            err = err["error"]
        if st is not None:
            out.outcomes.append(Outcome(str(st.get("tool")), _resolved_args(st, None),
                                        error=dict(err) if isinstance(err, dict) else {"message": str(err)}))


def _resolved_args(step: dict[str, Any], content: Any) -> dict[str, Any]:
    """The literal arguments of a step, plus what its result tells of the ones
    that were pointers."""
    raw: dict[str, Any] = step["args"] if isinstance(step.get("args"), dict) else {}
    args = {k: v for k, v in raw.items() if not (isinstance(v, dict) and "$ref" in v)}
    if step.get("tool") == "issue_refund" and isinstance(content, dict) and "refunded" in content:
        args["amount"] = content["refunded"]
    if step.get("tool") == "customer_profile" and isinstance(content, dict) and "customer_id" in content:
        args["customer_id"] = content["customer_id"]
    return args


# ----------------------------------------------------------------- the work a request needs


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, Any]
    needs: tuple[Call, ...] = ()  # calls whose results its arguments come from
    conditional: bool = False  # only if a result it has not seen allows it (refund if eligible)


def work(r: Request, s: Seen) -> list[Call]:
    """Every call the request needs that has not been made, given what has
    been seen; a call whose inputs are unknown lists what it waits for."""
    out: list[Call] = []

    def want(c: Call) -> None:
        # A call still waiting for its inputs has no arguments to compare yet.
        if (c.needs or not s.done(c.name, **c.args)) and c not in out:
            out.append(c)

    for oid in r.order_ids:
        lookup = Call("lookup_order", {"order_id": oid})
        elig = Call("refund_eligibility", {"order_id": oid})
        for a in r.aspects:
            if a == "status":
                want(lookup)
            elif a == "shipping":
                want(Call("shipping_status", {"order_id": oid}))
            elif a == "eligibility":
                want(elig)
            elif a == "refund":
                e = s.ok(elig.name, **elig.args)
                if e is None and not s.done(elig.name, **elig.args):
                    want(elig)
                    want(Call("issue_refund", {"order_id": oid}, needs=(elig,), conditional=True))
                elif isinstance(e, dict) and e.get("eligible"):
                    want(Call("issue_refund", {"order_id": oid, "amount": e.get("amount")}))
            elif a == "customer":
                o = s.ok(lookup.name, **lookup.args)
                if o is None and not s.done(lookup.name, **lookup.args):
                    want(lookup)
                    want(Call("customer_profile", {}, needs=(lookup,)))
                elif isinstance(o, dict) and o.get("customer"):
                    want(Call("customer_profile", {"customer_id": o["customer"]}))
    if r.kb is not None:
        want(Call("search_kb", {"query": r.kb}))
    if r.ticket is not None:
        want(Call("create_ticket", {"subject": r.ticket, "priority": "high"}))
    if r.hours:
        want(Call("store_hours", {}))
    return out


def _mistake(args: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One wrong argument: an order id sent as text ("#17"), the commonest slip."""
    if "order_id" in args and isinstance(args["order_id"], int):
        return {**args, "order_id": f"#{args['order_id']}"}
    key = rng.choice(sorted(args)) if args else "query"
    return {**args, key: 0} if args else {"unexpected": 1}


def _tool_calls(specs: Sequence[tuple[str, dict[str, Any]]], step: int) -> ModelResponse:
    return ModelResponse(tool_calls=tuple(ToolCall(id=f"call_{step}_{i}", name=name,
                                                   arguments=json.dumps(args))
                                          for i, (name, args) in enumerate(specs)),
                         finish_reason="tool_calls")


# ----------------------------------------------------------------- ReAct


def react_turn(request: ModelRequest, a: Assumptions) -> ModelResponse:
    """The next ReAct turn of a multi-step request: the calls whose inputs are
    known (at most ``react_calls_per_turn``), or the answer when nothing is left."""
    r = parse(last_user(request))
    s = observed(request)
    ready = [c for c in work(r, s) if not c.needs]
    if not ready:
        return ModelResponse(text=compose(r, s, planned=False), finish_reason="stop")
    batch = [(c.name, dict(c.args)) for c in ready[: max(1, a.react_calls_per_turn)]]
    rng = _draw(request, a.seed, "mistake")
    if rng.random() < a.error_rate:
        i = rng.randrange(len(batch))
        batch[i] = (batch[i][0], _mistake(batch[i][1], rng))
    return _tool_calls(batch, s.turns + 1)


# ----------------------------------------------------------------- plan-first


def _ref(step: str, *path: str | int) -> dict[str, Any]:
    return {"$ref": step, "path": list(path)}


def plan_steps(r: Request, s: Seen, a: Assumptions) -> list[dict[str, Any]]:
    """The planner's steps: every call it can write before anything runs.
    A call that needs an earlier step's output gets a typed pointer at it.
    A conditional action is left out ("defer") or speculated ("speculate")."""
    steps: list[dict[str, Any]] = []
    ids: dict[str, str] = {}

    def add(c: Call, args: dict[str, Any]) -> str:
        k = _key(c.name, c.args) + "".join(_key(d.name, d.args) for d in c.needs)
        if k not in ids:
            ids[k] = f"s{len(steps) + 1}"
            steps.append({"id": ids[k], "tool": c.name, "args": args})
        return ids[k]

    for c in work(r, s):
        if not c.needs:
            add(c, dict(c.args))
            continue
        dep = c.needs[0]
        dep_id = add(dep, dict(dep.args))
        if c.name == "customer_profile":
            add(c, {"customer_id": _ref(dep_id, "customer")})
        elif c.name == "issue_refund" and (not c.conditional or a.planner_conditionals == "speculate"):
            add(c, {"order_id": c.args["order_id"], "amount": _ref(dep_id, "amount")})
    return steps


def _legacy_steps(request: ModelRequest, s: Seen, a: Assumptions,
                  legacy: Callable[[ModelRequest], ModelResponse]) -> list[dict[str, Any]]:
    """A one-step request planned as the one-turn script would act (it knows
    follow-ups and greetings), so both strategies choose the same tools."""
    first = legacy(_without_plan(request, keep_results=False))
    steps: list[dict[str, Any]] = []
    for c in first.tool_calls:
        args = _loads(c.arguments)
        if isinstance(args, dict) and not s.done(c.name, **args):
            steps.append({"id": f"s{len(steps) + 1}", "tool": c.name, "args": args})
    text = last_user(request)
    if _REFUND_ACTION.search(text) and a.planner_conditionals == "speculate":
        oid = next((i for m in reversed(request.messages) if m.role == "user" for i in order_ids(m.content)), None)
        elig = next((st["id"] for st in steps if st["tool"] == "refund_eligibility"), None)
        if oid is not None and elig is not None:
            steps.append({"id": f"s{len(steps) + 1}", "tool": "issue_refund",
                          "args": {"order_id": oid, "amount": _ref(elig, "amount")}})
    return steps


def planner_turn(request: ModelRequest, a: Assumptions,
                 legacy: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
    """One ``submit_plan`` call. On a replanning turn (an invalid plan or a
    failed step came back) the plan covers what is still needed, given the
    results the tool message reported."""
    s = observed(request)
    if is_multistep(request):
        steps = plan_steps(parse(last_user(request)), s, a)
    else:
        steps = _legacy_steps(request, s, a, legacy)
    rng = _draw(request, a.seed, "mistake")
    if steps and rng.random() < a.error_rate:
        i = rng.randrange(len(steps))
        steps[i] = {**steps[i], "args": _mistake(steps[i]["args"], rng)}
    plan = {"steps": steps, "rationale": "independent steps run together; pointers carry results forward"}
    return _tool_calls([(SUBMIT_PLAN_NAME, plan)], s.turns + 1)


def _without_plan(request: ModelRequest, *, keep_results: bool = True) -> ModelRequest:
    """The request as the one-turn script knows it: no submit_plan turn, no
    planner tool; with ``keep_results=False`` nothing after the last user turn."""
    msgs = request.messages
    if not keep_results:
        start = max((i for i, m in enumerate(msgs) if m.role == "user"), default=-1) + 1
        msgs = msgs[:start]
    msgs = tuple(m for m in msgs
                 if not (m.role == "assistant" and any(c.name == SUBMIT_PLAN_NAME for c in m.tool_calls))
                 and not (m.role == "tool" and m.name == SUBMIT_PLAN_NAME))
    return msgspec.structs.replace(request, messages=msgs,
                                   tools=tuple(t for t in request.tools if t.name != SUBMIT_PLAN_NAME),
                                   tool_choice=None)


# ----------------------------------------------------------------- answers


def _refund_of(s: Seen, oid: int) -> Outcome | None:
    return s.find("issue_refund", order_id=oid)


def compose(r: Request, s: Seen, *, planned: bool) -> str:
    """The answer from what was seen, one group of sentences per order."""
    parts: list[str] = []
    for oid in r.order_ids:
        if any(o.error is not None and o.error.get("kind") == "not_found" and o.args.get("order_id") == oid
               for o in s.outcomes):
            parts.append(f"I could not find order {oid}; could you check the number?")
            continue
        o = s.ok("lookup_order", order_id=oid)
        bits = [f"Order {oid} is {o['status']}: {', '.join(o['items'])}, total ${o['total']:.2f}."
                if isinstance(o, dict) and "status" in r.aspects else f"Order {oid}:"]
        sh = s.ok("shipping_status", order_id=oid)
        if isinstance(sh, dict) and "shipping" in r.aspects:
            bits.append(f"it is {sh['state']} with {sh['carrier']}, arriving in {sh['eta_days']} day(s)."
                        if sh.get("carrier") else "it is not shipped yet.")
        e = s.ok("refund_eligibility", order_id=oid)
        if "refund" in r.aspects:
            refund = _refund_of(s, oid)
            if refund is not None and refund.error is None and isinstance(refund.result, dict):
                bits.append(f"Refunded ${refund.result['refunded']:.2f} (reference {refund.result['reference']}).")
            elif isinstance(e, dict) and not e.get("eligible"):
                bits.append(f"it cannot be refunded: {e.get('reason')}.")
            elif refund is not None and refund.error is not None:
                bits.append(f"I could not refund order {oid}: {refund.error.get('message', 'the refund failed')}.")
            elif isinstance(e, dict) and planned:
                bits.append(f"it qualifies for a refund of ${e['amount']:.2f}, but I have not issued it: "
                            "my plan was fixed before I knew it was eligible.")
            elif isinstance(e, dict):
                bits.append(f"it qualifies for a refund of ${e['amount']:.2f}.")
        elif "eligibility" in r.aspects and isinstance(e, dict):
            bits.append(f"it qualifies for a refund of ${e['amount']:.2f} ({e['reason']})." if e.get("eligible")
                        else f"it cannot be refunded: {e.get('reason')}.")
        if "customer" in r.aspects and isinstance(o, dict):
            p = s.ok("customer_profile", customer_id=o.get("customer"))
            if isinstance(p, dict):
                bits.append(f"The customer is {p['customer_id']} ({p['tier']} tier).")
        parts.append(" ".join(bits))
    if r.kb is not None:
        hits = s.ok("search_kb", query=r.kb)
        if isinstance(hits, list) and hits and isinstance(hits[0], dict):
            parts.append(f"This article should help: {hits[0]['title']} ({hits[0]['url']}).")
    if r.ticket is not None:
        t = s.ok("create_ticket", subject=r.ticket)
        if isinstance(t, dict):
            parts.append(f"I have opened ticket {t['ticket']} with {t['priority']} priority.")
    if r.hours:
        h = s.ok("store_hours")
        if isinstance(h, dict):
            parts.append(f"We are open {h['weekdays']} on weekdays and {h['weekends']} at weekends "
                         f"({h['timezone']}).")
    return " ".join(parts) or "Done."


def solver_turn(request: ModelRequest, legacy: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
    """The answer from the plan's results (a solver may not call tools)."""
    s = observed(request)
    if is_multistep(request):
        return ModelResponse(text=compose(parse(last_user(request)), s, planned=True), finish_reason="stop")
    # A one-step request is answered as the one-turn script answers the same results.
    out = legacy(_as_react_results(request, s))
    if out.tool_calls:  # it would act now; a solver cannot
        args = _loads(out.tool_calls[0].arguments)
        oid = args.get("order_id") if isinstance(args, dict) else None
        e = s.ok("refund_eligibility", order_id=oid)
        amount = f" of ${e['amount']:.2f}" if isinstance(e, dict) else ""
        return ModelResponse(text=f"Order {oid} qualifies for a refund{amount}, but I have not issued it: "
                                  "my plan was fixed before I knew it was eligible.", finish_reason="stop")
    return out


def _as_react_results(request: ModelRequest, s: Seen) -> ModelRequest:
    """The conversation as the one-turn script reads it: one assistant turn
    with the calls, then their outcomes as tool messages named by tool."""
    base = _without_plan(request, keep_results=False)
    calls = tuple(ToolCall(id=f"r{i}", name=o.name, arguments=json.dumps(o.args)) for i, o in enumerate(s.outcomes))
    msgs = [*base.messages, Message(role="assistant", tool_calls=calls)]
    msgs += [Message(role="tool", name=o.name, tool_call_id=f"r{i}",
                     content=json.dumps(o.result if o.error is None else {"error": o.error}))
             for i, o in enumerate(s.outcomes)]
    return msgspec.structs.replace(base, messages=tuple(msgs))


# ----------------------------------------------------------------- the script


def make_script(legacy: Callable[[ModelRequest], ModelResponse],
                assumptions: Assumptions = DEFAULT) -> Callable[[ModelRequest], ModelResponse]:
    """The support desk's model: planner and solver turns (plan-first), ReAct
    turns for multi-step requests, and the one-turn ``legacy`` script for
    the rest; every reply carries usage computed from its request."""

    def script(request: ModelRequest) -> ModelResponse:
        kind = turn_kind(request.tools, request.tool_choice)
        if kind == "planner":
            resp = planner_turn(request, assumptions, legacy)
        elif kind == "solver":
            resp = solver_turn(request, legacy)
        elif is_multistep(request):
            resp = react_turn(request, assumptions)
        elif any(c.name == SUBMIT_PLAN_NAME for m in request.messages for c in m.tool_calls):
            # ReAct after a plan fell back: the one-turn script over the plan's results.
            resp = legacy(_as_react_results(request, observed(request)))
        else:
            resp = legacy(request)
        return with_usage(request, resp)

    return script
