"""Reading and writing tables: files, pipes, shard folders, atomic writes, row ids and provenance.

- `formats`: what a file or a pipe holds (sniffed from its first bytes), read into Arrow and
  written back (Parquet, Arrow IPC file and stream, CSV, JSON Lines); streams checked for their
  end marker.
- `atomic`: every file written to a temporary file and renamed into place when complete.
- `guard`: `RunFiles`, what one CLI run reads and writes, so no output replaces an input.
- `provenance`: stable row ids and the per-stage records in the schema metadata.
- `safesample.tables.shards`: folders of Parquet shards with a `_SUCCESS` manifest.

This module dispatches a path to the right one: `read_table`, `write_table`, `check_output`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from safesample.errors import DataError, UsageError
from safesample.stdio import data_fd
from safesample.tables.atomic import atomic_path, remove_stale_temps
from safesample.tables.formats import (ARROW_FILE_MAGIC, ARROW_STREAM_MAGIC, PARQUET_MAGIC, WRITE_FORMATS,
                                           WRITERS, only_columns, read_path, read_stdin, read_stream, write_stream)
from safesample.tables.guard import STDIO, RunFiles
from safesample.tables.provenance import (PROVENANCE_KEY, ensure_id, get_provenance, merged_provenance,
                                              provenance_entry, put_column, with_provenance)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ARROW_FILE_MAGIC", "ARROW_STREAM_MAGIC", "PARQUET_MAGIC", "PROVENANCE_KEY", "STDIO", "WRITE_FORMATS",
           "RunFiles", "atomic_path", "check_output", "claim_source", "check_writable", "ensure_id", "get_provenance",
           "load_table", "merged_provenance", "provenance_entry", "put_column", "read_stream", "read_table",
           "remove_stale_temps", "with_provenance", "write_table"]


def read_table(source: str, run: RunFiles | None = None, columns: Sequence[str] | None = None) -> "pa.Table":
    """Read a table from a path, a shard folder or glob, or `-` (stdin), in any supported format.
    `columns`: only these, in this order (a missing one is a DataError); from a Parquet or Arrow
    IPC file nothing else is read."""
    if source == STDIO:
        return only_columns(read_stdin(), columns, "stdin")
    from safesample.tables import shards

    if shards.is_sharded(source):  # a folder of shards with its manifest, or a glob
        return only_columns(shards.read_sharded(source, run=run), columns, source)
    path = Path(source)
    if not path.exists():
        raise UsageError(f"input file {source!r} does not exist",
                         "check the path; use '-' to read from a pipe")
    if path.is_dir():
        raise UsageError(f"input {source!r} is a directory, not a table file",
                         "pass a .parquet, .arrow, .csv or .jsonl file")
    if run is not None:
        run.claim_input(source)
    if path.stat().st_size == 0:
        raise DataError(f"input file {source!r} is empty", "the command that wrote it may have failed; "
                        "re-run it")
    with open(path, "rb") as fh:
        head = fh.read(8)
    return read_path(path, head, source, columns)


def claim_source(source: str, run: RunFiles | None) -> None:
    """Register every file `source` names (a file, a shard folder's shards, a glob's matches) as an
    input of `run` before any work, so an output that would replace one is refused up front."""
    if run is None or source == STDIO:
        return
    from safesample.tables import shards
    from safesample.errors import SafesampleError

    if shards.is_sharded(source):
        try:
            files = shards.shard_files(source)[0]
        except SafesampleError:  # reading it says what is wrong
            return
        for path in files:
            run.claim_input(str(path))
    else:
        run.claim_input(source)


def load_table(source: str, limit: int | None = None, run: RunFiles | None = None,
               columns: Sequence[str] | None = None) -> "pa.Table":
    """A stage's input: the table, its first `limit` rows, with an `id` on every row. `columns`:
    only these and `id` (see `read_table`); a table without ids is read whole, since the ids made
    for it hash every column."""
    keep = list(dict.fromkeys([*columns, "id"])) if columns is not None else None
    table = read_table(source, run, keep if keep is not None and _has_ids(source) else None)
    if limit is not None:
        table = table.slice(0, limit)
    table = ensure_id(table)
    return only_columns(table, keep, source) if keep is not None else table


def _has_ids(source: str) -> bool:
    """Whether the Parquet or Arrow IPC file `source` has an `id` column, told from its footer or
    schema alone (False for anything else: it is then read whole)."""
    try:
        with open(source, "rb") as fh:
            head = fh.read(8)
        if head.startswith(PARQUET_MAGIC):
            import pyarrow.parquet as pq

            return "id" in pq.read_schema(source).names
        if head.startswith(ARROW_FILE_MAGIC):
            import pyarrow as pa

            with pa.memory_map(source) as src:
                return "id" in pa.ipc.open_file(src).schema.names
    except (OSError, ValueError):
        pass
    return False


def check_output(dest: str, what: str = "-o", run: RunFiles | None = None) -> None:
    """Fail early, before any work, when `dest` cannot be written (or would replace an input)."""
    if dest == STDIO:
        if os.isatty(data_fd()):
            raise UsageError("refusing to write a binary table to the terminal",
                             "pass -o FILE.parquet, or pipe into another command "
                             "(`... -o - | safesample ...`)")
        return
    from safesample.tables import shards

    if shards.is_dir_output(dest):  # -o DIR/: Parquet shards and a manifest
        shards.check_dir_output(dest, what, run)
        return
    path = Path(dest)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise UsageError(f"cannot tell the output format from {dest!r}",
                         "end the name in .parquet (or .arrow, .jsonl, .csv)")
    check_writable(dest, what, run)


def check_writable(dest: str | Path, what: str | None = None, run: RunFiles | None = None) -> None:
    """`dest` is a file path in an existing folder we may create files in, and no input."""
    path = Path(dest)
    label = f"{what} " if what else ""
    if path.is_dir():
        raise UsageError(f"output {label}{str(dest)!r} is a directory", "pass a file path such as out.parquet")
    if not path.parent.is_dir():
        raise UsageError(f"output folder {str(path.parent)!r} does not exist",
                         f"create it first: mkdir -p {path.parent}")
    if run is not None:
        run.claim_output(dest, what)
    probe = path.parent / f".{path.name}.{os.getpid()}-probe.tmp"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise UsageError(f"cannot write {label}{str(dest)!r}: the folder {str(path.parent)!r} is not "
                         f"writable ({exc.strerror})", "write somewhere else, or fix the folder's "
                         "permissions") from exc
    os.close(fd)
    probe.unlink(missing_ok=True)


def write_table(table: "pa.Table", dest: str, provenance: dict[str, Any] | None = None,
                what: str = "-o", run: RunFiles | None = None) -> None:
    """Write `table` to a file (atomically), a shard folder (`DIR/`) or `-` (an Arrow stream on
    stdout), with `provenance` appended to its history.

    `what` names the option the path came from (`-o`, `--disagreements`), which `run` checks
    against the run's other files."""
    if provenance is not None:
        table = with_provenance(table, provenance)
    check_output(dest, what, run)
    if dest == STDIO:
        write_stream(table)
        return
    from safesample.tables import shards

    if shards.is_dir_output(dest):
        shards.write_sharded(table, dest, run=run)
        return
    path = Path(dest)
    fmt = WRITE_FORMATS[path.suffix.lower()]
    with atomic_path(path, what=what, run=run) as tmp:
        WRITERS[fmt](table, tmp)
