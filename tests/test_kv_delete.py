"""Deleting a key leaves nothing in the bucket's stream: the deadlines bucket
(one key a live task) stays as small as the set of live tasks, and the deadline
sweep reads only those."""

from __future__ import annotations

from agentstream.contracts import subjects
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.interfaces.client import AgentClient


async def test_deleted_keys_leave_no_markers(client: AgentClient) -> None:
    kv = await nats_adapters.bucket(client.js, subjects.DEADLINES.name)
    for i in range(50):
        await kv.put(f"w1.task{i}", b"1.0")
    await kv.put("w1.live", b"2.0")
    for i in range(50):
        await kv.delete(f"w1.task{i}")
    await kv.delete("w1.never-existed")
    assert [k for k, _ in await kv.items()] == ["w1.live"]
    assert await kv.get("w1.task3") is None
    info = await client.js.stream_info(f"KV_{subjects.DEADLINES.name}")
    assert info.state.messages == 1  # only the live key: no delete or purge markers
    rev = await kv.create("w1.task3", b"3.0")  # a deleted key can be created again
    assert (await kv.get("w1.task3")) is not None and rev > 0
