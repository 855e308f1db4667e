"""The Ray executor: a stage's per-row work as Ray Data `map_batches`, or vLLM on GPUs through
`ray.data.llm`.

- CPU work (rules labelling, embeddings, transformers generation, guard and reward models on CPU)
  runs in `StageActor`s: each worker loads its models once (`ModelPool`) and calls the stage
  function, the same `<stage>_table` the local executor calls, on each batch.
- GPU generation goes through `RayLLMEngine`, an engine whose `generate()` sends the prompts to a
  `ray.data.llm` vLLM processor. The stage itself (on the driver) writes the prompts (chat
  template, Alpaca template), looks them up in the cache, and asks the engine only for what is
  missing, so templates, greedy decoding, max tokens and the cache mean what they mean locally;
  a LoRA adapter (a `finetune` output folder) is named per row as vLLM's LoRA model.
- Order: `preserve_order` is on, so rows come back in input order, as locally.
- Errors: a `SafesampleError` raised in a worker comes back as the same class, message and hint
  (`StageFailure` carries them across, `errors()` rebuilds them); a worker that dies is restarted
  and its batch retried by Ray.
- Ray's logs and progress bars go to stderr (stdout carries data), off with `-q`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from safesample import errors as errors_module
from safesample.errors import ModelError, SafesampleError, UsageError
from safesample.executors import ExecutorOptions
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from safesample.tables import RunFiles

# Environment the workers need to behave like this process (cache folder, offline hub).
_ENV_PREFIXES = ("SAFESAMPLE_", "HF_", "TRANSFORMERS_", "XDG_CACHE_HOME", "OMP_NUM_THREADS")
_started_here = False


# --------------------------------------------------------------------------------------------
# the cluster


def connect(ex: ExecutorOptions, reporter: Reporter = SILENT) -> float:
    """Join `ex.address` (else $RAY_ADDRESS, else start a local Ray); returns the seconds it took.

    Reuses a Ray already initialised in this process (tests share one per session). A local Ray,
    and a driver joining one at a loopback address, bind to 127.0.0.1 only (see `loopback`).
    """
    global _started_here

    _quiet_ray(ex)
    address = ex.resolved_address
    if not address or is_loopback(address):
        loopback()
    import ray

    if ray.is_initialized():
        _configure_data(ex)
        return 0.0
    start = time.monotonic()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not ex.quiet,
                              "logging_level": logging.INFO if ex.verbose else
                              logging.ERROR if ex.quiet else logging.WARNING}
    try:
        if address:
            # No job-wide runtime_env: with one, Ray starts the workers through its runtime env
            # agent (a plain actor took 1.6-1.8 s to start here, 0.3-1.6 s without). The stage
            # workers set worker_env() themselves, the vLLM processor gets it in its config.
            ray.init(address=address, **kwargs)
        else:
            ray.init(_node_ip_address=LOOPBACK, **kwargs)
            _started_here = True
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot connect to Ray at {address or 'a new local instance'}: "
                         f"{str(exc).splitlines()[0][:200]}",
                         "check --ray-address (e.g. ray://head:10001) or RAY_ADDRESS, and that the "
                         "cluster runs the same Ray version") from exc
    _configure_data(ex)
    seconds = time.monotonic() - start
    reporter.debug(f"ray: connected to {address or 'a local instance'} in {seconds:.1f} s "
                   f"({ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)")
    return seconds


LOOPBACK = "127.0.0.1"


def is_loopback(address: str) -> bool:
    host = re.sub(r"^[a-z]+://", "", address).rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def loopback() -> None:
    """Make Ray in this process (and the processes it starts) use 127.0.0.1 as the node address.

    `ray.init(_node_ip_address="127.0.0.1")` alone is not enough: Ray replaces a loopback
    address by the machine's routable one (so other nodes could reach it) unless "clusters" are
    disabled, which is read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is imported. With it,
    the GCS, raylet and workers listen on 127.0.0.1 and every connection stays on loopback
    (checked with `ss -tnp`). Call it before `ray.init` of a local instance (`start_local`)."""
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray was imported before: the flag was read already
        constants.ENABLE_RAY_CLUSTER = False


def start_local(num_cpus: int | None = None, **kwargs: Any) -> str:
    """Start a local Ray bound to loopback (benchmarks, tests); returns its address."""
    loopback()
    import ray

    ray.init(num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False, **kwargs)
    return ray.get_runtime_context().gcs_address


def shutdown() -> None:
    """Stop the local Ray this process started (not one it joined or a test's)."""
    global _started_here
    if _started_here:
        import ray

        ray.shutdown()
        _started_here = False


def _quiet_ray(ex: ExecutorOptions) -> None:
    import warnings

    # Ray Data warns (on stderr) when a small input has fewer blocks than workers: not news.
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    level = logging.INFO if ex.verbose else logging.ERROR if ex.quiet else logging.WARNING
    for name in ("ray", "ray.data", "ray.llm"):
        logging.getLogger(name).setLevel(level)
    # Ray Data sets its loggers' levels again when a job starts, from this variable.
    os.environ["RAY_DATA_LOG_LEVEL"] = logging.getLevelName(level)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def _configure_data(ex: ExecutorOptions) -> None:
    import sys

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in input order, as locally
    # Bars on a terminal only (on stderr), never with -q: in a log they are carriage-return noise.
    ctx.enable_progress_bars = not ex.quiet and sys.stderr.isatty()
    ctx.print_on_execution_start = ex.verbose
    ctx.enable_operator_progress_bars = ctx.enable_progress_bars


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def _cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


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
# the stage on batches


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
    """Loaders for a worker that call the real loader once per distinct model and keep the result
    for every later batch (closed when the worker ends)."""

    LOADERS = {"load_engine": ("safesample.backends.generation", "load_engine"),
               "load_encoder": ("safesample.backends.embedding", "load_encoder"),
               "load_reward_model": ("safesample.backends.reward", "load_reward_model")}

    def __init__(self, overrides: dict[str, Callable[..., Any]] | None = None):
        self._loaded: dict[str, Any] = {}
        self._overrides = overrides or {}

    def collaborators(self, fn: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
        params = inspect.signature(fn).parameters
        return {name: self._loader(name) for name in self.LOADERS if name in params}

    def _loader(self, name: str) -> Callable[..., Any]:
        def load(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("reporter", None)
            key = repr((name, args, sorted(kwargs.items())))
            if key not in self._loaded:
                real = self._overrides.get(name)
                if real is None:
                    import importlib

                    module, attr = self.LOADERS[name]
                    real = getattr(importlib.import_module(module), attr)
                self._loaded[key] = real(*args, **kwargs)
            return _Kept(self._loaded[key])
        return load

    def close(self) -> None:
        for model in self._loaded.values():
            close = getattr(model, "close", None)
            if callable(close):
                close()
        self._loaded.clear()


# Columns of the blocks the driver hands the workers: the task's index (its shard's name), and
# for Parquet inputs the file slices it reads (JSON: [[path, first row, rows], ...]).
_TASK = "__safesample_task__"
_SLICES = "__safesample_slices__"
# Thread pools of the model libraries in a worker: sized to the CPUs it reserves, so that two
# workers on two cores do not each run a pool as wide as the machine (ONNX Runtime reads
# OMP_NUM_THREADS through safesample.backends.embedding; torch and BLAS read these at import).
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class StageActor:
    """A Ray Data worker: `fn(table, options, reporter=SILENT, **models)` on every task, with
    models loaded once per worker; the output keeps `metadata` (the provenance) on its schema.

    A task is a block of the input rows, or (Parquet inputs) a list of file slices the worker
    reads itself, so the rows never pass through the driver or a read task. With `dest` (a shard
    folder) the worker writes the task's shard `part-TASK.parquet` (atomically: a retried task
    replaces its own file) and returns only its name and row count; else it returns the rows."""

    def __init__(self, fn: Callable[..., Any], options: Any, env: dict[str, str] | None = None,
                 metadata: dict[bytes, bytes] | None = None, dest: str | None = None, threads: int = 1):
        env = dict(env or {})
        for var in _THREAD_VARS:
            env.setdefault(var, env.get("OMP_NUM_THREADS", str(max(1, threads))))
        os.environ.update(env)
        self.fn, self.options, self.metadata, self.dest = fn, options, metadata, dest
        self.pool = ModelPool()

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import pyarrow as pa
        import pyarrow.compute as pc

        tasks = list(dict.fromkeys(batch.column(_TASK).to_pylist()))
        outputs = []
        for task in tasks:  # a block is one task; a bundle of several is handled too
            rows = batch if len(tasks) == 1 else batch.filter(pc.equal(batch.column(_TASK), task))
            if _SLICES in rows.column_names:
                table = read_slices(json.loads(rows.column(_SLICES)[0].as_py()))
            else:
                table = rows.drop_columns([_TASK])
            outputs.append(self._run(int(task), table))
        return pa.concat_tables(outputs) if len(outputs) != 1 else outputs[0]

    def _run(self, task: int, table: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        try:
            out = self.fn(table, self.options, reporter=SILENT, **self.pool.collaborators(self.fn))
            out = getattr(out, "table", out)
            if self.metadata is not None:
                out = out.replace_schema_metadata(self.metadata)
            if self.dest is None:
                return out
            from safesample.tables.atomic import atomic_path
            from safesample.tables.formats import write_parquet

            name = shard_name(task)
            with atomic_path(Path(self.dest) / name, what="-o") as tmp:
                write_parquet(out, tmp)
            return pa.table({_TASK: pa.array([task], pa.int64()), "name": [name], "rows": [out.num_rows]})
        except SafesampleError as exc:
            raise StageFailure(type(exc).__name__, exc.message, exc.hint) from None

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


def shard_name(task: int) -> str:
    return f"part-{task:05d}.parquet"


def read_slices(slices: list[list[Any]]) -> "pa.Table":
    """Rows `[first, first + rows)` of each Parquet file, as one table (only the row groups that
    hold them are read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from safesample.errors import DataError

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
    try:
        return pa.concat_tables(parts) if len(parts) != 1 else parts[0]
    except pa.ArrowInvalid as exc:
        raise DataError(f"the input files do not share one schema: {str(exc).splitlines()[0][:200]}",
                        "pass shards written by one command") from exc


@dataclass
class Input:
    """A planned Ray run: the dataset of tasks, the input's schema, its rows and tasks."""

    dataset: "ray.data.Dataset"
    schema: "pa.Schema"
    rows: int
    tasks: int


def workers(ex: ExecutorOptions) -> int:
    return ex.concurrency or _cpus()


def read(source: str, *, limit: int | None, load_local: Callable[[str, int | None], "pa.Table"],
         ex: ExecutorOptions, run: "RunFiles | None" = None) -> Input:
    """The input as Ray tasks of `task_rows` rows (set on `ex`): Parquet files and shard folders
    as file slices the workers read; anything else (a pipe, CSV, JSON Lines, a table without
    `id`) read here by `load_local` (which gives rows their content-hash ids exactly as the local
    executor does) and handed over in blocks."""
    import pyarrow.parquet as pq
    import ray.data

    from safesample import shards
    from safesample.executors import task_rows
    from safesample.tables import PARQUET_MAGIC

    files: list[Path] = []
    if source != "-":
        if shards.is_sharded(source):
            files = shards.shard_files(source)[0]
        elif Path(source).is_file():
            with open(source, "rb") as fh:
                if fh.read(4) == PARQUET_MAGIC:
                    files = [Path(source)]
    if files:
        schema = pq.read_schema(files[0])
        if "id" in schema.names:
            for f in files:
                if run is not None:
                    run.claim_input(str(f))
            counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
            rows = min(sum(counts), limit) if limit else sum(counts)
            ex.task_rows = task_rows(rows, workers(ex), ex.batch_size)
            tasks = file_tasks([str(f.resolve()) for f in files], counts, rows, ex.task_rows)
            items = [{_TASK: i, _SLICES: json.dumps(t)} for i, t in enumerate(tasks)]
            return Input(ray.data.from_items(items, override_num_blocks=len(items)), schema, rows, len(tasks))
    table = load_local(source, limit)
    ds, tasks = from_table(table, ex)
    return Input(ds, table.schema, table.num_rows, tasks)


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


def from_table(table: "pa.Table", ex: ExecutorOptions) -> tuple["ray.data.Dataset", int]:
    """A table already in memory as a dataset of task-sized blocks (`ex.task_rows` is set), and
    the number of tasks."""
    import pyarrow as pa
    import ray.data

    from safesample.executors import task_rows

    ex.task_rows = step = task_rows(table.num_rows, workers(ex), ex.batch_size)
    blocks = []
    for task, start in enumerate(range(0, max(table.num_rows, 1), step)):
        part = table.slice(start, step)
        blocks.append(part.append_column(_TASK, pa.array([task] * part.num_rows, pa.int64())))
    return ray.data.from_arrow(blocks), len(blocks)


def map_stage(ds: "ray.data.Dataset", fn: Callable[..., Any], options: Any, ex: ExecutorOptions, *,
              tasks: int | None = None, metadata: dict[bytes, bytes] | None = None,
              dest: Path | None = None, stateless: bool = False) -> "ray.data.Dataset":
    """`fn` (a `<stage>_table`) over the dataset's tasks, in `StageActor` workers (no more than
    there are tasks), each reserving its share of the CPUs and running that many threads.

    `stateless` (a stage that loads no model, e.g. rules labelling): plain Ray tasks instead of
    actors, which start sooner (measured: first batch ~1.5 s earlier) as there is nothing to keep."""
    import ray.data

    cpus = _cpus()
    pool = max(1, min(workers(ex), tasks or workers(ex)))
    per_actor = actor_cpus(pool, cpus)
    args = (fn, options, worker_env(), metadata, str(dest) if dest else None, int(per_actor))
    if stateless:
        return ds.map_batches(_run_task, fn_args=(args,), batch_format="pyarrow", batch_size=None,
                              zero_copy_batch=True, concurrency=pool, num_cpus=per_actor)
    return ds.map_batches(StageActor, fn_constructor_args=args, batch_format="pyarrow", batch_size=None,
                          zero_copy_batch=True,
                          # Two tasks in flight per worker: the next one is there when one ends (one
                          # alone left ~0.3 s idle between tasks); more would pin tasks to a busy one.
                          compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=2),
                          num_cpus=per_actor)


def _run_task(batch: "pa.Table", args: tuple[Any, ...]) -> "pa.Table":
    return StageActor(*args)(batch)


def actor_cpus(concurrency: int, cpus: int) -> float:
    """CPUs each worker reserves: an equal share, at most one. The workers read their input and
    write their shards themselves, so no read or write task needs a CPU beside them."""
    import math

    return min(1.0, max(0.01, math.floor(100 * cpus / concurrency) / 100))


def run_table(table: "pa.Table", fn: Callable[..., Any], options: Any, ex: ExecutorOptions, *,
              stateless: bool = False) -> "pa.Table":
    """`fn` over an in-memory table on Ray, the result gathered here in order."""
    if table.num_rows == 0:  # nothing to spread; the stage still gives the output its columns
        out = fn(table, options, reporter=SILENT)
        return getattr(out, "table", out)
    ds, tasks = from_table(table, ex)
    return collect(map_stage(ds, fn, options, ex, tasks=tasks, stateless=stateless))


def collect(ds: "ray.data.Dataset") -> "pa.Table":
    """The whole dataset on the driver, in order."""
    import pyarrow as pa
    import ray

    with errors():
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows or t.num_columns]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def begin_dir(dest: str, run: "RunFiles | None" = None) -> Path:
    """The shard folder the workers will write into (emptied, absolute)."""
    from safesample import shards

    return shards.begin_dir_output(dest, run=run).resolve()


def finish_dir(ds: "ray.data.Dataset", folder: Path, provenance: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the job whose workers write the shards into `folder`, then the manifest (last: a
    failed job leaves a folder that reads as incomplete)."""
    from safesample import shards

    written = collect(ds)
    names = written.column("name").to_pylist() if written.num_rows else []
    return shards.write_manifest(folder, provenance, names)


# --------------------------------------------------------------------------------------------
# GPU generation: ray.data.llm


def wants_vllm(engine: str) -> bool:
    """Generation on the cluster's GPUs through vLLM: asked for, or `auto` with GPUs and vLLM."""
    import importlib.util

    if engine == "vllm":
        return True
    return engine == "auto" and cluster_gpus() > 0 and importlib.util.find_spec("vllm") is not None


def _engine_base():
    from safesample.backends.generation import _EngineBase

    return _EngineBase


class RayLLMEngine(_engine_base()):  # type: ignore[misc]
    """An engine (see `safesample.backends.generation.Engine`) whose `generate()` runs a
    `ray.data.llm` vLLM processor over the prompts, on the cluster's GPUs.

    Prompts arrive already written by the stage (chat or Alpaca template) and are tokenized here
    by the local engines' own code (no added special tokens, cut from the left to leave room for
    the answer); the processor's chat-template and tokenizer stages are off, so nothing is
    written twice. Greedy (temperature 0), `max_tokens` = max new tokens, the LoRA adapter of a
    `finetune` folder named per row. The name is "vllm": the cache is shared with the local vLLM
    engine, whose settings these are.
    """

    name = "vllm"

    def __init__(self, model: str, *, batch_size: int = 16, max_new_tokens: int = 256, dtype: str = "auto",
                 max_model_len: int | None = None, concurrency: int | None = None,
                 build_processor: Callable[..., Any] | None = None, config_class: Callable[..., Any] | None = None,
                 tokenizer: Any = None, engine_options: dict[str, Any] | None = None):
        from safesample.backends.models import load_tokenizer, resolve

        ref = resolve(model)
        tokenizer = tokenizer or load_tokenizer(ref, padding_side="left")
        wanted = {"dtype": self._dtype(dtype), "max_model_len": max_model_len}
        accepted = inspect.signature(super().__init__).parameters
        super().__init__(ref, tokenizer, batch_size, max_new_tokens,
                         **{k: v for k, v in wanted.items() if k in accepted})
        self.requested_dtype, self.requested_len = wanted["dtype"], max_model_len
        self.concurrency, self.engine_options = concurrency, dict(engine_options or {})
        self._build_processor, self._config_class = build_processor, config_class

    @staticmethod
    def _dtype(dtype: str) -> str:
        try:
            from safesample.backends.models import resolve_dtype
        except ImportError:
            return dtype
        return resolve_dtype(dtype, "cuda")

    def processor_config(self) -> dict[str, Any]:
        """What the vLLM processor is built with (a dict, so a test can read it)."""
        engine_kwargs: dict[str, Any] = {"dtype": self.requested_dtype, "seed": 0, **self.engine_options}
        if self.requested_len:
            engine_kwargs["max_model_len"] = self.requested_len
        tokenizer = self.ref.path
        if self.ref.adapter:
            engine_kwargs["enable_lora"] = True
            if Path(self.ref.adapter, "tokenizer_config.json").exists():
                tokenizer = self.ref.adapter
        engine_kwargs["tokenizer"] = tokenizer
        model = os.path.join(self.ref.path, self.ref.gguf_file) if self.ref.gguf_file else self.ref.path
        return {"model_source": model, "engine_kwargs": engine_kwargs, "batch_size": self.batch_size,
                "concurrency": self.concurrency or max(1, int(cluster_gpus())), "accelerator_type": None,
                "runtime_env": {"env_vars": worker_env()},
                "chat_template_stage": False, "tokenize_stage": False, "detokenize_stage": True}

    def generate(self, prompts: list[str], max_new_tokens: int | None = None, progress=None) -> list[str]:
        import ray.data

        if not prompts:
            return []
        new_tokens = max_new_tokens or self.max_new_tokens
        ids = self._encode(prompts, new_tokens)
        lora = self.ref.adapter

        def preprocess(row: dict[str, Any]) -> dict[str, Any]:
            out = {"row": row["row"], "tokenized_prompt": list(row["ids"]),
                   "sampling_params": {"temperature": 0.0, "max_tokens": new_tokens, "detokenize": True,
                                       "skip_special_tokens": True}}
            if lora:
                out["model"] = lora
            return out

        def postprocess(row: dict[str, Any]) -> dict[str, Any]:
            return {"row": row["row"], "text": row["generated_text"]}

        build, config_class = self._build_processor, self._config_class
        if build is None or config_class is None:
            try:
                from ray.data.llm import build_processor as build, vLLMEngineProcessorConfig as config_class
            except ImportError as exc:
                raise ModelError("GPU generation on Ray needs ray[llm] and vllm on the cluster",
                                 "pip install 'ray[llm]==2.60.0' 'safesample[vllm]' on every node, or "
                                 "pass --engine transformers") from exc
        config = {k: v for k, v in self.processor_config().items() if v is not None}
        processor = build(config_class(**config), preprocess=preprocess, postprocess=postprocess)
        ds = ray.data.from_items([{"row": i, "ids": seq} for i, seq in enumerate(ids)])
        with errors():
            rows = processor(ds).take_all()
        texts: list[str | None] = [None] * len(ids)
        for row in rows:
            texts[int(row["row"])] = row["text"]
        missing = sum(t is None for t in texts)
        if missing:
            raise ModelError(f"the vLLM processor returned no text for {missing} of {len(ids)} prompts",
                             "see the Ray logs (rerun with -v)")
        if progress:
            progress(len(ids))
        return [t or "" for t in texts]

    def close(self) -> None:
        pass

    def __enter__(self) -> "RayLLMEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def vllm_loader(ex: ExecutorOptions, **engine_kwargs: Any) -> Callable[..., RayLLMEngine]:
    """A `load_engine` for the stages that starts `RayLLMEngine`s (same arguments as
    `safesample.backends.generation.load_engine`)."""

    def load(model: str, engine: str = "auto", batch_size: int = 16, max_new_tokens: int = 256,
             dtype: str = "auto", reporter: Reporter = SILENT, max_model_len: int | None = None,
             tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
             enforce_eager: bool = False, **_: Any) -> RayLLMEngine:
        options = {"tensor_parallel_size": tensor_parallel_size, "enforce_eager": enforce_eager}
        if gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        return RayLLMEngine(model, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype,
                            max_model_len=max_model_len, concurrency=ex.concurrency,
                            engine_options=options, **engine_kwargs)

    return load


