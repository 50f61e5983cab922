"""``@tool``: a typed Python function becomes a tool.

The JSON Schema comes from the signature (via msgspec), the descriptions from
the docstring; that schema is exactly what the model is shown, and the same
types validate the arguments before the function runs.

Operational metadata (timeouts, retries, breaker, approval policy, fallback)
lives on :class:`Tool`, never in :class:`ToolSpec`: the model sees only the
name, the description and the parameters.

Defaults, and why:

- ``read_only=False``: a tool is assumed to have side effects unless it says
  otherwise. Shadow deployments only run read-only tools, and an ambiguous
  failure (a timeout, a dropped connection: the effect may have happened) is
  retried only for read-only or ``idempotent`` tools.
- ``retry=RetryPolicy()``: up to 3 attempts for transient errors, bounded by
  ``max_total_s``. Explicitly retryable failures (``RetryableToolError``,
  ``RateLimited``, ``ToolFailure(retryable=True)``) mean "nothing happened,
  try again" and are retried for every tool.
- ``breaker=None``: no circuit breaker unless asked for (``breaker=True`` or a
  :class:`BreakerPolicy`); a breaker costs one KV read per call.
- ``at_most_once=False``: see :attr:`Tool.mode` and ``docs/effects.md`` for
  what each mode guarantees under which crash.

A tool may ask for its call's context: a parameter annotated
:class:`ToolContext` (any name), or one named ``idempotency_key`` (a ``str``).
The runtime fills it in; it is not part of the schema the model sees and
the model cannot set it. The idempotency key is the same on every delivery
and retry of one call, so a downstream API can deduplicate with it (an
``Idempotency-Key`` header, a unique constraint).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, Literal, get_type_hints

import msgspec

from agentstream.contracts.events import ToolError, ToolSpec

log = logging.getLogger("agentstream.tools")

ToolFn = Callable[..., Awaitable[Any]] | Callable[..., Any]
ApprovalPolicy = bool | Callable[[Any], bool]

# Where a msgspec ValidationError names the field, most specific first.
_FIELD_PATTERNS = tuple(re.compile(p) for p in (r"at `\$\.(\w+)", r"missing required field `(\w+)`",
                                                 r"unknown field `(\w+)`"))


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Retries of transient failures inside one tool call (exponential backoff
    with jitter, see ``toolrunner.backoff``). ``max_total_s`` bounds the whole call, retries and waits
    included; the first attempt always gets the tool's full timeout.

    ``retry_ambiguous``: retry timeouts and connection errors, whose effect may
    already have happened. ``None`` (default) = only for read-only or
    idempotent tools."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    max_total_s: float = 60.0
    retry_ambiguous: bool | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.max_total_s <= 0:
            raise ValueError("RetryPolicy backoffs must be >= 0 and max_total_s > 0")


NO_RETRY = RetryPolicy(max_attempts=1)

ToolMode = Literal["read_only", "idempotent", "at_most_once", "plain"]


class ToolContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the runtime tells a tool about the call it runs (ask for it with a
    parameter annotated ``ToolContext``). ``idempotency_key`` is
    ``<task>:<step>:<call>``: the same on every redelivery and retry of this
    call, different for every other call. ``attempt`` counts tries within one
    delivery (1-based)."""

    idempotency_key: str
    task_id: str = ""
    call_id: str = ""
    step: int = 0
    tool: str = ""
    attempt: int = 1
    tenant_id: str = "default"
    user_id: str = "anonymous"


IDEMPOTENCY_KEY_PARAM = "idempotency_key"


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Open the breaker after ``failure_threshold`` failed calls within
    ``window_s``; stay open ``open_s``, then let one probe call through
    (half-open). ``probe_timeout_s`` (default: ``open_s``, at least 1 s) is how long a
    claimed probe may take before another replica may claim it (the prober
    crashed)."""

    failure_threshold: int = 5
    window_s: float = 60.0
    open_s: float = 30.0
    probe_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.window_s <= 0 or self.open_s < 0:
            raise ValueError("BreakerPolicy needs failure_threshold >= 1, window_s > 0, open_s >= 0")

    @property
    def probe_lease_s(self) -> float:
        return self.probe_timeout_s if self.probe_timeout_s is not None else max(self.open_s, 1.0)


class ToolFailure(Exception):
    """Raise from a tool to return a structured error to the model."""

    def __init__(self, message: str, *, kind: str = "execution_error", hint: str | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.error = ToolError(kind=kind, message=message, hint=hint, retryable=retryable)


class RetryableToolError(ToolFailure):
    """A transient failure that did not take effect: the runner retries it
    (for every tool, side effects or not)."""

    def __init__(self, message: str, *, kind: str = "transient", hint: str | None = None) -> None:
        super().__init__(message, kind=kind, hint=hint, retryable=True)


class RateLimited(RetryableToolError):
    """The downstream said "slow down". ``retry_after_s`` (if known) is the
    least the runner waits before the next attempt."""

    def __init__(self, message: str = "rate limited", *, retry_after_s: float | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, kind="rate_limited", hint=hint)
        self.retry_after_s = retry_after_s


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Google-style docstring: summary paragraph, then ``Args:`` entries."""
    doc = inspect.cleandoc(doc or "")
    parts = re.split(r"^\s*(?:Args|Arguments|Parameters):\s*$", doc, maxsplit=1, flags=re.M)
    summary = " ".join(parts[0].split("\n\n")[0].split())
    params: dict[str, str] = {}
    if len(parts) > 1:
        current = None
        for line in parts[1].splitlines():
            m = re.match(r"^\s{0,8}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if m and not line.startswith(" " * 9):
                current = m.group(1)
                params[current] = m.group(2).strip()
            elif current and line.strip():
                if re.match(r"^\s*(Returns|Raises|Yields):", line):
                    current = None
                    continue
                params[current] = (params[current] + " " + line.strip()).strip()
    return summary, params


class Tool:
    """A registered tool: schema, validator, the function itself, and how the
    runtime treats it (see the module docstring for the defaults)."""

    def __init__(self, fn: ToolFn, *, name: str | None = None, description: str | None = None,
                 timeout_s: float | None = None, retry: RetryPolicy | None = None,
                 idempotent: bool = False, read_only: bool = False,
                 requires_approval: ApprovalPolicy = False, approvers: Iterable[str] = (),
                 fallback: str | None = None, breaker: BreakerPolicy | bool | None = None,
                 at_most_once: bool = False, on_unknown: Literal["error", "escalate"] = "error") -> None:
        self.fn = fn
        self.name = name or fn.__name__
        summary, param_docs = _parse_docstring(fn.__doc__ or "")
        self.description = description or summary
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"tool {self.name!r}: timeout_s must be > 0")
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.idempotent = idempotent
        self.read_only = read_only
        if at_most_once and (idempotent or read_only):
            raise ValueError(f"tool {self.name!r}: at_most_once excludes idempotent and read_only "
                             "(those may safely run again; at-most-once ones must not)")
        self.at_most_once = at_most_once
        if on_unknown not in ("error", "escalate"):
            raise ValueError(f"tool {self.name!r}: on_unknown must be 'error' or 'escalate'")
        if on_unknown == "escalate" and not at_most_once:
            raise ValueError(f"tool {self.name!r}: on_unknown applies to at_most_once tools only")
        # An at-most-once call whose outcome is unknown: an error the model
        # sees ("error"), or the task fails with reason "escalated" ("escalate").
        self.on_unknown = on_unknown
        if not (isinstance(requires_approval, bool) or callable(requires_approval)):
            raise TypeError(f"tool {self.name!r}: requires_approval must be a bool or a callable")
        self.requires_approval = requires_approval
        self.approvers: tuple[str, ...] = tuple(approvers)
        if fallback == self.name:
            raise ValueError(f"tool {self.name!r} cannot be its own fallback")
        self.fallback = fallback
        self.breaker: BreakerPolicy | None = BreakerPolicy() if breaker is True else None if breaker is False else breaker
        hints = get_type_hints(fn)
        sig = inspect.signature(fn)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        # Parameters the runtime fills in (never in the schema): name -> "context" | "key".
        self.context_params: dict[str, str] = {}
        for pname, param in sig.parameters.items():
            ann = hints.get(pname, Any)
            if ann is ToolContext:
                self.context_params[pname] = "context"
                continue
            if pname == IDEMPOTENCY_KEY_PARAM:
                self.context_params[pname] = "key"
                continue
            doc = param_docs.get(pname)
            if doc:
                ann = _annotated(ann, doc)
            if param.default is inspect.Parameter.empty:
                fields.append((pname, ann))
            else:
                fields.append((pname, ann, param.default))
        self.args_type: type[msgspec.Struct] = msgspec.defstruct(
            f"{self.name}_args", fields, kw_only=True, forbid_unknown_fields=True)
        schema = msgspec.json.schema(self.args_type)
        self.parameters = _inline(schema)
        self.parameters.pop("title", None)
        self.spec = ToolSpec(name=self.name, description=self.description, parameters=self.parameters)
        self._is_async = inspect.iscoroutinefunction(fn)

    def validate(self, arguments: dict[str, Any]) -> msgspec.Struct | ToolError:
        try:
            return msgspec.convert(arguments, self.args_type)
        except msgspec.ValidationError as exc:
            text = str(exc)
            fld = next((m.group(1) for p in _FIELD_PATTERNS if (m := p.search(text))), None)
            return ToolError(kind="invalid_arguments", message=text, field=fld,
                             hint=f"arguments must match the JSON Schema of {self.name!r}")

    @property
    def mode(self) -> ToolMode:
        """How often the tool's effect may happen across crashes (``docs/effects.md``)."""
        if self.read_only:
            return "read_only"
        if self.idempotent:
            return "idempotent"
        if self.at_most_once:
            return "at_most_once"
        return "plain"

    @property
    def side_effects(self) -> bool:
        """True unless the tool declared itself ``read_only``."""
        return not self.read_only

    @property
    def retry_ambiguous(self) -> bool:
        """Whether a timeout or connection error (the effect may have happened)
        is retried."""
        if self.retry.retry_ambiguous is not None:
            return self.retry.retry_ambiguous
        return self.read_only or self.idempotent

    def needs_approval(self, arguments: dict[str, Any]) -> bool:
        """Whether a call with these arguments needs a human approval first.

        A callable policy gets the validated arguments Struct (attribute
        access: ``lambda a: a.amount > 100``). Arguments that do not validate
        need no approval: the call fails validation before anything runs. A
        policy that raises needs approval (fail safe)."""
        policy = self.requires_approval
        if isinstance(policy, bool):
            return policy
        args = self.validate(arguments)
        if isinstance(args, ToolError):
            return False
        try:
            return bool(policy(args))
        except Exception:  # noqa: BLE001 - a broken policy must not let a call through unapproved
            log.warning("approval policy of tool %r raised; requiring approval", self.name, exc_info=True)
            return True

    async def __call__(self, arguments: msgspec.Struct, context: ToolContext | None = None) -> Any:
        kwargs = msgspec.structs.asdict(arguments)
        if self.context_params:
            ctx = context or ToolContext(idempotency_key="")
            for pname, kind in self.context_params.items():
                kwargs[pname] = ctx if kind == "context" else ctx.idempotency_key
        if self._is_async:
            return await self.fn(**kwargs)  # type: ignore[misc]
        return await asyncio.to_thread(self.fn, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _annotated(ann: Any, doc: str) -> Any:
    return Annotated[ann, msgspec.Meta(description=doc)]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve the ``$ref`` msgspec produces so the model sees a plain object schema."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.split("/")[-1]])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    out = resolve(schema)
    assert isinstance(out, dict)
    return out


def tool(fn: ToolFn | None = None, *, name: str | None = None, description: str | None = None,
         timeout_s: float | None = None, retry: RetryPolicy | None = None, idempotent: bool = False,
         read_only: bool = False, requires_approval: ApprovalPolicy = False, approvers: Iterable[str] = (),
         fallback: str | None = None, breaker: BreakerPolicy | bool | None = None,
         at_most_once: bool = False, on_unknown: Literal["error", "escalate"] = "error") -> Any:
    """Decorator: ``@tool`` or ``@tool(timeout_s=5, read_only=True, breaker=True)``.

    Options (all on :class:`Tool`, none shown to the model): ``timeout_s`` per
    attempt; ``retry`` (:class:`RetryPolicy`); ``idempotent`` (results are
    stored by idempotency key, so a redelivered call returns the first result
    instead of running again); ``read_only`` (no side effects);
    ``requires_approval`` (bool, or a predicate over the validated arguments);
    ``approvers`` (identities allowed to approve; empty = the deployment's
    default); ``fallback`` (name of a tool served while this one's breaker is
    open); ``breaker`` (:class:`BreakerPolicy`, or True for the defaults);
    ``at_most_once`` (the start is recorded before the tool runs; a redelivered
    call that started and never finished is not run again but answered with an
    ``outcome_unknown`` error; with ``on_unknown="escalate"`` the task fails
    with reason ``escalated`` instead, for a human to check).
    """
    def wrap(f: ToolFn) -> Tool:
        return Tool(f, name=name, description=description, timeout_s=timeout_s, retry=retry,
                    idempotent=idempotent, read_only=read_only, requires_approval=requires_approval,
                    approvers=approvers, fallback=fallback, breaker=breaker, at_most_once=at_most_once,
                    on_unknown=on_unknown)

    if fn is not None:
        return wrap(fn)
    return wrap
