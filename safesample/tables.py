"""Reading and writing tables: files, pipes, atomic writes, row ids and provenance.

Files are Parquet (also read: Arrow IPC, CSV, JSON Lines); pipes carry the Arrow IPC stream
format, because Parquet keeps its footer at the end and cannot be read from a pipe without
buffering. Readers sniff the first bytes, so a pipe may carry Parquet too (it is spooled to a
temporary file). Every file is written atomically: a temporary file in the target folder,
renamed into place only when complete, removed on any error or Ctrl-C.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from safesample import __version__
from safesample.stdio import data_fd
from safesample.errors import DataError, UsageError
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


# --------------------------------------------------------------------------------------------
# reading


def read_table(source: str) -> "pa.Table":
    """Read a table from a path or `-` (stdin), whatever supported format it is in."""
    if source == STDIO:
        return _read_stdin()
    path = Path(source)
    if not path.exists():
        raise UsageError(f"input file {source!r} does not exist",
                         "check the path; use '-' to read from a pipe")
    if path.is_dir():
        raise UsageError(f"input {source!r} is a directory, not a table file",
                         "pass a .parquet, .arrow, .csv or .jsonl file")
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
            with pa.OSFile(str(path)) as src:
                return pa.ipc.open_stream(src).read_all()
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pcsv

            opts = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            return pcsv.read_csv(path, parse_options=opts)
        if suffix in (".jsonl", ".ndjson", ".json") or head.lstrip()[:1] == b"{":
            return _read_jsonl(path)
    except (pa.ArrowException, ValueError, OSError) as exc:
        kind = "Parquet" if head.startswith(PARQUET_MAGIC) else "table"
        raise DataError(f"cannot read {label!r} as a {kind}: {_short(exc)}",
                        "the file may be truncated or corrupt; re-create it with the command "
                        "that wrote it") from exc
    raise DataError(f"{label!r} is not a table in a supported format",
                    f"safesample reads {_SUPPORTED}")


def _read_jsonl(path: Path) -> "pa.Table":
    import pyarrow.json as pjson

    return pjson.read_json(path)


def _read_stdin() -> "pa.Table":
    import pyarrow as pa

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
        try:
            return pa.ipc.open_stream(_Prefixed(head, stdin)).read_all()
        except pa.ArrowException as exc:
            raise DataError(f"cannot read the Arrow stream on stdin: {_short(exc)}",
                            "the writing command was probably interrupted") from exc
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


class _Prefixed(io.RawIOBase):
    """A readable stream: some already-read bytes, then the rest of another stream."""

    def __init__(self, prefix: bytes, rest: io.BufferedReader):
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# --------------------------------------------------------------------------------------------
# writing


def check_output(dest: str) -> None:
    """Fail early, before any work, when `dest` cannot be written."""
    if dest == STDIO:
        if os.isatty(data_fd()):
            raise UsageError("refusing to write a binary table to the terminal",
                             "pass -o FILE.parquet, or pipe into another command "
                             "(`... -o - | safesample ...`)")
        return
    path = Path(dest)
    if path.is_dir():
        raise UsageError(f"output {dest!r} is a directory", "pass a file path such as out.parquet")
    if not path.parent.is_dir():
        raise UsageError(f"output folder {str(path.parent)!r} does not exist",
                         f"create it first: mkdir -p {path.parent}")
    if path.suffix.lower() not in WRITE_FORMATS:
        raise UsageError(f"cannot tell the output format from {dest!r}",
                         "end the name in .parquet (or .arrow, .jsonl, .csv)")


def write_table(table: "pa.Table", dest: str, provenance: dict[str, Any] | None = None) -> None:
    """Write `table` to a file (atomically) or `-` (Arrow stream on stdout)."""
    if provenance is not None:
        table = with_provenance(table, provenance)
    check_output(dest)
    if dest == STDIO:
        _write_stream(table)
        return
    path = Path(dest)
    fmt = WRITE_FORMATS[path.suffix.lower()]
    with atomic_path(path) as tmp:
        _WRITERS[fmt](table, tmp)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
