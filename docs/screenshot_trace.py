"""Makes docs/img/dashboard-trace.png: the support desk's refund task (a
human approval, its wait) in the project's own dashboard trace view,
rendered by headless Chromium. Run from the repository root:

    .venv/bin/python docs/screenshot_trace.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import tempfile
from pathlib import Path

from agentstream import AgentClient, Runtime, Settings
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.core.app import load_app
from agentstream.runtime.interfaces import approvals
from agentstream.runtime.interfaces.http_api import HttpServer

OUT = Path(__file__).resolve().parent / "img" / "dashboard-trace.png"


async def main(chromium: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="shot-"))
    broker = await EmbeddedNats(store_dir=tmp / "nats").astart()
    settings = dataclasses.replace(Settings.from_env({}), nats_url=broker.url, data_dir=tmp / "data")
    rt = Runtime(settings=settings, app=load_app("agentstream.examples.support_desk:app"), agents=["support"],
                 tools="all")
    await rt.start()
    client = await AgentClient.connect(broker.url)
    server = HttpServer(client)
    await server.start()
    try:
        first = await client.submit("support", "Where is my order 42?", user_id="jane",
                                    conversation_id="screenshot-1")
        await client.result(first, timeout=30)
        # The follow-up refunds it: issue_refund waits for a supervisor's approval.
        task_id = await client.submit("support", "Please refund it.", user_id="jane", conversation_id="screenshot-1")
        for _ in range(300):  # bounded: 30 s
            pending = await approvals.list_approvals(client)
            if pending:
                await asyncio.sleep(0.4)  # a visible wait in the waterfall
                await approvals.decide(client, pending[0].request.approval_id, approved=True, approver="supervisor")
                break
            await asyncio.sleep(0.1)
        await client.result(task_id, timeout=30)
        assert rt.telemetry is not None
        await rt.telemetry.force_flush()
        await asyncio.sleep(1.0)  # the span batches reach the stream
        url = f"{server.url}/dashboard?task={task_id}"
        proc = await asyncio.create_subprocess_exec(
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'chrome'}", "--hide-scrollbars", "--window-size=1400,1700",
            "--virtual-time-budget=8000", f"--screenshot={OUT}", url,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.wait_for(proc.wait(), timeout=120)
        print(f"wrote {OUT} from {url}")
    finally:
        await server.stop()
        await client.close()
        await rt.stop()
        await asyncio.to_thread(broker.stop)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    asyncio.run(main(ap.parse_args().chromium))
