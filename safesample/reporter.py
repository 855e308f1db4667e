"""How library code reports: the `Reporter` protocol its callers hand in.

Stages and backends never print. They call `reporter.info/warn/debug` and wrap long work in
`reporter.progress(total, description)`, which yields an `advance(n)` callback. The CLI hands in
the stderr console (`safesample.console.CONSOLE`); library users, tests and batch executors get
`SILENT` by default, so a stage called on one Ray batch prints nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Protocol

# `advance(n)` says n more units of work are done.
Advance = Callable[[int], None]


class Reporter(Protocol):
    verbose: bool  # the caller asked for detail (e.g. -v): worth computing costly diagnostics

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def debug(self, message: str) -> None: ...

    def progress(self, total: int | None, description: str, unit: str = "rows") -> ContextManager[Advance]: ...


class SilentReporter:
    """Reports nothing: the default for library callers."""

    verbose = False

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def debug(self, message: str) -> None:
        pass

    @contextmanager
    def progress(self, total: int | None, description: str, unit: str = "rows") -> Iterator[Advance]:  # noqa: ARG002
        yield lambda n=1: None


class RecordingReporter(SilentReporter):
    """Keeps every message (for tests and for callers that want the log as data)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.messages.append(("info", message))

    def warn(self, message: str) -> None:
        self.messages.append(("warn", message))

    def debug(self, message: str) -> None:
        self.messages.append(("debug", message))

    def warnings(self) -> list[str]:
        return [m for level, m in self.messages if level == "warn"]


SILENT: Reporter = SilentReporter()
