"""What a finished task leaves in memory: the user's stated preferences and
corrections, found by pattern (no model call), with a slot so a later
statement about the same thing supersedes the earlier one. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")
_PREFERENCE = re.compile(
    r"\b(i (would )?prefer|i'd (rather|prefer|like)|i like|i don't like|i do not like|i hate|i love|"
    r"please (always|never|don't|do not)|my preferred|call me|contact me|reach me|i want (you )?to be|"
    r"i'm (vegetarian|vegan|allergic)|i am (vegetarian|vegan|allergic))\b", re.IGNORECASE)
_CORRECTION = re.compile(r"\b(actually|correction|that's wrong|that is wrong|not \w+ but|i meant|"
                         r"my (new|correct) (address|email|phone|number|name) is)\b", re.IGNORECASE)
_SLOTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("contact_channel", re.compile(r"\b(e-?mail|phone|call|sms|text message|whatsapp|post|letter|chat)\b", re.I)),
    ("language", re.compile(r"\b(english|french|german|spanish|portuguese|italian|dutch|japanese|chinese)\b", re.I)),
    ("name", re.compile(r"\bcall me\b", re.I)),
    ("address", re.compile(r"\baddress\b", re.I)),
    ("diet", re.compile(r"\b(vegetarian|vegan|allergic|gluten)\b", re.I)),
    ("delivery", re.compile(r"\b(deliver|delivery|shipping|courier|pick ?up)\b", re.I)),
)


@dataclass(frozen=True)
class Statement:
    kind: str  # preference | correction
    slot: str  # "" when no known slot: then it is added, never superseding
    text: str


def statements(user_text: str) -> list[Statement]:
    out = []
    for sentence in _SPLIT.split(user_text.strip()):
        s = " ".join(sentence.split())
        if not s or len(s) > 400:
            continue
        kind = "preference" if _PREFERENCE.search(s) else "correction" if _CORRECTION.search(s) else ""
        if not kind:
            continue
        slot = next((name for name, rx in _SLOTS if rx.search(s)), "")
        out.append(Statement(kind=kind, slot=slot, text=s))
    return out
