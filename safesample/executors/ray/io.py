"""How a Ray run's rows reach the workers and come back.

Parquet files and shard folders are planned as tasks of file slices that each worker reads
itself (only the row groups it needs); anything else (a pipe, CSV, JSON Lines, a table without
`id`) is read on the driver, which gives rows their content-hash ids exactly as the local
executor does, and handed over in task-sized blocks. Every task carries a key of the work it
stands for (the rows it covers and the run's settings), so a rerun over a shard folder skips the
tasks whose shards an earlier, interrupted run finished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from safesample.executors.base import ExecutorOptions, task_rows
from safesample.executors.ray.cluster import workers
from safesample.executors.ray.failures import errors

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from safesample.tables import RunFiles

# Columns of the blocks the driver hands the workers: the task's index (its shard's name), the
# key of its work (a staged shard made by the same work is reused on a rerun), and for Parquet
# inputs the file slices it reads (JSON: [[path, first row, rows], ...]).
TASK = "__safesample_task__"
KEY = "__safesample_key__"
SLICES = "__safesample_slices__"


@dataclass
class Input:
    """A Ray run's input before it is cut into tasks: Parquet files the workers will read
    (`files`, their row `counts`), or a table read here (`table`); its schema and rows."""

    schema: "pa.Schema"
    rows: int
    files: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    table: "pa.Table | None" = None


def open_input(source: str, *, limit: int | None, load: Callable[[str, int | None], "pa.Table"],
               run: "RunFiles | None" = None, on_driver: bool = False) -> Input:
    """Parquet files and shard folders stay on disk for the workers (only their footers are read
    here); anything else (a pipe, CSV, JSON Lines, a table without `id`), or everything when
    `on_driver`, is read here by `load`."""
    import pyarrow.parquet as pq

    from safesample.tables import shards
    from safesample.tables import PARQUET_MAGIC

    files: list[Path] = []
    if source != "-" and not on_driver:
        if shards.is_sharded(source):
            files = shards.shard_files(source)[0]
        elif Path(source).is_file():
            files = [Path(source)]
    if files and all(_is_parquet(f, PARQUET_MAGIC) for f in files):  # else the driver reads (and says why not)
        try:
            schemas = [pq.read_schema(f) for f in files]
        except (OSError, ValueError):  # a damaged footer: the driver's reader names the file
            return _loaded(source, limit, load)
        # Before any work: every file the workers will read says the same (columns, types, and
        # the model of an embedding column), as the local reader insists.
        shards.check_one_schema(schemas, [str(f) for f in files], source)
        schema = schemas[0]
        if "id" in schema.names:
            if run is not None:
                for f in files:
                    run.claim_input(str(f))
            counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
            rows = min(sum(counts), limit) if limit else sum(counts)
            return Input(schema, rows, [str(f.resolve()) for f in files], counts)
    return _loaded(source, limit, load)


def _loaded(source: str, limit: int | None, load: Callable[[str, int | None], "pa.Table"]) -> Input:
    table = load(source, limit)
    return Input(table.schema, table.num_rows, table=table)


def _is_parquet(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == magic
    except OSError:
        return False


@dataclass
class Tasks:
    """A planned Ray run: the tasks to run as a dataset, and every task's key (also those left
    out because their shards are staged already)."""

    dataset: "ray.data.Dataset"
    keys: list[str]
    todo: int  # tasks in `dataset` (the others were skipped)

    @property
    def count(self) -> int:
        return len(self.keys)


def make_tasks(job: Input, ex: ExecutorOptions, fingerprint: str,
               skip: Callable[[int, str], bool] | None = None) -> Tasks:
    """`job` as tasks of `task_rows` rows (set on `ex`). `fingerprint` names the run's settings
    (part of every task's key); `skip(task, key)` leaves a task out (its shard is staged)."""
    import ray.data

    if job.table is not None:
        ds, keys, todo = from_table(job.table, ex, fingerprint, skip)
        return Tasks(ds, keys, todo)
    ex.task_rows = task_rows(job.rows, workers(ex), ex.batch_size)
    stamps = {f: _stamp(Path(f)) for f in job.files}
    slices = file_tasks(job.files, job.counts, job.rows, ex.task_rows)
    keys = [_key(fingerprint, [[*s, stamps[s[0]]] for s in task]) for task in slices]
    items = [{TASK: i, KEY: keys[i], SLICES: json.dumps(t)} for i, t in enumerate(slices)
             if skip is None or not skip(i, keys[i])]
    return Tasks(ray.data.from_items(items, override_num_blocks=max(1, len(items))), keys, len(items))


def _stamp(path: Path) -> list[Any]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _key(fingerprint: str, what: Any) -> str:
    return hashlib.sha256(json.dumps([fingerprint, what], default=str).encode()).hexdigest()[:32]


def file_tasks(files: list[str], counts: list[int], rows: int, size: int) -> list[list[list[Any]]]:
    """The first `rows` rows of `files` (with `counts` rows each) in tasks of `size` rows, each a
    list of [file, first row, rows] slices (a task may span files; at least one task)."""
    tasks: list[list[list[Any]]] = []
    current: list[list[Any]] = []
    filled, left = 0, rows
    for path, count in zip(files, counts):
        first = 0
        while first < count and left > 0:
            take = min(count - first, size - filled, left)
            current.append([path, first, take])
            first, filled, left = first + take, filled + take, left - take
            if filled == size:
                tasks.append(current)
                current, filled = [], 0
    if current or not tasks:
        tasks.append(current or [[files[0], 0, 0]])
    return tasks


def from_table(table: "pa.Table", ex: ExecutorOptions, fingerprint: str = "",
               skip: Callable[[int, str], bool] | None = None) -> tuple["ray.data.Dataset", list[str], int]:
    """A table already in memory as a dataset of task-sized blocks (`ex.task_rows` is set), every
    task's key (its rows' ids and the run's settings), and how many tasks were not skipped."""
    import pyarrow as pa
    import ray.data

    ex.task_rows = step = task_rows(table.num_rows, workers(ex), ex.batch_size)
    blocks, keys = [], []
    for task, start in enumerate(range(0, max(table.num_rows, 1), step)):
        part = table.slice(start, step)
        ids = part.column("id").to_pylist() if "id" in part.column_names else [part.num_rows]
        keys.append(_key(fingerprint, ids))
        if skip is not None and skip(task, keys[-1]):
            continue
        blocks.append(part.append_column(TASK, pa.array([task] * part.num_rows, pa.int64()))
                      .append_column(KEY, pa.array([keys[-1]] * part.num_rows, pa.string())))
    if not blocks:
        return ray.data.from_items([]), keys, 0
    return ray.data.from_arrow(blocks), keys, len(blocks)


def read_slices(slices: list[list[Any]]) -> "pa.Table":
    """Rows `[first, first + rows)` of each Parquet file, as one table (only the row groups that
    hold them are read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from safesample.errors import DataError

    from safesample.tables.shards import check_one_schema

    parts = []
    for path, first, rows in slices:
        try:
            parquet = pq.ParquetFile(path)
            groups, offset, start = [], 0, None
            for g in range(parquet.metadata.num_row_groups):
                n = parquet.metadata.row_group(g).num_rows
                if offset < first + rows and offset + n > first:
                    groups.append(g)
                    start = offset if start is None else start
                offset += n
            table = parquet.read_row_groups(groups) if groups else parquet.schema_arrow.empty_table()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read {path!r} as a Parquet: {str(exc).splitlines()[0][:200]}",
                            "check the file (was it changed after the run started?)") from exc
        parts.append(table.slice(first - (start or 0), rows))
    check_one_schema([p.schema for p in parts], [str(s[0]) for s in slices], "the input")
    try:
        return pa.concat_tables(parts) if len(parts) != 1 else parts[0]
    except pa.ArrowInvalid as exc:
        raise DataError(f"the input files do not share one schema: {str(exc).splitlines()[0][:200]}",
                        "pass shards written by one command") from exc


def collect(ds: "ray.data.Dataset") -> "pa.Table":
    """The whole dataset on the driver, in order."""
    import pyarrow as pa
    import ray

    with errors():
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows or t.num_columns]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")
