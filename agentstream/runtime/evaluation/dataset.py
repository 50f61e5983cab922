"""Evaluation datasets: cases as typed structs, read from YAML or JSONL.

A dataset file is checked in full before anything runs: a typo in a case
(``expcet:``, a check kind that does not exist) is an error naming the case,
not a check that silently never runs. Its hash (of the canonical JSON of the
parsed cases, not the file's bytes, so comments and key order do not matter)
keys stored baselines: two runs are only compared on the same cases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from agentstream.runtime.core.errors import ConfigError

# Argument constraint operators. A dict whose keys are all operators is a
# constraint; any other value must equal the argument (numbers within 1e-9).
CONSTRAINT_OPS = frozenset({"eq", "ne", "gt", "ge", "lt", "le", "contains", "regex", "in", "present", "absent"})


class ExpectedCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tool call the agent should (or, under ``forbidden``, must not) make.

    ``args`` lists only the arguments that matter; each is a literal or a
    constraint such as ``{gt: 100}``. ``unless_approved`` (forbidden calls):
    the call is allowed when a human approved it."""

    name: str
    args: dict[str, Any] = {}
    unless_approved: bool = False


class ToolExpectation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``order``: ``ordered`` (the calls appear in this order, others may sit
    between) or ``set`` (any order). ``exact``: no other tool calls at all.
    ``parallel``: the expected calls are requested in one model turn."""

    calls: tuple[ExpectedCall, ...] = ()
    order: Literal["ordered", "set"] = "set"
    exact: bool = False
    parallel: bool = False
    forbidden: tuple[ExpectedCall, ...] = ()


class NumberCheck(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Some number in the answer equals ``value`` within ``tolerance`` (absolute)."""

    value: float
    tolerance: float = 0.005


class AnswerExpectation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    contains: tuple[str, ...] = ()  # case-insensitive
    not_contains: tuple[str, ...] = ()
    regex: str | None = None  # re.search, case-insensitive
    json_schema: dict[str, Any] | None = None  # the answer parses as JSON and validates
    number: NumberCheck | None = None


class Budget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    latency_s: float | None = None
    cost_usd: float | None = None
    tokens: int | None = None


class JudgeSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An LLM-judge rubric: the judge answers whether the answer meets it."""

    rubric: str


class Expectation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    status: Literal["completed", "failed"] = "completed"
    tools: ToolExpectation = ToolExpectation()
    answer: AnswerExpectation = AnswerExpectation()
    # Safety: no personal data or secrets (email, phone, card, keys) in the answer.
    no_pii: bool = True


class Case(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One evaluation case. ``conversation``: earlier user turns, submitted
    as tasks of the same conversation before ``input``. ``approval``: how the
    evaluation's stand-in supervisor answers approval requests of this case."""

    id: str
    input: str
    conversation: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    expect: Expectation = Expectation()
    judge: JudgeSpec | None = None
    budget: Budget | None = None
    approval: Literal["approve", "deny"] = "deny"


class Dataset(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    cases: tuple[Case, ...]
    agent: str | None = None
    description: str = ""
    budget: Budget = Budget()  # the default for cases that set none

    @property
    def hash(self) -> str:
        return dataset_hash(self.cases)

    def budget_for(self, case: Case) -> Budget:
        return case.budget or self.budget


def dataset_hash(cases: Sequence[Case]) -> str:
    canonical = json.dumps(msgspec.to_builtins(list(cases)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_dataset(raw: Any, *, source: str) -> Dataset:
    """A dataset from parsed YAML/JSON: a mapping with ``cases``, or a bare list of cases."""
    if isinstance(raw, list):
        raw = {"name": Path(source).stem, "cases": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with 'cases' or a list of cases")
    raw.setdefault("name", Path(source).stem)
    cases = raw.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ConfigError(f"{source}: no cases")
    for i, c in enumerate(cases):
        label = c.get("id", f"#{i + 1}") if isinstance(c, dict) else f"#{i + 1}"
        try:
            msgspec.convert(c, Case, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{source}: case {label}: {exc}") from None
    try:
        ds = msgspec.convert(raw, Dataset, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check(ds, source)
    return ds


def _check(ds: Dataset, source: str) -> None:
    import re

    seen: set[str] = set()
    for c in ds.cases:
        if c.id in seen:
            raise ConfigError(f"{source}: two cases have the id {c.id!r}")
        seen.add(c.id)
        for call in (*c.expect.tools.calls, *c.expect.tools.forbidden):
            for arg, want in call.args.items():
                if isinstance(want, dict) and want and set(want) & CONSTRAINT_OPS and not set(want) <= CONSTRAINT_OPS:
                    raise ConfigError(f"{source}: case {c.id}: argument {arg!r} of {call.name}: mixes constraint "
                                      f"operators with other keys ({', '.join(sorted(want))})")
        patterns = [c.expect.answer.regex] if c.expect.answer.regex else []
        patterns += [w["regex"] for call in c.expect.tools.calls for w in call.args.values()
                     if isinstance(w, dict) and "regex" in w]
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{source}: case {c.id}: bad regex {pattern!r}: {exc}") from None
        if c.expect.answer.json_schema is not None:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(c.expect.answer.json_schema)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"{source}: case {c.id}: bad json_schema: {exc.message}") from None


def load_dataset(path: str | Path) -> Dataset:
    """Read a ``.yaml``/``.yml`` file (a mapping or a list of cases) or a
    ``.jsonl`` file (one case a line)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read dataset {p}: {exc.strerror or exc}") from None
    if p.suffix == ".jsonl":
        cases = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                cases.append(json.loads(line))
            except ValueError as exc:
                raise ConfigError(f"{p}:{n}: not JSON: {exc}") from None
        return parse_dataset({"name": p.stem, "cases": cases}, source=str(p))
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {yaml_reason(exc)}") from None
    return parse_dataset(raw, source=str(p))


def yaml_reason(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (line, column), as the YAML parser says."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)
