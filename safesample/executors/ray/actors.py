"""The workers: a stage's table function on Ray Data tasks, its models loaded once per worker.

- `StageActor` runs `fn(table, options, reporter=SILENT, **loaders)` (a registered stage's
  `<stage>_table`) on each task. A task is a block of rows, or (Parquet inputs) file slices the
  worker reads itself, so rows never pass through the driver. With a staging folder the worker
  writes the task's shard there itself and returns only its name and row count.
- `ModelPool` gives the stage function its loaders (the stage's registry entry names them): each
  distinct model is loaded once per worker and kept for its later tasks.
- Errors: a `SafesampleError` raised in a worker is sent back as a `StageFailure` (see
  `failures`); a worker that dies is restarted and its task retried by Ray.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from safesample.errors import SafesampleError
from safesample.executors.base import ExecutorOptions
from safesample.executors.ray.cluster import actor_cpus, cpus, worker_env, workers
from safesample.executors.ray.failures import StageFailure
from safesample.executors.ray.io import KEY, SLICES, TASK, read_slices
from safesample.reporter import SILENT

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

# Thread pools of the model libraries in a worker: sized to the CPUs it reserves, so that two
# workers on two cores do not each run a pool as wide as the machine (ONNX Runtime reads
# OMP_NUM_THREADS through safesample.backends.embedding; torch and BLAS read these at import).
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# --------------------------------------------------------------------------------------------
# models kept per worker


class _Kept:
    """A model object whose close() is a no-op: the worker keeps it for its next batch."""

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Kept":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class ModelPool:
    """A worker's loaders: `loaders` maps a keyword argument of the stage function to the
    "module:function" that loads its model (the stage's registry entry); each distinct model
    (same arguments) is loaded once and kept for every later task, closed when the worker ends."""

    def __init__(self, loaders: dict[str, str] | None = None):
        self._specs = dict(loaders or {})
        self._loaded: dict[str, Any] = {}

    def collaborators(self) -> dict[str, Callable[..., Any]]:
        return {name: self._loader(name) for name in self._specs}

    def _loader(self, name: str) -> Callable[..., Any]:
        def load(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("reporter", None)
            key = repr((name, args, sorted(kwargs.items())))
            if key not in self._loaded:
                module, attr = self._specs[name].split(":")
                self._loaded[key] = getattr(importlib.import_module(module), attr)(*args, **kwargs)
            return _Kept(self._loaded[key])
        return load

    def close(self) -> None:
        for model in self._loaded.values():
            close = getattr(model, "close", None)
            if callable(close):
                close()
        self._loaded.clear()


# --------------------------------------------------------------------------------------------
# the stage on tasks


class StageActor:
    """A Ray Data worker: the stage function on every task, its models loaded once; the output
    keeps `metadata` (the provenance) on its schema. With `staging` (a shard folder's staging
    area) each task's shard is written there by the worker, atomically (a retried task replaces
    its own file), and only its name and row count come back; else the rows come back."""

    def __init__(self, fn: Callable[..., Any], options: Any, env: dict[str, str] | None = None,
                 metadata: dict[bytes, bytes] | None = None, staging: str | None = None, threads: int = 1,
                 loaders: dict[str, str] | None = None):
        env = dict(env or {})
        for var in _THREAD_VARS:
            env.setdefault(var, env.get("OMP_NUM_THREADS", str(max(1, threads))))
        os.environ.update(env)
        self.fn, self.options, self.metadata, self.staging = fn, options, metadata, staging
        self.pool = ModelPool(loaders)

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import pyarrow as pa
        import pyarrow.compute as pc

        tasks = list(dict.fromkeys(batch.column(TASK).to_pylist()))
        outputs = []
        for task in tasks:  # a block is one task; a bundle of several is handled too
            rows = batch if len(tasks) == 1 else batch.filter(pc.equal(batch.column(TASK), task))
            key = rows.column(KEY)[0].as_py() if KEY in rows.column_names else ""
            if SLICES in rows.column_names:
                table = read_slices(json.loads(rows.column(SLICES)[0].as_py()))
            else:
                table = rows.drop_columns([c for c in (TASK, KEY) if c in rows.column_names])
            outputs.append(self._run(int(task), key, table))
        return pa.concat_tables(outputs) if len(outputs) != 1 else outputs[0]

    def _run(self, task: int, key: str, table: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        try:
            out = self.fn(table, self.options, reporter=SILENT, **self.pool.collaborators()).table
            if self.metadata is not None:
                out = out.replace_schema_metadata(self.metadata)
            if self.staging is None:
                return out
            from safesample.tables.shards import write_staged

            record = write_staged(Path(self.staging), task, out, key)
            return pa.table({TASK: pa.array([task], pa.int64()), "name": [record["name"]],
                             "rows": [record["rows"]]})
        except SafesampleError as exc:
            raise StageFailure(type(exc).__name__, exc.message, exc.hint) from None

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


def _run_task(batch: "pa.Table", args: tuple[Any, ...]) -> "pa.Table":
    return StageActor(*args)(batch)


def map_stage(ds: "ray.data.Dataset", fn: Callable[..., Any], options: Any, ex: ExecutorOptions, *,
              tasks: int | None = None, metadata: dict[bytes, bytes] | None = None,
              staging: Path | None = None, loaders: dict[str, str] | None = None,
              stateless: bool = False) -> "ray.data.Dataset":
    """`fn` (a `<stage>_table`) over the dataset's tasks, in `StageActor` workers (no more than
    there are tasks), each reserving its share of the CPUs and running that many threads.

    `stateless` (a stage that loads no model, e.g. rules labelling): plain Ray tasks instead of
    actors, which start sooner (measured: first batch ~1.5 s earlier) as there is nothing to keep."""
    import ray.data

    pool = max(1, min(workers(ex), tasks or workers(ex)))
    per_actor = actor_cpus(pool, cpus())
    args = (fn, options, worker_env(), metadata, str(staging) if staging else None, int(per_actor), loaders)
    if stateless:
        return ds.map_batches(_run_task, fn_args=(args,), batch_format="pyarrow", batch_size=None,
                              zero_copy_batch=True, compute=ray.data.TaskPoolStrategy(size=pool),
                              num_cpus=per_actor)
    return ds.map_batches(StageActor, fn_constructor_args=args, batch_format="pyarrow", batch_size=None,
                          zero_copy_batch=True,
                          # Two tasks in flight per worker: the next one is there when one ends (one
                          # alone left ~0.3 s idle between tasks); more would pin tasks to a busy one.
                          compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=2),
                          num_cpus=per_actor)
