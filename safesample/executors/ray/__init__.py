"""The Ray executor: a registered per-row stage as Ray Data `map_batches` over a cluster, or
vLLM on its GPUs through `ray.data.llm`.

`run(stage, ...)` is the whole run from the stage's registry entry (`safesample.stages`):
- the input is cut into tasks (`io`): Parquet files and shard folders as file slices the
  workers read themselves, anything else read here and handed over in blocks;
- the workers (`actors`) run the stage's table function on each task with its models loaded
  once per worker (the entry's `loaders`), in input order (`preserve_order`);
- `-o DIR/`: each worker stages its own shard (`safesample.tables.shards.ShardOutput`); a rerun of the
  same command skips the tasks whose shards an interrupted run finished, and only the finished
  run makes the shards the folder's content, manifest last;
- a stage with a whole-table step (the entry's `finish`: judge's summary and gates) gets every
  row back here and finishes over all of them;
- generation on the cluster's GPUs (`llm`): the stage runs here, its engine sends prompts to a
  vLLM processor.
The output's provenance is the local run's, plus the executor's fields.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Callable

from safesample.executors.base import ExecutorOptions, StageRun, prepare, provenance_of
from safesample.executors.ray.actors import map_stage
from safesample.executors.ray.failures import errors
from safesample.executors.ray.cluster import connect, is_loopback, loopback, shutdown, start_local
from safesample.executors.ray.io import collect, from_table, make_tasks, open_input
from safesample.executors.ray.llm import RayLLMEngine, vllm_loader, wants_vllm
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.stages import Stage
    from safesample.tables import RunFiles

__all__ = ["RayLLMEngine", "connect", "errors", "is_loopback", "loopback", "run", "run_table", "shutdown",
           "start_local", "vllm_loader", "wants_vllm"]


def run(stage: "Stage", options: Any, *, source: str, output: str, ex: ExecutorOptions, limit: int | None,
        seed: int | None, argv: list[str] | None, inputs: list[str], run: "RunFiles | None",
        reporter: Reporter, context: dict[str, Any]) -> StageRun:
    """`stage` over `source` on Ray, written to `output` (a file, `-`, or a shard folder)."""
    from safesample.tables import shards
    from safesample.executors.local import run as run_local
    from safesample.tables import PROVENANCE_KEY, check_output, claim_source, load_table, provenance_entry, write_table

    claim_source(source, run)  # first: an output that would replace an input is refused before any work
    check_output(output, run=run)
    seconds = connect(ex, reporter)
    if seconds:
        reporter.debug(f"ray started in {seconds:.1f} s")
    lib = stage.library()
    if stage.generates is not None and getattr(lib, stage.generates)(options) and wants_vllm(options.engine):
        # vLLM on the cluster's GPUs: the stage runs here, its generation goes to ray.data.llm.
        return run_local(stage, options, source=source, output=output, ex=ex, limit=limit, seed=seed,
                         argv=argv, inputs=inputs, run=run, reporter=reporter,
                         context={**context, "load_engine": vllm_loader(ex)})
    job = open_input(source, limit=limit, load=lambda s, n: load_table(s, n, run), run=run,
                     on_driver=stage.finish is not None)
    options = prepare(stage, job.table if job.table is not None else job.schema.empty_table(), options, reporter)
    args, models = provenance_of(stage, options)
    # What makes the work of a task the same on a rerun (where it ran does not).
    fingerprint = hashlib.sha256(json.dumps([stage.name, {**args, "limit": limit}, models], sort_keys=True,
                                            default=str).encode()).hexdigest()
    args = {**args, "limit": limit}
    batch_options = getattr(lib, stage.batch_options)(options) if stage.batch_options else options
    fn = stage.function(stage.run)
    loaders = stage.loaders if models else {}  # no model (rules labelling): plain Ray tasks
    history = _history(source, job)

    def entry() -> dict[str, Any]:  # after planning: `ex` knows the task size then
        return provenance_entry(stage.name, {**args, **ex.provenance()}, seed=seed, models=models,
                                inputs=inputs, argv=argv)

    if shards.is_dir_output(output) and stage.finish is None:
        out = shards.ShardOutput(output, run=run)
        try:
            tasks = make_tasks(job, ex, fingerprint, skip=lambda task, key: out.done(task, key) is not None)
            reused = tasks.count - tasks.todo
            if reused:
                reporter.info(f"resuming: {reused} of {tasks.count} shards were finished by an earlier run")
            record = history + [entry()]
            metadata = {PROVENANCE_KEY: json.dumps(record).encode()}
            collect(map_stage(tasks.dataset, fn, batch_options, ex, tasks=tasks.count, metadata=metadata,
                              staging=out.staging, loaders=loaders, stateless=not loaders))
            manifest = out.finish(range(tasks.count), record)
        finally:
            out.close()
        reporter.info(f"wrote {manifest['rows']} rows in {len(manifest['files'])} shards to {output}")
        return StageRun(None, manifest["rows"], output)
    tasks = make_tasks(job, ex, fingerprint)
    rows = collect(map_stage(tasks.dataset, fn, batch_options, ex, tasks=tasks.count, loaders=loaders,
                             stateless=not loaders))
    result = None
    if stage.finish is not None:
        if rows.num_rows != job.rows:
            raise RuntimeError(f"the Ray job returned {rows.num_rows} rows for {job.rows}")
        result = getattr(lib, stage.finish)(job.table, rows, options, reporter=reporter, **context)
        rows = result.table
    table = rows.replace_schema_metadata({**(rows.schema.metadata or {}),
                                          PROVENANCE_KEY: json.dumps(history).encode()})
    write_table(table, output, provenance=entry(), run=run)
    reporter.info(f"wrote {table.num_rows} rows x {table.num_columns} columns to "
                  f"{'stdout' if output == '-' else output}")
    return StageRun(result, table.num_rows, output)


def _history(source: str, job) -> list[dict[str, Any]]:
    """The input's provenance: a shard folder's manifest, else its schema metadata."""
    from pathlib import Path

    from safesample.tables import shards
    from safesample.tables import PROVENANCE_KEY

    if source != "-" and Path(source).is_dir():
        manifest = shards.read_manifest(Path(source)) or {}
        if manifest.get("provenance"):
            return list(manifest["provenance"])
    raw = (job.schema.metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else []


def run_table(table: "pa.Table", fn: Callable[..., Any], options: Any, ex: ExecutorOptions, *,
              loaders: dict[str, str] | None = None, stateless: bool = False) -> "pa.Table":
    """`fn` (a stage's table function) over an in-memory table on Ray, the rows gathered here in
    order (no output is written)."""
    if table.num_rows == 0:  # nothing to spread; the stage still gives the output its columns
        return fn(table, options, reporter=SILENT).table
    ds, keys, _ = from_table(table, ex)
    return collect(map_stage(ds, fn, options, ex, tasks=len(keys), loaders=loaders, stateless=stateless))
