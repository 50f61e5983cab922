"""AgentClient against a real nats-server."""

from __future__ import annotations

import asyncio
import time

from agentstream import AgentClient, TaskCompleted
from agentstream.contracts import codec, subjects
from agentstream.contracts.events import Usage


def _completed(task_id: str) -> TaskCompleted:
    now = time.time()
    return TaskCompleted(task_id=task_id, agent="support", agent_version="v1", output="done", steps=1,
                         tool_calls=0, usage=Usage(), started_at=now, finished_at=now)


async def test_result_published_in_the_gap_between_subscribe_and_lookup_is_found(nats_url: str) -> None:
    """Regression: a result routed before our subscription reached the server but
    stored only after our lookup was seen by neither, and result() waited forever."""
    async with await AgentClient.connect(nats_url) as client:
        await client.js.publish(subjects.results("support", "gap-1"), codec.encode(_completed("gap-1")))
        real = client._stored_result
        calls = 0

        async def not_yet_then_real(task_id: str, agent: str | None) -> bytes | None:
            nonlocal calls
            calls += 1
            return None if calls == 1 else await real(task_id, agent)

        client._stored_result = not_yet_then_real  # type: ignore[method-assign]
        res = await client.result("gap-1", timeout=5, agent="support")
        assert isinstance(res, TaskCompleted) and res.output == "done"
        assert calls >= 2


async def test_result_before_and_after_the_call(nats_url: str) -> None:
    async with await AgentClient.connect(nats_url) as client:
        await client.js.publish(subjects.results("support", "early"), codec.encode(_completed("early")))
        assert (await client.result("early", timeout=5)).task_id == "early"  # agent unknown: found by filter

        real = client._stored_result
        looked = asyncio.Event()

        async def lookup(task_id: str, agent: str | None) -> bytes | None:
            found = await real(task_id, agent)
            looked.set()
            return found

        client._stored_result = lookup  # type: ignore[method-assign]
        waiter = asyncio.create_task(client.result("late", timeout=10, agent="support"))
        # Published only once result() has subscribed and found nothing stored.
        await asyncio.wait_for(looked.wait(), 5)
        assert not waiter.done()
        await client.js.publish(subjects.results("support", "late"), codec.encode(_completed("late")))
        assert (await asyncio.wait_for(waiter, 10)).task_id == "late"


async def test_several_results_on_a_waited_subject_leave_the_connection_working(nats_url: str) -> None:
    """result()'s subscription takes one message: more on its subject (a burst
    from several publishers) must neither fail it nor the connection's read loop."""
    async with await AgentClient.connect(nats_url) as client:
        real = client._stored_result
        looked = asyncio.Event()

        async def lookup(task_id: str, agent: str | None) -> bytes | None:
            found = await real(task_id, agent)
            looked.set()
            return found

        client._stored_result = lookup  # type: ignore[method-assign]
        waiter = asyncio.create_task(client.result("burst", timeout=10, agent="support"))
        await asyncio.wait_for(looked.wait(), 5)
        for _ in range(5):  # core publishes: all reach the subscription at once
            await client.nc.publish(subjects.results("support", "burst"), codec.encode(_completed("burst")))
        assert (await asyncio.wait_for(waiter, 10)).task_id == "burst"
        client._stored_result = real  # type: ignore[method-assign]
        await client.nc.flush()
        assert client.nc.is_connected
        await client.js.publish(subjects.results("support", "after"), codec.encode(_completed("after")))
        assert (await client.result("after", timeout=5, agent="support")).task_id == "after"


async def test_results_of_tasks_submitted_here_need_no_lookup_and_the_watch_is_bounded(nats_url: str) -> None:
    """submit() subscribes to the task's result before publishing it, so the
    result comes without a stored-result lookup (one round trip less). At
    most max_early_results such subscriptions are kept; an older task's result
    is still found, by the lookup."""
    async with await AgentClient.connect(nats_url) as client:
        client.max_early_results = 3
        ids = [await client.submit("support", f"q{i}", task_id=f"early-{i}") for i in range(5)]
        assert sorted(client._early) == ids[2:]
        for tid in ids:
            await client.js.publish(subjects.results("support", tid), codec.encode(_completed(tid)))
        real = client._stored_result
        looked: list[str] = []

        async def lookup(task_id: str, agent: str | None) -> bytes | None:
            looked.append(task_id)
            return await real(task_id, agent)

        client._stored_result = lookup  # type: ignore[method-assign]
        assert [(await client.result(tid, timeout=5)).task_id for tid in ids] == ids
        assert looked == ids[:2]
        assert not client._early


async def test_a_resubmitted_finished_task_returns_its_stored_result_at_once(nats_url: str) -> None:
    async with await AgentClient.connect(nats_url) as client:
        await client.submit("support", "q", task_id="again-1")
        await client.js.publish(subjects.results("support", "again-1"), codec.encode(_completed("again-1")))
        assert (await client.result("again-1", timeout=5)).task_id == "again-1"
        await client.submit("support", "q", task_id="again-1")  # deduplicated: no new result will come
        assert client.last_submit_duplicate and "again-1" not in client._early
        assert (await client.result("again-1", timeout=5)).task_id == "again-1"
