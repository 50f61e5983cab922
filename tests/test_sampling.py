"""Trace sampling: the standard OTEL_TRACES_SAMPLER variables decide per task,
and the tail keep rules still record what must never be lost (a failed span,
the root of a failed or slow task)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON, ParentBasedTraceIdRatio
from test_tracing import RESULT_TIMEOUT_S, _echo_runtime, read_spans

from agentstream.contracts.events import TaskCompleted
from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability.telemetry import Telemetry
from agentstream.runtime.observability.telemetry_config import TelemetryConfig, build_sampler


def test_sampler_from_the_standard_variables() -> None:
    assert build_sampler(TelemetryConfig.from_env({})) is DEFAULT_ON  # parentbased_always_on, the SDK's default
    assert build_sampler(TelemetryConfig.from_env({"OTEL_TRACES_SAMPLER": "always_off"})) is ALWAYS_OFF
    s = build_sampler(TelemetryConfig.from_env({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                                "OTEL_TRACES_SAMPLER_ARG": "0.25"}))
    assert isinstance(s, ParentBasedTraceIdRatio) and "0.25" in s.get_description()
    for env in ({"OTEL_TRACES_SAMPLER": "sometimes"},
                {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
                {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
                {"AGENTSTREAM_TRACE_SLOW_S": "soon"}):
        with pytest.raises(ConfigError):
            TelemetryConfig.from_env(env)


def _tel(env: dict[str, str]) -> tuple[Telemetry, InMemorySpanExporter]:
    mem = InMemorySpanExporter()
    cfg = TelemetryConfig.from_env({"OTEL_METRICS_EXPORTER": "none", **env})
    return Telemetry(cfg, worker_id="w-s", span_exporters=[mem]), mem


async def test_a_failed_span_is_kept_when_its_trace_is_not_sampled() -> None:
    tel, mem = _tel({"OTEL_TRACES_SAMPLER": "always_off"})
    with tel.span("execute_tool fine"):
        pass
    with pytest.raises(RuntimeError), tel.span("execute_tool broken"):
        raise RuntimeError("the tool broke")
    await tel.force_flush()
    [kept] = mem.get_finished_spans()
    assert kept.name == "execute_tool broken" and kept.attributes is not None
    assert kept.attributes["error.type"] == "RuntimeError"


async def _run_echo(nats_url: str, tmp_path: Path, env: dict[str, str], n: int, *, expect: int = 0) -> list[str]:
    """Names of the spans stored after ``n`` echo tasks under ``env``, once at
    least ``expect`` are stored (bounded): a task's invoke_agent span is
    recorded just after its result is published, so the client can see the
    result before the span exists."""
    rt = _echo_runtime(nats_url, tmp_path, "rt-sample", {"OTEL_METRICS_EXPORTER": "none", **env})
    await rt.start()
    try:
        assert rt.nc is not None and rt.telemetry is not None and rt.js is not None
        client = AgentClient(rt.nc, telemetry=rt.telemetry)
        for i in range(n):
            tid = await client.submit("echo", f"hello {i}")
            assert isinstance(await client.result(tid, timeout=RESULT_TIMEOUT_S), TaskCompleted)
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            await rt.telemetry.force_flush()
            await asyncio.wait_for(rt.nc.flush(), timeout=10)
            names = sorted(s.name for s in await read_spans(rt.js))
            if len(names) >= expect or asyncio.get_running_loop().time() > deadline:
                return names
            await asyncio.sleep(0.1)
    finally:
        await rt.stop()


async def test_sampled_out_tasks_leave_nothing_but_slow_ones_keep_their_root(nats_url: str, tmp_path: Path) -> None:
    assert await _run_echo(nats_url, tmp_path / "a", {"OTEL_TRACES_SAMPLER": "always_off"}, 2) == []
    # Every task counts as slow: each keeps its root span (duration, outcome), nothing else.
    names = await _run_echo(nats_url, tmp_path / "b", {"OTEL_TRACES_SAMPLER": "always_off",
                                                       "AGENTSTREAM_TRACE_SLOW_S": "0"}, 2, expect=2)
    assert names == ["invoke_agent echo"] * 2
