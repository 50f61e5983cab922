"""Strategies end to end on a real broker: the multi-step dataset as a CI
gate, `eval --version plan`, `eval calibrate-router`, and the routed
candidate shadowing production ReAct on live traffic without side effects."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgspec
import pytest
from conftest import run_cli, until, worker_env

from agentstream import AgentClient, TaskCompleted
from agentstream.contracts import subjects
from agentstream.examples import support_desk
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.embedded_broker import EmbeddedNats
from agentstream.runtime.config.settings import Settings
from agentstream.runtime.core.version import fingerprint
from agentstream.runtime.evaluation.dataset import load_dataset
from agentstream.runtime.evaluation.gates import evaluate_gates, load_gates
from agentstream.runtime.interfaces.eval_command import evaluate
from agentstream.runtime.planning.router import RouterPolicy, route
from agentstream.runtime.rollout.comparator import load_records
from agentstream.runtime.rollout.compare import PairRecord, render_report, shadow_report
from agentstream.runtime.rollout.shadow import ShadowConfig
from agentstream.runtime.service.runtime import Runtime

DATASETS = Path(support_desk.__file__).parent / "datasets"
MULTISTEP = DATASETS / "multistep.yaml"
WAIT_S = 60.0


def _settings(tmp: Path, url: str | None = None) -> Settings:
    return dataclasses.replace(Settings.from_env({}), data_dir=tmp, nats_url=url, ack_wait_s=5.0)


async def test_the_multistep_dataset_passes_its_gate_with_react(tmp_path: Path) -> None:
    """The CI gate: every multi-step case, as real tasks, within its budgets."""
    ds = load_dataset(MULTISTEP)
    run = await evaluate(ds, _settings(tmp_path), agent="support", runs=1, concurrency=16)
    report = evaluate_gates(load_gates(DATASETS / "multistep.gates.yaml"), run)
    assert report.ok, [g.message for g in report.failed]
    failed = [(r.case_id, r.score.failed_checks) for r in run.results if not r.score.passed]
    assert failed == []


async def test_eval_version_runs_the_declared_strategy_version(tmp_path: Path) -> None:
    ds = msgspec.structs.replace(load_dataset(MULTISTEP), cases=load_dataset(MULTISTEP).cases[:3])
    plan = await evaluate(ds, _settings(tmp_path / "p"), agent="support", label="plan", runs=1)
    react = await evaluate(ds, _settings(tmp_path / "r"), agent="support", runs=1)
    plan_spec = support_desk.app.get_version("support", "plan").spec
    assert plan_spec.strategy == "plan" and plan.version == "plan"
    assert plan.behaviour_hash != react.behaviour_hash  # the strategy is part of what defines behaviour
    assert all(r.status == "completed" for r in plan.results)
    # Plan steps are seen as calls with their arguments (the core's ToolCallDispatched for a plan):
    # the same action checks hold as for ReAct, on fewer tokens (two turns, no re-reading).
    assert [r.score.action for r in plan.results] == [1.0, 1.0, 1.0]
    # A dependent step dispatched after its dependency (a second wave in the same model turn) is seen too.
    chain = msgspec.structs.replace(ds, cases=tuple(c for c in load_dataset(MULTISTEP).cases
                                                    if c.id == "chain-customers-2"))
    waves = await evaluate(chain, _settings(tmp_path / "w"), agent="support", label="plan", runs=1)
    assert [c.name for c in waves.results[0].calls].count("customer_profile") == 2
    assert waves.results[0].score.passed
    assert sum(r.score.tokens for r in plan.results) < sum(r.score.tokens for r in react.results)


def test_calibrate_router_prints_the_threshold_to_declare(tmp_path: Path) -> None:
    out = tmp_path / "router.json"
    proc = run_cli(["eval", "calibrate-router", str(DATASETS / "support.yaml"), str(MULTISTEP),
                    "--held-out", "0.3", "--seed", "1", "--no-progress", "--json", str(out)],
                   worker_env(data_dir=tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "router_threshold=" in proc.stdout and "held-out" in proc.stdout
    report = json.loads(out.read_text())
    parts = [lb["part"] for lb in report["labels"]]
    assert len(parts) == 24 + 26
    assert parts.count("held-out") == round(0.3 * 24) + round(0.3 * 26)  # per dataset, deterministic
    assert 0.0 <= report["held_out_accuracy"] <= 1.0
    # The split is a function of the seed and the case ids, not of the run.
    out2 = tmp_path / "again.json"
    run_cli(["eval", "calibrate-router", str(DATASETS / "support.yaml"), str(MULTISTEP), "--held-out", "0.3",
             "--seed", "1", "--no-progress", "--json", str(out2)], worker_env(data_dir=tmp_path / "b"))
    split = {(lb["case"], lb["part"]) for lb in report["labels"]}
    assert split == {(lb["case"], lb["part"]) for lb in json.loads(out2.read_text())["labels"]}


# ----------------------------------------------------------------- shadow on live traffic


def test_the_shadow_report_splits_a_routed_candidate_by_the_strategy_it_ran() -> None:
    from agentstream.runtime.rollout.compare import Outcome

    def out(label: str, output: str, tokens: int, strategy: str = "") -> Outcome:
        return Outcome(label=label, version=label or "v1", version_hash="h", status="completed", output=output,
                       tokens=tokens, strategy=strategy)

    recs = [PairRecord(agent="a", task_id=f"t{i}", production=out("", "ok", 2000, "react"),
                       shadows={"r": out("r", "ok" if i % 2 else "other", 1300 if i % 2 else 2000,
                                         "plan" if i % 2 else "react")}) for i in range(10)]
    rep = shadow_report(recs, agent="a", candidate="r", min_pairs=1)
    split = {sp.strategy: sp for sp in rep.by_strategy}
    assert (split["plan"].pairs, split["plan"].overall.agree, split["plan"].deltas.tokens_mean) == (5, 5, (2000, 1300))
    assert (split["react"].pairs, split["react"].overall.agree) == (5, 0)
    # A candidate that only ever ran ReAct (or records from before strategies) has no split.
    plain = [PairRecord(agent="a", task_id="t", production=out("", "ok", 1), shadows={"r": out("r", "ok", 1)})]
    assert shadow_report(plain, agent="a", candidate="r", min_pairs=1).by_strategy == ()


async def _records(url: str, label: str, n: int) -> list[PairRecord]:
    client = await AgentClient.connect(url, provision=False)
    try:
        store = await nats_adapters.bucket(client.js, subjects.OUTCOMES.name)

        async def complete() -> list[PairRecord] | None:
            recs = [r for r in await load_records(store, "support") if r.production is not None and label in r.shadows]
            return recs if len(recs) >= n else None

        return await until(complete, WAIT_S, f"{n} paired outcomes of production and {label}")  # type: ignore[no-any-return]
    finally:
        await client.close()


async def test_the_routed_candidate_shadows_production_react_without_side_effects(
        broker: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support_desk, "LATENCY_S", 0.0)
    refunds: list[int] = []
    real_refund = support_desk.issue_refund.fn

    async def counted(order_id: int, amount: float) -> dict[str, object]:
        refunds.append(order_id)
        return await real_refund(order_id, amount)  # type: ignore[no-any-return]

    monkeypatch.setattr(support_desk.issue_refund, "fn", counted)
    # Live traffic: one-step questions and multi-step ones, small refunds among them (no approvals).
    inputs = [c.input for c in load_dataset(MULTISTEP).cases if "approval" not in c.tags][:14]
    inputs += ["Where is my order 42?", "What are your opening hours?", "How do I reset my password?",
               "Please refund order 17.", "I want a refund for order 40", "Where is #7?"]
    settings = _settings(tmp_path, broker.url)
    prod = Runtime(settings=settings, app=support_desk.app, agents=["support"], tools="all")
    shadow = Runtime(settings=settings, app=support_desk.app, agents=["support"], version="routed",
                     shadow=ShadowConfig(label="routed", recorded_wait_s=20.0))
    await prod.start()
    await shadow.start()
    client = await AgentClient.connect(broker.url)
    try:
        ids = [await client.submit("support", text, task_id=f"live-{i}") for i, text in enumerate(inputs)]
        results = [await client.result(t, timeout=WAIT_S) for t in ids]
        assert all(isinstance(r, TaskCompleted) for r in results)
        recs = await _records(broker.url, "routed", len(inputs))
        assert len(recs) == len(inputs)
        # No side effects from the shadow: each refund ran once, production's.
        prod_refunds = sum(t.startswith("issue_refund") for r in recs if r.production is not None
                           for t in r.production.tools)
        assert len(refunds) == prod_refunds > 0
        assert shadow.shadow_tools is not None and shadow.shadow_tools.counts["stub"] == 0
        assert (await client.js.stream_info("RESULTS")).state.messages == len(inputs)
        routed = support_desk.app.get_version("support", "routed").spec
        assert {rec.shadows["routed"].version_hash for rec in recs} == {
            fingerprint(routed, "scripted-support")}
        # The comparison, overall and per strategy the router chose (each shadow task's RouteDecided).
        policy = RouterPolicy(threshold=routed.router_threshold)
        text = {f"live-{i}": t for i, t in enumerate(inputs)}
        overall = shadow_report(recs, agent="support", candidate="routed", min_pairs=5)
        assert overall.pairs == len(inputs)
        print(render_report(overall))
        assert {rec.shadows["routed"].strategy for rec in recs} <= {"react", "plan"}
        by_route = {s: [r for r in recs if r.shadows["routed"].strategy == s] for s in ("react", "plan")}
        for s, group in by_route.items():  # the recorded decision is the router's, as documented
            assert all(route(text[r.task_id], policy).strategy == s for r in group)
        split = {sp.strategy: sp for sp in overall.by_strategy}
        assert split["plan"].pairs == len(by_route["plan"]) > 0
        assert split["plan"].deltas.tokens_mean[1] < split["plan"].deltas.tokens_mean[0]
        assert "where the candidate ran plan" in render_report(overall)
        # Tasks the router keeps on ReAct behave exactly as production does.
        same = shadow_report(by_route["react"], agent="support", candidate="routed", min_pairs=1)
        assert same.pairs == len(by_route["react"]) > 0 and same.verdict == "no differences"
        # A refund that depends on eligibility ("if it is eligible", "whichever qualifies") is kept
        # on ReAct whatever the threshold, and is issued as production issues it (by production).
        gated = [r for r in recs if route(text[r.task_id], policy).features.conditionals]
        assert gated and all(r.shadows["routed"].strategy == "react" for r in gated)
        assert any(t.startswith("issue_refund") for r in gated for t in r.shadows["routed"].tools)
        planned = by_route["plan"]
        assert planned, "the calibrated router plans some of this traffic"
        # Planned tasks: fewer tokens (two turns, no re-reading, no tool schemas in the solver turn) ...
        assert sum(r.shadows["routed"].tokens for r in planned) < sum(
            r.production.tokens for r in planned if r.production is not None)
        # ... and a planner cannot act on a result it has not seen: where the dependency is only
        # implied ("please refund": this agent checks eligibility first, which the text does not
        # say), production refunded, the shadow only said it could (the report lists these first).
        acted = [r for r in planned if r.production is not None
                 and any(t.startswith("issue_refund") for t in r.production.tools)]
        assert acted and all(not any(t.startswith("issue_refund") for t in r.shadows["routed"].tools)
                             for r in acted)
        assert all("not issued" in r.shadows["routed"].output for r in acted)
        # Everything else the plan did is what production did, in other batches (one wave, not turns).
        for r in planned:
            if r not in acted and r.production is not None:
                assert sorted(r.shadows["routed"].tools) == sorted(r.production.tools), r.task_id
    finally:
        await client.close()
        await shadow.stop()
        await prod.stop()
