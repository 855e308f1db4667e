"""Errors across the process boundary: a `SafesampleError` raised in a Ray worker comes back to
the driver as the same class, message and hint (`StageFailure` carries them, `errors()` rebuilds
them); anything else becomes one `error:` line naming the Ray job."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import Iterator

from safesample import errors as errors_module
from safesample.errors import SafesampleError


_MARK = "<<safesample-stage-failure>>"


class StageFailure(Exception):
    """A SafesampleError raised in a worker, in a form that survives pickling (the original's
    `args` hold the message only, so its hint would be lost)."""

    def __init__(self, kind: str, message: str, hint: str | None):
        super().__init__(kind, message, hint)
        self.kind, self.message, self.hint = kind, message, hint

    def __str__(self) -> str:
        # Ray wraps a worker's exception (UserCodeException) and the chain back to this one does
        # not always survive; its text does, inside the wrapper's traceback, so carry it there.
        payload = json.dumps({"kind": self.kind, "message": self.message, "hint": self.hint})
        return f"{_MARK}{payload}{_MARK}"

    @classmethod
    def parse(cls, text: str) -> "StageFailure | None":
        match = re.search(re.escape(_MARK) + r"(\{.*?\})" + re.escape(_MARK), text, re.S)
        if not match:
            return None
        try:
            data = json.loads(match.group(1))
        except ValueError:
            return None
        return cls(data.get("kind", ""), data.get("message", ""), data.get("hint"))

    def rebuild(self) -> SafesampleError:
        cls = getattr(errors_module, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, SafesampleError)):
            cls = SafesampleError
        return cls(self.message, self.hint)


def _find_failure(exc: BaseException) -> StageFailure | SafesampleError | None:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StageFailure):
            return e
        if isinstance(e, SafesampleError):
            return e
        parsed = StageFailure.parse(str(e))
        if parsed is not None:
            return parsed
        for nxt in (getattr(e, "cause", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return None


@contextmanager
def errors() -> Iterator[None]:
    """Turn what a Ray job raises back into the SafesampleError a worker raised."""
    try:
        yield
    except (SafesampleError, KeyboardInterrupt):
        raise
    except Exception as exc:
        found = _find_failure(exc)
        if isinstance(found, StageFailure):
            raise found.rebuild() from None
        if isinstance(found, SafesampleError):
            raise found from None
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise SafesampleError(f"the Ray job failed: {type(exc).__name__}: {first.strip()[:300]}",
                              "rerun with -v for the traceback; the workers' logs are in /tmp/ray/session_latest/"
                              "logs on each node") from exc
