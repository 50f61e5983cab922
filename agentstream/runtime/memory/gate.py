"""The poisoning gate and the retrieval-side defences. Pure: no I/O.

Write path: a memory that reads like an instruction, hides content, or
carries tool-call syntax is held for review (quarantine) instead of stored;
each source may write only so fast. Read path: one source may fill only a
few slots of a retrieval, so a flood from one poisoned source cannot crowd
out the rest; and a low-trust memory can inform an answer but never be the
only basis for a side-effecting tool call (:func:`sole_basis_low_trust`).

The patterns follow published memory-injection attacks (MINJA's planted
"remember to always ..." instructions, AgentPoison's trigger-laden
retrieval items, indirect prompt injection in stored documents); the red-team
fixtures in tests/test_memory_gate.py exercise them with clean controls.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentstream.contracts.events import MemoryHit, MemoryWrite

# Directions aimed at the model rather than facts about the world.
_INSTRUCTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.IGNORECASE)) for name, rx in (
        ("override", r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}\b(previous|prior|above|earlier|all|any|your|the)\b[^.\n]{0,20}\b(instructions?|prompts?|rules?|guidelines?|polic(y|ies)|directions?)"),
        ("role_change", r"\byou are now\b|\bact as (an? )?(admin|administrator|developer|system|root)\b|\bnew (system )?instructions?\b|\bdeveloper mode\b|\bjailbreak"),
        ("system_prompt", r"\b(system|developer) (prompt|message|instructions?)\b|\breveal (your|the) (prompt|instructions)"),
        ("role_marker", r"(^|\n)\s*(system|assistant|developer|tool)\s*:|<\|im_(start|end)\|>|\[/?INST\]|<<SYS>>|###\s*(system|instruction)"),
        ("standing_order", r"\b(from now on|in (all )?future (conversations|sessions|requests)|whenever (the )?(user|anyone|someone) (asks|mentions|says))\b[^.\n]{0,80}\b(always|never|must|should|call|use|send|transfer|refund|issue|run|execute|reply|respond|tell)\b"),
        ("action_order", r"\b(always|automatically|immediately|silently|without (asking|confirmation|approval|telling))\b[^.\n]{0,30}\b(call|invoke|run|execute|send|transfer|wire|refund|issue|delete|cancel|approve|grant|email|forward|share|disclose|export)\b"),
        ("secrecy", r"\b(do not|don't|never) (tell|inform|mention|reveal|show)\b[^.\n]{0,30}\b(user|customer|anyone|them)\b"),
        ("exfiltration", r"!\[[^\]]*\]\(https?://[^)]*[?&][^)]*=|\bsend (all|the|every)\b[^.\n]{0,40}\bto\b[^.\n]{0,40}(https?://|@)"),
    ))

_TOOL_SYNTAX = re.compile(
    r'"tool_calls"|"function_call"|<\s*/?\s*(tool_call|function_calls?|invoke|tool_use)\b|<function=|'
    r'\{\s*"name"\s*:\s*"[^"]+"\s*,\s*"(arguments|parameters|input)"\s*:|\bcall_tool\s*\(|\bfunctions\.\w+\s*\(',
    re.IGNORECASE)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BASE64_BLOB = re.compile(r"[A-Za-z0-9+/]{120,}={0,2}")


def invisible_chars(text: str) -> list[str]:
    """Format characters (zero-width, bidi controls, Unicode tags) and private
    use characters: invisible to a reviewer, read by a model."""
    found = []
    for ch in text:
        cat = unicodedata.category(ch)
        if (cat in ("Cf", "Co") and ch not in "\u00ad") or 0xE0000 <= ord(ch) <= 0xE007F:
            found.append(f"U+{ord(ch):04X}")
    return found


def screen(text: str) -> tuple[str, ...]:
    """Why ``text`` must not be stored unreviewed; empty means clean."""
    reasons: list[str] = []
    hidden = invisible_chars(text)
    if hidden:
        reasons.append(f"hidden characters {', '.join(sorted(set(hidden))[:5])}")
    # Decide on the text a model would read once invisible characters are gone
    # (they are used to split trigger words past a filter).
    visible = "".join(ch for ch in unicodedata.normalize("NFKC", text)
                      if unicodedata.category(ch) not in ("Cf", "Co"))
    for name, rx in _INSTRUCTION_PATTERNS:
        if rx.search(visible):
            reasons.append(f"instruction-like ({name})")
    if _TOOL_SYNTAX.search(visible):
        reasons.append("tool-call syntax")
    if _HTML_COMMENT.search(visible):
        reasons.append("hidden HTML comment")
    if _BASE64_BLOB.search(visible):
        reasons.append("encoded blob")
    return tuple(reasons)


def screen_write(write: MemoryWrite) -> tuple[str, ...]:
    if write.op in ("DELETE", "NOOP"):
        return ()
    return screen(write.text) + tuple(r for v in write.metadata.values() for r in screen(v))


class RateLimiter:
    """Token bucket per key (tenant and source): ``rate`` writes a second,
    bursts up to ``burst``. In-process: each memory-service replica limits
    on its own, so a deployment's limit is per replica."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # bound memory: forget the fullest buckets
            for k in [k for k, (t, _) in self._buckets.items() if t >= self.burst - 1][:50_000]:
                del self._buckets[k]
        return True


def cap_per_source(hits: Sequence[MemoryHit], per_source: int, limit: int) -> list[MemoryHit]:
    """Best first, at most ``per_source`` hits from any one source."""
    out: list[MemoryHit] = []
    seen: dict[str, int] = {}
    for h in sorted(hits, key=lambda h: -h.score):
        key = h.source or h.memory_id
        if seen.get(key, 0) >= per_source:
            continue
        seen[key] = seen.get(key, 0) + 1
        out.append(h)
        if len(out) >= limit:
            break
    return out


# ----------------------------------------------------------------- acting on memory


_VALUE_TOKEN = re.compile(r"[A-Za-z0-9@._%+\-]{4,}")


def _values(args: Any) -> list[str]:
    if isinstance(args, dict):
        return [v for x in args.values() for v in _values(x)]
    if isinstance(args, (list, tuple)):
        return [v for x in args for v in _values(x)]
    if args is None or isinstance(args, bool):
        return []
    return [str(args)]


@dataclass(frozen=True)
class Grounds:
    """What a task's tool call may rest on: text from trusted places (the
    user's input, tool results, trusted memories) and low-trust memories."""

    trusted: tuple[str, ...] = ()
    low_trust: tuple[str, ...] = ()


def sole_basis_low_trust(arguments: dict[str, Any], grounds: Grounds) -> tuple[str, ...]:
    """The argument values that appear in a low-trust memory and nowhere
    trusted: if any, the call would act on low-trust memory alone."""
    if not grounds.low_trust:
        return ()
    trusted = " ".join(grounds.trusted).lower()
    low = " ".join(grounds.low_trust).lower()
    culprits = []
    for value in _values(arguments):
        for tok in _VALUE_TOKEN.findall(value.lower()):
            if tok in low and tok not in trusted:
                culprits.append(tok)
    return tuple(dict.fromkeys(culprits))
