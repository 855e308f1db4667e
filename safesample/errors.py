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
