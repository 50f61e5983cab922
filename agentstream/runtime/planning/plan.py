"""Plans as typed DAGs, their static validation, and their schedule. Pure.

A plan is a list of steps, each a tool call whose arguments may point at an
earlier step's output with a *typed pointer*, ``{"$ref": "s1", "path":
["order", "id"]}``, never a string template: a template that does not match
fails silently in other planners ("{{s1.order_id}}" sent verbatim to a tool);
a pointer either resolves to a value or is a structured error.

Validation runs before anything executes (the tools exist, the arguments fit
their schemas, every pointer names an earlier step, no cycles, the plan fits
the task's budget); an invalid plan goes back to the planner as a list of
:class:`PlanError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from agentstream.contracts.events import ToolSpec

REF_KEY = "$ref"
PATH_KEY = "path"

ErrorKind = Literal["malformed", "empty", "duplicate_id", "bad_id", "unknown_tool", "unknown_ref", "cycle",
                    "bad_arguments", "over_budget", "unresolved"]


class PlanStep(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tool: str
    args: dict[str, Any] = {}
    depends_on: tuple[str, ...] = ()  # besides the steps its pointers name (ordering only)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    steps: tuple[PlanStep, ...]
    rationale: str = ""


class PlanError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: ErrorKind
    message: str
    step: str = ""
    field: str = ""


_plan_decoder = msgspec.json.Decoder(Plan)


def parse_plan(text: str) -> Plan | PlanError:
    """A plan from the model's JSON (the arguments of its ``submit_plan`` call).

    A plan with no steps is a plan: "nothing to run, answer" (a greeting, a
    question the conversation already answers, a replan after a failure that
    leaves nothing worth running). It is the planner's counterpart of a ReAct
    turn without tool calls, and the strategy goes straight to the solver.
    Refusing it cost a replan per attempt and then a fall back to ReAct, for
    a request that never needed a tool. The one place it is still an error is
    the planner turn that submits it beside direct tool calls (``plan_first``):
    the model meant to act, so "nothing to run" would drop those calls."""
    try:
        return _plan_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return PlanError(kind="malformed", message=f"the plan is not valid JSON of the plan shape: {exc}")


# ----------------------------------------------------------------- pointers


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and REF_KEY in value and set(value) <= {REF_KEY, PATH_KEY}


def refs_in(value: Any) -> Iterable[dict[str, Any]]:
    if is_ref(value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from refs_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from refs_in(v)


def dependencies(step: PlanStep) -> set[str]:
    return {str(r[REF_KEY]) for r in refs_in(step.args)} | set(step.depends_on)


class Unresolved(Exception):
    def __init__(self, error: PlanError) -> None:
        super().__init__(error.message)
        self.error = error


def _follow(output: Any, path: Sequence[Any], ref: str) -> Any:
    cur = output
    for i, key in enumerate(path):
        if isinstance(cur, dict) and isinstance(key, str) and key in cur:
            cur = cur[key]
        elif isinstance(cur, list) and isinstance(key, int) and not isinstance(key, bool) and -len(cur) <= key < len(cur):
            cur = cur[key]
        else:
            where = ".".join(str(k) for k in path[: i + 1])
            raise Unresolved(PlanError(kind="unresolved", step=ref, field=where,
                                       message=f"output of step {ref!r} has no {where!r}"))
    return cur


def resolve(value: Any, outputs: Mapping[str, Any]) -> Any:
    """``value`` with every pointer replaced by what it points at; raises
    :class:`Unresolved` when a step's output lacks the path."""
    if is_ref(value):
        ref = str(value[REF_KEY])
        if ref not in outputs:
            raise Unresolved(PlanError(kind="unknown_ref", step=ref, message=f"step {ref!r} has no output"))
        path = value.get(PATH_KEY) or []
        return _follow(outputs[ref], path if isinstance(path, list) else [path], ref)
    if isinstance(value, dict):
        return {k: resolve(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, outputs) for v in value]
    return value


# ----------------------------------------------------------------- validation

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "object": (dict,),
    "array": (list,), "null": (type(None),),
}


def _type_ok(value: Any, schema: Mapping[str, Any]) -> bool:
    t = schema.get("type")
    if t is None:
        return True
    types = t if isinstance(t, list) else [t]
    for name in types:
        py = _JSON_TYPES.get(name)
        if py is None:
            return True  # a type we do not check statically: the tool validates at run time
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, py):
            return True
    return False


def check_arguments(step: PlanStep, spec: ToolSpec) -> list[PlanError]:
    """The literal arguments against the tool's JSON Schema (required, unknown,
    types, enums); a pointer counts as present and is checked when resolved.

    A deliberate subset of JSON Schema, written here rather than taken from
    ``jsonschema``: it only has to catch a planner's mistakes before anything
    runs, the core stays free of runtime dependencies, and the tool's own
    msgspec validation remains the authority when the call executes."""
    schema = spec.parameters or {}
    props: Mapping[str, Any] = schema.get("properties") or {}
    errors: list[PlanError] = []
    for name in schema.get("required") or []:
        if name not in step.args:
            errors.append(PlanError(kind="bad_arguments", step=step.id, field=name,
                                    message=f"{step.tool} needs argument {name!r}"))
    for name, value in step.args.items():
        if name not in props:
            if schema.get("additionalProperties", True) is False or props:
                errors.append(PlanError(kind="bad_arguments", step=step.id, field=name,
                                        message=f"{step.tool} has no argument {name!r}"))
            continue
        if is_ref(value):
            continue
        sub = props[name]
        if not _type_ok(value, sub):
            errors.append(PlanError(kind="bad_arguments", step=step.id, field=name,
                                    message=f"{step.tool}.{name} must be {sub.get('type')}, got {_quote(value)}"))
        elif "enum" in sub and value not in sub["enum"]:
            errors.append(PlanError(kind="bad_arguments", step=step.id, field=name,
                                    message=f"{step.tool}.{name} must be one of {sub['enum']}"))
    return errors


def _quote(value: Any, limit: int = 80) -> str:
    """A value in an error the planner is sent back, cut short: the planner
    wrote it, and echoing a huge one would grow the session by as much again."""
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def topological_order(steps: Sequence[PlanStep]) -> list[str] | None:
    """Kahn's algorithm, stable by plan order; None if there is a cycle."""
    deps = {s.id: dependencies(s) for s in steps}
    order: list[str] = []
    done: set[str] = set()
    remaining = [s.id for s in steps]
    while remaining:
        ready = [i for i in remaining if deps[i] <= done]
        if not ready:
            return None
        order.extend(ready)
        done.update(ready)
        remaining = [i for i in remaining if i not in done]
    return order


def validate(plan: Plan, tools: Mapping[str, ToolSpec], *, max_steps: int) -> list[PlanError]:
    errors: list[PlanError] = []
    ids = [s.id for s in plan.steps]
    seen: set[str] = set()
    for s in plan.steps:
        if not s.id or not s.id.replace("_", "").replace("-", "").isalnum() or len(s.id) > 64:
            errors.append(PlanError(kind="bad_id", step=s.id, message=f"step id {s.id!r}: use letters, digits, - or _"))
        if s.id in seen:
            errors.append(PlanError(kind="duplicate_id", step=s.id, message=f"two steps are called {s.id!r}"))
        seen.add(s.id)
    if len(plan.steps) > max_steps:
        errors.append(PlanError(kind="over_budget",
                                message=f"the plan has {len(plan.steps)} steps; the task allows {max_steps} more tool calls"))
    for s in plan.steps:
        spec = tools.get(s.tool)
        if spec is None:
            known = ", ".join(sorted(tools)) or "(none)"
            errors.append(PlanError(kind="unknown_tool", step=s.id, message=f"no tool {s.tool!r}; tools: {known}"))
        else:
            errors.extend(check_arguments(s, spec))
        for d in sorted(dependencies(s)):
            if d not in seen and d not in ids:
                errors.append(PlanError(kind="unknown_ref", step=s.id, message=f"step {s.id!r} points at unknown step {d!r}"))
            elif d == s.id:
                errors.append(PlanError(kind="cycle", step=s.id, message=f"step {s.id!r} depends on itself"))
    if not any(e.kind in ("unknown_ref", "duplicate_id") for e in errors) and topological_order(plan.steps) is None:
        errors.append(PlanError(kind="cycle", message="the steps depend on each other in a circle"))
    return errors


# ----------------------------------------------------------------- schedule


def ready_steps(plan: Plan, done: Iterable[str], started: Iterable[str]) -> list[PlanStep]:
    """Steps whose every dependency has finished and that have not started: run them together."""
    done_set, started_set = set(done), set(started)
    return [s for s in plan.steps if s.id not in started_set and dependencies(s) <= done_set]


def blocked_by_failure(plan: Plan, failed: Iterable[str]) -> set[str]:
    """Every step that (transitively) depends on a failed one: it can never run."""
    out = set(failed)
    changed = True
    while changed:
        changed = False
        for s in plan.steps:
            if s.id not in out and dependencies(s) & out:
                out.add(s.id)
                changed = True
    return out - set(failed)


def digest(plan: Plan) -> str:
    """What a human approves when approving the whole plan: its steps, tools and arguments."""
    canon = [{"id": s.id, "tool": s.tool, "args": s.args, "depends_on": sorted(dependencies(s))} for s in plan.steps]
    return hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def shown(value: Any) -> Any:
    """Arguments as a human reads them in a plan approval: pointers spelled out."""
    if is_ref(value):
        path = value.get(PATH_KEY) or []
        return f"<output of {value[REF_KEY]}{''.join(f'[{p!r}]' for p in (path if isinstance(path, list) else [path]))}>"
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v) for v in value]
    return value


def covers(plan: Plan, step_id: str, tool: str, resolved_args: Mapping[str, Any], outputs: Mapping[str, Any]) -> bool:
    """Whether a call is exactly a step of an approved plan: same step, same
    tool, and arguments equal to the plan's once its pointers are resolved.
    Anything else (a call the plan did not contain, other arguments) needs
    its own approval."""
    for s in plan.steps:
        if s.id == step_id:
            if s.tool != tool:
                return False
            try:
                return resolve(s.args, outputs) == dict(resolved_args)
            except Unresolved:
                return False
    return False
