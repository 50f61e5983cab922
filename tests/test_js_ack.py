"""The ack multiplexer (adapters/js_ack) against a real nats-server: it must
answer exactly as nats-py's ``js.publish`` / ``purge_stream`` / direct get do,
because every caller's error translation (Conflict, StoreFull,
BrokerUnavailable) was written against those."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import nats.errors
import nats.js.errors as jse
import pytest
from conftest import until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StreamConfig

from agentstream.contracts import subjects
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters import js_ack
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.auth import NatsAuth, Role
from agentstream.runtime.core.errors import BrokerUnavailable, Conflict, StoreFull
from agentstream.runtime.interfaces.client import AgentClient


async def test_acks_carry_the_sequence_and_the_duplicate_flag(client: AgentClient) -> None:
    mux = js_ack.for_connection(client.nc)
    assert js_ack.for_connection(client.nc) is mux  # one per connection
    subject = subjects.results("w", "t1")
    first = await mux.publish(subject, b"{}", headers={"Nats-Msg-Id": "t1:result"})
    again = await mux.publish(subject, b"{}", headers={"Nats-Msg-Id": "t1:result"})
    other = await mux.publish(subjects.results("w", "t2"), b"{}", headers={"Nats-Msg-Id": "t2:result"})
    assert first.stream == "RESULTS" and not first.duplicate
    assert again.duplicate and again.seq == first.seq
    assert other.seq == first.seq + 1
    stored = await client.js.get_msg("RESULTS", first.seq)
    assert stored.subject == subject and stored.data == b"{}"


async def test_a_subject_no_stream_takes_is_no_stream_response(client: AgentClient) -> None:
    mux = js_ack.for_connection(client.nc)
    with pytest.raises(jse.NoStreamResponseError):
        await mux.publish("nobody.listens.here", b"x", timeout=5)
    # The NatsBus over it says "broker unavailable", as it did over js.publish.
    with pytest.raises(BrokerUnavailable):
        await nats_adapters.NatsBus(client.js).publish("nobody.listens.here", b"x")


async def test_an_unanswered_request_times_out_and_is_forgotten(client: AgentClient) -> None:
    # A core subscriber that never answers stands for a stream whose ack is lost.
    sub = await client.nc.subscribe("silent.requests")
    mux = js_ack.for_connection(client.nc)
    with pytest.raises(nats.errors.TimeoutError):
        await mux.publish("silent.requests", b"x", timeout=0.2)
    assert not mux._pending
    await sub.unsubscribe()


async def test_error_answers_are_nats_py_errors(client: AgentClient) -> None:
    """A stream refusing a message (full, discard new) answers with an error:
    raised as nats-py's APIError with JetStream's err_code, which NatsBus turns
    into StoreFull."""
    await client.js.add_stream(StreamConfig(name="TINY", subjects=["tiny.>"], max_msgs=1,
                                            discard=DiscardPolicy.NEW))
    mux = js_ack.for_connection(client.nc)
    await mux.publish("tiny.a", b"1")
    with pytest.raises(jse.APIError) as err:
        await mux.publish("tiny.b", b"2")
    assert err.value.err_code == 10077
    with pytest.raises(StoreFull):
        await nats_adapters.NatsBus(client.js).publish("tiny.c", b"3")


async def test_kv_compare_and_set_through_the_multiplexer(client: AgentClient) -> None:
    kv = await nats_adapters.bucket(client.js, subjects.SESSIONS.name)
    rev = await kv.create("task-1", b"a")
    with pytest.raises(Conflict):
        await kv.create("task-1", b"again")
    rev2 = await kv.update("task-1", b"b", rev)
    with pytest.raises(Conflict):
        await kv.update("task-1", b"stale", rev)
    entry = await kv.get("task-1")
    assert entry is not None and entry.value == b"b" and entry.revision == rev2
    assert await kv.put("task-1", b"c") > rev2
    await kv.delete("task-1")
    assert await kv.get("task-1") is None
    await kv.delete("task-1")  # deleting what is gone is fine
    # The key is free again, and no marker was left behind.
    assert await kv.create("task-1", b"d") > 0
    info = await client.js.stream_info(f"KV_{subjects.SESSIONS.name}")
    assert info.state.messages == 1
    with pytest.raises(jse.InvalidKeyError):
        await kv.put("a*b", b"x")


async def test_create_over_a_delete_marker_succeeds(client: AgentClient) -> None:
    """A key deleted with nats-py's KeyValue.delete (a marker) may be created
    again, as nats-py's create allows."""
    kv = await nats_adapters.bucket(client.js, subjects.SESSIONS.name)
    await kv.create("k", b"1")
    await kv.kv.delete("k")
    assert await kv.create("k", b"2") > 0
    entry = await kv.get("k")
    assert entry is not None and entry.value == b"2"


async def test_direct_get_of_a_stored_result(client: AgentClient) -> None:
    mux = js_ack.for_connection(client.nc)
    assert await mux.direct_last(client.js._prefix, "RESULTS", subjects.results("w", "none")) is None
    await client.js.publish(subjects.results("w", "r1"), b'{"v":1}')
    await client.js.publish(subjects.results("w", "r1"), b'{"v":2}')
    assert await mux.direct_last(client.js._prefix, "RESULTS", subjects.results("w", "r1")) == b'{"v":2}'


async def test_restricted_roles_get_their_answers(nats_server: EmbeddedNats,
                                                  role_auth: Callable[[Role], NatsAuth]) -> None:
    """Replies come back under the role's own inbox prefix, which is all a
    restricted role may subscribe to: a wrong prefix would be a permissions
    violation, and every write would time out."""
    nc = await nats_adapters.connect(nats_server.plain_url, auth=role_auth("worker"))
    admin = await nats.connect(nats_server.url)
    try:
        await nats_adapters.provision(admin.jetstream(), update=False)
        kv = await nats_adapters.bucket(nc.jetstream(), subjects.SESSIONS.name)
        rev = await asyncio.wait_for(kv.create("role-task", b"x"), timeout=10)
        assert await asyncio.wait_for(kv.update("role-task", b"y", rev), timeout=10) > rev
        await asyncio.wait_for(kv.delete("role-task"), timeout=10)
        assert await kv.get("role-task") is None
        await asyncio.wait_for(nats_adapters.NatsBus(nc.jetstream()).publish(
            subjects.progress("w", "role-task"), b"{}", msg_id="p1"), timeout=10)
    finally:
        await nc.close()
        await admin.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(st.binary(min_size=0, max_size=64), min_size=1, max_size=40))
async def test_concurrent_answers_reach_their_own_request(client: AgentClient, payloads: list[bytes]) -> None:
    """Many requests in flight at once: each gets its own answer back (an echo
    service answers each with its own payload)."""
    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    sub = await client.nc.subscribe("echo.service", cb=echo)
    mux = js_ack.for_connection(client.nc)
    try:
        answers = await asyncio.gather(*(mux.request("echo.service", p, timeout=10) for p in payloads))
        assert [a.data for a in answers] == payloads
        assert not mux._pending
    finally:
        await sub.unsubscribe()


async def test_a_failing_inline_handler_leaves_the_connection_reading(client: AgentClient,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Messages handled from the read loop (pull consumers, ack replies): a
    handler that raises is logged, and the connection goes on delivering."""
    seen: list[bytes] = []

    def handle(msg: Msg) -> None:
        seen.append(msg.data)
        if msg.data == b"boom":
            raise RuntimeError("handler bug")

    sub = await js_ack.subscribe_inline(client.nc, "inline.test", handle)
    try:
        for body in (b"one", b"boom", b"two"):
            await client.nc.publish("inline.test", body)
        await client.nc.flush()
        await until(lambda: len(seen) == 3, 1.0, "three deliveries")
        assert seen == [b"one", b"boom", b"two"]
        assert "handling a message on inline.test failed" in caplog.text
        assert client.nc.is_connected
        # and requests still get their answers
        assert (await js_ack.for_connection(client.nc).publish(subjects.results("w", "after-boom"), b"{}")).seq > 0
    finally:
        await sub.unsubscribe()
