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
_GLOB_CHARS = re.compile(r"[*?\[]")
# What a safesample shard folder may hold: shards, the manifest, and temporary files of either.
_OURS = re.compile(r"^(part-.*\.parquet|_SUCCESS|\..*\.tmp)$")


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
    """The manifest of a shard folder; None when there is none; {} for an empty (Spark) one."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        return {}
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise DataError(f"the manifest {str(path)!r} is not valid JSON", "re-create the folder with the "
                        "command that wrote it") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise DataError(f"the manifest {str(path)!r} lists no files", "re-create the folder with the "
                        "command that wrote it")
    return manifest


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
        for entry in manifest["files"]:
            path = folder / entry["name"]
            size = path.stat().st_size if path.is_file() else None
            if size is None or ("bytes" in entry and size != entry["bytes"]):
                what = "is missing" if size is None else f"has {size} bytes, not {entry['bytes']}"
                raise DataError(f"shard {entry['name']!r} of {source!r} {what}",
                                "the folder was changed after it was written; re-create it")
            files.append(path)
    return files, manifest


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


# --------------------------------------------------------------------------------------------
# writing


def check_dir_output(dest: str, what: str = "-o", run: RunFiles | None = None) -> Path:
    """`dest` can take shards: its parent exists, and it is absent, empty or a shard folder."""
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output {what} {dest!r} is a file, not a folder", "drop the trailing slash to "
                         "write one file, or pass a new folder")
    if not folder.parent.is_dir():
        raise UsageError(f"output folder {str(folder.parent)!r} does not exist",
                         f"create it first: mkdir -p {folder.parent}")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if not _OURS.match(p.name))
        if foreign:
            raise UsageError(f"output folder {dest!r} holds files safesample did not write "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})",
                             "write the shards to a new or empty folder")
    if run is not None:
        run.claim_output(dest, what)
    return folder


def begin_dir_output(dest: str, what: str = "-o", run: RunFiles | None = None) -> Path:
    """Make `dest` an empty shard folder: manifest first (the folder now reads as incomplete),
    then the old shards. Refuses to delete a shard that is an input of this run."""
    folder = check_dir_output(dest, what, run)
    folder.mkdir(exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for path in folder.iterdir():
        if run is not None and run.is_input(path):
            raise UsageError(f"the output folder {dest!r} holds the input {str(path)!r}: writing it would "
                             "destroy the input", "write the shards to another folder")
    for path in folder.iterdir():
        if _OURS.match(path.name) and path.is_file():
            path.unlink()
    return folder


def write_manifest(folder: Path, provenance: list[dict[str, Any]] | None = None,
                   names: Iterable[str] | None = None) -> dict[str, Any]:
    """Write `_SUCCESS` (atomically, last): every shard's name, rows and bytes, and provenance."""
    import pyarrow.parquet as pq

    names = sorted(names) if names is not None else sorted(p.name for p in folder.glob("part-*.parquet"))
    files = []
    for name in names:
        path = folder / name
        files.append({"name": name, "rows": pq.ParquetFile(path).metadata.num_rows,
                      "bytes": path.stat().st_size})
    manifest = {"format": FORMAT, "version": 1, "rows": sum(f["rows"] for f in files), "files": files,
                "provenance": provenance or []}
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return manifest


def write_sharded(table: "pa.Table", dest: str, rows_per_shard: int = SHARD_ROWS,
                  run: RunFiles | None = None) -> dict[str, Any]:
    """Write `table` as `part-NNNNN.parquet` shards in `dest`, then the manifest."""
    folder = begin_dir_output(dest, run=run)
    names = []
    for index, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
        name = f"part-{index:05d}.parquet"
        with atomic_path(folder / name, what="-o", run=run) as tmp:
            write_parquet(table.slice(start, rows_per_shard), tmp)
        names.append(name)
    return write_manifest(folder, get_provenance(table), names)
