"""What one run reads and writes, so that no output destroys an input or another output.

The CLI makes one `RunFiles` per command and hands it to the table functions it calls (`read_table`,
`write_table`, `check_output`, `atomic_path`, the shard writer): every path read is claimed as an
input and every path written as an output, and an output that is an input (same file, hard link
or symlink) or another output is refused, whichever is claimed first. Library callers pass none:
nothing is checked, as nothing else is running. The object also carries where the I/O's own
warnings go (e.g. temporary files a killed run left behind), the run's reporter.
"""

from __future__ import annotations

import os
from pathlib import Path

from safesample.errors import UsageError
from safesample.reporter import SILENT, Reporter

STDIO = "-"


def inode(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of `path` following links, or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class RunFiles:
    """The paths one run reads and writes, and the reporter its I/O warns through."""

    def __init__(self, reporter: Reporter = SILENT):
        self.reporter = reporter
        self.inputs: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) -> the path as given
        self.outputs: dict[str, str] = {}  # real path -> which option writes it ("-o", "--report", ...)
        self.written: dict[str, str] = {}  # real path -> the option whose file was written there

    def claim_input(self, source: str) -> None:
        """Register `source` as an input; refuse it when it is one of the outputs."""
        if source == STDIO:
            return
        key = inode(source)
        if key is None:
            return
        for real, what in self.outputs.items():
            if inode(real) == key:
                raise same_file(source, what, real)
        self.inputs[key] = source

    def claim_output(self, dest: str | Path, what: str | None = None) -> None:
        """Register `dest` as written by option `what` (e.g. "-o", "--report"); refuse it when it
        is an input, or a file another option writes. `what=None` accepts any earlier claim."""
        if str(dest) == STDIO:
            return
        real = os.path.realpath(dest)
        earlier = self.outputs.get(real)
        if earlier is not None and what is not None and earlier != what:
            raise UsageError(f"{what} {str(dest)!r} is the same file as {earlier} {real!r}",
                             "give each output its own file name")
        key = inode(real)
        if key is not None:
            if key in self.inputs:
                raise same_file(self.inputs[key], what or earlier or "an output", str(dest))
            for other, other_what in self.outputs.items():
                if other != real and inode(other) == key:
                    raise UsageError(f"{what or 'an output'} {str(dest)!r} is the same file as {other_what} "
                                     f"{other!r} (a link)", "give each output its own file name")
        self.outputs.setdefault(real, what or "an output")

    def is_input(self, path: str | Path) -> bool:
        key = inode(path)
        return key is not None and key in self.inputs

    def check_not_written(self, path: Path, what: str | None) -> None:
        """A file this run wrote is not written again (two options naming one file)."""
        real = os.path.realpath(path)
        if real in self.written:
            raise UsageError(f"{what or 'an output'} {str(path)!r} was already written by this run as "
                             f"{self.written[real]}; writing it again would replace it",
                             "give each output its own file name")

    def mark_written(self, path: Path, what: str | None) -> None:
        real = os.path.realpath(path)
        self.written[real] = what or self.outputs.get(real, "an output")


def same_file(source: str, what: str, dest: str) -> UsageError:
    return UsageError(f"the output {what} {dest!r} is the input {source!r}: writing it would destroy "
                      "the input", "write to a new file (and rename it afterwards if you must)")
