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

from typing import TYPE_CHECKING, Any

from safesample.errors import UsageError
from safesample.executors.base import (EXECUTORS, ExecutorOptions, StageRun, prepare, provenance_of, task_rows,
                                       validate)
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    from safesample.stages import Stage
    from safesample.tables import RunFiles

__all__ = ["EXECUTORS", "ExecutorOptions", "StageRun", "prepare", "provenance_of", "run_stage", "task_rows",
           "validate"]


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
