"""The HTML dashboard, rendered by headless Chromium over a real nats-server and
a real Runtime running support tasks (plus synthetic spans for a failed task).

Works with or without the built-in span exporter: without it, a task's trace is
rebuilt from its events. Needs ``/usr/bin/chromium`` (Debian: ``apt-get install -y
chromium``); skipped without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from test_views import (  # tests/ is on sys.path
    ensure_telemetry_stream,
    failed,
    publish_result,
    publish_spans,
    task_trace,
)

from agentstream.contracts.events import TaskCompleted
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.interfaces.dashboard import add_dashboard_routes
from agentstream.runtime.service.runtime import Runtime

CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
CHROME_TIMEOUT_S = 90.0
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (/usr/bin/chromium): apt-get install -y chromium")


@pytest.fixture
async def dashboard_url(client: AgentClient) -> AsyncIterator[str]:
    app = web.Application()
    add_dashboard_routes(app, lambda: client.js)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = [a for a in runner.addresses if isinstance(a, tuple)][0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.wait_for(runner.cleanup(), timeout=30)


async def chromium(tmp_path: Path, url: str, *extra: str) -> str:
    """Run headless Chromium on url; returns stdout (the DOM with --dump-dom)."""
    assert CHROMIUM is not None
    profile = tmp_path / f"chrome-profile-{time.monotonic_ns()}"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=CHROME_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # chromium and its helpers: our own process group
        await asyncio.wait_for(proc.wait(), timeout=10)
        raise
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{err.decode(errors='replace')[-3000:]}"
    return out.decode(errors="replace")


@needs_chromium
async def test_dashboard_shows_tasks_histograms_and_trace(nats_server: EmbeddedNats, client: AgentClient,
                                                          dashboard_url: str, tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings.from_env({}), nats_url=nats_server.url, data_dir=tmp_path / "data")
    runtime = Runtime.from_settings(settings, agents=["support"], tools="all")
    await asyncio.wait_for(runtime.start(), timeout=30)
    try:
        questions = ["Can I get a refund for order 42?", "Where is my order 7?", "What are your opening hours?"]
        ids = [await client.submit("support", q, tenant_id="acme", user_id="u-7") for q in questions]
        results = [await client.result(i, timeout=30) for i in ids]
    finally:
        await asyncio.wait_for(runtime.stop(), timeout=60)
    assert all(isinstance(r, TaskCompleted) for r in results)
    refund_id = ids[0]

    # A failed task with exporter-style spans: a failed tool call among parallel ones.
    await ensure_telemetry_stream(client.js)
    now = time.time()
    await publish_spans(client.js, task_trace("synthetic-failed", now - 3))
    await publish_result(client.js, failed("synthetic-failed", now - 3, 1.0, reason="deadline"))

    async with aiohttp.ClientSession(base_url=dashboard_url, timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.get("/api/tasks?limit=50") as r:
            assert r.status == 200
            tasks = (await r.json())["tasks"]
        assert {t["task_id"] for t in tasks} >= {*ids, "synthetic-failed"}
        async with http.get(f"/api/traces/{refund_id}") as r:
            assert r.status == 200
            trace = await r.json()
        names = [s["name"] for s in trace["spans"]]
        assert sum(n.startswith("execute_tool") for n in names) == 3 and any(n.startswith("chat") for n in names)
        async with http.get("/api/stats?since=1h") as r:
            stats = await r.json()
        assert stats["tasks"] == 4 and stats["tasks_failed"] == 1 and stats["agents"][0]["name"] == "support"
        async with http.get("/api/stats?since=soon") as r:
            assert r.status == 400 and "invalid duration" in (await r.json())["error"]
        async with http.get("/api/traces/no-such-task") as r:
            assert r.status == 404

    url = f"{dashboard_url}/dashboard?task={refund_id}"
    dom = await chromium(tmp_path, url, "--dump-dom")
    for task_id in [*ids, "synthetic-failed"]:
        assert task_id in dom
    assert "support" in dom
    assert 'class="histogram"' in dom and 'class="bin"' in dom
    assert f'id="waterfall" class="waterfall" data-task-id="{refund_id}"' in dom
    for tool in ("lookup_order", "shipping_status", "refund_eligibility"):
        assert f'data-name="execute_tool {tool}"' in dom
    assert "|| 3 parallel" in dom
    assert f"Trace of task {refund_id}" in dom
    assert 'id="error"></div>' in dom  # no fetch errors

    png = tmp_path / "dash.png"
    await chromium(tmp_path, url, f"--screenshot={png}", "--window-size=1400,1000", "--hide-scrollbars")
    assert png.is_file() and png.stat().st_size > 10_000
    full = tmp_path / "dash-full.png"  # the whole page, down to the trace waterfall
    await chromium(tmp_path, url, f"--screenshot={full}", "--window-size=1400,2800", "--hide-scrollbars")
    print(f"\ndashboard screenshots: {png} (1400x1000), {full} (whole page)")

    dom = await chromium(tmp_path, f"{dashboard_url}/dashboard?task=synthetic-failed", "--dump-dom")
    assert 'data-task-id="synthetic-failed"' in dom and "span-error" in dom and "FAILED timeout" in dom
    assert "deadline" in dom  # error kind from the failed result
    png = tmp_path / "dash-failed.png"
    await chromium(tmp_path, f"{dashboard_url}/dashboard?task=synthetic-failed", f"--screenshot={png}",
                   "--window-size=1400,1000", "--hide-scrollbars")
    print(f"dashboard screenshot (failed task): {png}")


@needs_chromium
async def test_dashboard_with_no_data(dashboard_url: str, tmp_path: Path) -> None:
    dom = await chromium(tmp_path, f"{dashboard_url}/dashboard", "--dump-dom")
    assert "no tasks yet" in dom
    assert 'class="histogram"' in dom  # empty axes, not a blank page
    assert "select a task in the table above" in dom
    assert 'id="error"></div>' in dom
    png = tmp_path / "dash-empty.png"
    await chromium(tmp_path, f"{dashboard_url}/dashboard", f"--screenshot={png}", "--window-size=1400,1000")
    print(f"\ndashboard screenshot (no data): {png}")


# --------------------------------------------------------------------------- Grafana dashboard

GRAFANA = Path(__file__).resolve().parent.parent / "ops" / "grafana" / "agentstream-dashboard.json"
_METRIC = re.compile(r"\b((?:gen_ai|agentstream)_[a-z_]+)\s*(?:\{|\[|,)")  # a series selector, or label_values(m, ...
_LABEL = re.compile(r"\b([a-z_]+)\s*(?:=~|!=|=)\s*\"")
_BY = re.compile(r"by \(([^)]*)\)")
# Labels that appear only once something failed (the task below succeeds).
_ONLY_ON_ERRORS = {"error_type"}


def _grafana_exprs() -> list[str]:
    dash = json.loads(GRAFANA.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


async def test_grafana_dashboard_uses_real_metric_and_label_names(nats_server: EmbeddedNats, client: AgentClient,
                                                                   tmp_path: Path) -> None:
    from agentstream.runtime.observability.prometheus import prometheus_text

    exprs = _grafana_exprs()
    titles = " ".join(p["title"] for p in json.loads(GRAFANA.read_text())["panels"]).lower()
    for word in ("p50", "latency", "tokens", "cost", "error rate"):
        assert word in titles

    settings = dataclasses.replace(Settings.from_env({}), nats_url=nats_server.url, data_dir=tmp_path / "data")
    runtime = Runtime.from_settings(settings, agents=["support"], tools="all")
    await asyncio.wait_for(runtime.start(), timeout=30)
    try:
        task_id = await client.submit("support", "Where is my order 42?", tenant_id="acme")
        assert isinstance(await client.result(task_id, timeout=30), TaskCompleted)
        text = prometheus_text()
    finally:
        await asyncio.wait_for(runtime.stop(), timeout=60)
    if not text:
        pytest.skip("metrics are off in this process (OTEL_METRICS_EXPORTER)")
    families = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
    labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"", text))
    used_metrics = {m for e in exprs for m in _METRIC.findall(_BY.sub("", e))}
    used_labels = {lb for e in exprs for lb in _LABEL.findall(e)}
    used_labels |= {lb.strip() for e in exprs for grp in _BY.findall(e) for lb in grp.split(",") if lb.strip()}
    used_labels |= {m.group(1) for e in exprs for m in re.finditer(r"label_values\([^,]+,\s*([a-z_]+)\)", e)}
    used_labels -= {"le"}
    # The cost counter moves only with a priced model (the scripted one is free), the
    # error counter only on errors: neither appears after one successful task.
    missing = {m for m in used_metrics if m not in families} - {"agentstream_cost_usd_total", "agentstream_errors_total"}
    assert not missing, f"dashboard metrics the runtime does not export: {sorted(missing)}"
    assert not (used_labels - labels - _ONLY_ON_ERRORS), \
        f"dashboard labels the runtime does not export: {sorted(used_labels - labels - _ONLY_ON_ERRORS)}"
    assert {"gen_ai_client_operation_duration_seconds_bucket", "gen_ai_client_token_usage_sum",
            "agentstream_task_duration_seconds_bucket", "agentstream_tool_duration_seconds_bucket",
            "agentstream_errors_total", "agentstream_cost_usd_total"} <= used_metrics
