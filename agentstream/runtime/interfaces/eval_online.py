"""``agentstream eval online``: run the online evaluators until SIGTERM/SIGINT,
with their Prometheus metrics on ``--metrics-port`` (``GET /metrics``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from agentstream.runtime.config.auth import nats_auth
from agentstream.runtime.config.settings import Settings, broker_url
from agentstream.runtime.core.errors import AgentstreamError


async def run_online(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from agentstream.runtime.adapters import jetstream as nats_adapters
    from agentstream.runtime.evaluation.online import OnlineEvaluator
    from agentstream.runtime.service.online_eval import OnlineEvaluation

    url = broker_url(settings)
    nc = await nats_adapters.connect(url, name=f"agentstream-eval-online-{settings.worker_id}",
                                     auth=nats_auth("evaluator", url, settings.data_dir))
    runner: web.AppRunner | None = None
    service: OnlineEvaluation | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        js = nc.jetstream()
        await nats_adapters.provision(js, update=False, partitions=settings.inbox_partitions)
        evaluator = OnlineEvaluator(sample_rate=args.sample, seed=args.seed, window=args.window,
                                    baseline_size=args.window, drift_threshold=args.drift_threshold)
        service = OnlineEvaluation(js, evaluator, agent=args.agent)
        await service.start()
        metrics = service.metrics
        where = "-"
        if args.metrics_port is not None:
            async def scrape(request: web.Request) -> web.Response:
                return web.Response(body=generate_latest(metrics.registry),
                                    headers={"Content-Type": CONTENT_TYPE_LATEST})

            app = web.Application()
            app.router.add_get("/metrics", scrape)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", args.metrics_port)
            try:
                await site.start()
            except OSError as exc:
                raise AgentstreamError(f"cannot serve metrics on port {args.metrics_port}: {exc.strerror}") from None
            where = f"http://127.0.0.1:{args.metrics_port}/metrics"
        print(f"agentstream eval online: scoring {args.sample:.0%} of results of {args.agent or 'every agent'}; "
              f"scores on evals.<agent>.scores.<task_id>; metrics {where}", flush=True)
        await stop.wait()
    finally:
        if service is not None:
            await service.stop()
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), timeout=5)
    return 0
