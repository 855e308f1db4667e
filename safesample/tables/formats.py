"""Table formats: what a file or a pipe holds, read into Arrow, and Arrow written back out.

Files are Parquet (also read: Arrow IPC, CSV, JSON Lines); pipes carry the Arrow IPC stream
format, because Parquet keeps its footer at the end and cannot be read from a pipe without
buffering. Readers sniff the first bytes, so a pipe may carry Parquet too (it is spooled to a
temporary file). An Arrow stream must end with its end-of-stream marker: a stream cut by a
killed upstream is an error, never a shorter table.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from safesample.errors import DataError, UsageError
from safesample.schema import kind_of
from safesample.stdio import data_fd, stdin_closed

if TYPE_CHECKING:
    import pyarrow as pa

PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
WRITE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow",
                 ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
SUPPORTED = "Parquet, Arrow IPC (file or stream), CSV (.csv) or JSON Lines (.jsonl)"
ROW_GROUP = 65_536  # rows per Parquet row group / Arrow batch written
_STREAM_HINT = ("the command that wrote it was interrupted or killed before it finished (e.g. out of "
                "memory); see its error, and re-run the pipe")


# --------------------------------------------------------------------------------------------
# reading


def read_path(path: Path, head: bytes, label: str, columns: Sequence[str] | None = None) -> "pa.Table":
    """The table in the file at `path` (whose first bytes are `head`), its text checked to be UTF-8.
    `columns`: only these, in this order (one the file lacks is a DataError); None: all. Parquet
    and Arrow IPC files then read nothing else."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        # A file name that is not UTF-8 (Python holds its bytes as surrogates): Arrow's readers
        # take UTF-8 names only, so they read it through an open descriptor's name instead.
        fd = os.open(path, os.O_RDONLY)
        try:
            return check_utf8(only_columns(_read_path(Path(f"/dev/fd/{fd}"), head, label, suffix=Path(path).suffix,
                                                      columns=columns), columns, label), label)
        finally:
            os.close(fd)
    return check_utf8(only_columns(_read_path(path, head, label, columns=columns), columns, label), label)


def only_columns(table: "pa.Table", columns: Sequence[str] | None, label: str) -> "pa.Table":
    """`table` with only `columns`, in that order (None: all); a missing one is a DataError."""
    if columns is None:
        return table
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{label!r} has no column {missing[0]!r}", f"its columns: {', '.join(table.column_names)}")
    return table.select(list(columns))


def _read_path(path: Path, head: bytes, label: str, suffix: str | None = None,
               columns: Sequence[str] | None = None) -> "pa.Table":
    import pyarrow as pa

    try:
        if head.startswith(PARQUET_MAGIC):
            import pyarrow.parquet as pq

            # Not pq.read_table: that imports pandas via pyarrow.dataset. Batch by batch: for
            # nested columns (embeddings) one big read() is ~2.5x slower and peaks ~2 GiB higher
            # (1M x 384: 12.5 s / 5.7 GiB vs 4.9 s / 3.5 GiB).
            # Memory-mapped: pages are decoded where the OS cache holds them instead of first being
            # copied into as many bytes of fresh buffers (1M x 384 embeddings: peak RSS 3.7 -> 2.3
            # GB; on these VMs the kernel zeroing fresh memory is most of a read's CPU time).
            # Page checksums (written by write_parquet) are verified: a flipped bit is an error.
            # Embedding columns as write_parquet stores them (plain floats) are not decoded at
            # all: zero-copy views of the mapped pages, CRCs checked (`parquet_vectors`).
            parquet = pq.ParquetFile(path, page_checksum_verification=True, memory_map=True)
            schema = parquet.schema_arrow
            if columns is not None:  # only these column chunks are read at all
                schema = pa.schema([schema.field(c) for c in columns if c in schema.names], metadata=schema.metadata)
            vectors = _vector_columns(str(path), parquet, schema)
            rest = pa.schema([f for f in schema if f.name not in vectors], metadata=schema.metadata)
            groups = parquet.metadata.num_row_groups
            workers = min(os.cpu_count() or 1, 4, groups)
            if not len(rest):
                table = None
            elif workers > 1 and max(parquet.metadata.row_group(k).num_rows for k in range(groups)) <= 2 * ROW_GROUP:
                table = _read_row_groups(path, parquet.metadata, rest, workers)
            else:
                table = pa.Table.from_batches(parquet.iter_batches(batch_size=ROW_GROUP, columns=rest.names),
                                              schema=rest)
            if not vectors:
                return table
            return pa.table({f.name: vectors[f.name] if f.name in vectors else table.column(f.name) for f in schema},
                            schema=schema)
        if head.startswith(ARROW_FILE_MAGIC):
            with pa.memory_map(str(path)) as src:  # zero-copy: the columns are views of the mapping
                table = pa.ipc.open_file(src).read_all()
            return table.select([c for c in columns if c in table.column_names]) if columns is not None else table
        if head.startswith(ARROW_STREAM_MAGIC):
            with open(path, "rb") as src:
                return read_stream(src, label)
        suffix = (path.suffix if suffix is None else suffix).lower()
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, "\t" if suffix == ".tsv" else ",")
        if suffix in (".jsonl", ".ndjson", ".json") or head.lstrip()[:1] == b"{":
            return _read_jsonl(path)
    except (pa.ArrowException, ValueError, OSError) as exc:
        kind = "Parquet" if head.startswith(PARQUET_MAGIC) else "table"
        raise DataError(f"cannot read {label!r} as a {kind}: {short_error(exc)}",
                        "the file may be truncated or corrupt; re-create it with the command "
                        "that wrote it") from exc
    raise DataError(f"{label!r} is not a table in a supported format",
                    f"safesample reads {SUPPORTED}")


def _vector_columns(path: str, parquet, schema: "pa.Schema") -> dict:
    """The embedding columns of `schema` that `parquet_vectors` reads without decoding."""
    from safesample.tables.parquet_vectors import Unsupported, is_vector, read_vectors

    out = {}
    for field in schema:
        if is_vector(field.type):
            try:
                out[field.name] = read_vectors(path, parquet, field.name)
            except Unsupported:
                pass  # another layout: Arrow decodes it
    return out


def _read_row_groups(path: Path, metadata, schema: "pa.Schema", workers: int) -> "pa.Table":
    """The row groups of a Parquet file decoded by `workers` threads (Arrow releases the GIL),
    in file order: decoding 1M x 384 embeddings took ~1.6x less wall time on 2 busy cores."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    def group(k: int) -> "pa.Table":
        part = pq.ParquetFile(path, metadata=metadata, page_checksum_verification=True, memory_map=True)
        return part.read_row_group(k, columns=schema.names, use_threads=False)

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(group, range(metadata.num_row_groups)))
    return pa.Table.from_batches([b for t in parts for b in t.to_batches()], schema=schema)


def check_utf8(table: "pa.Table", label: str) -> "pa.Table":
    """`table` when every text value is valid UTF-8; else a DataError naming the column and row.
    Parquet and Arrow files can carry invalid bytes in a string column, and JSON Lines readers
    pass them through; left in, they fail far from here (or are silently changed on the way out).
    CSV columns of invalid text come out as binary: the same error."""
    import pyarrow as pa

    for field in table.schema:
        kind = field.type
        csv_bytes = label.lower().endswith((".csv", ".tsv")) and pa.types.is_binary(kind)
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or csv_bytes):
            continue
        offset = 0
        for chunk in table.column(field.name).chunks:
            if not csv_bytes:
                try:
                    chunk.validate(full=True)
                    offset += len(chunk)
                    continue
                except pa.ArrowInvalid:
                    pass
            raw = chunk.view(pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()) \
                if not csv_bytes else chunk
            for k, value in enumerate(raw.to_pylist()):
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"column {field.name!r} of {label!r} holds text that is not valid UTF-8 "
                                    f"(row {offset + k + 1}: {value[max(0, exc.start - 10):exc.start + 10]!r})",
                                    "re-encode the data as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or fix the "
                                    "program that wrote it") from None
            offset += len(chunk)
    return table


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
    """JSON Lines; a line that is `null` or `{}` is an error, not a row of nulls without an id."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pjson

    table = pjson.read_json(path)
    if table.num_columns and table.num_rows:
        empty = pc.is_null(table.column(0))
        for col in table.columns[1:]:
            empty = pc.and_(empty, pc.is_null(col))
        if pc.any(empty).as_py():
            row = pc.index(empty, pa.scalar(True)).as_py()
            with open(path, "rb") as fh:
                lines = [(n, line) for n, line in enumerate(fh, 1) if line.strip()]
            number, text = lines[row] if row < len(lines) else (row + 1, b"")
            raise DataError(f"line {number} of {str(path)!r} is {text.strip()[:40].decode('utf-8', 'replace')!r}, "
                            "not a row: every column would be null, the id too",
                            "remove the line, or write one JSON object with the table's columns on every line")
    return table


def read_stdin() -> "pa.Table":
    if stdin_closed() or sys.stdin is None:
        raise UsageError("'-' reads a table from stdin, but stdin is closed",
                         "pipe a table in (`... -o - | safesample ...`) or pass a file path")
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
        return check_utf8(read_stream(_Prefixed(head, stdin), "stdin"), "stdin")
    # Parquet (or a text table) on a pipe: spool it to a temporary file, then read that.
    with tempfile.NamedTemporaryFile(prefix="safesample-stdin-", suffix=".spool") as spool:
        spool.write(head)
        while chunk := stdin.read(1 << 20):
            spool.write(chunk)
        spool.flush()
        if head.startswith((PARQUET_MAGIC, ARROW_FILE_MAGIC)) or head.lstrip()[:1] == b"{":
            return read_path(Path(spool.name), head, "stdin")
    raise DataError("stdin does not carry a table in a supported format",
                    f"pipe {SUPPORTED.replace(' (.csv)', ' (as a file only)')}")


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
        raise DataError(f"cannot read the Arrow stream in {label!r}: {short_error(exc)}",
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


def write_parquet(table: "pa.Table", path: Path) -> None:
    import pyarrow.parquet as pq

    from safesample.tables.parquet_vectors import is_vector

    # Float vectors (embeddings) neither dictionary-encode nor compress: skipping both makes a
    # 1M x 384 table read about 2x faster, and reading it is most of `select`'s time.
    vectors = {f.name for f in table.schema if kind_of(f.type) in ("vector", "float")}
    plain = [f.name for f in table.schema if f.name not in vectors]
    compression = {name: ("none" if name in vectors else "zstd") for name in table.column_names}
    # Row group by row group, so Ctrl-C is seen between groups and the temp file removed.
    # A CRC per page, checked when read back: a file damaged after it was written is an error,
    # never silently different data.
    # One page per row group for a table with embeddings (~100 MB at 65,536 x 384): the reader
    # maps their pages without decoding (`parquet_vectors`), and a selection gathering rows from
    # 16 pieces instead of ~1,500 1 MB pages spent 1.4 s less in Python loops at 1M rows.
    page = 1 << 28 if any(is_vector(f.type) for f in table.schema) else None
    with pq.ParquetWriter(path, table.schema, compression=compression, use_dictionary=plain,
                          write_page_checksum=True, data_page_size=page) as writer:
        for start in range(0, max(table.num_rows, 1), ROW_GROUP):
            writer.write_table(table.slice(start, ROW_GROUP))


def _write_arrow(table: "pa.Table", path: Path) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(ROW_GROUP):
            writer.write_batch(batch)


def _write_jsonl(table: "pa.Table", path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for batch in table.to_batches(ROW_GROUP):
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False, default=str))
                fh.write("\n")


def _write_csv(table: "pa.Table", path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        pcsv.write_csv(table, path)
    except pa.ArrowException as exc:
        raise DataError(f"cannot write this table as CSV: {short_error(exc)}",
                        "list columns (e.g. embeddings) do not fit CSV; write .parquet or .jsonl") from exc


WRITERS = {"parquet": write_parquet, "arrow": _write_arrow, "jsonl": _write_jsonl, "csv": _write_csv}


def write_stream(table: "pa.Table") -> None:
    import pyarrow as pa

    # Unbuffered: a reader that closes the pipe early (`| head`) then leaves no buffered bytes
    # to fail on at exit.
    sink = os.fdopen(data_fd(), "wb", buffering=0, closefd=False)
    try:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(ROW_GROUP):
                writer.write_batch(batch)
        sink.flush()
    except BrokenPipeError:
        raise  # the reader left (`| head`): it has all it wanted, which is no failure
    except OSError as exc:  # e.g. `-o - >/dev/full`
        raise DataError(f"cannot write the table to stdout: {exc.strerror or short_error(exc)}",
                        "the file or device behind stdout cannot take it (a full disk?); free some "
                        "space, or pass -o FILE.parquet") from exc


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
