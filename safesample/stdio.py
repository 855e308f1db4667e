"""The standard streams: stdout kept for table data, and a console that cannot fail a run.

stdout carries table data only. `protect_stdout()` moves the real stdout file descriptor aside
for the table writer and points fd 1 at stderr, so anything a library prints (vLLM logs to
stdout, C extensions write to fd 1 directly) lands on stderr instead of corrupting a pipe.

`guard_streams()` (first thing in `main()`) makes the process's edges harmless, because writing
data must never depend on the console:

- a closed fd 0, 1 or 2 (`>&-`, `2>&-`) is reopened on /dev/null before anything else can take
  its number (a file opened later would otherwise become "stdout"); a table for a closed stdout
  (`-o -`) or from a closed stdin (`-`) is then a usage error, never data sent to /dev/null;
- stderr is wrapped so that a write to a closed or broken stderr (`2>&1 | true`: its reader is
  gone) silences the console instead of raising: the run goes on, and exits as it would have
  (a broken stderr is not a failed run). fd 2 is pointed at /dev/null from then on, so nothing
  buffered fails again when the interpreter exits (which would make the exit status 120).
"""

from __future__ import annotations

import errno
import io
import os
import sys

from safesample.errors import UsageError

_data_fd: int | None = None  # the real stdout, once protected
_closed: set[int] = set()  # which of fds 0, 1, 2 were closed when the process started
_guarded: "_Forgiving | None" = None
# Writes to these fail for good: the reader of a pipe left, the fd is closed, the device is gone.
_GONE = (errno.EPIPE, errno.EBADF, errno.EIO, errno.ENXIO, errno.ECONNRESET, errno.ENOSPC)


def guard_streams() -> None:
    """Reopen closed standard fds on /dev/null and make stderr forgiving (see the module doc)."""
    global _guarded
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                continue
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            _closed.add(fd)
    if 0 in _closed and sys.stdin is None:
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "rb", closefd=False))
    if 1 in _closed and sys.stdout is None:
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "wb", closefd=False), write_through=True)
    if _guarded is None:
        inner = sys.stderr
        if inner is None:  # closed at start: fd 2 is /dev/null now
            inner = io.TextIOWrapper(io.FileIO(2, "wb", closefd=False), write_through=True,
                                     errors="backslashreplace")
        _guarded = _Forgiving(inner)
        sys.stderr = _guarded


def unguard_streams() -> None:
    """Undo `guard_streams`'s stderr wrapper (for in-process callers such as tests)."""
    global _guarded
    if _guarded is not None and sys.stderr is _guarded:
        sys.stderr = _guarded.inner
    _guarded = None


def stdout_closed() -> bool:
    """stdout was closed when the process started (`>&-`): no table can go there."""
    return 1 in _closed


def stdin_closed() -> bool:
    return 0 in _closed


class _Forgiving(io.TextIOBase):
    """stderr that stops writing, quietly, once writing fails for good."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.inner.write(text)
            except (OSError, ValueError) as exc:
                self._lost(exc)
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.inner.flush()
            except (OSError, ValueError) as exc:
                self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno not in _GONE:
            raise exc
        self.gone = True
        try:  # what the inner stream still buffers, and C code writing to fd 2, go nowhere
            fd = self.inner.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
            self.inner.flush()
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        try:
            return not self.gone and self.inner.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "errors", None) or "backslashreplace"

    @property
    def buffer(self):
        return self.inner.buffer


def protect_stdout() -> None:
    """Keep the real stdout for data only; send fd 1 (and sys.stdout) to stderr."""
    global _data_fd
    if _data_fd is not None:
        return
    if sys.stdout is not None:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
    _data_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def restore_stdout() -> None:
    """Undo `protect_stdout` (for in-process callers such as tests)."""
    global _data_fd
    if _data_fd is None:
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass
    os.dup2(_data_fd, 1)
    os.close(_data_fd)
    _data_fd = None
    sys.stdout = sys.__stdout__


def data_fd() -> int:
    """The file descriptor that carries table data (the original stdout); a usage error when
    stdout was closed (`>&-`), so a table is never sent to /dev/null."""
    if stdout_closed():
        raise UsageError("-o - writes the table to stdout, but stdout is closed",
                         "pass -o FILE.parquet, or give the command a stdout (`... -o - | next-command`)")
    return _data_fd if _data_fd is not None else sys.__stdout__.fileno()
