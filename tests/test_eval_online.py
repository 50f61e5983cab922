"""Online evaluation: evaluators consuming the real results stream, scores as
events on their own subject, feedback over HTTP on the same stream, drift."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
from conftest import until
from nats.js.errors import NotFoundError

from agentstream import AgentClient, Runtime, Settings, TaskCompleted
from agentstream.contracts import codec, subjects
from agentstream.contracts.events import DriftDetected, EvaluationScored, FeedbackSubmitted, Usage
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.evaluation.online import OnlineEvaluator, sampled
from agentstream.runtime.interfaces.http_api import HttpServer
from agentstream.runtime.service.online_eval import OnlineEvaluation


def scored(agent: str, groundedness: float, *, ok: bool = True) -> EvaluationScored:
    return EvaluationScored(task_id="t", agent=agent, agent_version="v1", evaluator="x", status="completed",
                            groundedness=groundedness, safety=ok, latency_s=1, tokens=1, cost_usd=0, at=0)


def test_sampling_is_deterministic_and_near_the_rate() -> None:
    ids = [f"task-{i}" for i in range(4000)]
    picked = [t for t in ids if sampled(t, 0.25, seed=7)]
    assert picked == [t for t in ids if sampled(t, 0.25, seed=7)]
    assert 0.22 < len(picked) / len(ids) < 0.28
    assert all(sampled(t, 1.0) for t in ids[:10]) and not any(sampled(t, 0.0) for t in ids[:10])


def test_drift_alarms_once_when_the_window_drops_and_again_after_recovery() -> None:
    ev = OnlineEvaluator(window=50, baseline_size=100, drift_threshold=0.1, min_window=30, check_every=10)
    alarms: list[DriftDetected] = []
    for i in range(100):
        alarms += ev.observe_score(scored("a", 1.0 if i % 10 else 0.8), now=0)
    for _ in range(60):  # the same quality: no alarm
        alarms += ev.observe_score(scored("a", 1.0), now=0)
    assert alarms == []
    for _ in range(60):  # groundedness falls to 0.5
        alarms += ev.observe_score(scored("a", 0.5), now=1)
    assert [(a.metric, a.agent) for a in alarms] == [("groundedness", "a")]
    assert alarms[0].window_mean < alarms[0].baseline_mean - 0.1 and alarms[0].diff_high < -0.1
    for _ in range(60):
        alarms += ev.observe_score(scored("a", 1.0), now=2)
    for _ in range(60):
        alarms += ev.observe_score(scored("a", 0.4), now=3)
    assert len(alarms) == 2


async def _last(client: AgentClient, subject: str) -> bytes | None:
    try:
        return (await client.js.get_last_msg("EVALS", subject)).data
    except NotFoundError:
        return None


async def _start_runtime_and_evaluator(nats_server: EmbeddedNats, client: AgentClient, tmp_path: Path, *,
                                       sample_rate: float) -> tuple[Runtime, OnlineEvaluation]:
    """A started support runtime and a started online evaluator for it."""
    settings = dataclasses.replace(Settings.from_env({}), nats_url=nats_server.url, data_dir=tmp_path / "data")
    rt = Runtime.from_settings(settings, agents=["support"], tools="all")
    await rt.start()
    online = OnlineEvaluation(client.js, OnlineEvaluator(sample_rate=sample_rate), agent="support", ack_wait_s=2)
    await online.start()
    return rt, online


async def test_online_evaluator_scores_results_and_counts_feedback(nats_server: EmbeddedNats, client: AgentClient,
                                                                   tmp_path: Path) -> None:
    rt, online = await _start_runtime_and_evaluator(nats_server, client, tmp_path, sample_rate=1.0)
    server = HttpServer(client)
    await server.start("127.0.0.1", 0)
    try:
        # A forged result (its subject names another task) is dead-lettered; scoring goes on.
        forged = TaskCompleted(task_id="other", agent="support", agent_version="v1", output="x", steps=1,
                               tool_calls=0, usage=Usage(), started_at=0, finished_at=0)
        await client.js.publish(subjects.results("support", "victim"), codec.encode(forged))
        await client.js.publish(subjects.results("support", "junk"), b"not json")
        ids = [await client.submit("support", q) for q in ("Where is my order 42?", "What are your opening hours?")]
        for task_id in ids:
            await client.result(task_id, timeout=20)
        for task_id in ids:
            subject = subjects.eval_scores("support", task_id)
            raw = await until(lambda: _last(client, subject), 20, f"the score of {task_id}")  # noqa: B023
            ev = codec.evaluation_event.decode(raw)
            assert isinstance(ev, EvaluationScored)
            assert ev.task_id == task_id and ev.status == "completed" and ev.safety and ev.groundedness == 1.0
            assert ev.tokens > 0 and ev.evaluator == "online/online-v1"
        info = await until(lambda: _deadletters(client), 20, "the two bad results dead-lettered")
        assert info == 2
        assert await _last(client, subjects.eval_scores("support", "victim")) is None

        async with aiohttp.ClientSession(base_url=server.url) as http:
            async with http.post(f"/v1/tasks/{ids[0]}/feedback", json={"rating": "down", "comment": "wrong"}) as r:
                assert r.status == 202, await r.text()
            async with http.post("/v1/tasks/nosuchtask/feedback", json={"rating": "up"}) as r:
                assert r.status == 404
            async with http.post(f"/v1/tasks/{ids[0]}/feedback", json={"rating": "meh"}) as r:
                assert r.status == 400 and "invalid feedback" in (await r.json())["error"]
            async with http.post(f"/v1/tasks/{ids[0]}/feedback", json={"rating": "up", "comment": "x" * 5000}) as r:
                assert r.status == 400
        raw = await _last(client, subjects.eval_feedback("support", ids[0]))
        assert raw is not None
        fb = codec.evaluation_event.decode(raw)
        assert isinstance(fb, FeedbackSubmitted) and fb.rating == "down" and fb.comment == "wrong"
        reg = online.metrics.registry

        def counted() -> float | None:
            return reg.get_sample_value("agentstream_eval_feedback_total", {"agent": "support", "rating": "down"})

        assert await until(counted, 20, "the feedback counted") == 1.0
        assert reg.get_sample_value("agentstream_eval_scored_total", {"agent": "support", "status": "completed"}) == 2
    finally:
        await server.stop()
        await online.stop()
        await rt.stop()


async def _deadletters(client: AgentClient) -> int:
    info = await client.js.stream_info("DEADLETTER")
    return int(info.state.messages or 0)


async def test_unsampled_results_are_not_scored(nats_server: EmbeddedNats, client: AgentClient,
                                                tmp_path: Path) -> None:
    rt, online = await _start_runtime_and_evaluator(nats_server, client, tmp_path, sample_rate=0.0)
    try:
        task_id = await client.submit("support", "What are your opening hours?")
        await client.result(task_id, timeout=20)
        # The evaluator acked the result without scoring: its consumer has nothing pending.
        async def drained() -> bool:
            ci = await client.js.consumer_info("RESULTS", "eval_online_results_support")
            return ci.num_ack_pending == 0 and ci.num_pending == 0 and ci.delivered.consumer_seq >= 1
        await until(drained, 20, "the result consumed")
        assert await _last(client, subjects.eval_scores("support", task_id)) is None
    finally:
        await online.stop()
        await rt.stop()


async def test_the_dashboard_shows_online_scores_feedback_and_drift_per_version(nats_server) -> None:  # type: ignore[no-untyped-def]
    import time as _time

    from agentstream.contracts import codec, subjects
    from agentstream.contracts.events import DriftDetected, EvaluationScored, FeedbackSubmitted
    from agentstream.runtime.interfaces.client import AgentClient
    from agentstream.runtime.interfaces.dashboard import evaluation_state

    client = await AgentClient.connect(nats_server.url)
    try:
        now = _time.time()
        for i, (v, g, judge, safe) in enumerate([("v1", 0.8, 1.0, True), ("v1", 0.6, None, True), ("v2", 0.2, 0.0, False)]):
            await client.js.publish(subjects.eval_scores("support", f"t{i}"), codec.encode(EvaluationScored(
                task_id=f"t{i}", agent="support", agent_version=v, evaluator="e", status="completed", groundedness=g,
                safety=safe, latency_s=0.1, tokens=1, cost_usd=0.0, at=now, judge=judge)))
        await client.js.publish(subjects.eval_feedback("support", "t0"), codec.encode(
            FeedbackSubmitted(task_id="t0", agent="support", rating="down", at=now)))
        await client.js.publish(subjects.eval_drift("support"), codec.encode(DriftDetected(
            agent="support", metric="groundedness", baseline_mean=0.8, window_mean=0.4, diff_low=-0.5, diff_high=-0.3,
            threshold=0.1, baseline_size=50, window_size=50, at=now)))
        state = await evaluation_state(client.js, 3600)
        rows = {r["version"]: r for r in state["versions"]}
        assert (rows["v1"]["scored"], round(rows["v1"]["groundedness"], 2), rows["v1"]["judge"]) == (2, 0.7, 1.0)
        assert (rows["v2"]["unsafe"], rows["v2"]["thumbs_down"]) == (1, 1)
        assert [d["metric"] for d in state["drift"]] == ["groundedness"]
    finally:
        await client.close()
