"""Trace context: span and trace ids, :class:`Ctx` (a span's identity as W3C
trace context carries it), the ``traceparent`` header, and the context
variables holding the current span and the current task."""

from __future__ import annotations

import contextvars
import hashlib
import os
import random
import re
from dataclasses import dataclass
from typing import NamedTuple

from opentelemetry import trace as trace_api
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


_rng = random.Random(int.from_bytes(os.urandom(16), "big"))
os.register_at_fork(after_in_child=lambda: _rng.seed(int.from_bytes(os.urandom(16), "big")))


def _span_id() -> str:
    while True:
        v = _rng.getrandbits(64)
        if v:
            return f"{v:016x}"


def _trace_id() -> tuple[int, str]:
    while True:
        v = _rng.getrandbits(128)
        if v:
            return v, f"{v:032x}"


def derived_span_id(trace_id: str, key: str) -> str:
    """A span id every process computes alike from the trace and a key of
    ours (``task:<task_id>``, ``approval:<approval_id>``): a span whose
    children start in other processes, before it is recorded, gets its id
    without anyone passing it along (the task's root, an approval's wait)."""
    digest = hashlib.blake2b(f"{trace_id}:{key}".encode(), digest_size=8).hexdigest()
    return digest if digest != "0" * 16 else "0" * 15 + "1"


def task_span_id(trace_id: str, task_id: str) -> str:
    """The id of the task's ``invoke_agent`` span, the root of its trace."""
    return derived_span_id(trace_id, f"task:{task_id}")


def approval_span_id(trace_id: str, approval_id: str) -> str:
    """The id of an approval's ``await_approval`` span (request to decision)."""
    return derived_span_id(trace_id, f"approval:{approval_id}")


class Ctx(NamedTuple):
    """A span's identity as W3C trace context carries it, ids as the lowercase
    hex they travel and are stored in. The hot path uses this, not
    OpenTelemetry's ``SpanContext`` (int ids to format to hex for every
    record and header, a validating constructor, property accessors);
    :func:`to_otel` converts where OpenTelemetry needs one."""

    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    flags: int = 1  # W3C trace-flags; bit 0: sampled
    state: str = ""  # the tracestate header, passed through as it came

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


def to_otel(ctx: Ctx, *, remote: bool = False) -> SpanContext:
    state = TraceState.from_header([ctx.state]) if ctx.state else None
    return SpanContext(int(ctx.trace_id, 16), int(ctx.span_id, 16), remote, TraceFlags(ctx.flags & 0xff), state)


def _from_otel(sc: SpanContext) -> Ctx:
    return Ctx(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", int(sc.trace_flags),
               sc.trace_state.to_header() if sc.trace_state else "")


def format_traceparent(ctx: Ctx) -> str:
    return f"00-{ctx.trace_id}-{ctx.span_id}-{ctx.flags & 0xff:02x}"


# version 00 is exactly this; a later version may append "-..." (W3C: parse what you know)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Ctx | None:
    """A W3C ``traceparent`` (version 00 and compatible later ones) or None."""
    if not value:
        return None
    if len(value) == 55 and value[2] == "-" and value[35] == "-" and value[52] == "-":
        # The common form (every header we write), checked without the regex:
        # it costs a few microseconds a message in situ.
        version, tid, sid, flags = value[:2], value[3:35], value[36:52], value[53:]
        if (version + tid + sid + flags).strip(_HEX) or version == "ff" or tid == _ZERO_TRACE or sid == _ZERO_SPAN:
            return None
        return Ctx(tid, sid, int(flags, 16), tracestate or "")
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version, tid, sid, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or tid == _ZERO_TRACE or sid == _ZERO_SPAN:
        return None
    return Ctx(tid, sid, int(flags, 16), tracestate or "")


_HEX = "0123456789abcdef"


# The current span when it is one of ours that only our code runs under
# (process, step); None defers to OpenTelemetry's context, where the spans
# that foreign code runs under (execute_tool, chat) and anyone else's spans are.
_CUR: contextvars.ContextVar[Ctx | None] = contextvars.ContextVar("agentstream_span", default=None)


def _current() -> Ctx | None:
    cur = _CUR.get()
    if cur is not None:
        return cur
    sc = trace_api.get_current_span().get_span_context()
    return _from_otel(sc) if sc.is_valid else None


# --------------------------------------------------------------------------- task info (for child spans and logs)


@dataclass(frozen=True, slots=True)
class _TaskInfo:
    agent: str
    task_id: str
    tenant: str
    user: str
    conversation: str


_TASK: contextvars.ContextVar[_TaskInfo | None] = contextvars.ContextVar("agentstream_task", default=None)
