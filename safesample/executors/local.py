"""The local executor: a registered stage's table function over the whole input in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safesample.executors.base import ExecutorOptions, StageRun, prepare, provenance_of
from safesample.reporter import Reporter

if TYPE_CHECKING:
    from safesample.stages import Stage
    from safesample.tables import RunFiles


def run(stage: "Stage", options: Any, *, source: str, output: str, ex: ExecutorOptions, limit: int | None,
        seed: int | None, argv: list[str] | None, inputs: list[str], run: "RunFiles | None",
        reporter: Reporter, context: dict[str, Any]) -> StageRun:
    """Read `source`, run the stage on it, write `output` with the stage's provenance."""
    from safesample.tables import check_output, claim_source, load_table, provenance_entry, write_table

    claim_source(source, run)  # first: an output that would replace an input is refused before any work
    check_output(output, run=run)
    table = load_table(source, limit, run)
    options = prepare(stage, table, options, reporter)
    result = stage.function(stage.run)(table, options, reporter=reporter, **context)
    args, models = provenance_of(stage, options)
    entry = provenance_entry(stage.name, {**args, "limit": limit, **ex.provenance()}, seed=seed,
                             models=models, inputs=inputs, argv=argv)
    write_table(result.table, output, provenance=entry, run=run)
    reporter.info(f"wrote {result.table.num_rows} rows x {result.table.num_columns} columns to "
                  f"{'stdout' if output == '-' else output}")
    return StageRun(result, result.table.num_rows, output)
