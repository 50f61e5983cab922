"""Subject names, stream and KV bucket definitions: the protocol's address book.

Every name is built here, so a later prefix (shadow deployments writing their
outputs under ``shadow.``) is a change to this module only.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from agentstream.contracts.telemetry import TELEMETRY_STREAM, TELEMETRY_SUBJECTS

# A NATS subject token: no dots, spaces or wildcards. Agent, tool and task ids
# are embedded in subjects, so they must be tokens.
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


def is_token(value: str) -> bool:
    return bool(_TOKEN.fullmatch(value))


def check_token(kind: str, value: str) -> str:
    if not is_token(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-128 letters, digits, '_' or '-' (it becomes a NATS subject token)"
        )
    return value


def tasks(agent: str) -> str:
    return f"agents.{agent}.tasks"


def events(agent: str, task_id: str) -> str:
    """The agent's continuation inbox for one task (tool results, approvals)."""
    return f"agents.{agent}.events.{task_id}"


def decisions(agent: str, task_id: str) -> str:
    """Approval decisions for one task: the only subject an ApprovalDecided is
    accepted from. Only the approver role may publish here (config.auth)."""
    return f"agents.{agent}.decisions.{task_id}"


def parse_inbox(subject: str) -> tuple[str, str, str] | None:
    """``agents.<agent>.<kind>.<task_id>`` -> (agent, kind, task_id), else None."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "agents":
        return None
    return parts[1], parts[2], parts[3]


def progress(agent: str, task_id: str) -> str:
    """Progress notices for watchers and timelines; no agent consumes these."""
    return f"agents.{agent}.progress.{task_id}"


def results(agent: str, task_id: str) -> str:
    return f"agents.{agent}.results.{task_id}"


def tool_calls(tool: str) -> str:
    return f"tools.{tool}.calls"


def approvals(agent: str) -> str:
    return f"approvals.{agent}.requested"


def audit(kind: str, agent: str) -> str:
    """``kind`` as in AuditRecord (``approval.decided``); its dots become ``_`` to keep it one token."""
    return f"audit.{kind.replace('.', '_')}.{agent}"


def memory(verb: str, tenant: str) -> str:
    """``memory.<verb>.<tenant>`` (verb: query | write | admin), request-reply
    with the memory service. The tenant token is what subject permissions grant."""
    return f"memory.{verb}.{tenant}"


MEMORY_VERBS: tuple[str, ...] = ("query", "write", "admin")
MEMORY_QUEUE = "memory"  # the queue group the memory-service replicas share


def dead_letter(origin_subject: str) -> str:
    return f"deadletter.{origin_subject}"


def eval_scores(agent: str, task_id: str) -> str:
    """An online evaluator's EvaluationScored for one task (stream EVALS)."""
    return f"evals.{agent}.scores.{task_id}"


def eval_feedback(agent: str, task_id: str) -> str:
    """A user's FeedbackSubmitted for one task (stream EVALS, beside the scores)."""
    return f"evals.{agent}.feedback.{task_id}"


def eval_drift(agent: str) -> str:
    return f"evals.{agent}.drift"


def any_results(task_id: str) -> str:
    return f"agents.*.results.{task_id}"


def any_task_activity(task_id: str) -> str:
    """Matches a task's inbox, decisions and progress subjects as published
    (in EVENTS: ``stored(any_task_activity(t))``; in SHADOW under its prefix)."""
    return f"agents.*.*.{task_id}"


# ----------------------------------------------------------------- rollout

SHADOW_ROOT = "shadow"


def shadow_prefix(label: str) -> str:
    """Everything a shadow deployment ``label`` writes lives under this prefix:
    the same tree as production's (``shadow.<label>.agents.<agent>.results.<task>``,
    ``shadow.<label>.tools.<tool>.calls``, ...), so nothing of production's
    subscribes to it and it can never reach a production consumer."""
    return f"{SHADOW_ROOT}.{check_token('shadow label', label)}."


def shadowed(label: str, subject: str) -> str:
    return shadow_prefix(label) + subject


def unshadowed(subject: str) -> tuple[str, str]:
    """``shadow.<label>.<rest>`` -> (label, rest); a production subject -> ("", subject)."""
    if subject.startswith(SHADOW_ROOT + "."):
        _, label, rest = subject.split(".", 2)
        return label, rest
    return "", subject


def any_shadow_results() -> str:
    return f"{SHADOW_ROOT}.*.agents.*.results.*"


def any_production_results() -> str:
    return "agents.*.results.*"


Discard = Literal["old", "new"]

MiB = 1024 * 1024
GiB = 1024 * MiB


class StreamDef(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    description: str
    duplicate_window_s: float = 120.0
    # Byte limit when AGENTSTREAM_STORE_LIMITS names none (-1: unlimited).
    max_bytes: int = GiB
    # When full: "new" refuses the publish (the publisher gets StoreFull), "old"
    # deletes the oldest messages to make room. Each stream says why.
    discard: Discard = "new"
    # S2 compression of the stream's file blocks, where it was measured to pay
    # (docs/storage.md: bytes per task with and without).
    compress: bool = False
    # With discard "new": workers delete the oldest messages every durable
    # consumer has acknowledged once the stream is 90% full, so it refuses new
    # messages only when what is not yet processed fills it.
    trim_acked: bool = False


class BucketDef(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    max_age_s: float = 0.0
    history: int = 1
    # A KV bucket always discards "new" when full (nats-py's KV layout): a new
    # key, or a value growing past the room left, is refused.
    max_bytes: int = 256 * MiB
    # Off for every bucket: S2 on agent_sessions measured no gain on disk
    # (2,453 against 2,483 bytes a W1 task over 20,000 tasks; docs/storage.md).
    compress: bool = False

    # An object store (chunked blobs), not a KV bucket: its stream is OBJ_<name>.
    objects: bool = False

    @property
    def stream(self) -> str:
        return f"{'OBJ' if self.objects else 'KV'}_{self.name}"


DAY = 86400.0

# Limits retention everywhere: production and shadow consumers each hold their
# own durable consumer and both see every message; interest/work-queue
# retention would drop a task published before any consumer exists.
#
# Byte limits are a safety net against a full disk, not the retention policy
# (the age limits are): sized from the measured bytes per W1 task
# (docs/storage.md) so that at the defaults TASKS, the front door, fills before
# anything behind it. Discard policy, the rule: a stream holding work not yet
# done (tasks, tool calls, continuation events, approvals) or a record that
# must not silently lose entries (audit) refuses new messages when full, so the
# publisher learns at once and nothing accepted is dropped; a stream of records
# read after the fact (results, dead letters, spans) drops its oldest.
STREAMS: tuple[StreamDef, ...] = (
    # new: dropping the oldest would silently lose tasks no worker has run yet;
    # the submitter gets "TASKS is full" instead. Processed tasks make room
    # (trim_acked), so it is full only when the backlog fills it.
    StreamDef(name="TASKS", subjects=("agents.*.tasks",), max_age_s=7 * DAY,
              description="TaskSubmitted, one subject per agent", max_bytes=GiB, discard="new", compress=True,
              trim_acked=True),
    # new: the continuation inbox holds tool results of running tasks; the
    # worker publishing one waits for room rather than lose it.
    StreamDef(name="EVENTS", subjects=("agents.*.events.*", "agents.*.progress.*", "agents.*.decisions.*"),
              max_age_s=7 * DAY,
              description="per-task continuation inbox (tool results; approval decisions) and progress notices",
              max_bytes=4 * GiB, discard="new",
              compress=True, trim_acked=True),
    # new: a dropped tool call is a task that never finishes.
    StreamDef(name="TOOLS", subjects=("tools.*.calls",), max_age_s=7 * DAY,
              description="ToolCallRequested, one subject per tool", max_bytes=2 * GiB, discard="new",
              compress=True, trim_acked=True),
    # old: results are read soon after they are written; the oldest going first
    # is an earlier age limit, while refusing would stop every task finishing.
    StreamDef(name="RESULTS", subjects=("agents.*.results.*",), max_age_s=7 * DAY,
              description="TaskCompleted / TaskFailed", max_bytes=GiB, discard="old", compress=True),
    # new: a pending approval is work waiting for a human.
    StreamDef(name="APPROVALS", subjects=("approvals.>",), max_age_s=30 * DAY,
              description="ApprovalRequested: tool calls waiting for a human", max_bytes=256 * MiB,
              discard="new"),
    # new: an audit trail that drops its oldest records is not one; a decision
    # that cannot be audited is refused (and `agentstream admin purge` makes room).
    StreamDef(name="AUDIT", subjects=("audit.>",), max_age_s=365 * DAY,
              description="audit records: every approval decision, with who made it", max_bytes=GiB,
              discard="new"),
    # old: a shadow deployment's outputs are an experiment's record; losing its
    # oldest only thins old comparisons, refusing would stall its workers.
    StreamDef(name="SHADOW", subjects=(f"{SHADOW_ROOT}.>",), max_age_s=7 * DAY,
              description="everything shadow deployments publish, under shadow.<label>.<production subject>",
              max_bytes=2 * GiB, discard="old", compress=True),
    # old: diagnostics; refusing would leave a poison message nowhere to go.
    StreamDef(name="DEADLETTER", subjects=("deadletter.>",), max_age_s=30 * DAY,
              description="messages a consumer could not process, with the reason", max_bytes=512 * MiB,
              discard="old", compress=True),
    # new: scores and feedback are records a user or evaluator sent once;
    # refusing tells the sender, dropping would lose them silently.
    StreamDef(name="EVALS", subjects=("evals.>",), max_age_s=30 * DAY,
              description="online evaluation: scores, user feedback and drift alarms, per agent and task",
              max_bytes=GiB, discard="new", compress=True),
    # Finished spans (SpanRecord JSON, agentstream.contracts.telemetry), one
    # subject a trace. Short dedupe window: only invoke_agent spans carry a msg id.
    # old: telemetry must never stop the work it describes.
    StreamDef(name=TELEMETRY_STREAM, subjects=TELEMETRY_SUBJECTS, max_age_s=7 * DAY,
              description="finished spans (SpanRecord), subject telemetry.spans.<trace_id>",
              duplicate_window_s=60.0, max_bytes=2 * GiB, discard="old", compress=True),
)

SESSIONS = BucketDef(name="agent_sessions", description="session state, one key a task, CAS only",
                     max_age_s=7 * DAY, max_bytes=2 * GiB)
DEADLINES = BucketDef(name="agent_deadlines", description="live tasks and their deadlines",
                      max_bytes=256 * MiB)
CONVERSATIONS = BucketDef(name="agent_conversations", description="bounded turn history per conversation",
                          max_age_s=30 * DAY, max_bytes=GiB)
APPROVALS = BucketDef(name="agent_approvals", description="approval requests and their status, by approval id",
                      max_age_s=30 * DAY, max_bytes=256 * MiB)
TOOL_BREAKERS = BucketDef(name="tool_breakers",
                          description="circuit breaker state per tool (key = tool name), shared by replicas, CAS only",
                          max_bytes=16 * MiB)
TOOL_RESULTS = BucketDef(name="tool_results", description="results of idempotent tool calls by idempotency key",
                         max_age_s=DAY, max_bytes=512 * MiB)
# Claim-check: task inputs and tool results too large for an event (an object
# store bucket; the events carry the object's name).
PAYLOADS = BucketDef(name="agent_payloads", description="large task inputs and tool results (claim-check)",
                     max_age_s=7 * DAY, objects=True, max_bytes=2 * GiB)
# Memory buckets, created by the memory service and agents that use memory
# (not in BUCKETS: a deployment without memory provisions nothing for it).
# Episodes carry a TTL per key (the Nats-TTL header; the bucket's stream has
# allow_msg_ttl); max_age is only the ceiling.
EPISODES = BucketDef(name="memory_episodes", description="episodic memory: session summaries, decisions, "
                     "preferences, one key per episode, TTL per key", max_age_s=365 * DAY, max_bytes=GiB)
MEMORY_CONVERSATIONS = BucketDef(name="memory_conversations",
                                 description="per conversation: the summary and the unsummarised tail, CAS only",
                                 max_age_s=90 * DAY, max_bytes=GiB)
MEMORY_QUARANTINE = BucketDef(name="memory_quarantine",
                              description="memory writes the poisoning gate held for review", max_age_s=90 * DAY,
                              max_bytes=256 * MiB)
MEMORY_BUCKETS: tuple[BucketDef, ...] = (EPISODES, MEMORY_CONVERSATIONS, MEMORY_QUARANTINE)
SHADOW_SESSIONS = BucketDef(name="shadow_sessions",
                            description="shadow deployments' session state and timers, keys <label>.<...>",
                            max_age_s=7 * DAY)
OUTCOMES = BucketDef(name="rollout_outcomes",
                     description="production and shadow outcomes of one task side by side, key <agent>.<task>",
                     max_age_s=14 * DAY)
ROLLOUT = BucketDef(name="rollout_state",
                    description="canary state per agent and shadow cost counters, CAS only")
BUCKETS: tuple[BucketDef, ...] = (SESSIONS, DEADLINES, CONVERSATIONS, APPROVALS, TOOL_BREAKERS, TOOL_RESULTS,
                                  SHADOW_SESSIONS, OUTCOMES, ROLLOUT)


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject filter ``pattern`` (``*``, ``>``) matches ``subject``."""
    pt, st = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


def stream_of(subject: str) -> str:
    """The stream a subject is stored in ("" if none): names the store in a
    'store full' error."""
    if subject.startswith("$KV."):
        return subject.split(".", 2)[1] if subject.count(".") >= 2 else ""
    for sd in STREAMS:
        if any(matches(p, subject) for p in sd.subjects):
            return sd.name
    return ""


def store_names() -> tuple[str, ...]:
    """Every store by the name operators use: streams by stream name, buckets
    by bucket name (their stream is ``KV_<bucket>``)."""
    return (*(sd.name for sd in STREAMS), *(bd.name for bd in (*BUCKETS, PAYLOADS, *MEMORY_BUCKETS)))


def agent_durable(agent: str, role: str = "tasks") -> str:
    return f"agent_{agent}_{role}"


def tool_durable(tool: str) -> str:
    return f"tool_{tool}"


def shadow_durable(label: str, name: str) -> str:
    """A shadow deployment's own durable consumer beside production's ``name``."""
    return f"shadow_{label}_{name}"


# ----------------------------------------------------------------- partitioned inbox
#
# EVENTS stores every subject with the task's partition before the task id:
# a message published on ``agents.<agent>.<kind>.<task>`` (kind: events,
# progress, decisions) is stored as ``agents.<agent>.<kind>.<partition>.<task>``
# by the stream's own subject transform, the partition a stable hash of the
# task id. Each agent has one durable consumer per partition of its inbox
# (``agents.<a>.events.<p>.*``), and each partition is pulled by one replica at
# a time, so all of a task's results reach the replica that holds its session
# (docs/scaling.md).
#
# Why in EVENTS itself and not a second stream sourcing it: sourcing is a
# hop whose consumer the server re-creates only after a 10 s health check
# (and backs off from 10 s up to 2 min while the origin has no leader), so
# killing a cluster node stalled tool results for 9-45 s; a durable consumer
# on EVENTS fails over with the stream's own Raft group, in seconds. It also
# stores each result once instead of twice.
#
# Publishers never see the partition (they publish the 4-token subject; a
# 5-token subject matches none of EVENTS' subjects, so nobody can write one).
# Readers of EVENTS by subject filter through :func:`stored`, and everything
# that judges a message judges it by :func:`published`.

EVENTS_STREAM = "EVENTS"
# 16: up to 16 agent replicas each own at least one partition; with 2-4 replicas
# the split is even (8/8, 6/5/5, 4/4/4/4); and a replica keeps 16 pulls open
# at most (one heartbeat a second each), which costs nothing measurable.
DEFAULT_INBOX_PARTITIONS = 16
MAX_INBOX_PARTITIONS = 256


def events_transform(partitions: int) -> tuple[str, str]:
    """EVENTS' (source, destination) subject transform: the partition inserted."""
    return ("agents.*.*.*",
            f"agents.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},3)}}}}.{{{{wildcard(3)}}}}")


def inbox_partition(task_id: str, partitions: int) -> int:
    """The partition nats-server's ``{{partition(n,3)}}`` puts a task in:
    FNV-1a (32 bit) of the task id, modulo ``n``."""
    h = 0x811C9DC5
    for b in task_id.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def stored(subject: str) -> str:
    """A published EVENTS subject or filter (``agents.<a>.<kind>.<task>``) as
    EVENTS stores it, any partition: ``agents.<a>.<kind>.*.<task>``. Anything
    else is returned as it is (another stream's subjects are not transformed:
    RESULTS' ``agents.<a>.results.<task>`` has the same shape)."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "agents" or parts[2] == "results":
        return subject
    return f"agents.{parts[1]}.{parts[2]}.*.{parts[3]}"


def published(subject: str) -> str:
    """The inverse of :func:`stored`: an EVENTS subject as stored
    (``agents.<a>.<kind>.<partition>.<task>``), or a filter over any partition
    (``*``), -> the subject it was published on; any other subject unchanged."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "agents" or not (parts[3].isdigit() or parts[3] == "*"):
        return subject
    return f"agents.{parts[1]}.{parts[2]}.{parts[4]}"


def inbox_partition_filter(agent: str, partition: int) -> str:
    return f"agents.{agent}.events.{partition}.*"


def inbox_partition_durable(agent: str, partition: int) -> str:
    return f"{agent_durable(agent, 'events')}_{partition}"


# Agent replicas announce themselves here (key ``<agent>.<member>``, put every
# second; a key not refreshed within the bucket's max age is gone): the live
# replicas split an agent's inbox partitions between them.
REPLICAS = BucketDef(name="agent_replicas", description="live agent replicas (heartbeats), key <agent>.<member>",
                     max_age_s=5.0, max_bytes=16 * MiB)
