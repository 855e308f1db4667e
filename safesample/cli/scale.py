"""`--executor`, `--ray-address`, `--concurrency` for label, embed and judge, and the Ray runs.

The local executor needs nothing here: the command reads the whole table and calls its stage.
With `--executor ray` label and embed read the input as a Ray dataset (Parquet files and shard
folders are read by the workers), run the same stage function on batches, and write the result
(shards written by the workers for `-o DIR/`, else gathered here into one file or stream).
Judge runs its per-row work on batches and its summary, comparison and gates here over all
rows. Generation with vLLM on a GPU cluster goes through `ray.data.llm` with the stage itself
running here (it writes the prompts and uses the cache exactly as locally).
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from safesample import console
from safesample.console import CONSOLE
from safesample.errors import UsageError
from safesample.executors import ExecutorOptions, validate

if TYPE_CHECKING:
    import pyarrow as pa

Executor = Annotated[str, typer.Option("--executor", help="Where the per-row work runs: local (this "
                                       "process) or ray (Ray Data over a cluster, vLLM on its GPUs).")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Ray cluster to use, e.g. ray://head:10001 [default: $RAY_ADDRESS, else a local "
    "Ray started for the run].", show_default=False)]
Concurrency = Annotated[Optional[int], typer.Option(
    "--concurrency", min=1, help="Ray workers per stage (each loads the model once) [default: one per "
    "CPU; vLLM: one per GPU].", show_default=False)]


def options(executor: str, address: str | None, concurrency: int | None, batch_size: int,
            quiet: bool = False, verbose: bool = False) -> ExecutorOptions:
    ex = ExecutorOptions(kind=executor, address=address, concurrency=concurrency, batch_size=batch_size,
                         quiet=quiet, verbose=verbose)
    validate(ex)
    return ex


def _connect(ex: ExecutorOptions) -> None:
    from safesample.executors import ray as rayx

    seconds = rayx.connect(ex, CONSOLE)
    if seconds:
        console.debug(f"ray started in {seconds:.1f} s")


def _history(source: str, schema: "pa.Schema") -> list[dict[str, Any]]:
    """The input's provenance: a shard folder's manifest, else the file's schema metadata."""
    from pathlib import Path

    from safesample import shards
    from safesample.tables import PROVENANCE_KEY

    if source != "-" and Path(source).is_dir():
        manifest = shards.read_manifest(Path(source)) or {}
        if manifest.get("provenance"):
            return list(manifest["provenance"])
    raw = (schema.metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else []


def _args(opts: Any, limit: int | None, ex: ExecutorOptions) -> dict[str, Any]:
    args = {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("template", "gold")}
    return {**args, "limit": limit, **ex.provenance()}


def run_batches(command: str, fn: Callable[..., Any], opts: Any, source: str, output: str, ex: ExecutorOptions,
                *, limit: int | None, seed: int | None, models: dict[str, str],
                check: Callable[["pa.Table"], None]) -> None:
    """Label or embed on Ray: read, `check` the (empty) table of the input's schema, map `fn`
    (in actors that keep `models` loaded; in plain tasks when there are none, as for rules)
    over tasks, write shards from the workers (`-o DIR/`) or one file / stream from here."""
    from safesample import shards
    from safesample.cli.common import argv, load
    from safesample.executors import ray as rayx
    from safesample.cli.common import check_output, files
    from safesample.tables import PROVENANCE_KEY, provenance_entry, write_table

    check_output(output)
    _connect(ex)
    job = rayx.read(source, limit=limit, load_local=load, ex=ex, run=files())
    check(job.schema.empty_table())
    entry = provenance_entry(command, _args(opts, limit, ex), seed=seed, models=models, inputs=[source],
                             argv=argv())
    history = _history(source, job.schema) + [entry]
    metadata = {PROVENANCE_KEY: json.dumps(history).encode()}
    if shards.is_dir_output(output):
        folder = rayx.begin_dir(output, run=files())
        out = rayx.map_stage(job.dataset, fn, opts, ex, tasks=job.tasks, metadata=metadata, dest=folder,
                             stateless=not models)
        manifest = rayx.finish_dir(out, folder, history)
        console.info(f"wrote {manifest['rows']} rows in {len(manifest['files'])} shards to {output}")
        return
    table = rayx.collect(rayx.map_stage(job.dataset, fn, opts, ex, tasks=job.tasks, metadata=metadata,
                                        stateless=not models))
    write_table(table, output, run=files())
    console.info(f"wrote {table.num_rows} rows x {table.num_columns} columns to "
                 f"{'stdout' if output == '-' else output}")


def label(source: str, output: str, opts: Any, ex: ExecutorOptions, *, limit: int | None, seed: int,
          report: Any = None) -> None:
    from safesample import label as stage

    if opts.gold or report is not None:
        raise UsageError("--gold and --report are not available with --executor ray yet", "run it with --executor local")
    _connect(ex)
    from safesample.executors import ray as rayx

    generates = opts.generate or opts.judge != "rules"
    if generates and rayx.wants_vllm(opts.engine):
        # vLLM on the cluster's GPUs: the stage runs here, its generation goes to ray.data.llm.
        from safesample.cli.common import load, save

        table = load(source, limit)
        stage.plan(table, opts)
        result = stage.label_table(table, opts, reporter=CONSOLE, load_engine=rayx.vllm_loader(ex))
        save(result.table, output, stage.COMMAND, _args(opts, limit, ex), seed=seed, models=result.models,
             inputs=[source])
        CONSOLE.info(stage.summary(result.stats))
        return
    models = {k: v for k, v in (("generate", opts.generate),
                                ("judge", stage.judge_model(opts) if opts.judge != "rules" else None)) if v}

    def check(empty: "pa.Table") -> None:
        stage.validate(empty, opts)
        stage.check_models(opts)

    run_batches(stage.COMMAND, stage.label_table, opts, source, output, ex, limit=limit, seed=seed,
                models=models, check=check)


def embed(source: str, output: str, options: Any, ex: ExecutorOptions, *, limit: int | None) -> None:
    from safesample import embed as stage
    from safesample.backends.embedding import resolve_model
    from safesample.texts import texts_of

    stage.validate(options)
    model = resolve_model(options.model)
    run_batches("embed", stage.embed_table, options, source, output, ex, limit=limit, seed=None,
                models={"embedding": model.name}, check=lambda empty: texts_of(empty, options.spec))


def judge(table: "pa.Table", opts: Any, ex: ExecutorOptions, *, base: "pa.Table | None") -> Any:
    """Judge on Ray: per-row work on batches (or generation through ray.data.llm), then the
    summary, comparison and gates here over every row."""
    from safesample import judge as stage
    from safesample.executors import ray as rayx

    _connect(ex)
    if opts.model and rayx.wants_vllm(opts.engine):
        return stage.judge_table(table, opts, base=base, reporter=CONSOLE, load_engine=rayx.vllm_loader(ex))
    stage.plan(table.schema.empty_table(), opts, base)
    per_batch = dataclasses.replace(opts, compare=None, fail_under=[], fail_over=[], gold=None)
    judged = rayx.run_table(table, stage.judge_table, per_batch, ex)
    if judged.num_rows != table.num_rows:
        raise RuntimeError(f"the Ray job returned {judged.num_rows} rows for {table.num_rows}")
    return stage.finish(table, judged, opts, base=base)
