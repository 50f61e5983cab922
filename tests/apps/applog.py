"""Test apps record their tool runs in a file named by an environment variable,
so a test can count them across worker processes."""

from __future__ import annotations

import os


def append_line(env_var: str, line: str) -> None:
    path = os.environ.get(env_var)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: lines from many processes never interleave
    finally:
        os.close(fd)
