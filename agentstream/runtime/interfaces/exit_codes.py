"""The CLI's exit codes, in one place: scripts branch on them, so each outcome
a user must tell apart has its own number, and the README's table comes from
:data:`MEANING`.

A wait that times out is not a failed task (the task may still finish), and
"cannot reach the broker" is not "the task failed": a script retries the one
and reports the other.
"""

from __future__ import annotations

import enum

from agentstream.runtime.core.errors import AgentstreamError, BrokerUnavailable, ConfigError, ResultTimeout


class ExitCode(enum.IntEnum):
    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    WAIT_TIMEOUT = 3
    BROKER_UNREACHABLE = 4
    NOT_FOUND = 5
    INTERRUPTED = 130


MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "done; for `submit --wait`, `result` and `watch`: the task completed",
    ExitCode.TASK_FAILED: "the task failed (`TaskFailed`), or another error the one-line message names",
    ExitCode.USAGE: "bad arguments or bad configuration; nothing was done",
    ExitCode.WAIT_TIMEOUT: "gave up waiting; the task may still finish: `agentstream watch ID` or "
                           "`agentstream result ID --wait S` keeps watching",
    ExitCode.BROKER_UNREACHABLE: "no broker configured, or it cannot be reached",
    ExitCode.NOT_FOUND: "unknown task id, or no worker serves the agent (`submit` still queued the task: "
                        "it runs when a worker for the agent starts)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def table() -> str:
    """A Markdown table of the codes, as the README shows it."""
    rows = [f"| {int(code)} | `{code.name.lower()}` | {MEANING[code]} |" for code in ExitCode]
    return "\n".join(["| code | name | meaning |", "| --- | --- | --- |", *rows])


class CommandExit(AgentstreamError):
    """A command ends with this one-line message and this exit code (not a bug:
    an outcome the user must be told about, such as an unknown task id)."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def for_error(exc: AgentstreamError) -> ExitCode:
    """The exit code of a command that ended with ``exc`` (its one line printed)."""
    if isinstance(exc, CommandExit):
        return exc.code
    if isinstance(exc, ResultTimeout):
        return ExitCode.WAIT_TIMEOUT
    if isinstance(exc, BrokerUnavailable):
        return ExitCode.BROKER_UNREACHABLE
    if isinstance(exc, ConfigError):
        return ExitCode.USAGE
    return ExitCode.TASK_FAILED
