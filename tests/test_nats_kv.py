"""The KV adapter against a real nats-server: listing a bucket must leave the
server as it found it, however often it is done (the deadline sweeper and an
approvals poller list buckets forever)."""

from __future__ import annotations

import nats.js.errors as jse
import pytest

from agentstream.contracts import subjects
from agentstream.contracts.events import ApprovalRequested
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.core.policy import ApprovalRecord, encode_record
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.interfaces.client import AgentClient


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


async def test_a_malformed_approval_id_is_a_clear_user_error(client: AgentClient) -> None:
    """A key NATS cannot hold (here with '*') was an internal error (HTTP 500);
    it is the same "invalid approval id" as any other the server refuses."""
    await nats_adapters.bucket(client.js, subjects.APPROVALS.name)
    with pytest.raises(approvals.ApprovalError, match="invalid approval id 'a\\*b'") as err:
        await approvals.get_approval(client, "a*b")
    assert err.value.status == 409


async def test_a_bucket_another_replica_is_still_creating_is_waited_for() -> None:
    """On a cluster, a create refused because another replica is creating the
    same stream can be followed by a lookup that does not see it yet."""
    answers: list[object] = [jse.NotFoundError(), jse.BucketNotFoundError(), "the bucket"]

    async def lookup() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await nats_adapters._once_visible(lookup) == "the bucket" and answers == []
    with pytest.raises(jse.NotFoundError):
        await nats_adapters._once_visible(lookup_missing, timeout=0.3)


async def lookup_missing() -> object:
    raise jse.NotFoundError()


async def test_creating_retries_a_forming_cluster_and_tells_exists_from_failure() -> None:
    """'No suitable peers' (10005) while a cluster forms is retried; 'exists with
    another config' (10058) means exists; any other API error is raised."""
    answers: list[BaseException | None] = [
        jse.BadRequestError(code=400, err_code=10005, description="no suitable peers for placement"),
        jse.ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable"),
        None]

    async def create() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    assert await nats_adapters._creating(create) is True and answers == []

    async def exists() -> None:
        raise jse.BadRequestError(code=400, err_code=10058, description="stream name already in use")

    assert await nats_adapters._creating(exists) is False

    async def denied() -> None:
        raise jse.APIError(code=403, err_code=10100, description="not allowed")

    with pytest.raises(jse.APIError, match="not allowed"):
        await nats_adapters._creating(denied)


async def test_provisioning_brings_an_existing_streams_limits_up_to_date(client: AgentClient) -> None:
    """A stream left by an older version with other limits gets today's, and
    keeps its replica count."""
    tasks = next(sd for sd in subjects.STREAMS if sd.name == "TASKS")
    old = (await client.js.stream_info("TASKS")).config
    old.max_age, old.duplicate_window = 60.0, 30.0
    await client.js.update_stream(old)
    await nats_adapters.provision(client.js)
    now = (await client.js.stream_info("TASKS")).config
    assert (now.max_age, now.duplicate_window) == (tasks.max_age_s, tasks.duplicate_window_s)
    assert now.num_replicas == old.num_replicas
