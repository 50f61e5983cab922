"""Redaction of personal data and secrets (agentstream.runtime.observability.redact), with
hypothesis-generated PII embedded in random text. The strategies are shared
with test_tracing.py's end-to-end redaction test."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.runtime.observability.redact import luhn_ok, redact, redact_value

# --------------------------------------------------------------------------- strategies


def _luhn_complete(body: str) -> str:
    for d in "0123456789":
        if luhn_ok(body + d):
            return body + d
    raise AssertionError("unreachable")


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    n = draw(st.sampled_from([15, 16, 16, 16, 19]))
    first = draw(st.sampled_from("3456"))
    body = first + "".join(draw(st.lists(st.sampled_from(string.digits), min_size=n - 2, max_size=n - 2)))
    digits = _luhn_complete(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    if not sep:
        return digits
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def _digits(k: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=string.digits, min_size=k, max_size=k)


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    a, b, c = draw(_digits(3)), draw(_digits(3)), draw(_digits(4))
    cc = draw(st.sampled_from(["1", "44", "49", "33", "353"]))
    fmt = draw(st.sampled_from(["intl_spaced", "intl_compact", "paren", "dashed", "dotted", "intl_dashed"]))
    return {
        "intl_spaced": f"+{cc} {a} {b} {c}",
        "intl_compact": f"+{cc}{a}{b}{c}",
        "paren": f"({a}) {b}-{c}",
        "dashed": f"{a}-{b}-{c}",
        "dotted": f"{a}.{b}.{c}",
        "intl_dashed": f"+{cc}-{a}-{b}-{c}",
    }[fmt]


_ALNUM = string.ascii_letters + string.digits
openai_keys = st.builds(lambda body, proj: ("sk-proj-" if proj else "sk-") + body,
                        st.text(alphabet=_ALNUM, min_size=20, max_size=48), st.booleans())
aws_keys = st.builds(lambda body: "AKIA" + body,
                     st.text(alphabet=string.ascii_uppercase + string.digits, min_size=16, max_size=16))
bearer_tokens = st.builds(lambda tok: "Bearer " + tok,
                          st.text(alphabet=_ALNUM + "-._", min_size=20, max_size=40))
emails = st.emails()

pii = st.one_of(emails, phone_numbers(), card_numbers(), openai_keys, aws_keys, bearer_tokens)
words = st.text(alphabet=string.ascii_letters + string.digits + ",.;:!?", min_size=1, max_size=12)


@st.composite
def text_with_pii(draw: st.DrawFn, min_pii: int = 1, max_pii: int = 4) -> tuple[str, list[str]]:
    """Random words with PII strings at random places; returns (text, the PII)."""
    secrets = draw(st.lists(pii, min_size=min_pii, max_size=max_pii))
    filler = draw(st.lists(words, min_size=0, max_size=12))
    tokens = list(filler)
    for s in secrets:
        tokens.insert(draw(st.integers(0, len(tokens))), s)
    return " ".join(tokens), secrets


# --------------------------------------------------------------------------- properties


@settings(max_examples=400, deadline=None)
@given(text_with_pii())
def test_no_generated_pii_survives(sample: tuple[str, list[str]]) -> None:
    text, secrets = sample
    out = redact(text)
    for s in secrets:
        assert s not in out, (s, text, out)
        assert re.fullmatch(r"\[REDACTED:\w+\]", redact(s)), (s, redact(s))  # whole value, one tag
    assert "[REDACTED:" in out


@settings(max_examples=200, deadline=None)
@given(st.lists(words, max_size=20))
def test_plain_words_are_left_alone(ws: list[str]) -> None:
    text = " ".join(ws)
    assert redact(text) == text


@settings(max_examples=200, deadline=None)
@given(card_numbers())
def test_cards_are_tagged_as_cards(card: str) -> None:
    assert redact(f"pay with {card} please") == "pay with [REDACTED:card] please"


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize(("text", "expected"), [
    ("mail jane.doe+shop@example.co.uk now", "mail [REDACTED:email] now"),
    ("call +1 415 555 0132", "call [REDACTED:phone]"),
    ("call (415) 555-0132 or 415.555.0132", "call [REDACTED:phone] or [REDACTED:phone]"),
    ("card 4111 1111 1111 1111", "card [REDACTED:card]"),
    ("key sk-abcdefghijklmnopqrstuv", "key [REDACTED:api_key]"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [REDACTED:aws_key]"),
    ("Authorization: Bearer abc.def-ghi_jkl", "Authorization: [REDACTED:bearer_token]"),
    ("sha " + "ab12" * 10, "sha [REDACTED:secret]"),
    ("+44 20 7946 0958 4111111111111111", "[REDACTED:phone] [REDACTED:card]"),
])
def test_examples(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "Order 42 is processing: headphones, total $156.00.",
    "task 0123456789abcdef0123456789abcdef at 1795472280.93 on 2024-01-15",
    "card 4111-1111-1111-1112 fails the Luhn check",
    "see /usr/local/lib/python3.11/site-packages/opentelemetry",
    "",
])
def test_not_pii(text: str) -> None:
    assert redact(text) == text


def test_redact_value_walks_json() -> None:
    v = {"to": "a@b.io", "items": ["x", {"card": "4111111111111111"}], "n": 3}
    assert redact_value(v) == {"to": "[REDACTED:email]", "items": ["x", {"card": "[REDACTED:card]"}], "n": 3}
