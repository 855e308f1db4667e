"""The data stream on stdout, kept apart from everything else a process prints.

stdout carries table data only. `protect_stdout()` moves the real stdout file descriptor aside
for the table writer and points fd 1 at stderr, so anything a library prints (vLLM logs to
stdout, C extensions write to fd 1 directly) lands on stderr instead of corrupting a pipe.
"""

from __future__ import annotations

import os
import sys

_data_fd: int | None = None  # the real stdout, once protected


def protect_stdout() -> None:
    """Keep the real stdout for data only; send fd 1 (and sys.stdout) to stderr."""
    global _data_fd
    if _data_fd is not None:
        return
    sys.stdout.flush()
    _data_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def restore_stdout() -> None:
    """Undo `protect_stdout` (for in-process callers such as tests)."""
    global _data_fd
    if _data_fd is None:
        return
    sys.stdout.flush()
    os.dup2(_data_fd, 1)
    os.close(_data_fd)
    _data_fd = None
    sys.stdout = sys.__stdout__


def data_fd() -> int:
    """The file descriptor that carries table data (the original stdout)."""
    return _data_fd if _data_fd is not None else sys.__stdout__.fileno()
