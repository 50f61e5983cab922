"""Reading a stream's history with a consumer that lives for one call: the
views (trace, stats, dashboard) and bucket listings use it."""

from __future__ import annotations

import contextlib
import datetime
import time
import uuid
from dataclasses import dataclass

import nats.errors
import nats.js.errors as jse
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentstream.contracts import subjects

MAX_SCAN = 200_000  # messages read by one scan, at most
SCAN_TIMEOUT_S = 30.0  # wall-clock bound of one scan
FETCH_BATCH = 512
FETCH_WAIT_S = 2.0
RESULTS_STREAM = "RESULTS"


@dataclass(frozen=True)
class Raw:
    seq: int
    time: float  # stream timestamp, epoch seconds
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


async def last_seq(js: JetStreamContext, stream: str) -> int | None:
    """The stream's last sequence now, or None if the stream does not exist."""
    try:
        info = await js.stream_info(stream)
    except jse.NotFoundError:
        return None
    return int(info.state.last_seq or 0)


async def scan(js: JetStreamContext, stream: str, subject: str, *, start_time: float | None = None,
               start_seq: int | None = None, limit: int = MAX_SCAN,
               timeout: float = SCAN_TIMEOUT_S, last_per_subject: bool = False,
               last: int | None = None) -> list[Raw]:
    """Messages of ``stream`` matching ``subject``, oldest first, from ``start_time``
    (epoch seconds) or ``start_seq`` (else from the start), up to the stream's last
    sequence at call time. Bounded by ``limit`` messages and ``timeout`` seconds.
    With ``last_per_subject``, only the newest message of each subject (a KV
    bucket's current entries). A missing stream reads as empty. ``last``: the
    stream's last sequence if the caller has just read it (else read here).

    The consumer is created for this scan and deleted before it returns, so a
    caller may scan as often as it likes; nats-py's ordered consumers (what
    ``KeyValue.keys()`` uses) linger on the server for minutes and a periodic
    caller exhausts the server's consumer limit (err 10026)."""
    if last is None:
        last = await last_seq(js, stream)
    if not last:
        return []
    cfg = ConsumerConfig(
        name=f"agentstream-scan-{uuid.uuid4().hex[:12]}", ack_policy=AckPolicy.NONE, filter_subject=subject,
        inactive_threshold=30.0, mem_storage=True, num_replicas=1, max_deliver=1)
    if last_per_subject:
        cfg.deliver_policy = DeliverPolicy.LAST_PER_SUBJECT
    elif start_time is not None:
        cfg.deliver_policy = DeliverPolicy.BY_START_TIME
        cfg.opt_start_time = datetime.datetime.fromtimestamp(max(0.0, start_time), tz=datetime.UTC)
    elif start_seq is not None:
        cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        cfg.opt_start_seq = max(1, start_seq)
    else:
        cfg.deliver_policy = DeliverPolicy.ALL
    name = str(cfg.name)
    try:
        info = await js.add_consumer(stream, config=cfg)
    except jse.NotFoundError:
        return []
    out: list[Raw] = []
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    try:
        pending = min(int(info.num_pending or 0), limit)
        deadline = time.monotonic() + timeout
        while len(out) < pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msgs = await sub.fetch(batch=min(FETCH_BATCH, pending - len(out)),
                                       timeout=max(0.1, min(FETCH_WAIT_S, left)))
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            done = False
            for m in msgs:
                md = m.metadata
                seq = int(md.sequence.stream)
                if seq > last:
                    done = True
                    break
                ts = md.timestamp.timestamp() if md.timestamp is not None else 0.0
                out.append(Raw(seq, ts, m.subject, m.data, m.headers))
                if seq >= last or len(out) >= pending:
                    done = True
                    break
            if done:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    return out


async def stored_result(js: JetStreamContext, task_id: str, *, direct: bool = False) -> bytes | None:
    """The stored result message of a task (any agent), None if there is none.
    Errors of the lookup (stream missing, timeouts) propagate to the caller."""
    info = await js.stream_info(RESULTS_STREAM, subjects_filter=subjects.any_results(task_id))
    found = list((info.state.subjects or {}).keys())
    if not found:
        return None
    raw = await js.get_last_msg(RESULTS_STREAM, found[0], direct=direct)
    return raw.data
