"""Agent versions as code: a version is the hash of what defines behaviour.

Two deployments with the same instructions, model, tools (names, descriptions
and JSON Schemas), limits and strategy behave alike, whatever label a human
gave them; change any of those and the hash changes, even if the label does
not. Results and progress events carry both (``agent_version`` the label,
``version_hash`` this), so a report can tell "v2" from "v2 with an edited
prompt that nobody relabelled".
"""

from __future__ import annotations

import hashlib

import msgspec

from agentstream.runtime.core.spec import AgentSpec

HASH_CHARS = 12

def fingerprint(spec: AgentSpec, model: str) -> str:
    """A short, stable hash of everything about ``spec`` that changes answers.

    The name and the human label are left out (renaming is not a behaviour
    change); the model actually called (``model``, e.g. from AGENTSTREAM_MODEL)
    is put in, since the spec's own ``model`` field may only say "scripted".
    Canonical JSON (sorted keys) keeps the hash independent of dict order.
    """
    behaviour = msgspec.structs.asdict(msgspec.structs.replace(spec, name="", version=""))
    doc = {"spec": behaviour, "model": model}  # the strategy and its limits are spec fields
    raw = msgspec.json.encode(msgspec.to_builtins(doc, order="sorted"))
    return hashlib.sha256(raw).hexdigest()[:HASH_CHARS]
