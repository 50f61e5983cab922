"""What each store holds and one-off purges by age, over JetStream's API: the
adapter behind ``agentstream admin storage`` and ``agentstream admin purge``.

A purge never removes what the runtime still needs:
- in a stream, nothing at or after the oldest message a durable consumer has
  not acknowledged (an unprocessed task, tool call or tool result stays,
  whatever its age; the consumer holding it back is named);
- in a bucket, only keys whose last write is older than the cutoff, and never
  a running task's session, a pending approval, a live timer or a breaker.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import nats.js.errors as jse
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy

from agentstream.contracts import subjects
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.core.errors import BrokerUnavailable
from agentstream.runtime.core.policy import decode_record
from agentstream.runtime.core.state import decode_state

API_TIMEOUT_S = 10.0
# Keys read by one bucket purge, at most: a bucket with more is purged in
# several runs (the output says how many keys it looked at).
MAX_KEYS = 1_000_000


@dataclass(frozen=True)
class StoreStats:
    name: str  # as operators name it: the stream, or the bucket (stream KV_<bucket>)
    kind: str  # "stream" | "bucket"
    stream: str
    exists: bool
    messages: int = 0
    bytes: int = 0
    max_bytes: int = -1
    max_age_s: float = 0.0
    discard: str = ""
    compression: str = ""
    oldest_ts: float | None = None  # epoch seconds of the oldest message; None when empty
    subjects: int = 0
    consumers: int = 0

    def as_json(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PurgeResult:
    name: str
    removed: int
    bytes_before: int
    bytes_after: int
    # why some old messages stayed: a consumer that has not acknowledged them,
    # the keys kept as live state, or why the store was not touched at all
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"store": self.name, "removed": self.removed, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "note": self.note}


def _stores() -> list[tuple[str, str, str]]:
    return ([(sd.name, "stream", sd.name) for sd in subjects.STREAMS]
            + [(bd.name, "bucket", bd.stream) for bd in subjects.BUCKETS]
            + [(bd.name, "objects" if bd.objects else "bucket", bd.stream)
               for bd in (subjects.PAYLOADS, *subjects.MEMORY_BUCKETS)])


def _listed() -> list[tuple[str, str, str]]:
    """What ``admin storage`` shows: every purgeable store, plus the agent
    replicas' heartbeats, shown, not purged: they expire by themselves within seconds."""
    return [*_stores(), (subjects.REPLICAS.name, "bucket", subjects.REPLICAS.stream)]


def stream_of_store(name: str) -> str:
    for store, _, stream in _stores():
        if store == name:
            return stream
    raise ValueError(f"unknown store {name!r}: use one of {', '.join(subjects.store_names())}")


async def _api(nc: NatsClient, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        msg = await nc.request(f"$JS.API.{subject}", json.dumps(body).encode() if body else b"",
                               timeout=API_TIMEOUT_S)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise BrokerUnavailable(f"JetStream did not answer {subject}: {exc or type(exc).__name__}") from None
    out: dict[str, Any] = json.loads(msg.data)
    return out


def _ts(text: str | None) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    # RFC 3339 with nanoseconds: Python takes at most microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    stamp = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC).timestamp()
    return stamp + (float(f"0.{frac}") if frac else 0.0)


async def stats(nc: NatsClient) -> list[StoreStats]:
    """Every store the protocol defines, in definition order; one missing on
    the server (never provisioned) has ``exists`` False."""
    out: list[StoreStats] = []
    for name, kind, stream in _listed():
        resp = await _api(nc, f"STREAM.INFO.{stream}")
        if "error" in resp:
            if resp["error"].get("code") == 404:
                out.append(StoreStats(name=name, kind=kind, stream=stream, exists=False))
                continue
            raise BrokerUnavailable(f"stream info {stream}: {resp['error'].get('description')}")
        cfg, st = resp.get("config", {}), resp.get("state", {})
        out.append(StoreStats(
            name=name, kind=kind, stream=stream, exists=True, messages=int(st.get("messages", 0)),
            bytes=int(st.get("bytes", 0)), max_bytes=int(cfg.get("max_bytes", -1)),
            max_age_s=int(cfg.get("max_age", 0)) / 1e9, discard=str(cfg.get("discard", "")),
            compression=str(cfg.get("compression", "none")),
            oldest_ts=_ts(st.get("first_ts")) if st.get("messages") else None,
            subjects=int(st.get("num_subjects", 0)), consumers=int(st.get("consumer_count", 0))))
    return out


async def _first_seq_at(nc: NatsClient, stream: str, cutoff: float) -> int | None:
    """Sequence of the first message stored at or after ``cutoff``; None if none is."""
    when = datetime.datetime.fromtimestamp(cutoff, tz=datetime.UTC).isoformat()
    resp = await _api(nc, f"STREAM.MSG.GET.{stream}", {"start_time": when})
    if "error" in resp:
        if resp["error"].get("code") == 404:
            return None
        raise BrokerUnavailable(f"message lookup in {stream}: {resp['error'].get('description')}")
    return int(resp["message"]["seq"])


async def _unacked_floor(js: JetStreamContext, stream: str) -> tuple[int | None, str]:
    """The lowest stream sequence some durable consumer has not acknowledged
    (everything before it is acknowledged by every consumer), and that consumer."""
    floor: int | None = None
    holder = ""
    for ci in await js.consumers_info(stream):
        if ci.config.ack_policy == AckPolicy.NONE:
            continue  # views' and watchers' short-lived readers: nothing to lose
        if not ci.num_pending and not ci.num_ack_pending:
            # Nothing outstanding. Its ack floor may be far behind: a filtered
            # consumer (one agent's tasks) moves it only when it acks its own.
            continue
        first = int(ci.ack_floor.stream_seq if ci.ack_floor else 0) + 1
        if floor is None or first < floor:
            floor, holder = first, str(ci.name)
    return floor, holder


# Work subjects with few distinct values (one per agent, one per tool): each
# must have a durable consumer reading it before anything of the stream is
# trimmed, or tasks submitted for an agent not yet deployed would go. (An
# inbox event exists only once its agent ran the task, so its consumer too.)
_WORK_SUBJECTS = {"TASKS": "agents.*.tasks", "TOOLS": "tools.*.calls"}


async def _unread_subject(js: JetStreamContext, stream: str, filters: list[str]) -> str:
    """A work subject of ``stream`` holding messages no durable consumer reads ("" if none)."""
    pattern = _WORK_SUBJECTS.get(stream)
    if pattern is None:
        return ""
    info = await js.stream_info(stream, subjects_filter=pattern)
    for subject in (info.state.subjects or {}):
        if not any(subjects.matches(f, subject) for f in filters):
            return subject
    return ""


async def trim_acknowledged(js: JetStreamContext, stream: str, *, high: float = 0.9,
                            low: float = 0.7) -> tuple[int, str]:
    """When ``stream`` holds more than ``high`` of its byte limit, delete its
    oldest messages down to about ``low``, but only ones every durable consumer
    has acknowledged, and nothing while some agent's or tool's messages have
    no consumer at all. Returns (messages deleted, what held back more, if
    anything did). For a discard-new stream this keeps "full" meaning "full
    of unprocessed work"."""
    info = await js.stream_info(stream)
    limit, st = int(info.config.max_bytes or -1), info.state
    if limit <= 0 or not st.messages or st.bytes < high * limit:
        return 0, ""
    filters = [f for ci in await js.consumers_info(stream) if ci.config.ack_policy != AckPolicy.NONE
               for f in (ci.config.filter_subjects or [ci.config.filter_subject or ">"])]
    unread = await _unread_subject(js, stream, filters)
    if unread:
        return 0, f"no consumer for {unread}"
    # Oldest first, as many as bring it to `low`; a stream's messages are of
    # similar size, and an estimate is enough for a safety margin.
    drop = math.ceil(st.messages * (st.bytes - low * limit) / st.bytes)
    upto = int(st.first_seq) + drop
    floor, holder = await _unacked_floor(js, stream)
    held = ""
    if floor is not None and floor < upto:
        upto, held = floor, f"consumer {holder}"
    if upto <= int(st.first_seq):
        return 0, held
    await js.purge_stream(stream, seq=upto)
    return upto - int(st.first_seq), held


async def _bytes(js: JetStreamContext, stream: str) -> tuple[int, int]:
    st = (await js.stream_info(stream)).state
    return int(st.bytes), int(st.last_seq)


async def purge_stream(nc: NatsClient, js: JetStreamContext, name: str, cutoff: float) -> PurgeResult:
    """Remove the messages of stream ``name`` stored before ``cutoff`` (epoch s)
    that every durable consumer has acknowledged."""
    before, last = await _bytes(js, name)
    first_new = await _first_seq_at(nc, name, cutoff)
    upto = (last + 1) if first_new is None else first_new
    floor, holder = await _unacked_floor(js, name)
    note = ""
    if floor is not None and floor < upto:
        upto = floor
        note = f"older messages not yet acknowledged by consumer {holder} kept"
    info = await js.stream_info(name)
    count_before = int(info.state.messages)
    if upto > int(info.state.first_seq or 0):
        await js.purge_stream(name, seq=upto)
    info = await js.stream_info(name)
    return PurgeResult(name=name, removed=count_before - int(info.state.messages), bytes_before=before,
                       bytes_after=int(info.state.bytes), note=note)


def _session_live(raw: bytes) -> bool:
    try:
        return not decode_state(raw).terminal
    except (msgspec.DecodeError, msgspec.ValidationError):
        return True  # unreadable (a newer version's?): not ours to judge, keep it


def _approval_pending(raw: bytes) -> bool:
    try:
        return decode_record(raw).status == "pending"
    except (msgspec.DecodeError, msgspec.ValidationError):
        return True


# Keys of these buckets are kept, whatever their age, when the rule says so.
_KEEP: dict[str, Callable[[bytes], bool]] = {
    subjects.SESSIONS.name: _session_live,
    subjects.APPROVALS.name: _approval_pending,
}
# Live state only: a timer or a breaker is never old, it is current.
_NEVER = {subjects.DEADLINES.name: "live task timers", subjects.TOOL_BREAKERS.name: "live circuit-breaker state"}


async def purge_bucket(js: JetStreamContext, name: str, cutoff: float) -> PurgeResult:
    """Remove the keys of bucket ``name`` last written before ``cutoff``, but
    not live state (running sessions, pending approvals; timers and breakers
    are never purged by age)."""
    stream = stream_of_store(name)
    before, last = await _bytes(js, stream)
    if name in _NEVER:
        return PurgeResult(name=name, removed=0, bytes_before=before, bytes_after=before,
                           note=f"not purged by age: {_NEVER[name]}")
    keep = _KEEP.get(name)
    entries = await scan(js, stream, f"$KV.{name}.>", last_per_subject=True, limit=MAX_KEYS, last=last,
                         timeout=120.0)
    removed = kept = 0
    for raw in entries:
        if raw.time >= cutoff:
            continue
        marker = bool(raw.headers and raw.headers.get("KV-Operation") in ("DEL", "PURGE"))
        if not marker and keep is not None and keep(raw.data):
            kept += 1
            continue
        try:
            await js.purge_stream(stream, subject=raw.subject)
        except jse.NotFoundError:
            continue
        removed += 1
    after, _ = await _bytes(js, stream)
    note = f"{kept} old key(s) kept as live state" if kept else ""
    if len(entries) >= MAX_KEYS:
        note = (note + "; " if note else "") + f"looked at the first {MAX_KEYS:,} keys only: run again"
    return PurgeResult(name=name, removed=removed, bytes_before=before, bytes_after=after, note=note)


async def purge(nc: NatsClient, js: JetStreamContext, name: str, cutoff: float) -> PurgeResult:
    stream = stream_of_store(name)
    try:
        await js.stream_info(stream)
    except jse.NotFoundError:
        return PurgeResult(name=name, removed=0, bytes_before=0, bytes_after=0, note="does not exist")
    if stream == name:
        return await purge_stream(nc, js, name, cutoff)
    if stream.startswith("OBJ_"):
        # Objects are claim-checked inputs and results a running task may still
        # read, and one object is many chunk messages: its age limit removes them.
        before, _ = await _bytes(js, stream)
        return PurgeResult(name=name, removed=0, bytes_before=before, bytes_after=before,
                           note="not purged by age: claim-checked payloads of tasks that may still run")
    return await purge_bucket(js, name, cutoff)
