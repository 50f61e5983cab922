"""Tool hygiene (``agentstream lint``): what makes a model misuse an app's tools, found before
it runs.

Checks (``error`` breaks a deployment or leaves the model guessing; ``warn``
degrades tool choice):

- error: a tool without a description (the model sees only its name);
- error: a ``fallback`` naming a tool the app does not define;
- warn: an agent with more than ``MAX_TOOLS`` (8) tools: tool choice degrades
  with every tool added;
- warn: a parameter without a description (an ``Args:`` entry in the docstring);
- warn: two tools of one agent whose descriptions are nearly the same. Nearly
  = either measure says so: ``difflib.SequenceMatcher`` ratio >= 0.9 on the
  normalised text (lower case, words only; catches small edits: "Count A for a
  task." / "Count B for a task." scores 0.94) or word-set Jaccard >= 0.85
  (catches the same words reordered). Lower thresholds (0.85 / 0.8) flag
  templated descriptions that differ in their one meaningful noun ("Fetch the
  company's invoices by reference." / "... payroll ...": 0.86 / 0.8), which a
  model tells apart;
- warn: a fallback whose schema does not accept the primary tool's arguments
  (it is called with them);
- warn: ``approvers`` on a tool that never requires approval.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import re
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from agentstream.contracts.events import ToolSpec
from agentstream.runtime.core.app import App
from agentstream.runtime.core.tools import Tool

MAX_TOOLS = 8
SIMILARITY_RATIO = 0.9
SIMILARITY_JACCARD = 0.85


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    severity: Literal["warn", "error"]
    agent: str  # "" = about a tool, whichever agent uses it
    tool: str  # "" = about the agent as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.severity:<5} agent={self.agent or '-'} tool={self.tool or '-'}: {self.message}"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def similarity(a: str, b: str) -> tuple[float, float]:
    """(SequenceMatcher ratio on normalised text, word-set Jaccard)."""
    wa, wb = _words(a), _words(b)
    ratio = difflib.SequenceMatcher(None, " ".join(wa), " ".join(wb), autojunk=False).ratio()
    sa, sb = set(wa), set(wb)
    jaccard = len(sa & sb) / len(sa | sb) if sa | sb else 1.0
    return ratio, jaccard


def _near(a: str, b: str) -> tuple[float, float] | None:
    """The similarity of two descriptions if they are nearly the same, else None."""
    if not a.strip() or not b.strip():
        return None
    ratio, jaccard = similarity(a, b)
    return (ratio, jaccard) if ratio >= SIMILARITY_RATIO or jaccard >= SIMILARITY_JACCARD else None


def nearly_same(a: str, b: str) -> bool:
    return _near(a, b) is not None


def _properties(spec: ToolSpec) -> dict[str, Any]:
    props = spec.parameters.get("properties")
    return props if isinstance(props, dict) else {}


def lint_tool(t: Tool, app: App) -> list[Finding]:
    out: list[Finding] = []

    def add(severity: Literal["warn", "error"], message: str) -> None:
        out.append(Finding(severity=severity, agent="", tool=t.name, message=message))

    if not t.spec.description.strip():
        add("error", "no description: the model sees only the name (write a docstring summary)")
    for pname, schema in _properties(t.spec).items():
        if not (isinstance(schema, dict) and str(schema.get("description", "")).strip()):
            add("warn", f"parameter {pname!r} has no description (add it under 'Args:' in the docstring)")
    if t.fallback:
        fb = app.tools.get(t.fallback)
        if fb is None:
            add("error", f"fallback {t.fallback!r} is not a tool of this app")
        else:
            mine, theirs = _properties(t.spec), _properties(fb.spec)
            required = set(fb.spec.parameters.get("required") or ())
            extra = sorted(set(mine) - set(theirs))
            missing = sorted(required - set(mine))
            if extra or missing:
                add("warn", f"fallback {fb.name!r} does not take this tool's arguments "
                            f"(unknown to it: {extra or '-'}; required by it, absent here: {missing or '-'})")
    if t.approvers and t.requires_approval is False:
        add("warn", f"approvers {list(t.approvers)} are set but the tool never requires approval")
    return out


def lint_app(app: App) -> list[Finding]:
    """Every finding for the app: tool-level first (agent ""), then per agent."""
    findings: list[Finding] = []
    for name in sorted(app.tools):
        findings.extend(lint_tool(app.tools[name], app))
    for aname in sorted(app.agents):
        specs = app.agents[aname].spec.tools
        if len(specs) > MAX_TOOLS:
            findings.append(Finding(
                severity="warn", agent=aname, tool="",
                message=f"{len(specs)} tools (more than {MAX_TOOLS}): the model chooses worse with every tool; "
                        f"split the agent or merge tools"))
        for a, b in itertools.combinations(specs, 2):
            near = _near(a.description, b.description)
            if near is not None:
                ratio, jaccard = near
                findings.append(Finding(
                    severity="warn", agent=aname, tool=a.name,
                    message=f"description nearly the same as {b.name!r} (similarity {ratio:.2f}, "
                            f"word overlap {jaccard:.2f}): say how they differ"))
    return findings


def warn_at_startup(app: App, agents: Iterable[str], log: logging.Logger) -> list[Finding]:
    """Log the findings relevant to a process at startup (never fails it):
    those of the agents it serves and of their tools; with no agents (a tool
    worker), every finding. Returns what it logged."""
    served = set(agents)
    findings = lint_app(app)
    if served:
        tools = {s.name for a in served if a in app.agents for s in app.agents[a].spec.tools}
        findings = [f for f in findings if f.agent in served or (not f.agent and f.tool in tools)]
    for f in findings:
        log.log(logging.ERROR if f.severity == "error" else logging.WARNING, "lint: %s", f)
    return findings
