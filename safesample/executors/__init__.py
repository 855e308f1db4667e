"""Where a stage's per-row work runs: `local` (the whole table in this process) or `ray` (Ray
Data `map_batches` over a cluster, `ray.data.llm` for vLLM generation on GPUs).

Both call the same `<stage>_table(table, options, *, reporter, ...)` functions the CLI calls: the
local executor on the whole table, the Ray executor on each batch. The executors never import a
stage (they sit below the stages): the caller hands the stage function in, and Ray ships it to
the workers by reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from safesample.errors import UsageError

EXECUTORS = ("local", "ray")
# Rows per Ray batch = this many model batches (`--batch-size`): a batch is one Ray task, so it
# must be long enough (tens of ms at least) for the scheduling overhead to vanish.
RAY_BATCHES_PER_TASK = 64


@dataclass
class ExecutorOptions:
    kind: str = "local"
    address: str | None = None  # Ray: None = $RAY_ADDRESS, else a local Ray started for the run
    concurrency: int | None = None  # Ray: workers (actors) per stage; None = one per CPU
    batch_size: int = 16  # the stage's model batch; a Ray batch holds RAY_BATCHES_PER_TASK of them
    quiet: bool = False  # Ray's own logs and progress bars off (they go to stderr otherwise)
    verbose: bool = False

    @property
    def batch_rows(self) -> int:
        return self.batch_size * RAY_BATCHES_PER_TASK

    @property
    def resolved_address(self) -> str | None:
        return self.address or os.environ.get("RAY_ADDRESS") or None

    def provenance(self) -> dict:
        """What the output's provenance records about where the work ran."""
        if self.kind == "local":
            return {"executor": "local"}
        return {"executor": "ray", "ray_address": self.resolved_address or "local (started for the run)",
                "concurrency": self.concurrency, "ray_batch_rows": self.batch_rows}


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
