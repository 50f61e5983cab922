"""The safe-change commands: ``worker --version/--shadow``, ``shadow report``,
``shadow show``, ``versions`` (and ``canary``, see rollout.canary)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import msgspec

from agentstream.contracts import codec, subjects
from agentstream.contracts.events import AuditRecord, TaskCompleted, TaskFailed
from agentstream.runtime.adapters import jetstream as nats_adapters
from agentstream.runtime.adapters.scan import scan
from agentstream.runtime.config.auth import nats_auth
from agentstream.runtime.config.settings import Settings, broker_url
from agentstream.runtime.core.errors import AgentstreamError
from agentstream.runtime.interfaces.client import AgentClient
from agentstream.runtime.observability.views import parse_duration
from agentstream.runtime.rollout.comparator import load_records, record_key
from agentstream.runtime.rollout.compare import decode_record, noise_label, render_report, shadow_report
from agentstream.runtime.rollout.shadow import ShadowConfig


def _pct(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage 0-100, got {text!r}") from None
    if not 0.0 <= v <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a percentage 0-100, got {text!r}")
    return v


def _usd(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount in USD, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError("a cost cap cannot be negative")
    return v


def _since(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_worker_flags(w: argparse.ArgumentParser) -> None:
    g = w.add_argument_group("safe change (see docs/rollout.md)")
    g.add_argument("--version", help="run this declared version of the agent (default: production's)")
    g.add_argument("--shadow", action="store_true",
                   help="run as a shadow: every production task, no side effects, outputs under shadow.<label>")
    g.add_argument("--label", help="the shadow's name (default: --version, else 'shadow'); "
                                   "run production's own version under a second label to measure noise")
    g.add_argument("--sample", type=_pct, default=100.0, metavar="PCT", help="share of tasks a shadow runs")
    g.add_argument("--daily-cost", type=_usd, metavar="USD", help="a shadow stops taking tasks for the day past this")
    g.add_argument("--read-only", choices=("live", "replay"), default="live",
                   help="read-only tools in a shadow: run them, or serve production's recorded results")
    g.add_argument("--canary", action="store_true",
                   help="run --version as a canary candidate: real traffic, the share `agentstream canary` routes to it")
    g.add_argument("--comparator", action="store_true",
                   help="also join production and shadow outcomes (shadow replicas always do)")


def shadow_config(args: argparse.Namespace) -> ShadowConfig | None:
    if not getattr(args, "shadow", False):
        for flag in ("label", "daily_cost"):
            if getattr(args, flag, None) is not None:
                raise AgentstreamError(f"--{flag.replace('_', '-')} applies to a shadow: add --shadow")
        return None
    if not args.agent:
        raise AgentstreamError("--shadow needs --agent NAME")
    label = args.label or args.version or "shadow"
    try:
        return ShadowConfig(label=label, sample_pct=args.sample, daily_cost_usd=args.daily_cost,
                            read_only=args.read_only)
    except ValueError as exc:
        raise AgentstreamError(str(exc)) from None


# ----------------------------------------------------------------- commands


async def _outcomes(client: AgentClient) -> nats_adapters.NatsKV:
    return await nats_adapters.bucket(client.js, subjects.OUTCOMES.name)


async def cmd_shadow_report(args: argparse.Namespace, settings: Settings) -> int:
    async with await AgentClient.connect(broker_url(settings), provision=False,
                                        auth=nats_auth("observer", broker_url(settings), settings.data_dir)) as client:
        records = await load_records(await _outcomes(client), args.agent)
    noise = args.noise if args.noise is not None else noise_label(records, agent=args.agent, candidate=args.candidate)
    rep = shadow_report(records, agent=args.agent, candidate=args.candidate, noise=noise, min_pairs=args.min_pairs)
    if args.json:
        print(msgspec.json.encode(rep).decode())
    else:
        print(render_report(rep, limit=args.limit))
    return 0


async def cmd_shadow_show(args: argparse.Namespace, settings: Settings) -> int:
    async with await AgentClient.connect(broker_url(settings), provision=False,
                                        auth=nats_auth("observer", broker_url(settings), settings.data_dir)) as client:
        entry = await (await _outcomes(client)).get(record_key(args.agent, args.task_id))
    if entry is None:
        sys.stderr.write(f"agentstream: error: no shadow ran task {args.task_id!r} of agent {args.agent!r}\n")
        return 1
    rec = decode_record(entry.value)
    rows = [("production", rec.production)] + sorted(rec.shadows.items())
    for label, out in rows:
        if out is None:
            print(f"{label}: (no result yet)")
            continue
        print(f"{label} [{out.version} {out.version_hash}] {out.status}{'/' + out.reason if out.reason else ''} "
              f"in {out.latency_s * 1000:.0f} ms, {out.tokens} tokens, ${out.cost_usd:.4f}")
        print(f"  tools: {', '.join(out.tools) or '-'}")
        print(f"  output: {out.output}")
    return 0


async def cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    """Every version that answered in the window: production's results and shadows'."""
    since = time.time() - args.since
    seen: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    async with await AgentClient.connect(broker_url(settings), provision=False,
                                        auth=nats_auth("observer", broker_url(settings), settings.data_dir)) as client:
        for stream, subject in (("RESULTS", subjects.any_production_results()),
                                ("SHADOW", subjects.any_shadow_results())):
            for raw in await scan(client.js, stream, subject, start_time=since):
                try:
                    ev = codec.any_event.decode(raw.data)
                except Exception:  # noqa: BLE001 - a foreign message is not a version
                    continue
                if not isinstance(ev, (TaskCompleted, TaskFailed)):
                    continue
                label, _ = subjects.unshadowed(raw.subject)
                key = (ev.agent, ev.agent_version, ev.version_hash, label)
                row = seen.setdefault(key, {"agent": ev.agent, "version": ev.agent_version,
                                            "hash": ev.version_hash, "deployment": f"shadow:{label}" if label
                                            else "production", "first_seen": raw.time, "last_seen": raw.time,
                                            "tasks": 0, "failed": 0})
                row["tasks"] += 1
                row["failed"] += isinstance(ev, TaskFailed)
                row["first_seen"] = min(row["first_seen"], raw.time)
                row["last_seen"] = max(row["last_seen"], raw.time)
    rows = sorted(seen.values(), key=lambda r: (r["agent"], r["first_seen"]))
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no results in the last {args.since:g}s")
        return 0

    def ts(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

    print(f"{'agent':<14} {'version':<10} {'hash':<13} {'deployment':<18} {'first seen (UTC)':<20} "
          f"{'last seen (UTC)':<20} {'tasks':>7} {'failed':>7}")
    for r in rows:
        print(f"{r['agent']:<14} {r['version'] or '-':<10} {r['hash'] or '-':<13} {r['deployment']:<18} "
              f"{ts(r['first_seen']):<20} {ts(r['last_seen']):<20} {r['tasks']:>7} {r['failed']:>7}")
    return 0


async def cmd_canary(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.runtime.core.app import load_app
    from agentstream.runtime.rollout import canary as C
    from agentstream.runtime.rollout.canary_control import (
        CanaryStore,
        audit_for,
        ensure_candidate_consumers,
        publish_audit,
    )

    async with await AgentClient.connect(broker_url(settings), provision=args.action == "start",
                                        auth=nats_auth("operator", broker_url(settings), settings.data_dir)) as client:
        store = CanaryStore(await nats_adapters.bucket(client.js, subjects.ROLLOUT.name))
        loaded = await store.load(args.agent)
        now = time.time()
        actor = os.environ.get("AGENTSTREAM_APPROVER") or os.environ.get("USER") or "cli"
        bus = nats_adapters.NatsBus(client.js)
        if args.action == "start":
            if loaded is not None and loaded[0].status == "running":
                raise AgentstreamError(f"a canary of {args.agent!r} is already running "
                                       f"(candidate {loaded[0].candidate!r}); roll it back or promote it first")
            if not args.candidate:
                raise AgentstreamError("canary start needs --candidate VERSION")
            app = load_app(settings.app)
            baseline = args.baseline or app.get_agent(args.agent).spec.version
            app.get_version(args.agent, args.candidate)  # a version the app declares
            policy = C.CanaryPolicy(steps=tuple(args.steps), interval_s=args.interval, min_samples=args.min_samples,
                                    failure_limit=args.failure_limit, max_inconclusive=args.max_inconclusive)
            try:
                state = C.start(args.agent, baseline, args.candidate, policy, now)
            except ValueError as exc:
                raise AgentstreamError(str(exc)) from None
            await ensure_candidate_consumers(client.js, args.agent, args.candidate, now)
            if loaded is None:
                await store.create(state)
                rev = 1
            else:
                await store.replace(state, loaded[1])
                rev = loaded[1] + 1
            rec = AuditRecord(kind="canary.started", at=now, actor=actor, agent=args.agent, task_id="",
                              details={"candidate": args.candidate, "baseline": baseline,
                                       "policy": msgspec.to_builtins(policy)})
            await publish_audit(bus, rec, rev)
            print(f"canary of {args.agent}: {args.candidate} gets {state.weight:g}% from "
                  f"{time.strftime('%H:%M:%S', time.gmtime(state.weights[-1].effective_at))} UTC; "
                  f"windows of {policy.interval_s:g}s, steps {', '.join(f'{s:g}%' for s in policy.steps)}")
            return 0
        if loaded is None:
            raise AgentstreamError(f"no canary of {args.agent!r}")
        state, rev = loaded
        if args.action in ("promote", "rollback"):
            new = C.manual(state, args.action, now, actor)
            await store.replace(new, rev)
            await publish_audit(bus, audit_for(state, new, actor, now), rev + 1)
            print(f"canary of {args.agent}: {new.status} ({new.note}); {new.candidate} at {new.weight:g}% "
                  f"from {C.PROPAGATION_S:g}s from now")
            return 0
        if args.action == "clear":
            if state.status == "running":
                raise AgentstreamError("the canary is running: promote or roll it back first")
            await store.clear(args.agent)
            print(f"canary of {args.agent} cleared: all traffic to the production version")
            return 0
        if args.json:
            print(msgspec.json.encode(state).decode())
            return 0
        print(f"canary of {state.agent}: {state.status}, candidate {state.candidate} at {state.weight:g}% "
              f"(step {state.step + 1}/{len(state.policy.steps)}), baseline {state.baseline}")
        if state.note:
            print(f"  {state.note}")
        for w in state.windows[-10:]:
            print(f"  window {time.strftime('%H:%M:%S', time.gmtime(w.start))}: {w.verdict:<12} "
                  f"baseline {w.baseline.tasks} tasks, candidate {w.candidate.tasks} tasks "
                  f"({w.candidate.failed} failed): {'; '.join(w.why)}")
        return 0


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Re-run logged tasks with a candidate, tools from the recording; first divergence per task."""
    import os as _os

    from agentstream.runtime.core.app import load_app
    from agentstream.runtime.core.policy import load_prices
    from agentstream.runtime.rollout.replay import RecordedModel, load_recordings, replay_one, report
    from agentstream.runtime.service.runtime import select_model

    app = load_app(settings.app)
    agent = app.get_version(args.agent, args.candidate)
    async with await AgentClient.connect(broker_url(settings), provision=False,
                                        auth=nats_auth("observer", broker_url(settings), settings.data_dir)) as client:
        recordings = await load_recordings(client.js, args.agent, since_s=args.since, sample=args.sample,
                                           seed=args.seed)
    if not recordings:
        print(f"no finished tasks of {args.agent!r} in the last {args.since:g}s to replay")
        return 0
    prices = load_prices(_os.environ)
    replayed = []
    for i, rec in enumerate(recordings, 1):
        llm = RecordedModel(rec) if args.recorded_model else select_model(app, args.agent, settings, args.candidate)
        replayed.append(await replay_one(agent.spec, llm, rec, app.tools, live_read_only=args.live_read_only,
                                         prices=prices))
        if sys.stderr.isatty():
            sys.stderr.write(f"\rreplayed {i}/{len(recordings)}")
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    rep = report(replayed, agent=args.agent, candidate=args.candidate)
    same = sum(1 for r in replayed if not r.divergence.what)
    if args.json:
        print(json.dumps({"tasks": len(replayed), "identical": same,
                          "divergences": [{"task_id": r.divergence.task_id, "step": r.divergence.step,
                                           "what": r.divergence.what, "tools_served": r.served}
                                          for r in replayed if r.divergence.what],
                          "report": msgspec.to_builtins(rep)}))
        return 0
    print(f"replayed {len(replayed)} tasks of {args.agent} with {args.candidate}"
          f"{' (recorded model responses)' if args.recorded_model else ''}: {same} identical to production")
    for r in replayed:
        if r.divergence.what:
            print(f"  {r.divergence.task_id}: first divergence at {r.divergence.what}")
    print()
    print(render_report(rep, limit=args.limit))
    return 0


def _steps(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percentages like 10,25,50,100, got {text!r}") from None


def add_parsers(sub: Any) -> None:
    rp2 = sub.add_parser("replay", help="re-run logged tasks with a candidate version; first divergence per task")
    rp2.add_argument("--agent", required=True)
    rp2.add_argument("--candidate", required=True, help="a declared version (production's own: a determinism check)")
    rp2.add_argument("--since", type=_since, default=86400.0, metavar="DURATION", help="window (default 24h)")
    rp2.add_argument("--sample", type=int, help="replay at most N tasks (a stable sample)")
    rp2.add_argument("--seed", type=int, default=1)
    rp2.add_argument("--live-read-only", action="store_true", help="run read-only tools live when not recorded")
    rp2.add_argument("--recorded-model", action="store_true",
                     help="play back production's model responses instead of calling the candidate's model")
    rp2.add_argument("--limit", type=int, default=20)
    rp2.add_argument("--json", action="store_true")
    rp2.set_defaults(fn=cmd_replay)

    ca = sub.add_parser("canary", help="route a share of real traffic to a candidate; promote or roll back by analysis")
    ca.add_argument("action", choices=("start", "status", "promote", "rollback", "clear"))
    ca.add_argument("--agent", required=True)
    ca.add_argument("--candidate", help="(start) the declared version to route traffic to")
    ca.add_argument("--baseline", help="(start) production's version label (default: the app's)")
    ca.add_argument("--steps", type=_steps, default=[10.0, 25.0, 50.0, 100.0], help="(start) weights, %%")
    ca.add_argument("--interval", type=float, default=60.0, help="(start) seconds per analysis window")
    ca.add_argument("--min-samples", type=int, default=20, help="(start) tasks per version per window")
    ca.add_argument("--failure-limit", type=int, default=1, help="(start) failed windows before rollback")
    ca.add_argument("--max-inconclusive", type=int, default=5, help="(start) quiet windows before it stops")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(fn=cmd_canary)

    sh = sub.add_parser("shadow", help="compare a shadow deployment with production")
    shs = sh.add_subparsers(dest="shadow_command", required=True, parser_class=type(sh))
    rp = shs.add_parser("report", help="agreement with production, beyond production's own noise; regressions first")
    rp.add_argument("--agent", required=True)
    rp.add_argument("--candidate", required=True, help="the shadow's label")
    rp.add_argument("--noise", help="label of a shadow of production's own version (measures noise; default: "
                                    "a shadow found running production's version label, '' for none)")
    rp.add_argument("--min-pairs", type=int, default=20, help="fewer paired tasks than this: inconclusive")
    rp.add_argument("--limit", type=int, default=20, help="differences listed")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(fn=cmd_shadow_report)
    so = shs.add_parser("show", help="one task: production's and each shadow's outcome side by side")
    so.add_argument("task_id")
    so.add_argument("--agent", required=True)
    so.add_argument("--candidate", help="(accepted for symmetry with report; all shadows are shown)")
    so.set_defaults(fn=cmd_shadow_show)

    v = sub.add_parser("versions", help="the versions that answered: label, behaviour hash, deployment, traffic")
    v.add_argument("--since", type=_since, default=86400.0, metavar="DURATION", help="window (default 24h)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_versions)
