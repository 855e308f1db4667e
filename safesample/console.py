"""The one console on stderr: log lines and progress, for the CLI only.

Library code never imports this module: it reports through the `Reporter` it is handed
(`safesample.reporter`), and the CLI hands it `CONSOLE`, which prints here. The data stream on
stdout is guarded by `safesample.stdio`.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console

from safesample.reporter import Advance

QUIET, NORMAL, VERBOSE = 0, 1, 2

# rich honours NO_COLOR itself; stderr=True keeps every log line off the data stream.
console = Console(stderr=True, highlight=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    # In logs and pipes rich assumes 80 columns and elides table cells to "0.…"; nothing wraps
    # a log file, so give summary tables room.
    console.width = 160
_verbosity = NORMAL



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


@contextmanager
def progress(total: int | None, description: str, unit: str = "rows") -> Iterator[Advance]:
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


def table(title: str, header: list[str], rows: list[tuple[str, ...]], *, label_cols: int = 1,
          total_last: bool = False, bold: Callable[[tuple[str, ...]], bool] | None = None) -> None:
    """A summary table on stderr (nothing with -q): the first `label_cols` columns are names, the
    rest right-aligned numbers; `total_last` sets the last row apart in bold."""
    if _verbosity < NORMAL:
        return
    from rich.table import Table

    grid = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        grid.add_column(name, justify="left" if i < label_cols else "right", no_wrap=i < label_cols)
    for k, row in enumerate(rows):
        last = total_last and k == len(rows) - 1
        if last and k > 0:
            grid.add_section()
        grid.add_row(*row, style="bold" if last or (bold and bold(row)) else None)
    console.print(grid)


class ConsoleReporter:
    """The `Reporter` the CLI hands to library code: prints on the stderr console."""

    @property
    def verbose(self) -> bool:
        return _verbosity >= VERBOSE

    def info(self, message: str) -> None:
        info(message)

    def warn(self, message: str) -> None:
        warn(message)

    def debug(self, message: str) -> None:
        debug(message)

    def progress(self, total: int | None, description: str, unit: str = "rows"):
        return progress(total, description, unit)


CONSOLE = ConsoleReporter()
