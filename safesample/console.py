"""The one console on stderr: log lines, progress, and protection of the data stream on stdout.

stdout carries table data only. `protect_stdout()` moves the real stdout file descriptor aside
for the table writer and points fd 1 at stderr, so anything a library prints (vLLM logs to
stdout, C extensions write to fd 1 directly) lands on stderr instead of corrupting a pipe.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console

QUIET, NORMAL, VERBOSE = 0, 1, 2

# rich honours NO_COLOR itself; stderr=True keeps every log line off the data stream.
console = Console(stderr=True, highlight=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    # In logs and pipes rich assumes 80 columns and elides table cells to "0.…"; nothing wraps
    # a log file, so give summary tables room.
    console.width = 160
_verbosity = NORMAL
_data_fd: int | None = None  # the real stdout, once protected

ProgressCallback = Callable[[int], None]


def set_verbosity(level: int) -> None:
    global _verbosity
    _verbosity = level
    if level < NORMAL or not console.is_terminal:
        # Hugging Face libraries draw their own tqdm bars (downloads, GGUF dequantisation); in a
        # log they are carriage-return noise, and -q means quiet. Read when they are imported,
        # which happens later (heavy imports are lazy).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def verbosity() -> int:
    return _verbosity


def info(message: str) -> None:
    if _verbosity >= NORMAL:
        console.print(message, markup=False)


def debug(message: str) -> None:
    if _verbosity >= VERBOSE:
        console.print(message, markup=False, style="dim")


def warn(message: str) -> None:
    if _verbosity >= NORMAL:
        console.print(f"warning: {message}", markup=False, style="yellow")


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


def data_is_terminal() -> bool:
    return os.isatty(data_fd())


@contextmanager
def progress(total: int | None, description: str, unit: str = "rows") -> Iterator[ProgressCallback]:
    """Yield an `advance(n)` callback.

    On a terminal this is a rich progress bar; in logs (not a terminal) a plain line at most
    every 10 s plus one at the end, so long runs under make or nohup still show life; with
    `-q` nothing at all.
    """
    if _verbosity < NORMAL:
        yield lambda n=1: None
        return
    if console.is_terminal:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                      transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return

    done = 0
    start = last = time.monotonic()

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= 10:
            last = now
            of = f"/{total}" if total else ""
            info(f"{description}: {done}{of} {unit} ({now - start:.0f} s)")

    yield advance
    elapsed = time.monotonic() - start
    if elapsed >= 1:
        info(f"{description}: {done} {unit} in {elapsed:.1f} s")
