"""Offline token estimates: no tokenizer download, no network.

BPE tokenizers for English average about four characters a token; code,
numbers and punctuation run denser. The estimate counts words and
punctuation separately and takes the larger of that and chars/4, which stays
within about 15% of tiktoken's cl100k on prose and errs high on code. It is
only the guess made before a call: the model's reported usage corrects it
(:class:`Calibration`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agentstream.contracts.events import Message, ToolSpec

_WORDS = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]")
MESSAGE_OVERHEAD = 4  # role and separators per chat message (OpenAI's accounting)


def estimate_text(text: str) -> int:
    if not text:
        return 0
    pieces = 0
    for m in _WORDS.finditer(text):
        word = m.group(0)
        # long words split into several tokens
        pieces += 1 + (len(word) - 1) // 6 if word.isalpha() else 1
    return max(pieces, (len(text) + 3) // 4)


def estimate_message(msg: Message) -> int:
    n = MESSAGE_OVERHEAD + estimate_text(msg.content)
    for call in msg.tool_calls:
        n += 3 + estimate_text(call.name) + estimate_text(call.arguments)
    if msg.tool_call_id:
        n += 2
    return n


def estimate_messages(messages: Iterable[Message]) -> int:
    return 3 + sum(estimate_message(m) for m in messages)


def estimate_tools(tools: Iterable[ToolSpec]) -> int:
    import json

    return sum(8 + estimate_text(t.name) + estimate_text(t.description) + estimate_text(json.dumps(t.parameters))
               for t in tools)


class Calibration:
    """Per-model ratio of reported to estimated input tokens, as a moving
    average, so budgets follow the model's own tokenizer after a few calls."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.ratio: dict[str, float] = {}

    def observe(self, model: str, estimated: int, reported: int) -> None:
        if estimated <= 0 or reported <= 0:
            return
        r = min(max(reported / estimated, 0.25), 4.0)
        old = self.ratio.get(model)
        self.ratio[model] = r if old is None else old + self.alpha * (r - old)

    def scale(self, model: str, estimate: int) -> int:
        return int(estimate * self.ratio.get(model, 1.0) + 0.5)
