"""An application: the agents and tools one deployment serves.

Loaded by every process (API, agent workers, tool workers) from
``AGENTSTREAM_APP`` (``module:attribute``); the bundled support desk is the default.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.core.ports import LLM
from agentstream.runtime.core.spec import AgentSpec
from agentstream.runtime.core.tools import Tool

DEFAULT_APP = "agentstream.examples.support_desk:app"


@dataclass
class Agent:
    spec: AgentSpec
    # The model used when no real model is configured (AGENTSTREAM_MODEL unset).
    scripted: Callable[[], LLM] | None = None


@dataclass
class App:
    agents: dict[str, Agent] = field(default_factory=dict)  # name -> the production version
    tools: dict[str, Tool] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    # (name, version label) -> every version declared, production's included: a
    # candidate declared beside production runs as a shadow or canary of it.
    versions: dict[tuple[str, str], Agent] = field(default_factory=dict)

    def agent(self, name: str, instructions: str, tools: Iterable[Tool], *, version: str = "v1",
              scripted: Callable[[], LLM] | None = None, samples: Iterable[str] = (),
              candidate: bool = False, **limits: float | int | str | bool | None) -> AgentSpec:
        """Declare an agent. ``candidate=True`` declares another version of an
        agent already declared (``agentstream worker --agent NAME --version V
        --shadow`` runs it); production stays the first declared."""
        tools = list(tools)
        for t in tools:
            existing = self.tools.get(t.name)
            if existing is not None and existing is not t:
                raise ConfigError(f"two different tools are named {t.name!r}")
            self.tools[t.name] = t
        spec = AgentSpec(name=name, instructions=instructions, tools=tuple(t.spec for t in tools),
                         version=version)
        if limits:
            spec = msgspec.structs.replace(spec, **limits)
        choice = spec.tool_choice
        if choice not in (None, "auto", "required", "none") and spec.tool(str(choice)) is None:
            raise ConfigError(f"agent {name!r}: tool_choice={choice!r} is none of auto, required, none "
                              "or one of its tools' names")
        if candidate:
            if name not in self.agents:
                raise ConfigError(f"candidate version {version!r} of {name!r} declared before its production version")
            if version == self.agents[name].spec.version:
                raise ConfigError(f"candidate of {name!r} reuses production's version label {version!r}")
            self.versions[(name, version)] = Agent(spec=spec, scripted=scripted)
            return spec
        self.agents[name] = Agent(spec=spec, scripted=scripted)
        self.versions[(name, version)] = self.agents[name]
        self.samples[name] = list(samples)
        return spec

    def get_agent(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "(none)"
            raise ConfigError(f"unknown agent {name!r}; this app defines: {known}") from None

    def get_version(self, name: str, version: str | None) -> Agent:
        """``version`` None or production's label: the production agent."""
        agent = self.get_agent(name)
        if version is None or version == agent.spec.version:
            return agent
        found = self.versions.get((name, version))
        if found is None:
            known = ", ".join(sorted(v for (n, v) in self.versions if n == name)) or "(none)"
            raise ConfigError(f"agent {name!r} has no version {version!r}; this app declares: {known}")
        return found

    def select_tools(self, names: str) -> dict[str, Tool]:
        if names in ("all", "*", ""):
            return dict(self.tools)
        out: dict[str, Tool] = {}
        for n in (x.strip() for x in names.split(",") if x.strip()):
            if n not in self.tools:
                known = ", ".join(sorted(self.tools)) or "(none)"
                raise ConfigError(f"unknown tool {n!r}; this app defines: {known}")
            out[n] = self.tools[n]
        return out


def load_app(ref: str | None, *, source: str = "AGENTSTREAM_APP") -> App:
    """Import the App ``ref`` names (``module:attribute``). ``source`` is where
    the user wrote it (``--app`` or ``AGENTSTREAM_APP``), for error messages."""
    ref = ref or DEFAULT_APP
    mod_name, _, attr = ref.partition(":")
    # As uvicorn does: a module next to where the command runs is importable
    # without PYTHONPATH=. (the `agentstream` script's sys.path[0] is its bin dir).
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except (ImportError, ValueError) as exc:  # ValueError: an empty or relative module name
        raise ConfigError(f"{source}={ref!r}: cannot import {mod_name!r} ({exc})") from None
    obj = getattr(module, attr or "app", None)
    if not isinstance(obj, App):
        raise ConfigError(f"{source}={ref!r}: {mod_name}.{attr or 'app'} is not an agentstream App")
    return obj
