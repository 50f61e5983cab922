"""The KV adapter against a real nats-server: listing a bucket must leave the
server as it found it, however often it is done (the deadline sweeper and an
approvals poller list buckets forever)."""

from __future__ import annotations

from agentstream.contracts import subjects
from agentstream.contracts.events import ApprovalRequested
from agentstream.runtime import approvals, nats_adapters
from agentstream.runtime.client import AgentClient
from agentstream.runtime.policy import ApprovalRecord, encode_record


async def test_items_lists_live_keys_with_latest_values_and_leaves_no_consumer(client: AgentClient) -> None:
    kv = await nats_adapters.bucket(client.js, subjects.DEADLINES.name)
    assert await kv.items() == []
    for i in range(600):  # more than one fetch batch, several revisions per key
        await kv.put(f"k{i % 300:03d}", str(i).encode())
    await kv.delete("k005")
    for _ in range(50):
        items = await kv.items()
    assert len(items) == 299 and "k005" not in dict(items)
    assert dict(items)["k000"].value == b"300"  # the latest revision, not the first
    assert [k for k, _ in items] == sorted(k for k, _ in items)
    info = await client.js.stream_info(f"KV_{subjects.DEADLINES.name}")
    assert info.state.consumer_count == 0


async def test_polling_pending_approvals_does_not_exhaust_the_server(client: AgentClient) -> None:
    """nats-py's KeyValue.keys() leaves a consumer behind for five minutes; a
    poller listing approvals ten times a second hit the server's cap of 1,000
    consumers a stream (err 10026) in under two minutes. 1,200 listings of a
    bucket holding a pending and a decided approval must all succeed."""
    kv = await nats_adapters.bucket(client.js, subjects.APPROVALS.name)
    for i, status in enumerate(("pending", "approved")):
        req = ApprovalRequested(approval_id=f"ap-{i}", task_id=f"t-{i}", agent="support", step=1, call_id="c",
                                tool="issue_refund", arguments={"amount": 150}, approvers=("supervisor",),
                                requested_at=1000.0 + i, deadline_at=2000.0)
        await kv.put(req.approval_id, encode_record(ApprovalRecord(request=req, status=status)))
    for _ in range(1200):
        pending = await approvals.list_approvals(client)
        assert [r.request.approval_id for r in pending] == ["ap-0"]
    assert [r.status for r in await approvals.list_approvals(client, status=None)] == ["pending", "approved"]
    info = await client.js.stream_info(f"KV_{subjects.APPROVALS.name}")
    assert info.state.consumer_count == 0
