"""Redaction of personal data and secrets from text that leaves the process as
telemetry: captured prompts and tool arguments (opt-in), log lines.

Every match becomes ``[REDACTED:<kind>]``. Kinds: ``email``, ``phone``,
``card`` (13-19 digits passing the Luhn check), ``api_key`` (``sk-...``,
``ghp_...``, ``xox?-...``), ``aws_key`` (``AKIA...``/``ASIA...``),
``bearer_token``, ``jwt`` and ``secret`` (long hex, 40+ characters, or long
base64-like runs mixing cases and digits).

Biased to redact too much rather than too little: a phone-looking run of
digits in a tool result is redacted too. Left alone on purpose: 32-hex ids
(task ids, trace ids) and short numbers (order ids, totals, dates), which are
what an operator needs to read a trace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["redact", "redact_value", "luhn_ok"]

_KEYS = re.compile(
    r"(?P<api_key>(?<![A-Za-z0-9])(?:sk-[A-Za-z0-9_\-]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9\-]{10,}))"
    r"|(?P<aws_key>(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16,})"
    r"|(?P<bearer_token>(?i:\bbearer)\s+[A-Za-z0-9\-._~+/]{8,}=*)"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})"
    r"|(?P<email>[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)+)"
)
# Runs of digits with phone/card separators: classified (card, phone or
# neither) by a function, since the regex alone cannot check Luhn or count digits.
_DIGITS = re.compile(r"(?<![\w+])\+?\(?\d[\d ().\-]{5,}\d(?![\w])")
_SECRETS = re.compile(
    r"(?P<hex>(?<![A-Za-z0-9])[0-9a-fA-F]{40,}(?![A-Za-z0-9]))"
    r"|(?P<b64>(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{40,}={0,2})"
)
_ONLY_DIGITS = re.compile(r"\D")
_SEPARATORS = re.compile(r"[ ().\-]+")


def _tag(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _classify(chunk: str) -> str | None:
    """``card``, ``phone`` or None for a run of digits and separators."""
    digits = _ONLY_DIGITS.sub("", chunk)
    n = len(digits)
    if 13 <= n <= 19 and luhn_ok(digits):
        return "card"
    if chunk.startswith("+"):
        return "phone" if 8 <= n <= 15 else None
    groups = len([g for g in _SEPARATORS.split(chunk) if g])
    if 9 <= n <= 15 and (groups >= 3 or "(" in chunk):
        return "phone"
    return None


def _digits_sub(m: re.Match[str]) -> str:
    chunk = m.group(0)
    kind = _classify(chunk)
    if kind is not None:
        return _tag(kind)
    # Things side by side ("<phone> <card>") make one run that is neither:
    # look for card numbers among its space-separated groups first, then phones.
    parts: list[str] = chunk.split(" ")
    if len(parts) < 2:
        return chunk
    tagged = _split(_split([(p, False) for p in parts], "card"), "phone")
    return " ".join(p for p, _ in tagged)


def _split(parts: list[tuple[str, bool]], want: str) -> list[tuple[str, bool]]:
    """Replace the longest runs of untagged groups that classify as ``want``."""
    out: list[tuple[str, bool]] = []
    i = 0
    while i < len(parts):
        if parts[i][1]:
            out.append(parts[i])
            i += 1
            continue
        end = i
        while end < len(parts) and not parts[end][1]:
            end += 1
        for j in range(end, i, -1):
            sub = " ".join(p for p, _ in parts[i:j])
            if sub and sub[-1].isdigit() and (sub[0].isdigit() or sub[0] in "+(") and _classify(sub) == want:
                out.append((_tag(want), True))
                i = j
                break
        else:
            out.append(parts[i])
            i += 1
    return out


def _keys_sub(m: re.Match[str]) -> str:
    return _tag(m.lastgroup or "secret")


def _secret_sub(m: re.Match[str]) -> str:
    s = m.group(0)
    if m.lastgroup == "b64" and not (any(c.isdigit() for c in s) and any(c.isupper() for c in s)
                                     and any(c.islower() for c in s)):
        return s  # a long word or path, not a key
    return _tag("secret")


def redact(text: str) -> str:
    """``text`` with emails, phone and card numbers, keys and tokens replaced."""
    if not text:
        return text
    out = _KEYS.sub(_keys_sub, text)
    if any(c.isdigit() for c in out):
        out = _DIGITS.sub(_digits_sub, out)
    if len(out) >= 40:
        out = _SECRETS.sub(_secret_sub, out)
    return out


def redact_value(value: Any) -> Any:
    """Redact every string inside a JSON-like value (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value
