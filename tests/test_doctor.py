"""`agentstream doctor` against a real nats-server and the loopback fake model
server: one line per backing service, warnings for a model that cannot call
tools, exit codes that tell a broken deployment from a healthy one."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import cli_command, worker_env
from fake_openai import FakeOpenAI, text_reply, tool_calls_reply

from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.exit_codes import ExitCode

pytestmark = pytest.mark.slow


async def doctor(env: dict[str, str], cwd: Path) -> tuple[int, dict[str, str]]:
    """Run the command; its exit code and its lines by check name."""
    full = {k: v for k, v in worker_env(env).items() if not k.startswith(("OPENAI_", "OTEL_"))}
    full.update(env)
    proc = await asyncio.create_subprocess_exec(*cli_command(), "doctor", "--timeout", "10", env=full, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert b"Traceback" not in err, err.decode()
    lines = {line.split()[1]: line for line in out.decode().splitlines()}
    assert proc.returncode is not None
    return proc.returncode, lines


def _calls_the_tool(req: dict[str, Any]) -> dict[str, Any]:
    return tool_calls_reply([("get_weather", {"city": "Paris"})], prompt_tokens=90, completion_tokens=12)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_healthy_deployment(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with await AgentClient.connect(nats_server.url, telemetry=False):
        pass  # provisions the streams and buckets
    async with FakeOpenAI(_calls_the_tool) as srv:
        code, lines = await doctor({"AGENTSTREAM_NATS_URL": nats_server.url, "AGENTSTREAM_MODEL": "fake-model",
                                    "OPENAI_BASE_URL": srv.base_url}, tmp_path)
        sent = srv.chat_requests[0]
    assert code == ExitCode.OK, lines
    assert lines["broker"].startswith("ok") and "reachable" in lines["broker"]
    assert lines["jetstream"].startswith("ok")
    assert lines["streams"].startswith("ok") and "all" in lines["streams"]
    # No agent worker has run: the inbox is partitioned (EVENTS was made so), nobody pulls it yet.
    assert lines["inbox"].startswith("ok") and "16 partitions in EVENTS" in lines["inbox"], lines["inbox"]
    assert "0 partition consumer(s)" in lines["inbox"]
    assert lines["model"].startswith("ok"), lines["model"]
    assert 'called get_weather({"city": "Paris"})' in lines["model"] and "usage 90 in / 12 out" in lines["model"]
    assert lines["agents"].startswith("ok")
    assert lines["otlp"].startswith("-") and "not used" in lines["otlp"]
    assert sent["tool_choice"] == "auto" and [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]


async def test_a_model_that_does_not_call_tools_is_a_warning_naming_the_agents(nats_server: EmbeddedNats,
                                                                                 tmp_path: Path) -> None:
    async with FakeOpenAI(lambda req: text_reply("It is sunny in Paris.", prompt_tokens=None)) as srv:
        code, lines = await doctor({"AGENTSTREAM_NATS_URL": nats_server.url, "AGENTSTREAM_MODEL": "fake-model",
                                    "OPENAI_BASE_URL": srv.base_url}, tmp_path)
    assert code == ExitCode.OK, lines  # warnings do not fail the command
    assert lines["model"].startswith("warn") and "did NOT call the offered tool" in lines["model"]
    assert "no usage reported" in lines["model"]
    assert lines["agents"].startswith("warn") and "support have tools" in lines["agents"]
    assert lines["streams"].startswith("warn") and "missing" in lines["streams"]  # nothing provisioned


async def test_an_unreachable_model_and_otlp_endpoint_fail(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    code, lines = await doctor({"AGENTSTREAM_NATS_URL": nats_server.url, "AGENTSTREAM_MODEL": "m",
                                "OPENAI_BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1",
                                "OTEL_TRACES_EXPORTER": "otlp",
                                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}, tmp_path)
    assert code == ExitCode.TASK_FAILED, lines
    assert lines["model"].startswith("FAIL") and "unreachable" in lines["model"]
    assert lines["otlp"].startswith("FAIL") and "grpc, for traces" in lines["otlp"], lines["otlp"]


async def test_no_broker_is_exit_4(tmp_path: Path) -> None:
    code, lines = await doctor({"AGENTSTREAM_DATA_DIR": str(tmp_path / "none")}, tmp_path)
    assert code == ExitCode.BROKER_UNREACHABLE
    assert lines["broker"].startswith("FAIL") and "no broker configured" in lines["broker"]
    assert set(lines) >= {"broker", "model", "otlp"}  # the other checks still report


async def test_worker_start_up_warns_when_its_model_cannot_call_tools(nats_server: EmbeddedNats, worker_pool: Any,
                                                                       tmp_path: Path) -> None:
    from conftest import until

    async with FakeOpenAI(lambda req: text_reply("It is sunny.")) as srv:
        proc = worker_pool.spawn(["--agent", "support"], {"AGENTSTREAM_NATS_URL": nats_server.url,
                                                         "AGENTSTREAM_MODEL": "fake-model",
                                                         "OPENAI_BASE_URL": srv.base_url})
        err = worker_pool.logs[proc.pid][1]
        await until(lambda: "did not call the tool" in err.read_text(), 20, "the start-up warning")
        assert srv.chat_requests[0]["tools"][0]["function"]["name"] == "get_weather"
    line = next(x for x in err.read_text().splitlines() if "did not call the tool" in x)
    assert "agents with tools (support)" in line and "docs/models.md" in line


async def test_the_partitioned_inbox_is_reported_once_an_agent_worker_made_it(nats_server: EmbeddedNats,
                                                                            tmp_path: Path) -> None:
    from agentstream.runtime.adapters import jetstream

    nc = await nats.connect(nats_server.url)
    try:  # what an agent worker configured with AGENTSTREAM_INBOX_PARTITIONS=4 does at start
        await jetstream.provision(nc.jetstream(), partitions=4)
        await jetstream.events_partitions(nc.jetstream())
    finally:
        await nc.close()
    code, lines = await doctor({"AGENTSTREAM_NATS_URL": nats_server.url}, tmp_path)
    assert lines["inbox"].startswith("ok") and "4 partitions" in lines["inbox"], lines["inbox"]
    assert "0 tool result(s) waiting" in lines["inbox"]
