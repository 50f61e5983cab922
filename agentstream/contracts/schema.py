"""JSON Schema (draft 2020-12) of every wire event, for non-Python clients.

The checked-in copy lives at ``docs/events.schema.json``; regenerate it with::

    python -m agentstream.contracts.schema [path]

A test compares the checked-in file with :func:`json_schema`, so it cannot go stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from agentstream.contracts.events import ALL_EVENT_TYPES
from agentstream.contracts.telemetry import SpanBatch, SpanRecord

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
TITLE = "agentstream events"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "events.schema.json"


def clean_descriptions(node: Any) -> Any:
    """Normalise every ``description`` with :func:`inspect.cleandoc`.

    msgspec copies docstrings into schemas, and releases differ on whether they
    strip the indentation (0.23 does, 0.22 does not). Cleaning them here makes
    the checked-in documents the same whatever msgspec version builds them.
    """
    if isinstance(node, dict):
        return {k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else clean_descriptions(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [clean_descriptions(v) for v in node]
    return node


def json_schema() -> dict[str, Any]:
    """One document: a top-level ``oneOf`` over every event, each a ``$ref`` into ``$defs``.

    Each event's ``type`` property is a single-value enum (its versioned tag), so
    exactly one branch of the ``oneOf`` can match a valid event.
    """
    refs, components = msgspec.json.schema_components(
        (*ALL_EVENT_TYPES, SpanBatch, SpanRecord), ref_template="#/$defs/{name}"
    )
    return {
        "$schema": SCHEMA_DIALECT,
        "title": TITLE,
        "description": (
            "Every event that crosses NATS. The field 'type' carries the versioned tag "
            "(suffix .v<N>); unknown fields are ignored by consumers. SpanBatch (and a bare "
            "SpanRecord) are the messages on telemetry.spans.<trace_id>."
        ),
        "oneOf": list(refs),
        "$defs": clean_descriptions(components),
    }


def dumps(schema: dict[str, Any]) -> str:
    """Stable text form: pretty-printed, sorted keys, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(json_schema()), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentstream.contracts.schema",
                                     description="Write the JSON Schema of every agentstream event.")
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH,
                        help=f"where to write it (default: {DEFAULT_PATH})")
    write_schema(parser.parse_args(argv).path)


if __name__ == "__main__":  # pragma: no cover
    main()
