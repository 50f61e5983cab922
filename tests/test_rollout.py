"""Safe change: versions as code, shadow deployments with no side effects, and
a comparator whose verdicts know about the agents' own noise."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import rollout_app  # noqa: E402
from hypothesis import given
from hypothesis import strategies as st

from agentstream import AgentClient, TaskCompleted
from agentstream.contracts import subjects
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.app import App
from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.core.version import fingerprint
from agentstream.runtime.rollout.comparator import load_records
from agentstream.runtime.rollout.compare import (
    Outcome,
    PairRecord,
    agreement,
    newcombe,
    normalise,
    shadow_report,
    wilson,
)
from agentstream.runtime.rollout.shadow import ShadowConfig, sampled
from agentstream.runtime.service.runtime import Runtime

WAIT_S = 60.0


# ----------------------------------------------------------------- pure parts


def test_a_version_is_the_hash_of_behaviour_not_of_its_label() -> None:
    v1 = rollout_app.app.get_version("shop", "v1").spec
    v1b = rollout_app.app.get_version("shop", "v1b").spec
    v2 = rollout_app.app.get_version("shop", "v2").spec
    assert fingerprint(v1, "m") == fingerprint(v1b, "m")  # relabelled, same behaviour
    assert fingerprint(v1, "m") != fingerprint(v2, "m")  # another prompt
    assert fingerprint(v1, "m") != fingerprint(v1, "other-model")
    assert fingerprint(msgspec.structs.replace(v1, max_steps=3), "m") != fingerprint(v1, "m")


def test_candidates_are_declared_beside_production_and_never_replace_it() -> None:
    assert rollout_app.app.get_agent("shop").spec.version == "v1"
    assert rollout_app.app.get_version("shop", None).spec.version == "v1"
    with pytest.raises(ConfigError, match="no version 'v9'"):
        rollout_app.app.get_version("shop", "v9")
    app = App()
    with pytest.raises(ConfigError, match="before its production version"):
        app.agent("x", "i", [], version="v2", candidate=True)
    app.agent("x", "i", [], version="v1")
    with pytest.raises(ConfigError, match="reuses production's version label"):
        app.agent("x", "i", [], version="v1", candidate=True)


@given(st.text(max_size=30))
def test_sampling_is_stable_and_monotone_in_the_percentage(task_id: str) -> None:
    assert sampled(task_id, 100.0) and not sampled(task_id, 0.0)
    for low, high in ((10.0, 50.0), (50.0, 90.0)):
        assert not sampled(task_id, low) or sampled(task_id, high)


def test_sampling_takes_about_the_share_asked_for() -> None:
    share = sum(sampled(f"t-{i}", 25.0) for i in range(4000)) / 4000
    assert 0.22 < share < 0.28


@given(st.integers(0, 200), st.integers(1, 200))
def test_the_wilson_interval_holds_the_estimate_inside_zero_and_one(k: int, n: int) -> None:
    k = min(k, n)
    low, high = wilson(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_and_newcombe_match_published_values() -> None:
    # Newcombe (1998), Stat Med 17:873, example (a): 56/70 vs 48/80 -> 0.2000, [0.0524, 0.3339]
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    lo1, hi1 = wilson(81, 263)  # Wilson 95 % CI of 81/263: 0.2553-0.3662
    assert (round(lo1, 4), round(hi1, 4)) == (0.2553, 0.3662)


def _out(label: str, output: str = "ok", *, status: str = "completed", tools: tuple[str, ...] = ("a({})",)) -> Outcome:
    return Outcome(label=label, version=label or "v1", version_hash="h", status=status,  # type: ignore[arg-type]
                   output=output, tools=tools)


def test_answers_agree_whatever_their_case_spacing_and_punctuation() -> None:
    assert normalise("Charged 3.00 for  Tea; 10 left.") == normalise("charged 3.00 for tea 10 left")
    assert agreement(_out(""), _out("c", "OK.")).overall
    assert not agreement(_out(""), _out("c", tools=("b({})",))).tools


def _records(n: int, *, noise_disagree: int, cand_disagree: int) -> list[PairRecord]:
    recs = []
    for i in range(n):
        shadows = {"noise": _out("noise", "other" if i < noise_disagree else "ok"),
                   "cand": _out("cand", "other" if i < cand_disagree else "ok")}
        recs.append(PairRecord(agent="a", task_id=f"t{i}", production=_out(""), shadows=shadows))
    return recs


def test_a_candidate_is_flagged_only_beyond_the_noise_of_production_itself() -> None:
    same = shadow_report(_records(100, noise_disagree=20, cand_disagree=24), agent="a", candidate="cand",
                         noise="noise")
    assert same.verdict == "within noise" and same.excess is not None and same.excess[1] <= 0
    worse = shadow_report(_records(100, noise_disagree=5, cand_disagree=40), agent="a", candidate="cand",
                          noise="noise")
    assert worse.verdict == "differs beyond noise"
    assert shadow_report(_records(10, noise_disagree=0, cand_disagree=9), agent="a", candidate="cand",
                         noise="noise").verdict == "inconclusive"


def test_regressions_are_listed_first() -> None:
    recs = [PairRecord(agent="a", task_id="t-answer", production=_out(""), shadows={"c": _out("c", "x")}),
            PairRecord(agent="a", task_id="t-regress", production=_out(""),
                       shadows={"c": _out("c", status="failed")})]
    rep = shadow_report(recs, agent="a", candidate="c", min_pairs=1)
    assert [d.kind for d in rep.differences] == ["regression", "answer"]


# ----------------------------------------------------------------- against the broker


def _settings(url: str) -> Settings:
    return dataclasses.replace(Settings.from_env({}), nats_url=url, app="rollout_app:app", ack_wait_s=5.0)


async def _runtime(url: str, *, shadow: str | None = None, version: str | None = None,
                   tools: str | None = "all") -> Runtime:
    rt = Runtime(settings=_settings(url), app=rollout_app.app, agents=["shop"],
                 tools=tools if shadow is None else None, version=version,
                 shadow=ShadowConfig(label=shadow, recorded_wait_s=20.0) if shadow else None)
    await rt.start()
    return rt


async def _records_with(url: str, labels: set[str], n: int) -> list[PairRecord]:
    client = await AgentClient.connect(url, provision=False)
    try:
        store = await nats_adapters.bucket(client.js, subjects.OUTCOMES.name)
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            recs = [r for r in await load_records(store, "shop")
                    if r.production is not None and labels <= set(r.shadows)]
            if len(recs) >= n or asyncio.get_running_loop().time() > deadline:
                return recs
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def _submit_all(client: AgentClient, n: int, prefix: str) -> list[TaskCompleted]:
    ids = [await client.submit("shop", f"buy tea{i % 7} for {i + 1}", task_id=f"{prefix}-{i}") for i in range(n)]
    results = await asyncio.gather(*(client.result(t, timeout=WAIT_S) for t in ids))
    assert all(isinstance(r, TaskCompleted) for r in results), [r for r in results if not isinstance(r, TaskCompleted)]
    return list(results)  # type: ignore[arg-type]


async def test_a_shadow_sees_every_task_and_never_runs_a_side_effecting_tool(broker: EmbeddedNats) -> None:
    n = 200
    rollout_app.COUNTS.update(check_stock=0, charge=0)
    prod = await _runtime(broker.url)
    shadow = await _runtime(broker.url, shadow="v2", version="v2")
    client = await AgentClient.connect(broker.url)
    try:
        results = await _submit_all(client, n, "s")
        recs = await _records_with(broker.url, {"v2"}, n)
        # Every production task has the shadow's outcome beside it ...
        assert len(recs) == n
        # ... and the card was charged once per task: production's charge, never the shadow's.
        assert rollout_app.COUNTS["charge"] == n
        assert shadow.shadow_tools is not None
        assert shadow.shadow_tools.counts == {"live": 0, "recorded": n, "stub": 0}
        assert shadow.shadow_tools.counts["stub"] == 0
        # The results say which version answered, label and behaviour hash.
        v1_hash = fingerprint(rollout_app.app.get_agent("shop").spec, "shop-v1")
        assert {(r.agent_version, r.version_hash) for r in results} == {("v1", v1_hash)}
        assert {rec.shadows["v2"].version_hash for rec in recs} == {
            fingerprint(rollout_app.app.get_version("shop", "v2").spec, "shop-v2")}
        rep = shadow_report(recs, agent="shop", candidate="v2")
        assert rep.pairs == n and rep.verdict == "differs (no noise estimate)"
        assert rep.tools.agree == 0  # v2 skipped the stock check on every task
    finally:
        await client.close()
        await shadow.stop()
        await prod.stop()


async def test_a_read_only_tool_runs_live_in_a_shadow_and_nothing_lands_in_production(
        broker: EmbeddedNats) -> None:
    rollout_app.COUNTS.update(check_stock=0, charge=0)
    prod = await _runtime(broker.url)
    shadow = await _runtime(broker.url, shadow="twin", version="v1b")
    client = await AgentClient.connect(broker.url)
    try:
        await _submit_all(client, 20, "live")
        recs = await _records_with(broker.url, {"twin"}, 20)
        assert len(recs) == 20
        assert shadow.shadow_tools is not None and shadow.shadow_tools.counts["live"] == 20
        assert rollout_app.COUNTS == {"check_stock": 40, "charge": 20}
        assert shadow_report(recs, agent="shop", candidate="twin", min_pairs=20).verdict == "no differences"
        # Production's streams hold one result per task: the shadow wrote only under shadow.twin.
        prod_results = await client.js.stream_info("RESULTS")
        assert prod_results.state.messages == 20
    finally:
        await client.close()
        await shadow.stop()
        await prod.stop()


async def test_noise_from_a_random_model_is_measured_and_stops_a_no_change_candidate_being_flagged(
        broker: EmbeddedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_APP_RANDOM", "1")
    monkeypatch.setenv("ROLLOUT_APP_SEED", "7")
    n = 60
    prod = await _runtime(broker.url)
    shadows = [await _runtime(broker.url, shadow=label, version=version)
               for label, version in (("noise", "v1"), ("same", "v1b"), ("v2", "v2"))]
    client = await AgentClient.connect(broker.url)
    try:
        await _submit_all(client, n, "noisy")
        recs = await _records_with(broker.url, {"noise", "same", "v2"}, n)
        assert len(recs) == n
        same = shadow_report(recs, agent="shop", candidate="same", noise="noise")
        assert same.noise_overall is not None and 0 < same.noise_overall.agree < n  # the model is noisy
        assert same.verdict == "within noise"
        assert shadow_report(recs, agent="shop", candidate="v2", noise="noise").verdict == "differs beyond noise"
    finally:
        await client.close()
        for rt in shadows:
            await rt.stop()
        await prod.stop()


@pytest.mark.slow
async def test_killing_a_shadow_worker_changes_nothing_for_production(
        broker: EmbeddedNats, spawn_worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "tools.log"
    env = {"AGENTSTREAM_NATS_URL": broker.url, "AGENTSTREAM_APP": "rollout_app:app", "ROLLOUT_APP_LOG": str(log)}
    shadow = spawn_worker(["--agent", "shop", "--version", "v2", "--shadow"], env)
    prod = spawn_worker(["--agent", "shop", "--tools", "all"], env)
    client = await AgentClient.connect(broker.url)
    try:
        first = [await client.submit("shop", f"buy tea for {i + 1}", task_id=f"k-{i}") for i in range(20)]
        await asyncio.gather(*(client.result(t, timeout=WAIT_S) for t in first))
        shadow.kill()  # SIGKILL, mid-traffic
        shadow.wait(timeout=10)
        rest = [await client.submit("shop", f"buy tea for {i + 1}", task_id=f"k2-{i}") for i in range(40)]
        results = await asyncio.gather(*(client.result(t, timeout=WAIT_S) for t in rest))
        assert all(isinstance(r, TaskCompleted) for r in results)
        charges = [line for line in log.read_text().splitlines() if line.startswith("charge")]
        assert len(charges) == 60  # once per task, whatever happened to the shadow
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            prod.terminate()


def test_outcome_of_a_failed_task_keeps_its_reason() -> None:
    from agentstream.contracts.events import TaskFailed, Usage
    from agentstream.runtime.rollout.compare import outcome_of

    failed = TaskFailed(task_id="t", agent="a", agent_version="v2", reason="max_steps", message="m", steps=1,
                        tool_calls=0, usage=Usage(input_tokens=3, output_tokens=4, cost_usd=0.5), started_at=1.0,
                        finished_at=3.0, version_hash="abc")
    out = outcome_of(failed, label="v2")
    assert (out.status, out.reason, out.tokens, out.latency_s, out.version_hash) == ("failed", "max_steps", 7, 2.0, "abc")
    assert math.isclose(out.cost_usd, 0.5)


# ----------------------------------------------------------------- canary

from agentstream.runtime.rollout import canary as C  # noqa: E402
from agentstream.runtime.rollout.canary_control import (  # noqa: E402
    CanaryStore,
    ensure_candidate_consumers,
)


def test_routing_keeps_a_conversation_on_one_version_and_honours_the_weight() -> None:
    state = C.start("a", "v1", "v2", C.CanaryPolicy(steps=(30.0, 100.0)), now=0.0)
    at = C.PROPAGATION_S + 1
    keys = [C.routing_key(f"conv-{i}", "u", f"t-{i}") for i in range(3000)]
    share = sum(C.route(state, k, at) == "candidate" for k in keys) / len(keys)
    assert 0.27 < share < 0.33
    assert all(C.route(state, k, 0.0) == "baseline" for k in keys)  # before the weight takes effect
    # the same conversation, whatever the task, goes the same way
    assert {C.route(state, C.routing_key("conv-1", "u", f"t-{i}"), at) for i in range(50)} == {
        C.route(state, keys[1], at)}


def _window(verdict_cand: tuple[int, int], base: tuple[int, int] = (50, 0)) -> tuple[C.WindowStats, C.WindowStats]:
    b = C.window_stats([(i < base[1], "x" if i < base[1] else "", 0.1, 0.0) for i in range(base[0])])
    c = C.window_stats([(i < verdict_cand[1], "max_steps" if i < verdict_cand[1] else "", 0.1, 0.0)
                        for i in range(verdict_cand[0])])
    return b, c


def test_a_window_fails_on_errors_passes_within_limits_and_is_inconclusive_without_traffic() -> None:
    p = C.CanaryPolicy(min_samples=20)
    assert C.judge(*_window((50, 10)), p)[0] == "fail"
    # latency: only a real slowdown fails (ratio and absolute), not tens of ms of noise
    fast = C.window_stats([(False, "", 0.030, 0.0)] * 30)
    noisy = C.window_stats([(False, "", 0.051, 0.0)] * 30)
    slow = C.window_stats([(False, "", 0.400, 0.0)] * 30)
    assert C.judge(fast, noisy, p)[0] == "pass"
    assert C.judge(fast, slow, p)[0] == "fail"
    assert C.judge(*_window((50, 1)), p)[0] == "pass"
    assert C.judge(*_window((5, 0)), p)[0] == "inconclusive"
    assert C.judge(*_window((0, 0), base=(0, 0)), p)[0] == "inconclusive"


def test_the_state_machine_steps_up_rolls_back_and_stops_when_traffic_never_comes() -> None:
    p = C.CanaryPolicy(steps=(10.0, 50.0), interval_s=10, failure_limit=1, max_inconclusive=2)
    s = C.start("a", "v1", "v2", p, now=0.0)

    def result(verdict: str) -> C.WindowResult:
        b, c = _window((50, 0))
        return C.WindowResult(start=0, end=10, weight=s.weight, baseline=b, candidate=c, verdict=verdict, why=())  # type: ignore[arg-type]

    s1 = C.advance(s, result("pass"), 20.0)
    assert (s1.status, s1.weight, s1.weight_at(20.0)) == ("running", 50.0, 10.0)  # 50 % only after propagation
    assert C.advance(s1, result("pass"), 40.0).status == "promoted"
    assert C.advance(s1, result("pass"), 40.0).weight == 100.0
    back = C.advance(s1, result("fail"), 40.0)
    assert back.status == "rolled_back" and back.weight == 0.0
    quiet = C.advance(C.advance(s, result("inconclusive"), 20.0), result("inconclusive"), 30.0)
    assert quiet.status == "inconclusive" and quiet.weight == 0.0


async def _canary_setup(url: str, candidate: str, policy: C.CanaryPolicy) -> None:
    client = await AgentClient.connect(url, provision=False)
    try:
        store = CanaryStore(await nats_adapters.bucket(client.js, subjects.ROLLOUT.name))
        now = asyncio.get_running_loop().time()  # noqa: F841 - the state uses wall time below
        import time as _time

        await ensure_candidate_consumers(client.js, "shop", candidate, _time.time())
        await store.create(C.start("shop", "v1", candidate, policy, _time.time()))
    finally:
        await client.close()


async def _drive_canary(url: str, client: AgentClient, *, prefix: str, timeout: float) -> tuple[C.CanaryState, list[str]]:
    """Submit tasks (distinct conversations) until the canary leaves 'running'."""
    store_client = await AgentClient.connect(url, provision=False)
    store = CanaryStore(await nats_adapters.bucket(store_client.js, subjects.ROLLOUT.name))
    ids: list[str] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            loaded = await store.load("shop")
            assert loaded is not None
            if loaded[0].status != "running" or asyncio.get_running_loop().time() > deadline:
                return loaded[0], ids
            for _ in range(4):
                i = len(ids)
                ids.append(await client.submit("shop", f"buy tea for {i + 1}", task_id=f"{prefix}-{i}",
                                               conversation_id=f"conv-{prefix}-{i}"))
            await asyncio.sleep(0.2)  # load generation pace, not synchronisation
    finally:
        await store_client.close()


@pytest.fixture
def fast_canary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "PROPAGATION_S", 1.5)


@contextlib.asynccontextmanager
async def _canary_run(url: str, version: str, prefix: str) -> AsyncIterator[tuple[Runtime, Runtime, AgentClient,
                                                                                  C.CanaryState, list[str]]]:
    """Production v1 plus a canary candidate ``version`` over two steps (50%, 100%),
    driven to a verdict; yields (prod, cand, client, final state, task ids)."""
    prod = await _runtime(url)
    cand = Runtime(settings=_settings(url), app=rollout_app.app, agents=["shop"], version=version, canary=True)
    await cand.start()
    client = await AgentClient.connect(url)
    try:
        await _canary_setup(url, version, C.CanaryPolicy(steps=(50.0, 100.0), interval_s=2.0, min_samples=3))
        state, ids = await _drive_canary(url, client, prefix=prefix, timeout=60)
        yield prod, cand, client, state, ids
    finally:
        await client.close()
        await cand.stop()
        await prod.stop()


async def test_a_canary_whose_prompt_breaks_tool_use_is_rolled_back(broker: EmbeddedNats, fast_canary: None) -> None:
    async with _canary_run(broker.url, "broken", "rb") as (prod, cand, client, state, ids):
        assert state.status == "rolled_back", state
        assert "error rate" in state.note
        results = await asyncio.gather(*(client.result(t, timeout=WAIT_S) for t in ids))
        by_version = {r.agent_version for r in results}
        assert by_version == {"v1", "broken"}  # the candidate did get real traffic before the rollback
        # Each task ran on exactly one version: two model turns for v1, at most two (max_steps) for broken.
        v1 = sum(r.agent_version == "v1" for r in results)
        broken = sum(r.agent_version == "broken" for r in results)
        assert prod.engines["shop"].model_calls == 2 * v1
        assert cand.engines["shop"].model_calls == 2 * broken
        # After the rollback takes effect, production answers everything.
        await asyncio.sleep(C.PROPAGATION_S)  # the rollback's own, documented, propagation delay
        later = [await client.submit("shop", "buy tea for 1", conversation_id=f"after-{i}") for i in range(20)]
        assert {r.agent_version for r in await asyncio.gather(*(client.result(t, timeout=WAIT_S) for t in later))} == {"v1"}


async def test_a_good_canary_is_promoted(broker: EmbeddedNats, fast_canary: None) -> None:
    async with _canary_run(broker.url, "v1b", "pr") as (_prod, _cand, client, state, ids):
        assert state.status == "promoted", state
        assert [w.verdict for w in state.windows] == ["pass", "pass"]
        results = await asyncio.gather(*(client.result(t, timeout=WAIT_S) for t in ids))
        assert all(isinstance(r, TaskCompleted) for r in results)
        audit = await client.js.stream_info("AUDIT", subjects_filter="audit.canary_>")
        kinds = set((audit.state.subjects or {}).keys())
        assert {"audit.canary_step.shop", "audit.canary_promoted.shop"} <= kinds


async def test_a_canary_with_no_traffic_is_inconclusive_not_a_pass(broker: EmbeddedNats, fast_canary: None) -> None:
    prod = await _runtime(broker.url)
    try:
        await _canary_setup(broker.url, "v2", C.CanaryPolicy(steps=(50.0,), interval_s=1.0, min_samples=3,
                                                             max_inconclusive=2))
        client = await AgentClient.connect(broker.url, provision=False)
        store = CanaryStore(await nats_adapters.bucket(client.js, subjects.ROLLOUT.name))
        try:
            from conftest import until

            async def stopped() -> C.CanaryState | None:
                loaded = await store.load("shop")
                return loaded[0] if loaded is not None and loaded[0].status != "running" else None

            state = await until(stopped, 30, "the canary to stop")
            assert state.status == "inconclusive" and state.weight == 0.0
            assert [w.verdict for w in state.windows] == ["inconclusive", "inconclusive"]
        finally:
            await client.close()
    finally:
        await prod.stop()


# ----------------------------------------------------------------- replay

from agentstream.runtime.rollout.replay import RecordedModel, load_recordings, replay_one, report  # noqa: E402


async def test_replay_of_production_against_itself_agrees_and_a_candidate_shows_its_first_divergence(
        broker: EmbeddedNats) -> None:
    rollout_app.COUNTS.update(check_stock=0, charge=0)
    prod = await _runtime(broker.url)
    client = await AgentClient.connect(broker.url)
    try:
        await _submit_all(client, 15, "rp")
        charged = rollout_app.COUNTS["charge"]
        recs = await load_recordings(client.js, "shop", since_s=3600)
        assert len(recs) == 15
        app = rollout_app.app
        v1, v2 = app.get_version("shop", "v1").spec, app.get_version("shop", "v2").spec
        same = [await replay_one(v1, app.get_version("shop", "v1").scripted(), r, app.tools) for r in recs]  # type: ignore[misc]
        assert all(not r.divergence.what for r in same)
        assert report(same, agent="shop", candidate="v1").verdict == "no differences"
        played = [await replay_one(v1, RecordedModel(r), r, app.tools) for r in recs]
        assert all(not r.divergence.what for r in played)  # the determinism check
        cand = [await replay_one(v2, app.get_version("shop", "v2").scripted(), r, app.tools) for r in recs]  # type: ignore[misc]
        assert {r.divergence.step for r in cand} == {1}
        assert all("check_stock" in r.divergence.what for r in cand)
        # Nothing ran for real: charges came from the recording.
        assert rollout_app.COUNTS["charge"] == charged
        assert all(r.served["recorded"] >= 1 and r.served["stub"] == 0 for r in cand)
    finally:
        await client.close()
        await prod.stop()


async def test_the_cli_reports_shadows_versions_replays_and_canaries(broker: EmbeddedNats) -> None:
    from conftest import one_line_error, run_cli, worker_env

    prod = await _runtime(broker.url)
    shadow = await _runtime(broker.url, shadow="v2", version="v2")
    client = await AgentClient.connect(broker.url)
    env = worker_env({"AGENTSTREAM_NATS_URL": broker.url, "AGENTSTREAM_APP": "rollout_app:app"})
    try:
        await _submit_all(client, 6, "cli")
        await _records_with(broker.url, {"v2"}, 6)
        rep = await asyncio.to_thread(run_cli, ["shadow", "report", "--agent", "shop", "--candidate", "v2",
                                                "--min-pairs", "1"], env)
        assert rep.returncode == 0, rep.stderr
        assert "same tool calls       0.0%" in rep.stdout and "[tools] task cli-" in rep.stdout
        assert "agentstream trace cli-" in rep.stdout  # each difference links to its trace
        ver = await asyncio.to_thread(run_cli, ["versions", "--json"], env)
        rows = {(r["version"], r["deployment"]): r["tasks"] for r in __import__("json").loads(ver.stdout)}
        assert rows == {("v1", "production"): 6, ("v2", "shadow:v2"): 6}
        rp = await asyncio.to_thread(run_cli, ["replay", "--agent", "shop", "--candidate", "v1", "--recorded-model"],
                                     env)
        assert rp.returncode == 0 and "6 identical to production" in rp.stdout, rp.stdout + rp.stderr
        none = await asyncio.to_thread(run_cli, ["canary", "status", "--agent", "shop"], env)
        assert "no canary of 'shop'" in one_line_error(none)
        bad = await asyncio.to_thread(run_cli, ["worker", "--agent", "shop", "--version", "v9", "--shadow"], env)
        assert "no version 'v9'" in one_line_error(bad)
        # The dashboard's panel: the same verdict as the report.
        from agentstream.runtime.rollout.comparator import summary

        panel = await summary(await nats_adapters.bucket(client.js, subjects.OUTCOMES.name),
                              await nats_adapters.bucket(client.js, subjects.ROLLOUT.name))
        assert [(s["candidate"], s["pairs"], s["verdict"]) for s in panel["shadows"]] == [
            ("v2", 6, "inconclusive")]
    finally:
        await client.close()
        await shadow.stop()
        await prod.stop()


def test_a_canary_window_fails_when_online_evaluation_scores_drop() -> None:
    p = C.CanaryPolicy(min_samples=20, max_score_drop=0.1)
    ok = [(False, "", 0.1, 0.0)] * 30
    assert C.judge(C.window_stats(ok, [0.9] * 30), C.window_stats(ok, [0.88] * 30), p)[0] == "pass"
    verdict, why = C.judge(C.window_stats(ok, [0.9] * 30), C.window_stats(ok, [0.5] * 30), p)
    assert verdict == "fail" and "evaluation score 0.50 vs baseline 0.90" in why[0]


async def test_canary_analysis_reads_the_online_evaluators_scores_by_version(broker: EmbeddedNats) -> None:
    import time as _time

    from agentstream.contracts import codec
    from agentstream.contracts.events import EvaluationScored
    from agentstream.runtime.rollout.canary_control import window_scores

    client = await AgentClient.connect(broker.url)
    try:
        start = _time.time() - 1
        for i, (version, groundedness, safe) in enumerate([("v1", 0.9, True), ("v2", 0.4, True), ("v2", 0.9, False)]):
            ev = EvaluationScored(task_id=f"t{i}", agent="shop", agent_version=version, evaluator="e", status="completed",
                                  groundedness=groundedness, safety=safe, latency_s=0.1, tokens=1, cost_usd=0.0,
                                  at=_time.time())
            await client.js.publish(subjects.eval_scores("shop", f"t{i}"), codec.encode(ev))
        scores = await window_scores(client.js, "shop", start, _time.time() + 60, ("v1", "v2"))
        assert scores == {"v1": [0.9], "v2": [0.4, 0.0]}  # an unsafe answer scores 0
    finally:
        await client.close()
