"""The workers: a stage's table function on Ray Data tasks, its models loaded once per worker.

- `StageActor` runs `fn(table, options, reporter=SILENT, **loaders)` (a registered stage's
  `<stage>_table`) on each task. A task is a block of rows, or (Parquet inputs) file slices the
  worker reads itself, so rows never pass through the driver. With a staging folder the worker
  writes the task's shard there itself and returns only its name and row count.
- `ModelPool` gives the stage function its loaders (the stage's registry entry names them): each
  distinct model is loaded once per worker and kept for its later tasks.
- Errors: a `SafesampleError` raised in a worker comes back as the same class, message and hint
  (`StageFailure` carries them across the process boundary, `errors()` rebuilds them); a worker
  that dies is restarted and its task retried by Ray.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from safesample import errors as errors_module
from safesample.errors import SafesampleError
from safesample.executors import ExecutorOptions
from safesample.executors.ray.cluster import actor_cpus, cpus, worker_env, workers
from safesample.reporter import SILENT

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

# Columns of the blocks the driver hands the workers: the task's index (its shard's name), the
# key of its work (a staged shard made by the same work is reused on a rerun), and for Parquet
# inputs the file slices it reads (JSON: [[path, first row, rows], ...]).
TASK = "__safesample_task__"
KEY = "__safesample_key__"
SLICES = "__safesample_slices__"
# Thread pools of the model libraries in a worker: sized to the CPUs it reserves, so that two
# workers on two cores do not each run a pool as wide as the machine (ONNX Runtime reads
# OMP_NUM_THREADS through safesample.backends.embedding; torch and BLAS read these at import).
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# --------------------------------------------------------------------------------------------
# errors


_MARK = "<<safesample-stage-failure>>"


class StageFailure(Exception):
    """A SafesampleError raised in a worker, in a form that survives pickling (the original's
    `args` hold the message only, so its hint would be lost)."""

    def __init__(self, kind: str, message: str, hint: str | None):
        super().__init__(kind, message, hint)
        self.kind, self.message, self.hint = kind, message, hint

    def __str__(self) -> str:
        # Ray wraps a worker's exception (UserCodeException) and the chain back to this one does
        # not always survive; its text does, inside the wrapper's traceback, so carry it there.
        payload = json.dumps({"kind": self.kind, "message": self.message, "hint": self.hint})
        return f"{_MARK}{payload}{_MARK}"

    @classmethod
    def parse(cls, text: str) -> "StageFailure | None":
        match = re.search(re.escape(_MARK) + r"(\{.*?\})" + re.escape(_MARK), text, re.S)
        if not match:
            return None
        try:
            data = json.loads(match.group(1))
        except ValueError:
            return None
        return cls(data.get("kind", ""), data.get("message", ""), data.get("hint"))

    def rebuild(self) -> SafesampleError:
        cls = getattr(errors_module, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, SafesampleError)):
            cls = SafesampleError
        return cls(self.message, self.hint)


def _find_failure(exc: BaseException) -> StageFailure | SafesampleError | None:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StageFailure):
            return e
        if isinstance(e, SafesampleError):
            return e
        parsed = StageFailure.parse(str(e))
        if parsed is not None:
            return parsed
        for nxt in (getattr(e, "cause", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return None


@contextmanager
def errors() -> Iterator[None]:
    """Turn what a Ray job raises back into the SafesampleError a worker raised."""
    try:
        yield
    except (SafesampleError, KeyboardInterrupt):
        raise
    except Exception as exc:
        found = _find_failure(exc)
        if isinstance(found, StageFailure):
            raise found.rebuild() from None
        if isinstance(found, SafesampleError):
            raise found from None
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise SafesampleError(f"the Ray job failed: {type(exc).__name__}: {first.strip()[:300]}",
                              "rerun with -v for the traceback; the workers' logs are in /tmp/ray/session_latest/"
                              "logs on each node") from exc


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

        from safesample.executors.ray.io import read_slices

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
            from safesample.shards import write_staged

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
