"""`pytest -q` prints dots, not drawings: no test writes past pytest's output
capture (a trace waterfall printed through ``capsys.disabled()`` used to land
between the dots). Output a test wants to show belongs in its assertion
message, shown only when it fails."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _bypasses_capture(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        # capsys.disabled() / capfd.disabled(): writes go straight to the terminal.
        if isinstance(node, ast.Attribute) and node.attr == "disabled" and \
                isinstance(node.value, ast.Name) and node.value.id in ("capsys", "capfd"):
            lines.append(node.lineno)
    return lines


def test_no_test_writes_past_output_capture() -> None:
    offenders = {path.name: found for path in sorted(TESTS.glob("*.py"))
                 if (found := _bypasses_capture(ast.parse(path.read_text())))}
    assert offenders == {}, f"tests printing past pytest's capture (file: lines): {offenders}"
