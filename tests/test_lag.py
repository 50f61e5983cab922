"""Consumer lag per durable, read from a real nats-server: the figures a
scaler acts on, in Prometheus text, the dashboard's JSON and `agentstream stats`."""

from __future__ import annotations

import asyncio
import json

import nats
from aiohttp.test_utils import TestClient, TestServer
from conftest import run_cli, until, worker_env
from nats.aio.msg import Msg

from agentstream.runtime.execution.consumer import ConsumerSettings, PullConsumer
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.http_api import create_app
from agentstream.runtime.observability.lag import prometheus_lines, read_lag, render_lag


async def test_lag_counts_backlog_and_work_in_progress(nats_url: str) -> None:
    client = await AgentClient.connect(nats_url, telemetry=False)
    nc = await nats.connect(nats_url)
    release = asyncio.Event()
    started: list[bytes] = []

    async def slow(msg: Msg) -> None:
        started.append(msg.data)
        await release.wait()

    cs = ConsumerSettings(stream="TOOLS", durable="tool_lagtest", filter_subject="tools.lagtest.calls",
                          max_in_flight=2)
    consumer = PullConsumer(nc.jetstream(), cs, slow)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, drain_timeout_s=5))
    try:
        await asyncio.wait_for(consumer.started.wait(), timeout=20)
        for i in range(5):
            await client.js.publish("tools.lagtest.calls", f"{i}".encode())
        await until(lambda: len(started) == 2, 20, "two calls in progress (the in-flight cap)")

        async def settled() -> object:
            lags = {c.durable: c for c in await read_lag(client.js)}
            c = lags.get("tool_lagtest")
            return c if c is not None and c.pending == 3 and c.ack_pending == 2 else None

        lag = await until(settled, 20, "3 pending and 2 ack-pending on the durable")
        assert lag.stream == "TOOLS" and lag.redelivered == 0 and lag.lag == 5
        text = "\n".join(prometheus_lines([lag]))
        assert 'agentstream_consumer_pending_messages{stream="TOOLS",durable="tool_lagtest"} 3' in text
        assert 'agentstream_consumer_ack_pending_messages{stream="TOOLS",durable="tool_lagtest"} 2' in text
        assert "# TYPE agentstream_consumer_redelivered_messages gauge" in text
        assert "tool_lagtest" in render_lag([lag])

        async with TestClient(TestServer(create_app(client))) as http:
            metrics = await (await http.get("/metrics")).text()
            assert 'agentstream_consumer_pending_messages{stream="TOOLS",durable="tool_lagtest"} 3' in metrics
            body = await (await http.get("/api/lag")).json()
            row = next(c for c in body["consumers"] if c["durable"] == "tool_lagtest")
            assert (row["pending"], row["ack_pending"], row["lag"]) == (3, 2, 5)

        env = worker_env({"AGENTSTREAM_NATS_URL": nats_url})
        out = await asyncio.to_thread(run_cli, ["stats", "--json"], env)
        assert out.returncode == 0, out.stderr
        rows = {c["durable"]: c for c in json.loads(out.stdout)["consumer_lag"]}
        assert rows["tool_lagtest"]["pending"] == 3
        text_out = await asyncio.to_thread(run_cli, ["stats"], env)
        assert "consumer lag" in text_out.stdout and "tool_lagtest" in text_out.stdout
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, timeout=20)
        await nc.close()
        await client.close()


def test_the_ops_autoscaling_examples_name_real_durables() -> None:
    """The KEDA and HPA examples scale on consumers the runtime really creates."""
    from pathlib import Path

    import yaml

    from agentstream.contracts import subjects
    from agentstream.examples.support_desk import app

    ops = Path(__file__).resolve().parent.parent / "ops" / "autoscaling"
    real = {subjects.agent_durable("support", "tasks"), subjects.agent_durable("support", "events")}
    real |= {subjects.tool_durable(t) for t in app.tools}
    named: set[str] = set()
    for doc in yaml.safe_load_all((ops / "keda-nats-jetstream.yaml").read_text()):
        named |= {t["metadata"]["consumer"] for t in doc["spec"]["triggers"]}
    for doc in yaml.safe_load_all((ops / "hpa-prometheus.yaml").read_text()):
        named |= {m["external"]["metric"]["selector"]["matchLabels"]["durable"] for m in doc["spec"]["metrics"]}
    assert named and named <= real, named - real
