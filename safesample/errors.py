"""Errors users see, and the exit codes they map to.

Every failure a user can cause or fix is raised as a `SafesampleError` carrying a one-line
message and a hint; the CLI prints them as `error:` / `hint:` and exits with `exit_code`.
"""

from __future__ import annotations

EXIT_ERROR = 1  # runtime, data or model error
EXIT_USAGE = 2  # bad options or arguments, unusable input/output paths, not implemented
EXIT_CHECK_FAILED = 3  # a check the user asked for failed (e.g. `judge --fail-under`)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 runtime/data/model error, 2 usage error, "
    "3 a requested check failed, 130 interrupted."
)


class SafesampleError(Exception):
    """An error with a message and a hint for the user."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class DataError(SafesampleError):
    """The input data is unreadable, malformed or lacks what a stage needs."""


class ModelError(SafesampleError):
    """A model could not be found, loaded or run."""


class UsageError(SafesampleError):
    """The command line asks for something that cannot be done."""

    exit_code = EXIT_USAGE


class CheckFailed(SafesampleError):
    """A gate the user asked for (a threshold) was not met."""

    exit_code = EXIT_CHECK_FAILED


def environment_error(exc: BaseException) -> SafesampleError | None:
    """The user-facing error for an OSError that the machine, not safesample, caused (a path
    longer than the file system takes, a full disk, no permission, a read-only file system), so
    that it reads `error:` + `hint:` wherever it was raised; None for anything else (a bug)."""
    import errno

    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    name = exc.filename if isinstance(exc.filename, (str, bytes)) else None
    shown = ""
    if name is not None:
        text = name if isinstance(name, str) else name.decode("utf-8", "replace")
        shown = f" {text!r}" if len(text) <= 120 else f" {text[:60]!r}... ({len(text)} characters)"
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENAMETOOLONG:
        return UsageError(f"the path{shown} is too long for the file system", "use a shorter file or folder name")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DataError(f"cannot write{shown}: {why}", "free some space (or raise the quota), or write elsewhere; "
                         "nothing half-written was left")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UsageError(f"cannot use{shown}: {why}", "check the permissions, or use another path")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
        return UsageError(f"cannot use{shown}: {why}", "check the path")
    return None
