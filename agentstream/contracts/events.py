"""Every event that crosses NATS, as frozen, tagged msgspec Structs.

Wire format is JSON so any NATS client in any language can speak it. The tag
(field ``type``) carries a version suffix: a breaking change gets a new tag and
both can be decoded side by side. Unknown fields are ignored on decode, so an
older consumer tolerates a newer producer that added fields.
"""

from __future__ import annotations

from typing import Any, Literal, Union, get_args

import msgspec

TAG_FIELD = "type"


class Event(msgspec.Struct, frozen=True, tag_field=TAG_FIELD, kw_only=True):
    """Base of every wire event."""


# --------------------------------------------------------------------------- model


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call as the model asked for it. ``arguments`` is the raw JSON text
    the model produced, kept unparsed so malformed output can be reported back."""

    id: str
    name: str
    arguments: str = "{}"


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the model is shown of a tool: exactly this."""

    name: str
    description: str
    parameters: dict[str, Any]


class ModelResponse(msgspec.Struct, frozen=True, kw_only=True):
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    model: str = ""
    usage: Usage = Usage()


class ToolError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A structured tool failure, returned to the model as the tool's result."""

    kind: str  # invalid_arguments | unknown_tool | timeout | execution_error | ...
    message: str
    field: str | None = None
    hint: str | None = None
    retryable: bool = False
    # The task cannot go on without a human (an at-most-once call whose outcome
    # is unknown, with ``on_unknown="escalate"``): the agent fails the task
    # with reason ``escalated`` instead of showing the error to the model.
    escalate: bool = False


# --------------------------------------------------------------------------- tasks


class TaskSubmitted(Event, frozen=True, tag="agentstream.task.submitted.v1"):
    """A request for an agent to do something. Publish to ``agents.<agent>.tasks``.

    Only ``agent`` and ``input`` are required. With no ``task_id`` the runtime
    derives one from the stream sequence (``seq-<n>``), deterministic across
    redelivery, so a client in any language can submit with a bare publish.
    """

    agent: str
    input: str
    task_id: str = ""
    tenant_id: str = "default"
    user_id: str = "anonymous"
    conversation_id: str = ""
    agent_version: str = ""
    metadata: dict[str, str] = {}
    submitted_at: float = 0.0
    max_steps: int | None = None
    deadline_s: float | None = None
    max_tokens: int | None = None  # per-task token budget (input + output), overrides the agent's
    max_cost_usd: float | None = None  # per-task cost budget, overrides the agent's
    # Claim-check: the input is too large for an event and is in the object
    # store (bucket agent_payloads) under this name; ``input`` is then empty.
    input_ref: str = ""


class TaskCompleted(Event, frozen=True, tag="agentstream.task.completed.v1"):
    task_id: str
    agent: str
    agent_version: str
    output: str
    steps: int
    tool_calls: int
    usage: Usage
    started_at: float
    finished_at: float
    tenant_id: str = "default"
    user_id: str = "anonymous"
    conversation_id: str = ""
    # The hash of what defines the answering version's behaviour (instructions,
    # model, tools and their schemas, limits, strategy); ``agent_version`` is its label.
    version_hash: str = ""


# Why a task failed (TaskFailed.reason). A consumer must accept reasons it
# does not know: producers may add some.
FAILURE_REASONS: dict[str, str] = {
    "max_steps": "reached the agent's limit of model turns without a final answer",
    "deadline": "the task's deadline passed while it waited on something other than the model (a tool, a worker)",
    "model_timeout": "the model did not answer within the per-call timeout or what was left of the deadline, "
                     "on every attempt (model_attempts has each attempt's outcome and duration)",
    "model_error": "the model endpoint failed (HTTP error, unreachable, unreadable response)",
    "model_output": "the model's turn was unusable (cut off at the token limit, or empty)",
    "budget_exceeded": "the task's token or cost budget could not pay for the next model call",
    "tool_call_limit": "the model asked for more tool calls than the agent allows a task",
    "loop_detected": "the same tool with the same arguments too many times",
    "approval_expired": "a tool call's approval timed out with on_approval_timeout='escalate'",
    "rejected": "the task was dead-lettered (malformed, or failed too often); the message says why",
    "state_too_large": "the session would outgrow the broker's max payload (large tool outputs or inputs)",
    "escalated": "an at-most-once tool's outcome is unknown after a crash and its policy escalates to a human",
}


class ModelAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt at a model call that failed: ``outcome`` is ``timeout`` or ``error``."""

    outcome: str
    duration_s: float
    message: str = ""


class TaskFailed(Event, frozen=True, tag="agentstream.task.failed.v1"):
    """A task ended without an answer. ``reason`` is one of FAILURE_REASONS
    (consumers must accept others); ``message`` says it in words."""

    task_id: str
    agent: str
    agent_version: str
    reason: str  # FAILURE_REASONS: max_steps | deadline | model_timeout | ... | state_too_large | escalated | ...
    message: str
    steps: int
    tool_calls: int
    usage: Usage
    started_at: float
    finished_at: float
    tenant_id: str = "default"
    user_id: str = "anonymous"
    conversation_id: str = ""
    version_hash: str = ""
    # The failed attempts of the model call that ended the task (model_timeout, model_error).
    model_attempts: tuple[ModelAttempt, ...] = ()


TaskResult = Union[TaskCompleted, TaskFailed]

# --------------------------------------------------------------------------- tools


class ToolCallRequested(Event, frozen=True, tag="agentstream.tool.call.requested.v1"):
    """Published to ``tools.<tool>.calls``; the result goes to ``reply_subject``."""

    task_id: str
    agent: str
    step: int
    call_id: str
    tool: str
    arguments: dict[str, Any]
    idempotency_key: str
    reply_subject: str
    requested_at: float
    timeout_s: float | None = None
    tenant_id: str = "default"
    user_id: str = "anonymous"
    # For a call that needed a human: the EVENTS stream sequence of the
    # ApprovalDecided it runs under. The tool worker reads that message itself
    # and checks it was published on the decisions subject (which only the
    # approval service may publish to) for this very call and arguments.
    approval_seq: int = 0
    # A plan step running under a whole plan's approval (``approval_seq`` names
    # that decision): for each step its argument pointers name, the EVENTS
    # sequence of that step's result. The worker reads those results itself
    # and resolves the approved step's pointers to check these very arguments.
    plan_inputs: dict[str, int] = {}


class ToolCallCompleted(Event, frozen=True, tag="agentstream.tool.call.completed.v1"):
    task_id: str
    agent: str
    step: int
    call_id: str
    tool: str
    ok: bool
    result: Any = None
    error: ToolError | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    attempts: int = 1  # tries of the tool in this call; 0 = it did not run (bad arguments, circuit open)
    worker: str = ""
    served_by: str = ""  # the fallback tool that produced the result while ``tool``'s breaker was open
    # Claim-check: ``result`` (its JSON) is in the object store (bucket
    # agent_payloads) under this name, too large for an event; ``result`` is then null.
    result_ref: str = ""
    # In a shadow deployment: how the result was obtained without a side effect
    # (``live`` for a read-only tool run, ``recorded`` production's result, ``stub``).
    shadow: str = ""


# --------------------------------------------------------------------------- progress


class ModelTurnCompleted(Event, frozen=True, tag="agentstream.model.turn.completed.v1"):
    """Progress notice for timelines and watchers; the agent does not consume it."""

    task_id: str
    agent: str
    step: int
    model: str
    finish_reason: str
    tool_calls: tuple[str, ...]
    usage: Usage
    started_at: float
    finished_at: float
    worker: str = ""
    agent_version: str = ""
    version_hash: str = ""


class ToolCallDispatched(Event, frozen=True, tag="agentstream.tool.call.dispatched.v1"):
    """Progress notice: the agent published these tool calls for one model turn."""

    task_id: str
    agent: str
    step: int
    calls: tuple[ToolCall, ...]
    at: float
    agent_version: str = ""
    version_hash: str = ""


# --------------------------------------------------------------------------- planning


class PlanStepShown(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a plan as a reader sees it: pointers spelled out (``<output of s1['id']>``)."""

    id: str
    tool: str
    args: dict[str, Any]
    depends_on: tuple[str, ...] = ()


class PlanProposed(Event, frozen=True, tag="agentstream.plan.proposed.v1"):
    """A planner turn's plan (valid or not), on the task's progress subject.
    ``attempt`` counts planner turns (1: the first plan; more: replans).
    ``errors`` are the structured validation errors the planner was sent back."""

    task_id: str
    agent: str
    attempt: int
    step: int  # the model turn that produced it
    digest: str
    steps: tuple[PlanStepShown, ...]
    valid: bool
    at: float
    rationale: str = ""
    errors: tuple[dict[str, str], ...] = ()
    agent_version: str = ""
    version_hash: str = ""


class PlanProgress(Event, frozen=True, tag="agentstream.plan.progress.v1"):
    """How a plan's execution moved, on the task's progress subject:
    ``dispatched`` (steps published as tool calls), ``completed``/``failed``
    (a step's result), ``replanned`` (the planner is asked again),
    ``fallback`` (replanning is exhausted: the task continues as ReAct),
    ``solving`` (every step settled: the solver turn is asked)."""

    task_id: str
    agent: str
    attempt: int
    kind: Literal["dispatched", "completed", "failed", "replanned", "fallback", "solving"]
    step_ids: tuple[str, ...]
    at: float
    detail: str = ""
    agent_version: str = ""
    version_hash: str = ""


class RouteDecided(Event, frozen=True, tag="agentstream.route.decided.v1"):
    """The router's choice for one task (strategy ``routed``), with its
    score against the agent's threshold, confidence and reason."""

    task_id: str
    agent: str
    strategy: Literal["react", "plan"]
    score: float
    threshold: float
    confidence: float
    reason: str
    features: dict[str, int]
    at: float
    agent_version: str = ""
    version_hash: str = ""


# --------------------------------------------------------------------------- dead letters


class DeadLettered(Event, frozen=True, tag="agentstream.dead.lettered.v1"):
    """A message a consumer could not process, with why. ``payload`` is the
    original body decoded as UTF-8 with replacement (bounded)."""

    subject: str
    consumer: str
    reason: str
    payload: str
    payload_bytes: int
    deliveries: int
    at: float


# --------------------------------------------------------------------------- approvals and audit


class ApprovalRequested(Event, frozen=True, tag="agentstream.approval.requested.v1"):
    """A tool call waits for a human. Published to ``approvals.<agent>.requested``;
    the session is parked in KV meanwhile, so no process waits on it."""

    approval_id: str
    task_id: str
    agent: str
    step: int
    call_id: str
    tool: str
    arguments: dict[str, Any]
    approvers: tuple[str, ...]  # empty: any identity the deployment allows
    requested_at: float
    deadline_at: float
    tenant_id: str = "default"
    user_id: str = "anonymous"


class ApprovalDecided(Event, frozen=True, tag="agentstream.approval.decided.v1"):
    """A human's decision, published by the approval service on
    ``agents.<agent>.decisions.<task_id>``: the only subject a decision is
    accepted from, and one only the approver role may publish to."""

    approval_id: str
    task_id: str
    agent: str
    step: int
    call_id: str
    approved: bool
    approver: str
    reason: str = ""
    decided_at: float = 0.0
    # What was decided on: the tool and the digest of the arguments the human
    # saw (codec.arguments_digest), so a decision cannot be moved to another call.
    tool: str = ""
    arguments_digest: str = ""
    # A plan-level approval (``tool == "submit_plan"``): the plan as the human
    # saw it (the request's arguments, pointers unresolved). ``arguments_digest``
    # is its digest; a tool worker reads this decision and checks a gated call
    # against the step it claims to be (docs/planning.md).
    plan: dict[str, Any] = {}


class AuditRecord(Event, frozen=True, tag="agentstream.audit.record.v1"):
    """One auditable fact, on ``audit.<kind>.<agent>`` (stream AUDIT)."""

    kind: str  # approval.requested | approval.decided | approval.rejected | approval.expired | inbox.rejected | tool.refused
    at: float
    actor: str
    agent: str
    task_id: str
    details: dict[str, Any] = {}


# --------------------------------------------------------------------------- evaluation


class EvaluationScored(Event, frozen=True, tag="agentstream.eval.scored.v1"):
    """An online evaluator's scores for one finished task, on
    ``evals.<agent>.scores.<task_id>`` (stream EVALS). The scores are kept
    apart (see docs/evaluation.md); ``judge`` is None when no judge ran.
    ``deployment``: which traffic the task was (production, shadow, canary)."""

    task_id: str
    agent: str
    agent_version: str
    evaluator: str  # name and version of the evaluator
    status: str  # completed | failed
    groundedness: float
    safety: bool
    latency_s: float
    tokens: int
    cost_usd: float
    at: float
    judge: float | None = None
    failed_checks: tuple[str, ...] = ()
    sample_rate: float = 1.0  # the share of results this evaluator scores: counts divide by it
    deployment: str = "production"
    tenant_id: str = "default"


class FeedbackSubmitted(Event, frozen=True, tag="agentstream.eval.feedback.v1"):
    """A user's thumbs up or down on a task's answer, on ``evals.<agent>.feedback.<task_id>``
    (``POST /v1/tasks/{task_id}/feedback``), stored beside the scores."""

    task_id: str
    agent: str
    rating: Literal["up", "down"]
    at: float
    comment: str = ""
    user_id: str = "anonymous"


class DriftDetected(Event, frozen=True, tag="agentstream.eval.drift.v1"):
    """A score's moving window fell below its baseline window by more than the
    threshold, with the whole confidence interval of the drop beyond it. On ``evals.<agent>.drift``."""

    agent: str
    metric: str
    baseline_mean: float
    window_mean: float
    diff_low: float
    diff_high: float
    threshold: float
    baseline_size: int
    window_size: int
    at: float


EvaluationEvent = Union[EvaluationScored, FeedbackSubmitted, DriftDetected]

# --------------------------------------------------------------------------- memory
# Request-reply with the memory service on ``memory.<verb>.<tenant>``. The
# tenant is the subject's token, which per-role subject permissions grant; the
# service never takes it from a body or from model output (a body's
# ``tenant_id``, when set, must agree with the subject).

MemoryOp = Literal["ADD", "UPDATE", "DELETE", "NOOP"]
# high: operator-curated knowledge | medium: stated by the user | low: derived by a model or from outside
MemoryTrust = Literal["high", "medium", "low"]


class MemoryWrite(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One typed write (mem0's model). ``write_id`` makes it idempotent: the
    same id applied twice changes nothing the second time. UPDATE and DELETE
    name their target by ``memory_id``, or by ``slot`` (the current valid memory
    of the same user, kind and slot): the target is invalidated with a time, not
    deleted (bi-temporal), so what was believed when stays answerable."""

    op: MemoryOp
    write_id: str
    text: str = ""
    memory_id: str = ""
    slot: str = ""
    kind: str = "fact"  # fact | preference | correction | episode | document
    scope: Literal["user", "system"] = "user"  # user memories are kept apart from system knowledge
    user_id: str = ""
    source: str = ""  # where it came from: a task id, a document path, an operator
    task_id: str = ""
    trust: MemoryTrust = "low"
    metadata: dict[str, str] = {}


class MemoryWriteRequested(Event, frozen=True, tag="agentstream.memory.write.requested.v1"):
    """Request on ``memory.write.<tenant>``; the reply is a MemoryReplied."""

    writes: tuple[MemoryWrite, ...]
    tenant_id: str = ""
    actor: str = ""


class MemoryQueryRequested(Event, frozen=True, tag="agentstream.memory.query.requested.v1"):
    """Request on ``memory.query.<tenant>``: the user's memories and the
    tenant's system knowledge most relevant to ``query``."""

    query: str
    user_id: str = ""
    limit: int = 5
    min_score: float = 0.0
    include_system: bool = True
    task_id: str = ""
    tenant_id: str = ""


class MemoryAdminRequested(Event, frozen=True, tag="agentstream.memory.admin.requested.v1"):
    """Operator request on ``memory.admin.<tenant>``: forget everything from a
    source, or review the quarantine (list, approve, reject an item)."""

    action: Literal["forget", "quarantine_list", "quarantine_approve", "quarantine_reject", "stats"]
    source: str = ""
    item_id: str = ""
    actor: str = ""
    reason: str = ""
    tenant_id: str = ""


class MemoryHit(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    memory_id: str
    text: str
    score: float
    kind: str = "fact"
    scope: str = "user"
    user_id: str = ""
    source: str = ""
    task_id: str = ""
    trust: MemoryTrust = "low"
    created_at: float = 0.0


class MemoryWriteResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    write_id: str
    op: MemoryOp
    # applied | duplicate | noop | quarantined | rate_limited | rejected | not_found
    status: str
    memory_id: str = ""
    reason: str = ""


class QuarantinedWrite(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    item_id: str
    write: MemoryWrite
    reasons: tuple[str, ...]
    at: float
    status: str = "pending"  # pending | approved | rejected


class MemoryReplied(Event, frozen=True, tag="agentstream.memory.replied.v1"):
    """The memory service's answer to any memory request."""

    ok: bool
    error: str = ""
    hits: tuple[MemoryHit, ...] = ()
    results: tuple[MemoryWriteResult, ...] = ()
    quarantine: tuple[QuarantinedWrite, ...] = ()
    count: int = 0

AgentInboxEvent = Union[ToolCallCompleted, ApprovalDecided]
ProgressEvent = Union[ModelTurnCompleted, ToolCallDispatched, ApprovalRequested, PlanProposed, PlanProgress,
                      RouteDecided]
TaskEvent = Union[
    TaskSubmitted,
    ToolCallCompleted,
    ModelTurnCompleted,
    ToolCallDispatched,
    TaskCompleted,
    TaskFailed,
    ApprovalRequested,
    ApprovalDecided,
    PlanProposed,
    PlanProgress,
    RouteDecided,
]
AnyEvent = Union[
    TaskSubmitted,
    TaskCompleted,
    TaskFailed,
    ToolCallRequested,
    ToolCallCompleted,
    ModelTurnCompleted,
    ToolCallDispatched,
    DeadLettered,
    ApprovalRequested,
    ApprovalDecided,
    AuditRecord,
    EvaluationScored,
    FeedbackSubmitted,
    DriftDetected,
    MemoryWriteRequested,
    MemoryQueryRequested,
    MemoryAdminRequested,
    MemoryReplied,
    PlanProposed,
    PlanProgress,
    RouteDecided,
]
MemoryRequest = Union[MemoryWriteRequested, MemoryQueryRequested, MemoryAdminRequested]

# Every wire event type, in AnyEvent's order (JSON Schema, AsyncAPI, property tests).
ALL_EVENT_TYPES: tuple[type[Event], ...] = get_args(AnyEvent)
