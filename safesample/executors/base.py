"""What both executors share: their options, how a Ray task is sized, and the stage hooks they
call (`prepare`, `provenance`) by the names a stage's registry entry gives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safesample.errors import UsageError
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    from safesample.stages import Stage

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
    """The stage's `prepare` step (validation against the input, automatic choices resolved);
    a note when the input already has columns the stage writes."""
    note = stage.overwrite_note(getattr(table, "column_names", ()))
    if note:
        reporter.info(note)
    if stage.prepare is None:
        return options
    return stage.function(stage.prepare)(table, options, reporter=reporter)


def provenance_of(stage: "Stage", options: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The arguments and models the stage's output records."""
    return stage.function(stage.provenance)(options)
