"""Atomic writes: a file appears complete or not at all.

Every file is written to a temporary file in the target folder and renamed into place only when
complete; on any error or Ctrl-C the temporary file is removed. New files get the umask's mode,
an overwritten file keeps its mode, and temporary files a killed run left behind (its process
is gone) are removed by the next write to the same path.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from safesample.errors import UsageError
from safesample.reporter import SILENT, Reporter
from safesample.tables.guard import RunFiles

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-z]+\.tmp$")
_STARTED = time.time()


@contextmanager
def atomic_path(path: Path, what: str | None = None, run: RunFiles | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    The temporary file is `.NAME.PID-RANDOM.tmp`, created with the umask's mode (or the mode of
    the file it replaces); ones that a killed process left behind are removed first. With `run`
    (a CLI run) the path is claimed as an output of `what` and may be written once.
    """
    path = Path(path)
    if run is not None:
        run.claim_output(path, what)
        run.check_not_written(path, what)
    remove_stale_temps(path, run.reporter if run is not None else SILENT)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot write {str(path)!r}: {exc.strerror}",
                             "write somewhere else, or fix the folder's permissions") from exc
    try:
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
        if run is not None:
            run.mark_written(path, what)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(path: Path, reporter: Reporter = SILENT) -> list[Path]:
    """Remove `.NAME.PID-*.tmp` files beside `path` left by a process that is gone (killed
    during its final write): the pid is dead, or was reused by a process started after the file."""
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or match["name"] != path.name:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            continue
        if _pid_alive_since(int(match["pid"]), st.st_mtime):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    if removed:
        reporter.warn(f"removed {len(removed)} temporary file(s) beside {str(path)!r} that "
                                     f"an interrupted run left: {', '.join(p.name for p in removed)}")
    return removed


def _pid_alive_since(pid: int, mtime: float) -> bool:
    """Whether process `pid` runs and may have written a file last modified at `mtime`."""
    if pid == os.getpid():
        return mtime >= _STARTED - 1
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        started = os.stat(f"/proc/{pid}").st_ctime
    except OSError:
        return True
    return mtime >= started - 1
