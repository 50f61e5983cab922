"""The interface the engine calls for telemetry, so the execution layer names
no layer above it: observability implements it
(:class:`agentstream.runtime.observability.instrumentation.EngineHooks`) and
the service wires an instance into ``AgentEngine.telemetry``. Each hook takes
one typed input (Temporal's interceptor style)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agentstream.contracts.events import TaskCompleted, TaskFailed
    from agentstream.runtime.core.decide import Decision
    from agentstream.runtime.core.policy import ApprovalRecord
    from agentstream.runtime.core.state import SessionState


class StepScope(Protocol):
    """Open for the duration of one step's effects."""

    def close(self, exc: BaseException | None = None) -> None:
        """The step's effects are done (``exc``: they failed with it)."""


class EngineHooks(Protocol):
    """Called at session creation, around each step's effects, and when the result is published."""

    def stamp(self, decision: Decision) -> Decision:
        """The decision that creates a session, with what telemetry keeps in
        the state (its trace context) added; called before it is written."""

    def step(self, state: SessionState) -> StepScope:
        """A step of the task in ``state`` starts carrying out its commands."""

    def finished(self, state: SessionState | None, result: TaskCompleted | TaskFailed) -> None:
        """The task's result was published."""

    def approval_headers(self, state: SessionState, approval_id: str) -> dict[str, str]:
        """Headers (trace context) to publish the approval request with; kept
        in the approval's record too, so a decision can send them back."""

    def approval_resolved(self, state: SessionState, record: ApprovalRecord) -> None:
        """An approval was decided, expired or cancelled (``record`` as written)."""
