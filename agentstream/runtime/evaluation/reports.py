"""Reports of a run: a terminal table, JSON, Markdown, HTML (pass^k curves as
inline SVG, per-case diffs against the baseline) and JUnit XML. Pure text
builders; model output is untrusted, so everything shown is escaped."""

from __future__ import annotations

import html
import io
import json
import re
import time
from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree as ET

import msgspec

from agentstream.runtime.evaluation.gates import GateReport
from agentstream.runtime.evaluation.results import EvalRun, Summary, by_case, summarize

SCORE_LABELS = {"pass@1": "pass@1", "action": "action correctness", "outcome": "outcome correctness",
                "groundedness": "groundedness", "safety": "safety", "within_budget": "within case budget",
                "judge": "judge"}


def _iv(summary: Summary, metric: str) -> str:
    iv = summary.scores.get(metric)
    if iv is None:
        return "-"
    return f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def report_dict(run: EvalRun, *, baseline: EvalRun | None = None, gates: GateReport | None = None) -> dict[str, Any]:
    s = summarize(run)
    out: dict[str, Any] = {"run": msgspec.to_builtins(run), "summary": s.to_dict()}
    if baseline is not None:
        out["baseline"] = {"version": baseline.version, "run_id": baseline.run_id,
                           "summary": summarize(baseline).to_dict()}
    if gates is not None:
        out["gates"] = [{"name": g.name, "status": g.status, "message": g.message} for g in gates.results]
        out["comparisons"] = [c.to_dict() for c in gates.comparisons]
        out["ok"] = gates.ok
    return out


def json_report(run: EvalRun, *, baseline: EvalRun | None = None, gates: GateReport | None = None) -> str:
    return json.dumps(report_dict(run, baseline=baseline, gates=gates), indent=2, default=str) + "\n"


# ------------------------------------------------------------------ terminal


def terminal_report(run: EvalRun, *, baseline: EvalRun | None = None, gates: GateReport | None = None,
                    width: int = 120) -> str:
    """The table a person reads after ``agentstream eval``: scores apart, with intervals."""
    from rich.console import Console
    from rich.table import Table

    s = summarize(run)
    b = summarize(baseline) if baseline is not None else None
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    t = Table(title=f"{run.dataset} — {run.agent}@{run.version}: {len(run.case_ids)} cases x {run.runs_per_case} "
                    f"runs", title_justify="left")
    t.add_column("score")
    t.add_column("value [95% CI]", justify="right")
    if b is not None and baseline is not None:
        t.add_column(f"baseline {baseline.version}", justify="right")
    for metric, label in SCORE_LABELS.items():
        if metric in s.scores:
            row = [label, _iv(s, metric)]
            if b is not None:
                row.append(_iv(b, metric))
            t.add_row(*row)
    for k, iv in s.pass_k.items():
        if k == 1:
            continue
        row = [f"pass^{k}", f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}]"]
        if b is not None:
            biv = b.pass_k.get(k)
            row.append(f"{biv.estimate:.3f}" if biv is not None else "-")
        t.add_row(*row)
    for label, value, bvalue in (
        ("cost per case", f"${s.cost_per_case_usd:.6f}", b and f"${b.cost_per_case_usd:.6f}"),
        ("cost per run (whole dataset)", f"${s.cost_per_run_usd:.6f}", b and f"${b.cost_per_run_usd:.6f}"),
        ("latency p50 / p95", f"{s.latency_p50_s:.2f}s / {s.latency_p95_s:.2f}s",
         b and f"{b.latency_p50_s:.2f}s / {b.latency_p95_s:.2f}s"),
        ("tokens per case", f"{s.tokens_per_case:.0f}", b and f"{b.tokens_per_case:.0f}"),
    ):
        t.add_row(*([label, value] + ([bvalue or "-"] if b is not None else [])))
    console.print(t)
    failing = [c for c in s.cases if c.c < c.n]
    if failing:
        ft = Table(title="cases with failed runs", title_justify="left")
        ft.add_column("case")
        ft.add_column("passed", justify="right")
        ft.add_column("first failed check")
        ft.add_column("trace")
        grouped = by_case(run)
        for c in failing:
            first = next((r for r in grouped[c.case_id] if not r.score.passed), None)
            chk = first.score.failed_checks[0] if first is not None and first.score.failed_checks else None
            ft.add_row(c.case_id, f"{c.c}/{c.n}",
                       _plain(f"{chk.name}: {chk.detail}" if chk else "-")[:90], first.trace if first else "")
        console.print(ft)
    if gates is not None:
        for g in gates.results:
            mark = {"pass": "ok  ", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "warn": "warn"}[g.status]
            console.print(_plain(f"gate {mark} {g.message}"), markup=False, highlight=False)
    return console.export_text()


def _plain(text: str) -> str:
    """Untrusted text for a terminal: no control characters, no rich markup."""
    from rich.markup import escape

    return escape("".join(ch if ch.isprintable() else " " for ch in text))


# ------------------------------------------------------------------ markdown


def _md(text: str) -> str:
    return html.escape(" ".join(text.split())).replace("|", "\\|")


def markdown_report(run: EvalRun, *, baseline: EvalRun | None = None, gates: GateReport | None = None) -> str:
    s = summarize(run)
    b = summarize(baseline) if baseline is not None else None
    lines = [f"# Evaluation: {_md(run.dataset)} — {_md(run.agent)}@{_md(run.version)}", "",
             f"{len(run.case_ids)} cases x {run.runs_per_case} runs; dataset `{run.dataset_hash[:12]}`; "
             f"run `{run.run_id}`; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(run.finished_at))}", ""]
    head = "| score | value [95% CI] |" + (f" baseline {_md(baseline.version)} |" if baseline else "")
    lines += [head, "|---|---:|" + ("---:|" if baseline else "")]
    for metric, label in SCORE_LABELS.items():
        if metric in s.scores:
            lines.append(f"| {label} | {_iv(s, metric)} |" + (f" {_iv(b, metric)} |" if b else ""))
    for k, iv in s.pass_k.items():
        if k > 1:
            lines.append(f"| pass^{k} | {iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}] |"
                         + (f" {b.pass_k[k].estimate:.3f} |" if b and k in b.pass_k else (" - |" if b else "")))
    lines.append(f"| cost per case / per run | ${s.cost_per_case_usd:.6f} / ${s.cost_per_run_usd:.6f} |"
                 + (f" ${b.cost_per_case_usd:.6f} / ${b.cost_per_run_usd:.6f} |" if b else ""))
    lines.append(f"| latency p50 / p95 | {s.latency_p50_s:.2f}s / {s.latency_p95_s:.2f}s |"
                 + (f" {b.latency_p50_s:.2f}s / {b.latency_p95_s:.2f}s |" if b else ""))
    if gates is not None:
        lines += ["", "## Gates", ""]
        lines += [f"- **{g.status}** {_md(g.message)}" for g in gates.results]
    lines += ["", "## Cases", "", "| case | passed | failed checks | trace |", "|---|---:|---|---|"]
    grouped = by_case(run)
    for c in s.cases:
        fails = sorted({f"{chk.kind}: {chk.name}" for r in grouped[c.case_id] for chk in r.score.failed_checks})
        first = next((r for r in grouped[c.case_id] if not r.score.passed), None)
        lines.append(f"| {_md(c.case_id)} | {c.c}/{c.n} | {_md('; '.join(fails)) or '-'} | "
                     f"{('`' + first.trace + '`') if first else ''} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ HTML


def pass_k_svg(curves: Sequence[tuple[str, str, Summary]], *, width: int = 480, height: int = 260) -> str:
    """pass^k against k, one line (with its interval band) per run."""
    pad_l, pad_r, pad_t, pad_b = 44, 16, 14, 34
    kmax = max((max(s.pass_k) for _, _, s in curves if s.pass_k), default=1)
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    plot_h = height
    height += 16 * len(curves) + 4

    def x(k: int) -> float:
        return pad_l + (pw * (k - 1) / (kmax - 1) if kmax > 1 else pw / 2)

    def y(v: float) -> float:
        return pad_t + ph * (1 - v)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="pass^k curves">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for v in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e4e4e4"/>'
                     f'<text x="{pad_l - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:g}</text>')
    for k in range(1, kmax + 1):
        parts.append(f'<text x="{x(k):.1f}" y="{plot_h - pad_b + 16}" font-size="11" text-anchor="middle">{k}</text>')
    parts.append(f'<text x="{pad_l + pw / 2:.1f}" y="{plot_h - 4}" font-size="11" text-anchor="middle">k '
                 '(runs that must all pass)</text>')
    for i, (label, color, s) in enumerate(curves):
        ks = sorted(s.pass_k)
        if not ks:
            continue
        band = [f"{x(k):.1f},{y(s.pass_k[k].high):.1f}" for k in ks] + \
               [f"{x(k):.1f},{y(s.pass_k[k].low):.1f}" for k in reversed(ks)]
        parts.append(f'<polygon points="{" ".join(band)}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
        pts = " ".join(f"{x(k):.1f},{y(s.pass_k[k].estimate):.1f}" for k in ks)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        for k in ks:
            parts.append(f'<circle cx="{x(k):.1f}" cy="{y(s.pass_k[k].estimate):.1f}" r="3.5" fill="{color}">'
                         f'<title>{html.escape(label)} pass^{k} = {s.pass_k[k].estimate:.3f}</title></circle>')
        ly = plot_h + 8 + 16 * i  # the legend sits under the axis, never over a curve
        parts.append(f'<rect x="{pad_l}" y="{ly - 6}" width="12" height="4" fill="{color}"/>'
                     f'<text x="{pad_l + 18}" y="{ly}" font-size="12">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}.pass{color:#137333}.fail{color:#b3261e;font-weight:600}
.inconclusive{color:#9a6700;font-weight:600}.warn{color:#9a6700}code{background:#f5f5f5;padding:0 3px}
.better{background:#e6f4ea}.worse{background:#fce8e6}details{margin:2px 0}pre{white-space:pre-wrap;margin:2px 0}"""


def html_report(run: EvalRun, *, baseline: EvalRun | None = None, gates: GateReport | None = None) -> str:
    e = html.escape
    s = summarize(run)
    b = summarize(baseline) if baseline is not None else None
    curves = [(f"{run.agent}@{run.version}", "#1a73e8", s)]
    if b is not None and baseline is not None:
        curves.append((f"baseline {baseline.agent}@{baseline.version}", "#e8710a", b))
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Evaluation {e(run.dataset)} "
           f"{e(run.agent)}@{e(run.version)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Evaluation: {e(run.dataset)} — {e(run.agent)}@{e(run.version)}</h1>",
           f"<p>{len(run.case_ids)} cases x {run.runs_per_case} runs; dataset <code>{e(run.dataset_hash[:12])}</code>; "
           f"run <code>{e(run.run_id)}</code>; model <code>{e(run.model or '-')}</code></p>"]
    if gates is not None:
        out.append("<h2>Gates</h2><table><tr><th>gate</th><th>status</th><th>detail</th></tr>")
        out += [f"<tr><td>{e(g.name)}</td><td class={g.status}>{g.status}</td><td>{e(g.message)}</td></tr>"
                for g in gates.results]
        out.append("</table>")
    out.append("<h2>Scores</h2><table><tr><th>score</th><th>value [95% CI]</th>"
               + (f"<th>baseline {e(baseline.version)}</th>" if baseline else "") + "</tr>")
    for metric, label in SCORE_LABELS.items():
        if metric in s.scores:
            out.append(f"<tr><td>{label}</td><td>{_iv(s, metric)}</td>"
                       + (f"<td>{_iv(b, metric)}</td>" if b else "") + "</tr>")
    out.append(f"<tr><td>cost per case / per run</td><td>${s.cost_per_case_usd:.6f} / ${s.cost_per_run_usd:.6f}</td>"
               + (f"<td>${b.cost_per_case_usd:.6f} / ${b.cost_per_run_usd:.6f}</td>" if b else "") + "</tr>")
    out.append(f"<tr><td>latency p50 / p95</td><td>{s.latency_p50_s:.2f}s / {s.latency_p95_s:.2f}s</td>"
               + (f"<td>{b.latency_p50_s:.2f}s / {b.latency_p95_s:.2f}s</td>" if b else "") + "</tr></table>")
    out.append("<h2>pass<sup>k</sup></h2>")
    out.append("<p>The chance that k runs of a case all pass (tau-bench's unbiased estimator), with its "
               "95% bootstrap band.</p>")
    out.append(f'<div id="passk">{pass_k_svg(curves)}</div>')
    out.append(_case_table(run, baseline))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _case_table(run: EvalRun, baseline: EvalRun | None) -> str:
    e = html.escape
    grouped = by_case(run)
    base = by_case(baseline) if baseline is not None else {}
    rows = ["<h2>Cases</h2><table><tr><th>case</th><th>passed</th>"
            + ("<th>baseline</th>" if baseline else "") + "<th>failed checks (first failing run)</th>"
            "<th>answer</th></tr>"]
    for cid in run.case_ids:
        rs = grouped.get(cid, [])
        c = sum(bool(r.score.passed) for r in rs)
        bc = sum(bool(r.score.passed) for r in base.get(cid, []))
        bn = len(base.get(cid, []))
        cls = ""
        if baseline is not None and rs and bn:
            cls = " class=worse" if c / len(rs) < bc / bn else (" class=better" if c / len(rs) > bc / bn else "")
        first = next((r for r in rs if not r.score.passed), rs[0] if rs else None)
        checks = ""
        if first is not None and not first.score.passed:
            checks = "<br>".join(f"<b>{e(k.kind)}</b> {e(k.name)}{': ' + e(k.detail) if k.detail else ''}"
                                 for k in first.score.failed_checks) + f"<br><code>{e(first.trace)}</code>"
        answer = ""
        if first is not None:
            answer = f"<pre>{e(first.output[:400])}</pre>"
            prev = next((r for r in base.get(cid, []) if r.run == first.run), None)
            if prev is not None and prev.output != first.output:
                answer += f"<details><summary>baseline answer</summary><pre>{e(prev.output[:400])}</pre></details>"
        rows.append(f"<tr{cls}><td>{e(cid)}</td><td>{c}/{len(rs)}</td>"
                    + (f"<td>{bc}/{bn}</td>" if baseline else "") + f"<td>{checks}</td><td>{answer}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


# ------------------------------------------------------------------ JUnit


def junit_report(run: EvalRun, *, gates: GateReport | None = None) -> str:
    """One testcase per case (failing if any run failed) and one per gate."""
    s = summarize(run)
    grouped = by_case(run)
    suites = ET.Element("testsuites", name=f"agentstream eval {run.dataset}")
    cases_suite = ET.SubElement(suites, "testsuite", name=f"{run.dataset}.cases", tests=str(len(s.cases)),
                                failures=str(sum(c.c < c.n for c in s.cases)),
                                time=f"{run.finished_at - run.started_at:.3f}")
    for c in s.cases:
        tc = ET.SubElement(cases_suite, "testcase", classname=f"{run.agent}@{run.version}", name=c.case_id,
                           time=f"{c.latency_s:.3f}")
        if c.c < c.n:
            first = next(r for r in grouped[c.case_id] if not r.score.passed)
            detail = "\n".join(f"{k.kind}: {k.name}: {k.detail}" for k in first.score.failed_checks)
            f = ET.SubElement(tc, "failure", message=f"{c.n - c.c} of {c.n} runs failed", type="EvalFailure")
            f.text = _xml_safe(f"{detail}\ntrace: {first.trace}\nanswer: {first.output[:500]}")
    if gates is not None:
        gs = ET.SubElement(suites, "testsuite", name=f"{run.dataset}.gates", tests=str(len(gates.results)),
                           failures=str(len(gates.failed)))
        for g in gates.results:
            tc = ET.SubElement(gs, "testcase", classname="gates", name=g.name)
            if g.failed:
                ET.SubElement(tc, "failure", message=_xml_safe(g.message), type=g.status)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    """Characters XML 1.0 cannot carry (model output may hold any) become U+FFFD."""
    return _XML_BAD.sub("\ufffd", text)
