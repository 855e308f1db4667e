"""Where a per-row stage runs: `local` (the whole table in this process) or `ray` (Ray Data
`map_batches` over a cluster, `ray.data.llm` for vLLM generation on GPUs).

`run_stage(stage, options, ...)` reads the input, runs the stage from its registry entry
(`safesample.stages`), and writes the output with the stage's provenance, whichever executor:
both call the same `<stage>_table(table, options, *, reporter, ...)`, locally on the whole table,
on Ray on each task. The executors never import a stage module by name (they sit below the
stages): the registry entry names its functions, imported when a run needs them.

What an executor asks of a registered stage's module, beyond its table function:
- `provenance(options) -> (args, models)`: what the output records (the same on both);
- optionally (named in the entry) `prepare(table, options, *, reporter) -> options`: validate
  against the input (an empty table of its schema on Ray) and resolve every automatic choice
  (a backend, a template, a column), so every worker does the same and the provenance says what
  was done; `batch_options`/`finish` for a whole-table step; `generates(options)` when it may
  generate text (vLLM on a GPU cluster).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safesample.errors import UsageError
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    from safesample.stages import Stage
    from safesample.tables import RunFiles

EXECUTORS = ("local", "ray")
# Rows per Ray task, sized from the data: about this many tasks per worker (enough to even out
# a slow worker, few enough that each task's fixed cost, tens of ms for the rules' regexes,
# vanishes), within [--batch-size, RAY_MAX_TASK_ROWS].
RAY_TASKS_PER_WORKER = 3
RAY_MAX_TASK_ROWS = 65_536


def task_rows(rows: int, workers: int, batch_size: int = 1) -> int:
    """Rows per Ray task for `rows` rows over `workers` workers."""
    per_task = -(-max(rows, 1) // max(1, workers * RAY_TASKS_PER_WORKER))
    return max(1, batch_size, min(RAY_MAX_TASK_ROWS, per_task))


@dataclass
class ExecutorOptions:
    kind: str = "local"
    address: str | None = None  # Ray: None = $RAY_ADDRESS, else a local Ray started for the run
    concurrency: int | None = None  # Ray: workers (actors) per stage; None = one per CPU
    batch_size: int = 16  # the stage's model batch (a Ray task holds many: see task_rows)
    quiet: bool = False  # Ray's own logs and progress bars off (they go to stderr otherwise)
    verbose: bool = False
    task_rows: int | None = None  # Ray: rows per task, set when the run is planned

    @property
    def resolved_address(self) -> str | None:
        return self.address or os.environ.get("RAY_ADDRESS") or None

    def provenance(self) -> dict:
        """What the output's provenance records about where the work ran."""
        if self.kind == "local":
            return {"executor": "local"}
        return {"executor": "ray", "ray_address": self.resolved_address or "local (started for the run)",
                "concurrency": self.concurrency, "ray_task_rows": self.task_rows}


def validate(opts: ExecutorOptions) -> None:
    if opts.kind not in EXECUTORS:
        raise UsageError(f"unknown executor {opts.kind!r}", "use local or ray")
    if opts.concurrency is not None and opts.concurrency < 1:
        raise UsageError("--concurrency must be at least 1", "pass the number of Ray workers")
    if opts.kind == "local" and (opts.address or opts.concurrency):
        raise UsageError("--ray-address and --concurrency apply to --executor ray",
                         "add --executor ray, or drop them")
    if opts.kind == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise UsageError("--executor ray needs Ray, which is not installed",
                             "pip install 'safesample[ray]' (ray[data]); on GPU clusters also ray[llm]")


@dataclass
class StageRun:
    """What a run of a stage gives its caller: the stage's result (None when the rows were written
    by Ray workers and never gathered), the rows written, and where."""

    result: Any
    rows: int
    output: str


def prepare(stage: "Stage", table: Any, options: Any, reporter: Reporter = SILENT) -> Any:
    """The stage's `prepare` step (validation against the input, automatic choices resolved)."""
    if stage.prepare is None:
        return options
    return stage.function(stage.prepare)(table, options, reporter=reporter)


def provenance_of(stage: "Stage", options: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The arguments and models the stage's output records."""
    return stage.function(stage.provenance)(options)


def run_stage(stage: "Stage", options: Any, *, source: str, output: str, ex: ExecutorOptions,
              limit: int | None = None, seed: int | None = None, argv: list[str] | None = None,
              inputs: list[str] | None = None, run: "RunFiles | None" = None, reporter: Reporter = SILENT,
              context: dict[str, Any] | None = None) -> StageRun:
    """Run a per-row stage over `source` and write `output` on the executor `ex` names.

    `context`: keyword arguments of the stage function that are not options (judge's `base`
    table); `inputs`: the input paths the provenance records (default: `source`)."""
    validate(ex)
    kwargs = dict(source=source, output=output, ex=ex, limit=limit, seed=seed, argv=argv,
                  inputs=inputs if inputs is not None else [source], run=run, reporter=reporter,
                  context=dict(context or {}))
    if ex.kind == "ray":
        if not stage.per_row:
            raise UsageError(f"`safesample {stage.name}` needs the whole table at once and runs in one process",
                             "drop --executor ray")
        from safesample.executors import ray as rayx

        return rayx.run(stage, options, **kwargs)
    from safesample.executors import local

    return local.run(stage, options, **kwargs)
