"""``@tool``: a typed Python function becomes a tool.

The JSON Schema comes from the signature (via msgspec), the descriptions from
the docstring; that schema is exactly what the model is shown, and the same
types validate the arguments before the function runs.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, get_type_hints

import msgspec

from agentstream.contracts.events import ToolError, ToolSpec

ToolFn = Callable[..., Awaitable[Any]] | Callable[..., Any]


class ToolFailure(Exception):
    """Raise from a tool to return a structured error to the model."""

    def __init__(self, message: str, *, kind: str = "execution_error", hint: str | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.error = ToolError(kind=kind, message=message, hint=hint, retryable=retryable)


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
    """A registered tool: schema, validator and the function itself."""

    def __init__(self, fn: ToolFn, *, name: str | None = None, description: str | None = None,
                 timeout_s: float | None = None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        summary, param_docs = _parse_docstring(fn.__doc__ or "")
        self.description = description or summary
        self.timeout_s = timeout_s
        hints = get_type_hints(fn)
        sig = inspect.signature(fn)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for pname, param in sig.parameters.items():
            ann = hints.get(pname, Any)
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
            m = re.search(r"at `\$\.(\w+)", text)
            missing = re.search(r"missing required field `(\w+)`", text)
            unknown = re.search(r"unknown field `(\w+)`", text)
            fld = m.group(1) if m else (missing.group(1) if missing else (unknown.group(1) if unknown else None))
            return ToolError(kind="invalid_arguments", message=text, field=fld,
                             hint=f"arguments must match the JSON Schema of {self.name!r}")

    async def __call__(self, arguments: msgspec.Struct) -> Any:
        kwargs = msgspec.structs.asdict(arguments)
        if self._is_async:
            return await self.fn(**kwargs)  # type: ignore[misc]
        return await asyncio.to_thread(self.fn, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _annotated(ann: Any, doc: str) -> Any:
    from typing import Annotated

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
         timeout_s: float | None = None) -> Any:
    """Decorator: ``@tool`` or ``@tool(timeout_s=5)``."""
    def wrap(f: ToolFn) -> Tool:
        return Tool(f, name=name, description=description, timeout_s=timeout_s)

    if fn is not None:
        return wrap(fn)
    return wrap
