"""Sharded datasets: a folder (or a glob) of Parquet files read as one table, and `-o DIR/`
written as Parquet shards plus a `_SUCCESS` manifest written last.

Why a manifest: a job that dies half way leaves some shards in the folder, and a reader that
globbed `*.parquet` would take them for the whole dataset. The manifest lists every shard with
its row count and size and is renamed into place only after the last shard is complete, so:

- a folder with a `_SUCCESS` manifest is read as exactly the files it lists (a file missing or
  of another size is an error, not a silently shorter table);
- a folder without one is *incomplete* and refused (its writer died, or is still running); a
  folder of Parquet files some other tool wrote is read with a glob (`'DIR/*.parquet'`);
- an empty `_SUCCESS` (Spark, Hadoop) is accepted and means every `*.parquet` in the folder.

Writing replaces an earlier safesample output in the folder: the old manifest goes first (from
then on the folder reads as incomplete), then the old shards, then the new shards each written
atomically, then the new manifest. A folder holding anything else is refused rather than mixed.
The Ray executor writes its shards from the workers and finishes with `write_manifest`.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from safesample.errors import DataError, UsageError
from safesample.tables.atomic import atomic_path
from safesample.tables.formats import read_path, write_parquet
from safesample.tables.guard import RunFiles
from safesample.tables.provenance import PROVENANCE_KEY, get_provenance

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST = "_SUCCESS"
FORMAT = "safesample-shards"
SHARD_ROWS = 262_144  # rows per shard the local writer writes (~4 row groups)
STAGING = ".staging"  # inside a shard folder: the shards of a run not finished yet
LOCK = ".lock"  # inside a shard folder: held by the run writing it
_GLOB_CHARS = re.compile(r"[*?\[]")
# What a safesample shard folder may hold: shards, the manifest, and temporary files of either.
_OURS = re.compile(r"^(part-.*\.parquet|_SUCCESS|\..*\.tmp|\.staging|\.lock)$")


def is_glob(source: str) -> bool:
    return bool(_GLOB_CHARS.search(source)) and not Path(source).exists()


def is_sharded(source: str) -> bool:
    """A folder or a glob pattern (not `-`, not a file)."""
    return source != "-" and (Path(source).is_dir() or is_glob(source))


def is_dir_output(dest: str) -> bool:
    """`-o DIR/` (a trailing slash) or `-o` an existing folder: write shards there."""
    return dest != "-" and (dest.endswith(("/", os.sep)) or Path(dest).is_dir())


# --------------------------------------------------------------------------------------------
# reading


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a shard folder; None when there is none; {} for an empty (Spark) one.
    Anything but a JSON object listing well-formed file entries is a DataError (never a crash)."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    broken = f"the manifest {str(path)!r}"
    redo = "re-create the folder with the command that wrote it"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is not UTF-8 text"
        raise DataError(f"{broken} cannot be read ({why})", redo) from exc
    if not text:
        return {}
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{broken} is not valid JSON", redo) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise DataError(f"{broken} lists no files", redo)
    for k, entry in enumerate(manifest["files"]):
        problem = _entry_problem(entry)
        if problem:
            raise DataError(f"{broken}: file entry {k + 1} {problem}", redo)
    if "rows" in manifest and not _count(manifest["rows"]):
        raise DataError(f"{broken}: its total \"rows\" is not a row count", redo)
    return manifest


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one entry of a manifest's `files`, or None."""
    if not isinstance(entry, dict):
        return "is not an object"
    name = entry.get("name")
    if not isinstance(name, str):
        return "has no file name"
    # A shard lives in its folder: a plain file name, never a path that leaves it.
    if name in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0", os.sep)):
        return f"names {name!r}, not a file name in the folder (a manifest may not point outside it)"
    for key in ("rows", "bytes"):
        if key in entry and not _count(entry[key]):
            return f"has {key} {entry[key]!r}, not a count"
    if "sha256" in entry and not (isinstance(entry["sha256"], str) and entry["sha256"]):
        return f"has sha256 {entry['sha256']!r}, not a digest"
    return None


def shard_files(source: str) -> tuple[list[Path], dict[str, Any] | None]:
    """The Parquet files of a sharded input, in order, and its manifest (None for a glob)."""
    if is_glob(source):
        files = sorted(Path(p) for p in globlib.glob(source) if Path(p).is_file())
        if not files:
            raise UsageError(f"no file matches {source!r}", "check the pattern (quote it so the shell "
                             "passes it through)")
        return files, None
    folder = Path(source)
    manifest = read_manifest(folder)
    if manifest is None and not any(folder.glob("*.parquet")):
        raise UsageError(f"{source!r} is a folder, not a table: it holds no Parquet shards",
                         "pass a table file, a folder written with `-o DIR/`, or a glob of Parquet files")
    if manifest is None:
        raise DataError(f"the folder {source!r} has no {MANIFEST} manifest, so it is incomplete: the "
                        "job writing it died or is still running",
                        f"re-run the command that writes it; for Parquet files another tool wrote, pass a "
                        f"glob instead: '{folder}/*.parquet'")
    if not manifest:  # an empty _SUCCESS (Spark): every Parquet file in the folder
        files = sorted(p for p in folder.glob("*.parquet") if p.is_file())
    else:
        files = []
        changed = "the folder was changed after it was written; re-create it"
        for entry in manifest["files"]:
            path = folder / entry["name"]
            size = path.stat().st_size if path.is_file() else None
            if size is None or ("bytes" in entry and size != entry["bytes"]):
                what = "is missing" if size is None else f"has {size} bytes, not {entry['bytes']}"
                raise DataError(f"shard {entry['name']!r} of {source!r} {what}", changed)
            if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
                raise DataError(f"shard {entry['name']!r} of {source!r} is not the file its manifest names "
                                "(its sha256 differs): it was changed or damaged after it was written",
                                "re-create the folder with the command that wrote it")
            if "rows" in entry and path.suffix == ".parquet":
                rows = _parquet_rows(path, source)
                if rows != entry["rows"]:
                    raise DataError(f"shard {entry['name']!r} of {source!r} holds {rows} rows, but its "
                                    f"manifest says {entry['rows']}", changed)
            files.append(path)
        listed = sum(e.get("rows", 0) for e in manifest["files"])
        if "rows" in manifest and all("rows" in e for e in manifest["files"]) and manifest["rows"] != listed:
            raise DataError(f"the manifest of {source!r} says {manifest['rows']} rows in all, but its shards "
                            f"hold {listed}", changed)
    return files, manifest


def _parquet_rows(path: Path, source: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read shard {path.name!r} of {source!r} as a Parquet: {why}",
                        "the file may be truncated or corrupt; re-create the folder") from exc


def read_sharded(source: str, run: RunFiles | None = None) -> "pa.Table":
    """Every shard of `source` as one table (schemas must agree), with the manifest's provenance."""
    import pyarrow as pa

    files, manifest = shard_files(source)
    tables = []
    for path in files:
        if run is not None:
            run.claim_input(str(path))
        with open(path, "rb") as fh:
            head = fh.read(8)
        tables.append(read_path(path, head, str(path)))
    if not tables:  # a manifest of an empty result
        return pa.table({})
    check_one_schema([t.schema for t in tables], [str(p) for p in files], source)
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise DataError(f"the shards of {source!r} do not share one schema: {str(exc).splitlines()[0][:200]}",
                        "pass shards written by one command") from exc
    provenance = (manifest or {}).get("provenance")
    if provenance:
        meta = dict(table.schema.metadata or {})
        meta[PROVENANCE_KEY] = json.dumps(provenance).encode()
        table = table.replace_schema_metadata(meta)
    return table


# What an embedding column's field metadata records (safesample.vectors writes it): vectors of two
# models, or of two different texts, mean different things and cannot be one column. (Read here,
# not through safesample.vectors: that module reads tables, which read shards.)
_EMBEDDED_BY = {b"safesample.model": "model", b"safesample.text": "text"}


def check_one_schema(schemas: list["pa.Schema"], names: list[str], source: str) -> None:
    """Files read as one table must agree: the same columns, in the same order, of the same types
    (else the first difference is named), and embedding columns made by one model from one text
    (Arrow's concatenation ignores field metadata, so the first file's model would silently
    label every row). A DataError names both files and what differs."""
    first, first_name = schemas[0] if schemas else None, names[0] if names else ""
    for schema, name in zip(schemas[1:], names[1:]):
        if not schema.equals(first):
            raise DataError(f"the shards of {source!r} do not share one schema: "
                            f"{_schema_difference(first, first_name, schema, name)}",
                            "pass shards written by one command")
        for field in first:
            other = schema.field(field.name)
            for key, what in _EMBEDDED_BY.items():
                a, b = (field.metadata or {}).get(key), (other.metadata or {}).get(key)
                if a != b:
                    raise DataError(f"the shards of {source!r} were embedded differently: column "
                                    f"{field.name!r} of {first_name!r} holds vectors of the {what} "
                                    f"{_said(a, what)}, of {name!r} of the {what} {_said(b, what)}",
                                    "vectors of different models or texts cannot be compared; embed every "
                                    "shard the same way (one `safesample embed` over all of them)")


def _said(value: bytes | None, what: str) -> str:
    return repr(value.decode("utf-8", "replace")) if value is not None else f"(no {what} recorded)"


def _schema_difference(a: "pa.Schema", a_name: str, b: "pa.Schema", b_name: str) -> str:
    for field in a:
        if field.name not in b.names:
            return f"{b_name!r} has no column {field.name!r} (which {a_name!r} has)"
    for field in b:
        if field.name not in a.names:
            return f"{b_name!r} has a column {field.name!r} that {a_name!r} lacks"
    for field in a:
        other = b.field(field.name)
        if not field.type.equals(other.type):
            return f"column {field.name!r} is {field.type} in {a_name!r} but {other.type} in {b_name!r}"
    if a.names != b.names:
        return f"the columns of {b_name!r} are in another order than those of {a_name!r}"
    return f"{b_name!r} differs from {a_name!r} in which columns may hold nulls"


# --------------------------------------------------------------------------------------------
# writing


class ShardOutput:
    """A shard folder being written (`-o DIR/`): shards are staged in `DIR/.staging/`, hidden from
    readers and globs, and only `finish()` makes them the folder's content.

    - Before any work (the constructor): the folder may not hold an input of this run, may hold
      only what safesample writes, and Parquet files in it must be named by a safesample manifest
      (another tool's `part-N.parquet` files are never deleted); a second run writing the same
      folder is refused while the first holds its lock.
    - Each finished task's shard is staged with a record of the work that made it (`key`): a rerun
      of the same command finds it (`done`) and skips the task.
    - `finish()`: the old manifest goes first (the folder reads as incomplete from then on), then
      the old shards it named, then the staged shards move in, then the new manifest (rows, bytes
      and sha256 of every shard) is written last.
    An interrupted run leaves the old content (or nothing) plus its staging folder, which no
    reader takes for data.
    """

    def __init__(self, dest: str, what: str = "-o", run: RunFiles | None = None):
        self.folder = check_dir_output(dest, what, run)
        self.folder.mkdir(exist_ok=True)
        self._lock = _lock(self.folder, dest)
        self.staging = self.folder / STAGING
        self.staging.mkdir(exist_ok=True)

    def done(self, task: int, key: str) -> dict[str, Any] | None:
        """The record of task `task`'s staged shard when the same work (`key`) made it, else None."""
        return staged(self.staging, task, key)

    def write(self, task: int, table: "pa.Table", key: str = "") -> dict[str, Any]:
        return write_staged(self.staging, task, table, key)

    def finish(self, tasks: Iterable[int], provenance: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Make the staged shards of `tasks` the folder's content, manifest last."""
        records = []
        for task in sorted(set(tasks)):
            path = self.staging / _record_name(task)
            if not path.is_file():
                raise DataError(f"shard {task} of {str(self.folder)!r} was never written",
                                "re-run the command")
            records.append(json.loads(path.read_text(encoding="utf-8")))
        old = read_manifest(self.folder) if (self.folder / MANIFEST).is_file() else None
        (self.folder / MANIFEST).unlink(missing_ok=True)
        for entry in (old or {}).get("files", []):
            (self.folder / entry["name"]).unlink(missing_ok=True)
        for record in records:
            os.replace(self.staging / record["name"], self.folder / record["name"])
        files = [{k: r[k] for k in ("name", "rows", "bytes", "sha256")} for r in records]
        manifest = write_manifest(self.folder, provenance, files=files)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.close()
        return manifest

    def close(self) -> None:
        """Release the folder (the staged shards stay for a rerun to resume from)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "ShardOutput":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(folder: Path, dest: str):
    """An exclusive lock on the folder for this run (released when the process ends)."""
    import fcntl

    handle = open(folder / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UsageError(f"another run is writing the output folder {dest!r}",
                         "wait for it to finish, or write to another folder") from None
    return handle


def _record_name(task: int) -> str:
    return f"{shard_name(task)}.json"


def shard_name(task: int) -> str:
    return f"part-{task:05d}.parquet"


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_staged(staging: Path, task: int, table: "pa.Table", key: str = "") -> dict[str, Any]:
    """Write task `task`'s shard into a staging folder, atomically, then its record (name, rows,
    bytes, sha256, the `key` of the work that made it): a shard without its record is not done.
    Called by the local writer and by Ray workers (each writes its own tasks)."""
    name = shard_name(task)
    with atomic_path(staging / name) as tmp:
        write_parquet(table, tmp)
    path = staging / name
    record = {"name": name, "rows": table.num_rows, "bytes": path.stat().st_size, "sha256": file_sha256(path),
              "key": key}
    with atomic_path(staging / _record_name(task)) as tmp:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return record


def staged(staging: Path, task: int, key: str) -> dict[str, Any] | None:
    """The record of a staged shard of task `task` made by the work `key`, if it is complete."""
    path = staging / _record_name(task)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        shard = staging / record["name"]
        if record.get("key") == key and key and shard.stat().st_size == record["bytes"]:
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def check_dir_output(dest: str, what: str = "-o", run: RunFiles | None = None) -> Path:
    """Before any work: `dest` can take shards. Its parent exists; it is absent, empty, or a
    folder safesample wrote; it holds no input of this run; Parquet files in it are named by a
    safesample manifest (or staged by an interrupted run), so nothing another tool wrote is lost."""
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output {what} {dest!r} is a file, not a folder", "drop the trailing slash to "
                         "write one file, or pass a new folder")
    if not folder.parent.is_dir():
        raise UsageError(f"output folder {str(folder.parent)!r} does not exist",
                         f"create it first: mkdir -p {folder.parent}")
    if folder.is_dir():
        entries = list(folder.iterdir())
        foreign = sorted(p.name for p in entries if not _OURS.match(p.name))
        if foreign:
            raise UsageError(f"output folder {dest!r} holds files safesample did not write "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})",
                             "write the shards to a new or empty folder")
        for path in [*entries, *((folder / STAGING).iterdir() if (folder / STAGING).is_dir() else [])]:
            if run is not None and run.is_input(path):
                raise UsageError(f"the output folder {dest!r} holds the input {str(path)!r}: writing it would "
                                 "destroy the input", "write the shards to another folder")
        shards = {p.name for p in entries if p.suffix == ".parquet"}
        if shards:
            try:
                manifest = read_manifest(folder)
            except DataError:
                manifest = None
            named = {e.get("name") for e in (manifest or {}).get("files", []) if isinstance(e, dict)}
            unnamed = sorted(shards - named)
            if manifest is None or manifest.get("format") != FORMAT or unnamed:
                raise UsageError(f"output folder {dest!r} holds Parquet files no safesample manifest names "
                                 f"({', '.join((unnamed or sorted(shards))[:3])}...)",
                                 "write the shards to a new or empty folder (safesample only replaces "
                                 "shards it wrote)")
    if run is not None:
        run.claim_output(dest, what)
    return folder


def write_manifest(folder: Path, provenance: list[dict[str, Any]] | None = None,
                   files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write `_SUCCESS` (atomically, last): every shard's name, rows, bytes and sha256, and the
    provenance. `files` are the shards' records (else every `part-*.parquet` in the folder)."""
    import pyarrow.parquet as pq

    if files is None:
        files = [{"name": p.name, "rows": pq.ParquetFile(p).metadata.num_rows, "bytes": p.stat().st_size,
                  "sha256": file_sha256(p)} for p in sorted(folder.glob("part-*.parquet"))]
    manifest = {"format": FORMAT, "version": 2, "rows": sum(f["rows"] for f in files), "files": files,
                "provenance": provenance or []}
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def write_sharded(table: "pa.Table", dest: str, rows_per_shard: int = SHARD_ROWS,
                  run: RunFiles | None = None) -> dict[str, Any]:
    """Write `table` as `part-NNNNN.parquet` shards in `dest`, then the manifest. A folder this
    call created is removed again when the write fails or is interrupted: a local write keeps
    nothing a rerun could resume from (it stages no work keys), so it leaves no empty folder."""
    created = not Path(dest).exists()
    out = ShardOutput(dest, run=run)  # a refusal (another run holds the folder) removes nothing
    try:
        with out:
            tasks = []
            for index, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
                out.write(index, table.slice(start, rows_per_shard))
                tasks.append(index)
            return out.finish(tasks, get_provenance(table))
    except BaseException:
        if created:
            shutil.rmtree(out.folder, ignore_errors=True)
        raise
