"""Thin nats-py adapters for the ports, translating library errors into ours."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import nats.errors
import nats.js.errors as jse
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
    SubjectTransform,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from agentstream.contracts import subjects
from agentstream.runtime.adapters import js_ack
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.config.auth import NatsAuth, inbox_prefix
from agentstream.runtime.core.errors import BrokerUnavailable, ConfigError, Conflict, PayloadTooLarge, StoreFull
from agentstream.runtime.core.ports import Entry

MSG_ID = "Nats-Msg-Id"
# JetStream's "wrong last sequence" (10071; 10164 its constant form): a
# compare-and-set lost to another write.
_WRONG_LAST = (10071, 10164)
_KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]+")


def _key_ok(key: str) -> bool:
    """A key nats-py's KeyValue would accept (no wildcards, spaces or empty tokens at the ends)."""
    return bool(key) and key[0] != "." and key[-1] != "." and _KEY_RE.fullmatch(key) is not None
log = logging.getLogger("agentstream.storage")

# JetStream's answers when there is no room: 10077 a stream refused a message
# (its max_bytes / max_msgs reached, discard new), 10047 / 10023 the server's
# storage is exhausted (a reservation or the disk itself).
_FULL_CODES = frozenset({10077, 10047, 10023})


def store_full(exc: BaseException, store: str) -> StoreFull | None:
    """``exc`` as a StoreFull naming ``store`` and what to do, or None if it is
    some other error."""
    if not (isinstance(exc, jse.APIError) and exc.err_code in _FULL_CODES):
        return None
    what = exc.description or "no room"
    fix = (f"raise its limit (AGENTSTREAM_STORE_LIMITS={store}=SIZE) or make room "
           f"(agentstream admin purge --older-than DURATION --store {store})") if store else \
        "free disk space on the NATS server or lower AGENTSTREAM_STORE_LIMITS"
    return StoreFull(store, f"{store or 'JetStream storage'} is full ({what}): new messages are refused; {fix}")


class NatsBus:
    """Publishes to JetStream. ``wait_when_full``: a worker's bus waits for room
    when a store is full (the message it is handling stays in progress, so
    nothing is lost and the step finishes once space returns); a submitter's
    bus raises StoreFull at once, for its caller to see."""

    full_backoff_max_s = 2.0

    def __init__(self, js: JetStreamContext, *, timeout_s: float = 10.0, wait_when_full: bool = False) -> None:
        self.js = js
        self.timeout_s = timeout_s
        self.wait_when_full = wait_when_full
        self._full_logged = float("-inf")
        self._acks = js_ack.for_connection(js._nc)

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        hdrs = dict(headers) if headers else {}
        if msg_id:
            hdrs[MSG_ID] = msg_id
        delay = 0.05
        while True:
            try:
                await self._acks.publish(subject, payload, headers=hdrs or None, timeout=self.timeout_s)
                return
            except nats.errors.MaxPayloadError as exc:
                raise PayloadTooLarge(f"{len(payload)} bytes to {subject} exceed the broker's max payload") from exc
            except Exception as exc:  # noqa: BLE001 - sorted below: full, broker away, or not ours
                full = store_full(exc, subjects.stream_of(subject))
                if full is None:
                    if isinstance(exc, BROKER_ERRORS):
                        # A timeout may hide a publish the stream did store: a retry with
                        # the same msg id is deduplicated, so callers may simply retry.
                        raise BrokerUnavailable(f"cannot publish to {subject}: {type(exc).__name__}: {exc}") from exc
                    raise
                if not self.wait_when_full:
                    raise full from None
            # Full: wait for room. Cancellation (shutdown) ends the wait; the
            # message being handled stays unacknowledged and is redelivered.
            now = time.monotonic()
            if now - self._full_logged >= 10.0:  # one warning every 10 s, not one per waiting publish
                self._full_logged = now
                log.warning("%s; waiting for room", full)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.full_backoff_max_s)


class NatsKV:
    """``SessionStore`` over a JetStream KV bucket; every write is compare-and-set."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, name: str) -> None:
        self.kv = kv
        self.js = js
        self.name = name
        # Writes go through the connection's ack multiplexer (js_ack), not
        # nats-py's KeyValue methods: the same messages, less CPU a write.
        self._acks = js_ack.for_connection(js._nc)
        self._pre: str = getattr(kv, "_pre", None) or f"$KV.{name}."
        self._timeout = float(getattr(js, "_timeout", 5.0))

    def _subject(self, key: str) -> str:
        if not _key_ok(key):
            raise jse.InvalidKeyError(key)
        return self._pre + key

    async def get(self, key: str) -> Entry | None:
        try:
            e = await self.kv.get(key)
        except (jse.KeyNotFoundError, jse.KeyDeletedError):
            return None
        if e.value is None or e.revision is None:
            return None
        return Entry(e.value, e.revision)

    async def _write(self, key: str, value: bytes, last: int | None, ttl_s: float | None = None) -> int:
        """One write; ``last`` set: only if the key's last revision is ``last``
        (0: the key must not exist), else KeyWrongLastSequenceError. ``ttl_s``:
        the message expires (Nats-TTL: whole seconds, at least 1; KV streams
        allow per-message TTLs, allow_msg_ttl)."""
        hdrs = None if last is None else {"Nats-Expected-Last-Subject-Sequence": str(last)}
        if ttl_s is not None:
            hdrs = {**(hdrs or {}), "Nats-TTL": str(int(max(1.0, float(round(ttl_s)))))}
        try:
            return (await self._acks.publish(self._subject(key), value, headers=hdrs, timeout=self._timeout)).seq
        except jse.APIError as exc:
            if last is not None and exc.err_code in _WRONG_LAST:
                raise jse.KeyWrongLastSequenceError(description=exc.description) from None
            raise

    async def create(self, key: str, value: bytes) -> int:
        try:
            try:
                return await self._write(key, value, 0)
            except jse.KeyWrongLastSequenceError:
                # Maybe only a delete marker is there (a key deleted by
                # another client): nats-py's create tells that case apart.
                return await self.kv.create(key, value)
        except (jse.KeyWrongLastSequenceError, jse.BadRequestError) as exc:
            raise Conflict(f"{key} already exists") from exc
        except jse.APIError as exc:
            raise (store_full(exc, self.name) or exc) from None

    async def update(self, key: str, value: bytes, revision: int) -> int:
        try:
            return await self._write(key, value, revision)
        except (jse.KeyWrongLastSequenceError, jse.BadRequestError) as exc:
            raise Conflict(f"{key} changed since revision {revision}") from exc
        except jse.APIError as exc:
            raise (store_full(exc, self.name) or exc) from None

    async def write_expiring(self, key: str, value: bytes, revision: int | None, ttl_s: float) -> int:
        # A KV write as update does it (revision None or 0: the key must not exist).
        try:
            return await self._write(key, value, revision or 0, ttl_s)
        except jse.KeyWrongLastSequenceError as exc:  # someone wrote first
            raise Conflict(f"{key} changed since revision {revision}") from exc
        except jse.APIError as exc:
            raise (store_full(exc, self.name) or exc) from None

    async def put(self, key: str, value: bytes) -> int:
        try:
            return await self._write(key, value, None)
        except jse.APIError as exc:
            raise (store_full(exc, self.name) or exc) from None

    async def delete(self, key: str) -> None:
        """Remove the key and leave nothing behind. A KV purge or delete leaves
        a marker message per key forever (no bucket here has watchers that need
        it): the deadlines bucket grew by one marker a task, and every replica's
        deadline sweep read all of them every few seconds (bench/soak.py)."""
        try:
            await self._acks.purge(f"{self.js._prefix}.STREAM.PURGE.KV_{self.name}", self._subject(key),
                                   timeout=self._timeout)
        except jse.NotFoundError:
            pass
        except jse.APIError as exc:
            raise (store_full(exc, self.name) or exc) from None

    async def keys(self) -> Sequence[str]:
        return [k for k, _ in await self.items()]

    async def items(self) -> list[tuple[str, Entry]]:
        """Every live key with its value, in one pass over the bucket; not
        ``KeyValue.keys()``, whose consumer outlives the call (see ``scan``)."""
        prefix = f"$KV.{self.name}."
        live: dict[str, Entry] = {}
        try:
            raws = await scan(self.js, f"KV_{self.name}", f"{prefix}>", last_per_subject=True)
        except (nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
            raise BrokerUnavailable(f"cannot list bucket {self.name}: {exc}") from exc
        for r in raws:
            if not (r.headers and r.headers.get("KV-Operation") in ("DEL", "PURGE")):
                live[r.subject[len(prefix):]] = Entry(r.data, r.seq)
        return sorted(live.items())


def event_reader(js: JetStreamContext, stream: str = "EVENTS") -> Callable[[int], Awaitable[tuple[str, bytes] | None]]:
    """Reads one message of ``stream`` by sequence: (subject, body), None if absent.
    The subject is the one the message was published on."""
    async def read(seq: int) -> tuple[str, bytes] | None:
        try:
            m = await js.get_msg(stream, seq, direct=True)
        except jse.NotFoundError:
            return None
        # EVENTS stores a partition in the subject: judged by the published one.
        return subjects.published(m.subject or ""), m.data or b""
    return read


class NatsBlobStore:
    """``BlobStore`` over a JetStream object store (chunked, so a blob may be
    larger than the broker's max payload)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def put(self, name: str, data: bytes) -> None:
        await self.store.put(name, data)

    async def get(self, name: str) -> bytes:
        try:
            res = await self.store.get(name)
        except jse.NotFoundError as exc:  # ObjectNotFoundError is one
            raise KeyError(name) from exc
        return bytes(res.data or b"")


async def blob_store(js: JetStreamContext, name: str = subjects.PAYLOADS.name) -> NatsBlobStore:
    return NatsBlobStore(await js.object_store(name))


# What a request may meet while the broker is away (down, restarting, without
# JetStream): for the HTTP API a 503, not a 500.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    BrokerUnavailable, ConnectionError, TimeoutError, nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError,
    jse.ServiceUnavailableError,
    # js.publish's "no responders": the stream has no leader (a node died, an election)
    jse.NoStreamResponseError)

_T = TypeVar("_T")


async def _once_visible(lookup: Callable[[], Awaitable[_T]], timeout: float = 10.0) -> _T:
    """``lookup()`` of a stream or bucket the server just refused to create
    because it exists. On a cluster it may be another replica's creation still
    in flight, not yet visible (NotFound): retry, bounded, until it is."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await lookup()
        except jse.NotFoundError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)


# JetStream errors a cluster gives while it is still forming (a node just
# started, the meta leader has not yet seen every peer) or briefly without a
# leader: retried, bounded, so replicas started together with their cluster
# (docker compose up) do not die at start-up.
_FORMING = {10005,  # no suitable peers for placement
            10008}  # JetStream system temporarily unavailable
_FORMING_TIMEOUT_S = 30.0


async def _creating(create: Callable[[], Awaitable[object]]) -> bool:
    """Run ``create()``; True if it created, False if the server refused because
    the asset exists (BadRequest other than a forming cluster)."""
    deadline = time.monotonic() + _FORMING_TIMEOUT_S
    while True:
        try:
            await create()
            return True
        except jse.APIError as exc:
            if not (exc.err_code in _FORMING or exc.code == 503):
                if isinstance(exc, jse.BadRequestError):
                    return False
                raise
            why = str(exc.description)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            # no meta leader yet: the API request goes unanswered. A create that
            # did land is 'exists' on the next attempt.
            why = str(exc)
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(f"JetStream cluster not ready after {_FORMING_TIMEOUT_S:g}s: {why}")
        await asyncio.sleep(0.25)


def stream_config(sd: subjects.StreamDef, *, replicas: int = 1, limits: Mapping[str, int] | None = None,
                  compression: str | None = None,
                  partitions: int = subjects.DEFAULT_INBOX_PARTITIONS) -> StreamConfig:
    """The JetStream config of a protocol stream: its definition, with the
    operator's byte limit (AGENTSTREAM_STORE_LIMITS) and compression override.
    EVENTS gets the transform that partitions it (``partitions``:
    AGENTSTREAM_INBOX_PARTITIONS; subjects.events_transform)."""
    transform = None
    if sd.name == subjects.EVENTS_STREAM:
        src, dest = subjects.events_transform(partitions)
        transform = SubjectTransform(src=src, dest=dest)
    return StreamConfig(
        subject_transform=transform,
        name=sd.name, subjects=list(sd.subjects), description=sd.description,
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, max_age=sd.max_age_s,
        num_replicas=replicas, duplicate_window=sd.duplicate_window_s,
        discard=DiscardPolicy.NEW if sd.discard == "new" else DiscardPolicy.OLD,
        max_bytes=(limits or {}).get(sd.name, sd.max_bytes),
        compression=_compression(sd.compress, compression),
        allow_direct=True,
    )


def _compression(default: bool, override: str | None) -> StoreCompression:
    on = default if override is None else override == "s2"
    return StoreCompression.S2 if on else StoreCompression.NONE


async def provision(js: JetStreamContext, replicas: int = 1, *, update: bool = True,
                    limits: Mapping[str, int] | None = None, compression: str | None = None,
                    partitions: int = subjects.DEFAULT_INBOX_PARTITIONS) -> None:
    """Create every stream and bucket the protocol needs. Idempotent.

    An existing stream keeps its replica count (a client provisioning with the
    default of 1 must never shrink a cluster's R3 streams); with ``update`` its
    subjects and limits (age, bytes, discard policy, compression) are brought
    up to date, buckets' byte limits and compression too. ``limits``: bytes per
    store name overriding the defaults; ``compression``: "s2" or "none" for
    every store instead of each one's own choice; ``partitions``: EVENTS'
    partition count when this call creates it (an existing EVENTS keeps its
    own: see :func:`events_partitions`).
    """
    try:
        await _provision(js, replicas, update, limits or {}, compression, partitions)
    except jse.APIError as exc:
        full = store_full(exc, "")
        if full is None:
            raise
        raise ConfigError(f"the NATS server has less JetStream storage than the stores' byte limits reserve "
                          f"({exc.description}): lower them with AGENTSTREAM_STORE_LIMITS "
                          f"(see `agentstream admin storage`) or give the server more (max_file_store)") from None


async def _provision(js: JetStreamContext, replicas: int, update: bool, limits: Mapping[str, int],
                     compression: str | None, partitions: int) -> None:
    for sd in subjects.STREAMS:
        if not update and await _exists(js, sd.name):
            continue  # a client's check: a role without create rights never asks to create
        cfg = stream_config(sd, replicas=replicas, limits=limits, compression=compression, partitions=partitions)
        if await _creating(functools.partial(js.add_stream, cfg)) or not update:
            continue
        existing = await _once_visible(functools.partial(js.stream_info, sd.name))
        cfg.num_replicas = existing.config.num_replicas
        if existing.config.subject_transform is not None and cfg.subject_transform is not None:
            # Its partition count stays: re-partitioning would strand the
            # events of running tasks in partitions nobody owns any more.
            cfg.subject_transform = existing.config.subject_transform
        if _drifted(existing.config, cfg):
            await js.update_stream(cfg)
    for bd in subjects.BUCKETS:
        if not update and await _exists(js, f"KV_{bd.name}"):
            continue
        max_bytes = limits.get(bd.name, bd.max_bytes)
        created = await _creating(functools.partial(js.create_key_value, KeyValueConfig(
            bucket=bd.name, description=bd.description, history=bd.history,
            ttl=bd.max_age_s or None, replicas=replicas, storage=StorageType.FILE,
            max_bytes=max_bytes,
            direct=True)))  # direct gets skip the JSON API: ~36% of handler time otherwise
        if not created:
            # exists with other settings (e.g. replicas): use it as it is
            await _once_visible(functools.partial(js.key_value, bd.name))
        # nats-py's KeyValueConfig has no compression: set it on the bucket's
        # stream, and bring a byte limit that drifted up to date, as for streams.
        if not created and not update:
            continue
        info = await _once_visible(functools.partial(js.stream_info, bd.stream))
        have = info.config
        want = _compression(bd.compress, compression)
        if ((have.compression or StoreCompression.NONE) != want or (have.max_bytes or -1) != max_bytes
                or not have.allow_msg_ttl):
            have.compression = want
            have.max_bytes = max_bytes
            # expiring finished sessions and delete markers (buckets made by an older nats-py lack it)
            have.allow_msg_ttl = True
            await js.update_stream(have)
    pd = subjects.PAYLOADS
    if not update and await _exists(js, f"OBJ_{pd.name}"):
        return
    created = await _creating(functools.partial(js.create_object_store, pd.name, ObjectStoreConfig(
        description=pd.description, ttl=pd.max_age_s, replicas=replicas, storage=StorageType.FILE,
        max_bytes=limits.get(pd.name, pd.max_bytes))))
    if not created:
        await _once_visible(functools.partial(js.object_store, pd.name))
    if update:
        # Buckets created by others (the object store above; the memory
        # service's, when it runs): their byte limits kept up to date.
        for od in (pd, *subjects.MEMORY_BUCKETS):
            await _update_limits(js, od, limits.get(od.name, od.max_bytes), _compression(od.compress, compression))


async def _update_limits(js: JetStreamContext, bd: subjects.BucketDef, max_bytes: int,
                         compression: StoreCompression) -> None:
    try:
        have = (await js.stream_info(bd.stream)).config
    except jse.NotFoundError:
        return  # not created (yet): whoever creates it sets its limit
    if (have.max_bytes or -1) != max_bytes or (have.compression or StoreCompression.NONE) != compression:
        have.max_bytes, have.compression = max_bytes, compression
        await js.update_stream(have)


async def _exists(js: JetStreamContext, stream: str) -> bool:
    try:
        await js.stream_info(stream)
    except jse.NotFoundError:
        return False
    return True


def _drifted(have: StreamConfig, want: StreamConfig) -> bool:
    """Whether a stream's subjects or limits differ from what the protocol
    defines now (an update of the package may change them)."""
    return (sorted(have.subjects or []) != sorted(want.subjects or [])
            or not _same_seconds(have.max_age, want.max_age)
            or not _same_seconds(have.duplicate_window, want.duplicate_window)
            or (have.max_bytes or -1) != (want.max_bytes or -1)
            or have.discard != want.discard
            or (have.compression or StoreCompression.NONE) != (want.compression or StoreCompression.NONE)
            or (have.subject_transform is None) != (want.subject_transform is None))


def _same_seconds(a: float | None, b: float | None) -> bool:
    # nats-py gives durations back as float seconds from nanoseconds
    return abs((a or 0.0) - (b or 0.0)) < 1e-3


async def events_partitions(js: JetStreamContext, *, replicas: int = 1) -> int:
    """EVENTS' partition count (provisioned before this is called), with the
    replicas' heartbeat bucket created if missing. The stream's own count
    wins over AGENTSTREAM_INBOX_PARTITIONS: replicas configured differently
    must still agree on which consumer a task's results are in."""
    info = await _once_visible(functools.partial(js.stream_info, subjects.EVENTS_STREAM))
    partitions = inbox_partitions(info.config)
    if partitions is None:
        raise ConfigError(f"stream {subjects.EVENTS_STREAM} is not partitioned (no subject transform "
                          f"{subjects.events_transform(subjects.DEFAULT_INBOX_PARTITIONS)[1]}): a worker of this "
                          f"version adds it when it starts (docs/scaling.md, 'Upgrading')")
    created = await _creating(functools.partial(js.create_key_value, KeyValueConfig(
        bucket=subjects.REPLICAS.name, description=subjects.REPLICAS.description, history=1,
        ttl=subjects.REPLICAS.max_age_s, replicas=replicas, storage=StorageType.FILE,
        max_bytes=subjects.REPLICAS.max_bytes, direct=True)))
    if not created:
        await _once_visible(functools.partial(js.key_value, subjects.REPLICAS.name))
    return partitions


_PARTITION_DEST = re.compile(r"\{\{\s*partition\((\d+)\s*,")


def inbox_partitions(cfg: StreamConfig) -> int | None:
    """The partition count in EVENTS' subject transform (None: none)."""
    tr = cfg.subject_transform
    m = _PARTITION_DEST.search(tr.dest or "") if tr is not None else None
    return int(m.group(1)) if m else None


class NatsMembership:
    """Live agent replicas, by heartbeat: each puts its key in
    ``subjects.REPLICAS`` every beat; the bucket's max age removes the key of
    one that stopped (killed, cut off). One stream-info request lists an
    agent's live members, with no consumer created per look."""

    def __init__(self, js: JetStreamContext, agent: str) -> None:
        self.js = js
        self.agent = agent
        self._prefix = f"$KV.{subjects.REPLICAS.name}.{agent}."

    async def beat(self, member: str) -> None:
        await self.js.publish(self._prefix + member, b"", timeout=5)

    async def leave(self, member: str) -> None:
        # A purge, not a KV delete: a delete marker would still list as a member.
        await self.js.purge_stream(subjects.REPLICAS.stream, subject=self._prefix + member)

    async def live(self) -> list[str]:
        info = await self.js.stream_info(subjects.REPLICAS.stream, subjects_filter=self._prefix + "*")
        return sorted(s[len(self._prefix):] for s in (info.state.subjects or {}))


async def bucket(js: JetStreamContext, name: str) -> NatsKV:
    # On a cluster a bucket just provisioned may not yet be visible from the
    # node this connection asks (seen: the last bucket of a fresh 3-node cluster).
    return NatsKV(await _once_visible(functools.partial(js.key_value, name)), js, name)


def auth_options(auth: NatsAuth | None) -> dict[str, Any]:
    """nats-py ``connect`` keyword arguments for ``auth`` (see config.auth)."""
    if auth is None:
        return {}
    opts: dict[str, Any] = {"inbox_prefix": inbox_prefix(auth.role)}
    if auth.creds_file:
        opts["user_credentials"] = auth.creds_file
    elif auth.nkey_seed_file:
        opts["nkeys_seed"] = auth.nkey_seed_file
    elif auth.user:
        opts["user"], opts["password"] = auth.user, auth.password
    elif auth.token:
        opts["token"] = auth.token
    if auth.tls_ca or auth.tls_cert:
        try:
            ctx = ssl.create_default_context(cafile=auth.tls_ca)
            if auth.tls_cert:
                ctx.load_cert_chain(auth.tls_cert, auth.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS files (AGENTSTREAM_NATS_CA/CERT/KEY) unusable: {exc}") from None
        opts["tls"] = ctx
    return opts


async def connect(url: str, *, name: str = "agentstream", connect_timeout: float = 5.0,
                  reconnect: bool = True, auth: NatsAuth | None = None) -> NatsClient:
    """Connect with bounded first-connect attempts so an unreachable broker is
    one clear error, not a hang. ``auth``: the role's credentials and TLS
    files; None, whatever the URL carries."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    opts = auth_options(auth)
    servers, userinfo = _split_userinfo(servers)
    if userinfo is not None and not any(k in opts for k in ("user_credentials", "nkeys_seed", "user", "token")):
        # As options, not in the URLs: nats-py uses a URL's credentials only for
        # that URL, and a server it discovers (a cluster's other nodes) would
        # get none; an authorization error there closes the client for good.
        opts["user"], opts["password"] = userinfo
    failures: list[str] = []

    async def _quiet(exc: Exception) -> None:
        # An authentication or permission error is the one worth telling apart.
        failures.append(str(exc) or type(exc).__name__)

    if not await _any_reachable(servers, connect_timeout):
        raise BrokerUnavailable(f"cannot reach NATS at {redact_url(url)}: connection refused or timed out")
    try:
        # nats-py keeps retrying the first connect while reconnects are allowed;
        # bound it so an unreachable broker is an error, not a hang.
        return await asyncio.wait_for(nats.connect(
            servers=servers, name=name, connect_timeout=connect_timeout,
            allow_reconnect=reconnect, max_reconnect_attempts=-1 if reconnect else 0,
            reconnect_time_wait=0.5, error_cb=_quiet, **opts), timeout=connect_timeout * 2)
    except TimeoutError:
        why = next((f for f in failures if "authoriz" in f.lower()), "")
        if why:
            raise BrokerUnavailable(f"NATS at {redact_url(url)} refused the credentials ({_method(auth)}): {why}") from None
        raise BrokerUnavailable(f"cannot reach NATS at {redact_url(url)} "
                                f"(no answer within {connect_timeout * 2:g}s)") from None
    except Exception as exc:  # nats-py raises several unrelated types here
        raise BrokerUnavailable(f"cannot reach NATS at {redact_url(url)}: {exc or type(exc).__name__}") from None


def _method(auth: NatsAuth | None) -> str:
    return auth.method if auth is not None else "from the URL"


def _split_userinfo(servers: list[str]) -> tuple[list[str], tuple[str, str] | None]:
    """The servers without ``user:password@``, and the first such pair."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    found: tuple[str, str] | None = None
    out: list[str] = []
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if parts.username is not None and parts.password is not None:
            found = found or (unquote(parts.username), unquote(parts.password))
            host = parts.hostname or ""
            netloc = f"[{host}]" if ":" in host else host
            if parts.port is not None:
                netloc += f":{parts.port}"
            server = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        out.append(server)
    return out, found


def redact_url(url: str) -> str:
    """The URL without a password, for messages and logs."""
    return ",".join(re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", u) for u in url.split(","))


async def _any_reachable(servers: list[str], timeout: float) -> bool:
    """A TCP probe: refused connections fail in milliseconds instead of after
    nats-py's retry loop."""
    from urllib.parse import urlparse

    for server in servers:
        parsed = urlparse(server if "://" in server else f"nats://{server}")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout=timeout)
        except (TimeoutError, OSError):
            continue
        writer.close()
        return True
    return False
