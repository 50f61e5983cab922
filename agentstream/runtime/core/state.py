"""Session state and the commands the core emits. Stored as JSON in KV
``agent_sessions`` (readable with any NATS client), one key a task."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from agentstream.contracts.events import (
    ApprovalDecided,
    ApprovalRequested,
    AuditRecord,
    Message,
    ModelAttempt,
    ModelResponse,
    ModelTurnCompleted,
    PlanProgress,
    PlanProposed,
    RouteDecided,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolCallRequested,
    ToolError,
    Usage,
)
from agentstream.runtime.planning.plan import Plan
from agentstream.runtime.planning.router import RouteDecision

Status = Literal["awaiting_model", "awaiting_tools", "completed", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed"})


class PendingCall(msgspec.Struct, frozen=True, kw_only=True):
    call_id: str
    tool: str
    arguments: dict[str, Any] = {}
    approval: str = ""  # "" (not needed) | "pending" | "approved"
    approval_id: str = ""
    approvers: tuple[str, ...] = ()
    approval_seq: int = 0  # EVENTS sequence of the approving decision (ToolCallRequested.approval_seq)


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    call_id: str
    tool: str
    ok: bool
    content: str  # what the model sees, JSON text


# ----------------------------------------------------------------- commands


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="cmd"):
    pass


class CallModel(Command, frozen=True, tag="call_model"):
    step: int
    max_tokens: int | None = None  # what the budget leaves for this call's output


class PublishToolCall(Command, frozen=True, tag="publish_tool_call"):
    request: ToolCallRequested


class PublishProgress(Command, frozen=True, tag="publish_progress"):
    event: ModelTurnCompleted | ToolCallDispatched | PlanProposed | PlanProgress | RouteDecided


class PublishResult(Command, frozen=True, tag="publish_result"):
    result: TaskCompleted | TaskFailed


class SetDeadline(Command, frozen=True, tag="set_deadline"):
    deadline_at: float


class ClearDeadline(Command, frozen=True, tag="clear_deadline"):
    pass


class RecordTurn(Command, frozen=True, tag="record_turn"):
    """Append (input, output) to the conversation history."""

    conversation_key: str
    task_id: str
    user: str
    assistant: str


class PublishApproval(Command, frozen=True, tag="publish_approval"):
    request: ApprovalRequested


class PublishAudit(Command, frozen=True, tag="publish_audit"):
    record: AuditRecord


class SetApprovalTimer(Command, frozen=True, tag="set_approval_timer"):
    call_id: str
    at: float


class ClearApprovalTimer(Command, frozen=True, tag="clear_approval_timer"):
    call_id: str


class RecordApproval(Command, frozen=True, tag="record_approval"):
    """Keep the listing of approvals (KV ``agent_approvals``) in step."""

    approval_id: str
    status: str  # pending | approved | denied | expired | cancelled
    request: ApprovalRequested | None = None
    decision: ApprovalDecided | None = None


AnyCommand = Union[CallModel, PublishToolCall, PublishProgress, PublishResult, SetDeadline,
                   ClearDeadline, RecordTurn, PublishApproval, PublishAudit, SetApprovalTimer,
                   ClearApprovalTimer, RecordApproval]


# ----------------------------------------------------------------- inputs (internal)


class ModelResponded(msgspec.Struct, frozen=True, kw_only=True):
    step: int
    response: ModelResponse
    started_at: float
    finished_at: float


class ModelFailed(msgspec.Struct, frozen=True, kw_only=True):
    step: int
    message: str
    reason: str = "model_error"  # or model_timeout: the model never answered in time
    attempts: tuple[ModelAttempt, ...] = ()


class DeadlineReached(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ApprovalExpired(msgspec.Struct, frozen=True, kw_only=True):
    call_id: str


Input = Union[TaskSubmitted, ToolCallCompleted, ApprovalDecided, ModelResponded, ModelFailed,
              DeadlineReached, ApprovalExpired]


# ----------------------------------------------------------------- planning


class PlanCall(msgspec.Struct, frozen=True, kw_only=True):
    """A plan step published as a tool call (every attempt's, kept for the
    trust check of late results and for the timeline)."""

    call_id: str
    step_id: str
    tool: str
    attempt: int
    turn: int  # the model turn (SessionState.step) the call belongs to
    at: float


PlanPhase = Literal["planning", "approval", "executing", "solving", "react"]


class Planning(msgspec.Struct, frozen=True, kw_only=True):
    """A plan-first or routed session's planning state (core/plan_first.py).
    None on a ReAct session, so its state is what it always was.

    ``phase`` says what the session waits for: a planner turn, a human's
    decision on the whole plan, the plan's tool calls, the solver turn, or,
    after a route to ReAct or a fallback, ``react`` (the ReAct loop runs)."""

    phase: PlanPhase
    attempt: int = 0  # planner turns so far (the first plan is attempt 1)
    plan: Plan | None = None  # the current attempt's valid plan
    digest: str = ""
    planner_call_id: str = ""  # the submit_plan call of the current attempt (its tool message comes later)
    outputs: dict[str, Any] = {}  # step id -> its tool's output (pointers resolve against these)
    output_seqs: dict[str, int] = {}  # step id -> EVENTS sequence of its result (ToolCallRequested.plan_inputs)
    failed: dict[str, str] = {}  # step id -> why it failed (the error the planner will see)
    calls: tuple[PlanCall, ...] = ()
    approval_seq: int = 0  # EVENTS sequence of the decision approving this plan (0: none)
    route: RouteDecision | None = None
    fallback: str = ""  # why the task fell back to ReAct ("" if it did not)


# ----------------------------------------------------------------- state


class SessionState(msgspec.Struct, frozen=True, kw_only=True):
    task: TaskSubmitted
    agent_version: str
    status: Status
    step: int
    messages: tuple[Message, ...]
    pending: tuple[PendingCall, ...] = ()
    results: tuple[CallResult, ...] = ()
    usage: Usage = Usage()
    tool_calls_total: int = 0
    started_at: float
    updated_at: float
    deadline_at: float
    max_steps: int
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    call_counts: dict[str, int] = {}  # "tool:canonical-args" -> times called (loop breaker)
    # The last model call's reported input tokens and how many messages it saw:
    # the next call's input is at least that plus what was added since.
    last_input_tokens: int = 0
    last_input_messages: int = 0
    outbox: tuple[AnyCommand, ...] = ()
    outbox_at: float = 0.0  # when the outbox was produced: its dedupe window starts here
    outcome: TaskCompleted | TaskFailed | None = None
    # Telemetry (agentstream.runtime.observability.telemetry), set when the session is
    # created: the W3C traceparent of the task's invoke_agent span (every step,
    # on any replica, is its child) and the span id of that span's parent.
    trace_parent: str = ""
    trace_caller_span: str = ""
    planning: Planning | None = None  # strategy "plan" or "routed" only

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    user: str
    assistant: str


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    turns: tuple[Turn, ...] = ()


_state_enc = msgspec.json.Encoder()
_state_dec = msgspec.json.Decoder(SessionState)
_conv_dec = msgspec.json.Decoder(Conversation)


def encode_state(state: SessionState | Conversation) -> bytes:
    return _state_enc.encode(state)


def decode_state(raw: bytes) -> SessionState:
    return _state_dec.decode(raw)


def decode_conversation(raw: bytes) -> Conversation:
    return _conv_dec.decode(raw)


def finished_record(state: SessionState) -> SessionState:
    """What a finished session keeps in the store: enough to answer a retried
    task (its outcome), to re-publish its last outbox within the dedupe window,
    and to know the task id is taken. The conversation (``messages``), the loop
    counters and the task's input are dropped: nothing reads them once the task
    has finished, and they were most of the ~3 KB a W1 session weighed."""
    if not state.terminal:
        return state
    task = state.task
    if task.input or task.metadata:
        task = msgspec.structs.replace(task, input="", metadata={})
    planning = state.planning
    if planning is not None:  # the route and the fallback stay: they say how the task ran
        planning = msgspec.structs.replace(planning, plan=None, outputs={}, output_seqs={}, failed={}, calls=())
    return msgspec.structs.replace(state, task=task, messages=(), call_counts={}, pending=(), results=(),
                                   last_input_tokens=0, last_input_messages=0, planning=planning)


def tool_error_content(error: ToolError) -> str:
    return _state_enc.encode({"error": msgspec.to_builtins(error)}).decode()


def tool_ok_content(result: Any) -> str:
    if isinstance(result, str):
        return result
    return _state_enc.encode(result).decode()
