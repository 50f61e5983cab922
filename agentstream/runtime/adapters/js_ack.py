"""JetStream publishes that wait for their ack, multiplexed on one reply
subscription per connection.

nats-py's ``js.publish`` is a ``Client.request``: per publish it draws two
random bytes from the OS (``secrets.token_hex``), wraps the wait in
``asyncio.wait_for``, and parses the ack with the standard ``json`` module into
a dataclass. On the W1 hot path (about twenty acknowledged writes a task) that
was a fifth of the worker's CPU (bench/README.md, W1). Here a request token is
a counter, the timeout one timer handle, and the ack a msgspec Struct decoded
by a decoder made once. What goes on the wire is the same: the same subject,
headers and payload, a reply subject under the connection's own inbox prefix
(so per-role inbox permissions hold).

Errors are nats-py's own exception classes, raised as ``js.publish`` raises
them (``APIError.from_error`` for an error answer, ``NoStreamResponseError``
for no responders, ``nats.errors.TimeoutError``), so every caller's error
translation stays as it was.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any, cast

import msgspec
import nats.errors
import nats.js.errors as jse
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger("agentstream.nats")

_STATUS = "Status"
_NO_RESPONDERS = "503"


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str | None = None


class Ack(msgspec.Struct):
    """A publish ack or an error answer (JetStream sends one or the other)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


class _Purged(msgspec.Struct):
    success: bool = False
    purged: int = 0
    error: _ApiError | None = None


class _PurgeRequest(msgspec.Struct, omit_defaults=True):
    filter: str = ""


_ack_decoder = msgspec.json.Decoder(Ack)
_purged_decoder = msgspec.json.Decoder(_Purged)
_encoder = msgspec.json.Encoder()


def raise_api_error(err: _ApiError) -> None:
    # from_error raises the class for the code (BadRequestError, NotFoundError, ...).
    jse.APIError.from_error({"code": err.code, "err_code": err.err_code, "description": err.description})


class AckRequests:
    """Requests on one connection whose answers come back on one wildcard
    subscription under the connection's inbox prefix. One instance per
    connection (:func:`for_connection`)."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._prefix_len = 0
        self._lock = asyncio.Lock()

    async def _start(self) -> None:
        nc = self.nc
        # A fresh NUID under the connection's inbox prefix: unique per
        # connection, inside the inbox subjects the role may subscribe to.
        prefix = f"{bytes(nc._inbox_prefix).decode()}.{nc._nuid.next().decode()}."
        self._prefix_len = len(prefix)  # _route reads it as soon as the subscription exists
        await subscribe_inline(nc, prefix + "*", self._route)
        self._prefix = prefix

    async def _ensure(self) -> None:
        async with self._lock:
            if not self._prefix:
                await self._start()

    def _route(self, msg: Msg) -> None:
        fut = self._pending.pop(msg.subject[self._prefix_len:], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def request(self, subject: str, payload: bytes, *, headers: dict[str, str] | None = None,
                      timeout: float = 5.0) -> Msg:
        """One request, its answer (nats-py's errors as ``Client.request`` raises them)."""
        if not self._prefix:
            await self._ensure()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = fut
        timer = loop.call_later(timeout, _expire, fut)
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await fut
        finally:
            timer.cancel()
            self._pending.pop(token, None)
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def publish(self, subject: str, payload: bytes, *, headers: dict[str, str] | None = None,
                      timeout: float = 5.0) -> Ack:
        """A JetStream publish; returns its ack: the stream sequence it was
        stored at (for a duplicate, the first copy's) and whether it was one."""
        try:
            msg = await self.request(subject, payload, headers=headers, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise jse.NoStreamResponseError from None
        ack = _ack_decoder.decode(msg.data)
        if ack.error is not None:
            raise_api_error(ack.error)
        return ack

    async def purge(self, api_subject: str, subject: str, *, timeout: float = 5.0) -> int:
        """A stream purge of one subject's messages (``api_subject``: the
        stream's ``$JS.API.STREAM.PURGE.<stream>``); returns how many went.
        Errors as nats-py's ``purge_stream`` raises them."""
        try:
            msg = await self.request(api_subject, _encoder.encode(_PurgeRequest(filter=subject)), timeout=timeout)
        except nats.errors.NoRespondersError:
            raise jse.ServiceUnavailableError from None
        answer = _purged_decoder.decode(msg.data)
        if answer.error is not None:
            raise_api_error(answer.error)
        return answer.purged

    async def direct_last(self, api_prefix: str, stream: str, subject: str, *, timeout: float = 5.0) -> bytes | None:
        """The body of ``subject``'s last message in ``stream`` by a direct
        get (None: there is none), as nats-py's ``get_last_msg(direct=True)``."""
        msg = await self.request(f"{api_prefix}.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout)
        if not msg.data:
            status = msg.headers.get(_STATUS) if msg.headers else None
            if status and status != "404":
                raise jse.APIError.from_msg(msg)
            return None
        return msg.data


class _Dispatch:
    """Given to ``nc.subscribe(..., future=)`` in place of the one-shot future
    nats-py's old-style requests use: nats-py then hands each message to
    ``set_result`` straight from its read loop (and, since it is never done or
    cancelled, keeps the subscription), instead of queueing it for a callback
    task: per message one queue put, one get and one task switch less."""

    __slots__ = ("_handle",)

    def __init__(self, handle: Callable[[Msg], None]) -> None:
        self._handle = handle

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        try:
            self._handle(msg)
        except Exception:  # noqa: BLE001 - raised here it would end the connection's read loop
            log.exception("handling a message on %s failed", msg.subject)


async def subscribe_inline(nc: NatsClient, subject: str, handle: Callable[[Msg], None]) -> Subscription:
    """A subscription whose messages go to ``handle`` synchronously, from the
    connection's read loop (see ``_Dispatch``). ``handle`` must be quick and
    not block: the connection reads nothing else meanwhile."""
    return await nc.subscribe(subject, future=cast("asyncio.Future[Msg]", _Dispatch(handle)))


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(nats.errors.TimeoutError())


def for_connection(nc: NatsClient) -> AckRequests:
    """The connection's multiplexer, made on first use."""
    mux: AckRequests | None = getattr(nc, "_agentstream_acks", None)
    if mux is None:
        mux = AckRequests(nc)
        nc._agentstream_acks = mux  # type: ignore[attr-defined]
    return mux
