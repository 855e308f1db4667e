"""Reading and writing tables: files, pipes, atomic writes, row ids and provenance.

Files are Parquet (also read: Arrow IPC, CSV, JSON Lines); pipes carry the Arrow IPC stream
format, because Parquet keeps its footer at the end and cannot be read from a pipe without
buffering. Readers sniff the first bytes, so a pipe may carry Parquet too (it is spooled to a
temporary file). Every file is written atomically: a temporary file in the target folder,
renamed into place only when complete, removed on any error or Ctrl-C.

Guarantees: an Arrow stream must end with its end-of-stream marker (a stream cut by a killed
upstream is an error, never a shorter table); outputs are created with the umask's mode (an
overwritten file keeps its mode); temporary files a killed run left behind are removed by the
next write; and in a CLI run (`guard_paths`) no output may be an input or another output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from safesample import __version__
from safesample.stdio import data_fd
from safesample.errors import DataError, UsageError
from safesample.reporter import SILENT, Reporter
from safesample.schema import kind_of

if TYPE_CHECKING:
    import pyarrow as pa

STDIO = "-"
PROVENANCE_KEY = b"safesample.provenance"
PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
WRITE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow",
                 ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_SUPPORTED = "Parquet, Arrow IPC (file or stream), CSV (.csv) or JSON Lines (.jsonl)"
_ROW_GROUP = 65_536
_STREAM_HINT = ("the command that wrote it was interrupted or killed before it finished (e.g. out of "
                "memory); see its error, and re-run the pipe")
# Where warnings of this module go when a caller passes no reporter (the CLI sets its console).
_reporter: Reporter = SILENT


def report_to(reporter: Reporter) -> None:
    """Send this module's warnings (e.g. removed stale temp files) to `reporter` by default."""
    global _reporter
    _reporter = reporter


# --------------------------------------------------------------------------------------------
# reading


def read_table(source: str) -> "pa.Table":
    """Read a table from a path or `-` (stdin), whatever supported format it is in."""
    if source == STDIO:
        return _read_stdin()
    from safesample import shards

    if shards.is_sharded(source):  # a folder of shards with its manifest, or a glob
        return shards.read_sharded(source, claim=claim_input)
    path = Path(source)
    if not path.exists():
        raise UsageError(f"input file {source!r} does not exist",
                         "check the path; use '-' to read from a pipe")
    if path.is_dir():
        raise UsageError(f"input {source!r} is a directory, not a table file",
                         "pass a .parquet, .arrow, .csv or .jsonl file")
    claim_input(source)
    if path.stat().st_size == 0:
        raise DataError(f"input file {source!r} is empty", "the command that wrote it may have failed; "
                        "re-run it")
    with open(path, "rb") as fh:
        head = fh.read(8)
    return _read_path(path, head, source)


def _read_path(path: Path, head: bytes, label: str) -> "pa.Table":
    import pyarrow as pa

    try:
        if head.startswith(PARQUET_MAGIC):
            import pyarrow.parquet as pq

            # Not pq.read_table: that imports pandas via pyarrow.dataset. Batch by batch: for
            # nested columns (embeddings) one big read() is ~2.5x slower and peaks ~2 GiB higher
            # (1M x 384: 12.5 s / 5.7 GiB vs 4.9 s / 3.5 GiB).
            parquet = pq.ParquetFile(path)
            return pa.Table.from_batches(parquet.iter_batches(batch_size=_ROW_GROUP), schema=parquet.schema_arrow)
        if head.startswith(ARROW_FILE_MAGIC):
            with pa.memory_map(str(path)) as src:
                return pa.ipc.open_file(src).read_all()
        if head.startswith(ARROW_STREAM_MAGIC):
            with open(path, "rb") as src:
                return read_stream(src, label)
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, "\t" if suffix == ".tsv" else ",")
        if suffix in (".jsonl", ".ndjson", ".json") or head.lstrip()[:1] == b"{":
            return _read_jsonl(path)
    except (pa.ArrowException, ValueError, OSError) as exc:
        kind = "Parquet" if head.startswith(PARQUET_MAGIC) else "table"
        raise DataError(f"cannot read {label!r} as a {kind}: {_short(exc)}",
                        "the file may be truncated or corrupt; re-create it with the command "
                        "that wrote it") from exc
    raise DataError(f"{label!r} is not a table in a supported format",
                    f"safesample reads {_SUPPORTED}")


def _read_csv(path: Path, delimiter: str) -> "pa.Table":
    """CSV with `id` columns read as text (`001` and `1e3` are ids, not numbers) and the columns
    of a header-only file typed as text rather than null."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    opts = pcsv.ParseOptions(delimiter=delimiter)
    import csv

    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        header = next(csv.reader(fh, delimiter=delimiter), [])
    ids = {name: pa.string() for name in header if _is_id(name)}
    table = pcsv.read_csv(path, parse_options=opts, convert_options=pcsv.ConvertOptions(column_types=ids))
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, pa.field(field.name, pa.string()), table.column(i).cast(pa.string()))
    return table


def _is_id(name: str) -> bool:
    lowered = name.strip().lower()
    return lowered == "id" or lowered.endswith("_id")


def _read_jsonl(path: Path) -> "pa.Table":
    import pyarrow.json as pjson

    return pjson.read_json(path)


def _read_stdin() -> "pa.Table":
    stdin = sys.stdin.buffer
    if os.isatty(stdin.fileno()):
        raise UsageError("'-' reads a table from stdin, but stdin is a terminal",
                         "pipe a table in (e.g. `safesample embed pool.parquet -o - | "
                         "safesample cluster - ...`) or pass a file path")
    head = stdin.read(8)
    if not head:
        raise DataError("stdin is empty: no table arrived through the pipe",
                        "the command before this one in the pipe probably failed; see its error")
    if head.startswith(ARROW_STREAM_MAGIC):
        return read_stream(_Prefixed(head, stdin), "stdin")
    # Parquet (or a text table) on a pipe: spool it to a temporary file, then read that.
    with tempfile.NamedTemporaryFile(prefix="safesample-stdin-", suffix=".spool") as spool:
        spool.write(head)
        while chunk := stdin.read(1 << 20):
            spool.write(chunk)
        spool.flush()
        if head.startswith(PARQUET_MAGIC) or head.lstrip()[:1] == b"{":
            return _read_path(Path(spool.name), head, "stdin")
    raise DataError("stdin does not carry a table in a supported format",
                    f"pipe {_SUPPORTED.replace(' (.csv)', ' (as a file only)')}")


def read_stream(source, label: str) -> "pa.Table":
    """Read a whole Arrow IPC stream from a binary file object, insisting on its end marker.

    A writer that dies between record batches leaves a stream that pyarrow reads as complete
    but shorter; a stream is complete only when its end-of-stream marker was read. Without it
    (cut between batches, inside a batch or right after the schema) this raises a DataError
    saying how many rows arrived.
    """
    import pyarrow as pa

    src = _EofTracking(source)
    rows = 0
    batches = []
    try:
        reader = pa.ipc.open_stream(src)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            batches.append(batch)
            rows += batch.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        if src.hit_eof:
            raise _ended_early(label, rows) from exc
        raise DataError(f"cannot read the Arrow stream in {label!r}: {_short(exc)}",
                        "the data is corrupt; " + _STREAM_HINT) from exc
    if src.hit_eof:  # the reader ran into the end of the data instead of the end marker
        raise _ended_early(label, rows)
    return pa.Table.from_batches(batches, schema=reader.schema)


def _ended_early(label: str, rows: int) -> DataError:
    where = "" if label == "stdin" else f" from {label!r}"
    return DataError(f"the input stream ended early ({rows} rows read{where})",
                     "it has no end-of-stream marker, so it is incomplete: " + _STREAM_HINT)


class _EofTracking:
    """A file object that reads exactly what is asked (looping over short pipe reads) and
    notes when the data ran out before a read was satisfied."""

    closed = False

    def __init__(self, inner) -> None:
        self._inner = inner
        self.hit_eof = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            data = self._inner.read()
            self.hit_eof = True
            return data
        parts, got = [], 0
        while got < n:
            chunk = self._inner.read(n - got)
            if not chunk:
                self.hit_eof = True
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)


class _Prefixed:
    """A readable binary stream: some already-read bytes, then the rest of another stream."""

    closed = False

    def __init__(self, prefix: bytes, rest):
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            data, self._prefix = self._prefix + self._rest.read(), b""
            return data
        if self._prefix:
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return self._rest.read(n)


# --------------------------------------------------------------------------------------------
# writing


# In a CLI run, every path read and written is registered here, so that an output that is an
# input (same file, hard link or symlink) or another output is refused, whichever comes first.
_guard = False
_inputs: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) -> the path as given
_outputs: dict[str, str] = {}  # real path -> which option writes it ("-o", "--report", ...)
_written: dict[str, str] = {}  # real path -> the option whose file was written there in this run


def guard_paths(active: bool = True) -> None:
    """Start (or stop) refusing outputs that collide with inputs or with other outputs; the
    registry starts empty. The CLI turns this on for each run; library calls are unaffected."""
    global _guard
    _guard = active
    _inputs.clear()
    _outputs.clear()
    _written.clear()


def _inode(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def claim_input(source: str) -> None:
    """Register `source` as an input of this run; refuse it when it is one of the outputs."""
    if not _guard or source == STDIO:
        return
    key = _inode(source)
    if key is None:
        return
    for real, what in _outputs.items():
        if _inode(real) == key:
            raise _same_file(source, what, real)
    _inputs[key] = source


def claim_output(dest: str | Path, what: str | None = None) -> None:
    """Register `dest` as written by option `what` (e.g. "-o", "--report"); refuse it when it is
    an input, or a file another option writes. `what=None` accepts any earlier claim."""
    if not _guard or str(dest) == STDIO:
        return
    real = os.path.realpath(dest)
    earlier = _outputs.get(real)
    if earlier is not None and what is not None and earlier != what:
        raise UsageError(f"{what} {str(dest)!r} is the same file as {earlier} {real!r}",
                         "give each output its own file name")
    key = _inode(real)
    if key is not None:
        if key in _inputs:
            raise _same_file(_inputs[key], what or earlier or "an output", str(dest))
        for other, other_what in _outputs.items():
            if other != real and _inode(other) == key:
                raise UsageError(f"{what or 'an output'} {str(dest)!r} is the same file as {other_what} "
                                 f"{other!r} (a link)", "give each output its own file name")
    _outputs.setdefault(real, what or "an output")


def _same_file(source: str, what: str, dest: str) -> UsageError:
    return UsageError(f"the output {what} {dest!r} is the input {source!r}: writing it would destroy "
                      "the input", "write to a new file (and rename it afterwards if you must)")


def check_output(dest: str, what: str = "-o") -> None:
    """Fail early, before any work, when `dest` cannot be written (or would replace an input)."""
    if dest == STDIO:
        if os.isatty(data_fd()):
            raise UsageError("refusing to write a binary table to the terminal",
                             "pass -o FILE.parquet, or pipe into another command "
                             "(`... -o - | safesample ...`)")
        return
    from safesample import shards

    if shards.is_dir_output(dest):  # -o DIR/: Parquet shards and a manifest
        shards.check_dir_output(dest, what)
        return
    path = Path(dest)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise UsageError(f"cannot tell the output format from {dest!r}",
                         "end the name in .parquet (or .arrow, .jsonl, .csv)")
    check_writable(dest, what)


def check_writable(dest: str | Path, what: str | None = None) -> None:
    """`dest` is a file path in an existing folder we may create files in, and no input."""
    path = Path(dest)
    label = f"{what} " if what else ""
    if path.is_dir():
        raise UsageError(f"output {label}{str(dest)!r} is a directory", "pass a file path such as out.parquet")
    if not path.parent.is_dir():
        raise UsageError(f"output folder {str(path.parent)!r} does not exist",
                         f"create it first: mkdir -p {path.parent}")
    claim_output(dest, what)
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
                what: str = "-o") -> None:
    """Write `table` to a file (atomically) or `-` (Arrow stream on stdout).

    `what` names the option the path came from (`-o`, `--disagreements`), which the run's
    registry of outputs checks it against."""
    if provenance is not None:
        table = with_provenance(table, provenance)
    check_output(dest, what)
    if dest == STDIO:
        _write_stream(table)
        return
    from safesample import shards

    if shards.is_dir_output(dest):
        shards.write_sharded(table, dest)
        return
    path = Path(dest)
    fmt = WRITE_FORMATS[path.suffix.lower()]
    with atomic_path(path, what=what) as tmp:
        _WRITERS[fmt](table, tmp)


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-z]+\.tmp$")
_STARTED = time.time()


@contextmanager
def atomic_path(path: Path, what: str | None = None, reporter: Reporter | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    The temporary file is `.NAME.PID-RANDOM.tmp`, created with the umask's mode (or the mode of
    the file it replaces); ones that a killed process left behind are removed first.
    """
    path = Path(path)
    claim_output(path, what)
    real = os.path.realpath(path)
    if _guard and real in _written:
        raise UsageError(f"{what or 'an output'} {str(path)!r} was already written by this run as "
                         f"{_written[real]}; writing it again would replace it",
                         "give each output its own file name")
    remove_stale_temps(path, reporter)
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
        if _guard:
            _written[real] = what or _outputs.get(real, "an output")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(path: Path, reporter: Reporter | None = None) -> list[Path]:
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
        (reporter or _reporter).warn(f"removed {len(removed)} temporary file(s) beside {str(path)!r} that "
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


def _write_parquet(table: "pa.Table", path: Path) -> None:
    import pyarrow.parquet as pq

    # Float vectors (embeddings) neither dictionary-encode nor compress: skipping both makes a
    # 1M x 384 table read about 2x faster, and reading it is most of `select`'s time.
    vectors = {f.name for f in table.schema if kind_of(f.type) in ("vector", "float")}
    plain = [f.name for f in table.schema if f.name not in vectors]
    compression = {name: ("none" if name in vectors else "zstd") for name in table.column_names}
    # Row group by row group, so Ctrl-C is seen between groups and the temp file removed.
    with pq.ParquetWriter(path, table.schema, compression=compression, use_dictionary=plain) as writer:
        for start in range(0, max(table.num_rows, 1), _ROW_GROUP):
            writer.write_table(table.slice(start, _ROW_GROUP))


def _write_arrow(table: "pa.Table", path: Path) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(_ROW_GROUP):
            writer.write_batch(batch)


def _write_jsonl(table: "pa.Table", path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for batch in table.to_batches(_ROW_GROUP):
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False, default=str))
                fh.write("\n")


def _write_csv(table: "pa.Table", path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        pcsv.write_csv(table, path)
    except pa.ArrowException as exc:
        raise DataError(f"cannot write this table as CSV: {_short(exc)}",
                        "list columns (e.g. embeddings) do not fit CSV; write .parquet or .jsonl") from exc


_WRITERS = {"parquet": _write_parquet, "arrow": _write_arrow, "jsonl": _write_jsonl, "csv": _write_csv}


def _write_stream(table: "pa.Table") -> None:
    import pyarrow as pa

    # Unbuffered: a reader that closes the pipe early (`| head`) then leaves no buffered bytes
    # to fail on at exit.
    sink = os.fdopen(data_fd(), "wb", buffering=0, closefd=False)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(_ROW_GROUP):
            writer.write_batch(batch)
    sink.flush()


# --------------------------------------------------------------------------------------------
# row ids and provenance


def ensure_id(table: "pa.Table") -> "pa.Table":
    """Give every row a stable string `id` when the table has none.

    The id is a hash of the row's content, so the same input gets the same ids on every run
    and in every stage; repeated identical rows get a `-2`, `-3`, ... suffix.
    """
    import pyarrow as pa

    if "id" in table.column_names:
        return table
    seen: dict[str, int] = {}
    ids = []
    columns = [table.column(name).to_pylist() for name in table.column_names]
    for values in zip(*columns) if columns else ():
        digest = hashlib.sha1(json.dumps(values, default=str, ensure_ascii=False).encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return table.add_column(0, "id", pa.array(ids, pa.string()))


def put_column(table: "pa.Table", name: str, values: "pa.Array | pa.ChunkedArray",
               field: "pa.Field | None" = None) -> "pa.Table":
    """Add a column, or replace it in place when it exists, so a rerun keeps the column order.

    `field` carries metadata (e.g. an embedding's model and dimension); by default a plain field
    of the values' type.
    """
    import pyarrow as pa

    field = field if field is not None else pa.field(name, values.type)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), field, values)
    return table.append_column(field, values)


def get_provenance(table: "pa.Table") -> list[dict[str, Any]]:
    meta = table.schema.metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else []


def with_provenance(table: "pa.Table", entry: dict[str, Any],
                    history: list[dict[str, Any]] | None = None) -> "pa.Table":
    """Append one stage's record (command, args, version, seed, models) to the schema metadata.

    `history` replaces the table's own earlier records, e.g. with `merged_provenance` of
    several inputs.
    """
    history = (get_provenance(table) if history is None else list(history)) + [entry]
    meta = dict(table.schema.metadata or {})
    meta.pop(b"pandas", None)  # stale once columns change; pyarrow rebuilds it when needed
    meta[PROVENANCE_KEY] = json.dumps(history).encode()
    return table.replace_schema_metadata(meta)


def provenance_entry(command: str, args: dict[str, Any], seed: int | None = None,
                     models: dict[str, str] | None = None, inputs: list[str] | None = None,
                     argv: list[str] | None = None) -> dict[str, Any]:
    """One stage's record; `argv` is the command line as typed, so a run can be repeated."""
    return {
        "command": command,
        "argv": argv,
        "args": {k: v for k, v in args.items() if _jsonable(v)},
        "inputs": inputs or [],
        "version": __version__,
        "seed": seed,
        "models": models or {},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def merged_provenance(tables: list["pa.Table"]) -> list[dict[str, Any]]:
    """Provenance of several inputs (e.g. for `mix`), each history in input order."""
    merged: list[dict[str, Any]] = []
    for table in tables:
        merged.extend(get_provenance(table))
    return merged


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
