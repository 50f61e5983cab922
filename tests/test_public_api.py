"""The public API: what the README teaches is importable from ``agentstream``."""

from __future__ import annotations

import subprocess
import sys

import pytest

import agentstream


@pytest.mark.parametrize("name", agentstream.__all__)
def test_every_public_name_resolves_to_its_defining_module(name: str) -> None:
    value = getattr(agentstream, name)
    assert getattr(__import__(agentstream._EXPORTS[name], fromlist=[name]), name) is value


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        agentstream.Nope  # noqa: B018


def test_importing_the_contracts_does_not_load_the_runtime() -> None:
    # A non-Python-runtime user of the events (a schema generator, another service)
    # must not pay for the broker client, OpenTelemetry and aiohttp.
    code = ("import sys, agentstream.contracts.events; "
            "print(sorted(m for m in ('nats', 'opentelemetry', 'aiohttp', 'agentstream.runtime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
