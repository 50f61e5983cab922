"""``agentstream eval`` end to end: the support dataset as real tasks on a real
nats-server, gated as CI gates it; a planted regression caught; a noisy
no-change candidate not flagged; user mistakes as one line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from apps.support_variants import noisy_script
from conftest import REPO_ROOT, one_line_error, run_cli, worker_env

from agentstream import FunctionModel, Settings
from agentstream.runtime.evaluation.dataset import load_dataset
from agentstream.runtime.evaluation.gates import evaluate_gates, parse_gates
from agentstream.runtime.evaluation.results import discordant_pairs, summarize
from agentstream.runtime.interfaces.cli import main as cli_main
from agentstream.runtime.interfaces.eval_command import evaluate

DATASETS = REPO_ROOT / "agentstream" / "examples" / "datasets"
SUPPORT = DATASETS / "support.yaml"
PRICES = json.dumps({"scripted-support": {"input": 0.5, "output": 1.5}})


def eval_cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["eval", *args], worker_env({"AGENTSTREAM_PRICES": PRICES, **env}), cwd=tmp_path, timeout=120)


@pytest.mark.slow
def test_ci_gate_support_dataset_with_the_scripted_model(tmp_path: Path) -> None:
    """The project's own CI gate: the shipped dataset, the shipped gate file."""
    proc = eval_cli([str(SUPPORT), "--runs", "2", "--gates", str(DATASETS / "support.gates.yaml"),
                     "--json", "r.json", "--junit", "r.xml", "--markdown", "r.md", "--html", "r.html"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pass@1" in proc.stdout and "gate ok   safety" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is True
    cases = {c["case_id"]: c for c in report["summary"]["cases"]}
    assert len(cases) == len(load_dataset(SUPPORT).cases) >= 20
    assert all(c["n"] == 2 and c["passed"] == 2 for c in cases.values())
    # Evidence from the bus: the parallel case's three lookups were one turn,
    # the approved refund ran after a supervisor's approval, the denied one never ran.
    runs = {r["case_id"]: r for r in report["run"]["results"] if r["run"] == 0}
    assert len({c["step"] for c in runs["refund-check-parallel"]["calls"]}) == 1
    refund = {c["name"]: c for c in runs["refund-needs-approval-approved"]["calls"]}["issue_refund"]
    assert refund["approval"] == "approved" and refund["executed"]
    denied = {c["name"]: c for c in runs["refund-needs-approval-denied"]["calls"]}["issue_refund"]
    assert denied["approval"] == "denied" and not denied["executed"]
    # Cost per case and per run are reported (priced from AGENTSTREAM_PRICES).
    assert 0 < report["summary"]["cost_per_case_usd"] < report["summary"]["cost_per_run_usd"]
    suites = ET.parse(tmp_path / "r.xml").getroot()
    case_suite = suites.find("testsuite")
    assert case_suite is not None and case_suite.get("tests") == str(len(cases)) and case_suite.get("failures") == "0"
    assert "| refund-follow-up | 2/2 |" in (tmp_path / "r.md").read_text()
    assert "<svg" in (tmp_path / "r.html").read_text()


@pytest.mark.slow
def test_gate_fails_on_a_planted_regression_and_passes_on_the_baseline(tmp_path: Path) -> None:
    compare = str(DATASETS / "support.compare.yaml")
    saved = eval_cli([str(SUPPORT), "--save-baseline"], tmp_path)
    assert saved.returncode == 0 and "baseline stored" in saved.stdout, saved.stderr

    bad = eval_cli([str(SUPPORT), "--app", "support_variants:regressed", "--baseline", "v1", "--gates", compare,
                    "--json", "bad.json"], tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert lines and all(line.startswith("agentstream: gate failed: ") for line in lines)
    assert any("pass@1 vs v1" in line and "regression" in line and "McNemar" in line for line in lines)
    assert "Traceback" not in bad.stderr
    report = json.loads((tmp_path / "bad.json").read_text())
    assert report["run"]["version"] == "v2-no-eligibility"
    failing = {c["case_id"] for c in report["summary"]["cases"] if c["passed"] < c["n"]}
    assert failing and all("refund" in c for c in failing)  # exactly what the dropped tool serves

    same = eval_cli([str(SUPPORT), "--baseline", "v1", "--gates", compare], tmp_path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "gate ok   pass@1 vs v1" in same.stdout


async def test_a_no_change_candidate_on_a_random_model_is_not_flagged(tmp_path: Path) -> None:
    """Same agent, same dataset, a model that fails 10% of first turns at
    random: two seeded runs differ case by case, yet the paired comparison
    does not call it a regression."""
    dataset = load_dataset(SUPPORT)
    settings = dataclasses.replace(Settings.from_env({}), data_dir=tmp_path)
    runs = []
    for seed in (1, 2):
        runs.append(await evaluate(dataset, settings, agent="support", runs=8, concurrency=24, seed=0,
                                   model=FunctionModel(noisy_script(seed), name="noisy-support")))
    baseline, candidate = runs
    worse, better = discordant_pairs(candidate, baseline)
    assert worse + better > 0, "the model was meant to be noisy"
    base_pass = summarize(baseline).scores["pass@1"].estimate
    cand_pass = summarize(candidate).scores["pass@1"].estimate
    assert base_pass < 1 and cand_pass < 1
    gates = parse_gates({"non_inferiority": {"margins": {"pass@1": 0.1, "action": 0.1, "outcome": 0.1}}},
                        source="test")
    report = evaluate_gates(gates, candidate, baseline=baseline)
    assert report.ok, [g.message for g in report.results]
    print(f"\nnoisy model: baseline pass@1 {base_pass:.3f}, candidate {cand_pass:.3f}, discordant "
          f"worse/better {worse}/{better}: " + "; ".join(g.message for g in report.results))


def eval_main(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """``agentstream eval ARGS`` in this process (mistakes fail before any
    broker starts, so a subprocess would only add its start-up time)."""
    for key in [k for k in os.environ if k.startswith("AGENTSTREAM_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    try:
        code = cli_main(["eval", *args])
    except SystemExit as exc:  # usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("args,needle", [
    (["missing.yaml"], "cannot read dataset missing.yaml"),
    ([str(SUPPORT), "--gates", "nope.yaml"], "cannot read gate file nope.yaml"),
    ([str(SUPPORT), "--baseline", "v9"], "no baseline support@v9"),
    ([str(SUPPORT), "--agent", "nobody"], "unknown agent 'nobody'"),
    (["calibrate"], "usage: agentstream eval calibrate LABELS"),
    ([str(SUPPORT), str(SUPPORT)], "one dataset at a time"),
])
def test_mistakes_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                               args: list[str], needle: str) -> None:
    line = one_line_error(eval_main(args, tmp_path, monkeypatch, capsys), code=2)  # usage or configuration (ExitCode.USAGE)
    assert needle in line


def test_bad_dataset_and_gate_file_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def error(*args: str) -> str:
        return one_line_error(eval_main(list(args), tmp_path, monkeypatch, capsys), code=2)

    (tmp_path / "d.yaml").write_text("cases:\n  - id: a\n    input: hi\n    expect: {tools: {order: sideways}}\n")
    assert "case a" in error("d.yaml")
    (tmp_path / "y.yaml").write_text("cases: [oops\n")
    assert "not valid YAML" in error("y.yaml") and "line 2" in error("y.yaml")
    (tmp_path / "g.yaml").write_text("thresholds: {pass@1: 1.5}\n")
    assert "not between 0 and 1" in error(str(SUPPORT), "--gates", "g.yaml")
    (tmp_path / "g2.yaml").write_text("thresholds: {accuracy: 0.5}\n")
    assert "unknown metric 'accuracy'" in error(str(SUPPORT), "--gates", "g2.yaml")
    assert one_line_error(eval_main([str(SUPPORT), "--runs", "0"], tmp_path, monkeypatch, capsys), code=2)


def test_calibrate_prints_agreement_with_the_labels(tmp_path: Path) -> None:
    proc = eval_cli(["calibrate", str(DATASETS / "judge-labels.yaml"), "--judge", "scripted"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 labelled items" in proc.stdout and "Cohen's kappa" in proc.stdout


@pytest.mark.real_model
@pytest.mark.skipif(not os.environ.get("AGENTSTREAM_EVAL_MODEL"),
                    reason="no real model configured: set AGENTSTREAM_EVAL_MODEL (and OPENAI_BASE_URL, OPENAI_API_KEY)")
def test_support_dataset_against_a_real_model(tmp_path: Path) -> None:
    """The same dataset through an OpenAI-compatible server: reports what it
    measured; only safety is gated, a real model's quality is the team's call."""
    (tmp_path / "g.yaml").write_text("thresholds: {safety: 1.0}\n")
    proc = run_cli(["eval", str(SUPPORT), "--gates", "g.yaml", "--json", "r.json", "--timeout", "120"],
                   worker_env({"AGENTSTREAM_MODEL": os.environ["AGENTSTREAM_EVAL_MODEL"],
                               **{k: v for k, v in os.environ.items() if k.startswith("OPENAI_")}}),
                   cwd=tmp_path, timeout=900)
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["model"] == os.environ["AGENTSTREAM_EVAL_MODEL"]
    print(proc.stdout)
