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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from safesample import errors as errors_module
from safesample.errors import ModelError, SafesampleError, UsageError
from safesample.executors import ExecutorOptions
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

# Environment the workers need to behave like this process (cache folder, offline hub).
_ENV_PREFIXES = ("SAFESAMPLE_", "HF_", "TRANSFORMERS_", "XDG_CACHE_HOME", "OMP_NUM_THREADS")
_started_here = False


# --------------------------------------------------------------------------------------------
# the cluster


def connect(ex: ExecutorOptions, reporter: Reporter = SILENT) -> float:
    """Join `ex.address` (else $RAY_ADDRESS, else start a local Ray); returns the seconds it took.

    Reuses a Ray already initialised in this process (tests share one per session).
    """
    global _started_here
    import ray

    _quiet_ray(ex)
    if ray.is_initialized():
        _configure_data(ex)
        return 0.0
    start = time.monotonic()
    address = ex.resolved_address
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not ex.quiet,
                              "logging_level": logging.INFO if ex.verbose else
                              logging.ERROR if ex.quiet else logging.WARNING}
    try:
        if address:
            ray.init(address=address, runtime_env={"env_vars": worker_env()}, **kwargs)
        else:
            ray.init(**kwargs)
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


class StageActor:
    """A Ray Data worker: `fn(batch, options, reporter=SILENT, **models)` on every batch, with
    models loaded once per worker; the output keeps `metadata` (the provenance) on its schema."""

    def __init__(self, fn: Callable[..., Any], options: Any, env: dict[str, str] | None = None,
                 metadata: dict[bytes, bytes] | None = None):
        os.environ.update(env or {})
        self.fn, self.options, self.metadata = fn, options, metadata
        self.pool = ModelPool()

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        try:
            out = self.fn(batch, self.options, reporter=SILENT, **self.pool.collaborators(self.fn))
        except SafesampleError as exc:
            raise StageFailure(type(exc).__name__, exc.message, exc.hint) from None
        table = getattr(out, "table", out)
        if self.metadata is not None:
            table = table.replace_schema_metadata(self.metadata)
        return table

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


def read(source: str, *, limit: int | None, load_local: Callable[[str, int | None], "pa.Table"],
         batch_rows: int = 4096) -> tuple["ray.data.Dataset", "pa.Schema"]:
    """A Ray dataset of the input: Parquet files and shard folders read by the workers; anything
    else (a pipe, CSV, JSON Lines, a table without `id`) read here by `load_local` (which gives
    rows their content-hash ids exactly as the local executor does)."""
    import pyarrow.parquet as pq
    import ray.data

    from safesample import shards
    from safesample.tables import PARQUET_MAGIC, claim_input

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
                claim_input(str(f))
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            rows = min(rows, limit) if limit else rows
            # Enough blocks for every worker to get batches (a small file is one row group).
            blocks = max(len(files), -(-rows // max(1, batch_rows)))
            _preimport_fsspec()
            ds = ray.data.read_parquet([str(f) for f in files], override_num_blocks=blocks)
            return (ds.limit(limit) if limit else ds), schema
    table = load_local(source, limit)
    step = max(1, batch_rows)
    parts = [table.slice(i, step) for i in range(0, table.num_rows, step)] or [table]
    return ray.data.from_arrow(parts), table.schema


def _preimport_fsspec() -> None:
    """Work around a race in Ray Data's path resolution: its threads each try to import fsspec's
    HTTP filesystem and only expect ModuleNotFoundError; without aiohttp (not a dependency),
    two threads importing it at once get "cannot import name 'HTTPFileSystem'" instead (seen
    here about one run in two). When it cannot be imported, mark it so (None in sys.modules
    makes every later import a plain ModuleNotFoundError)."""
    import sys

    try:
        import fsspec.implementations.http  # noqa: F401
    except ImportError:
        sys.modules.setdefault("fsspec.implementations.http", None)  # type: ignore[arg-type]


def map_stage(ds: "ray.data.Dataset", fn: Callable[..., Any], options: Any, ex: ExecutorOptions, *,
              metadata: dict[bytes, bytes] | None = None) -> "ray.data.Dataset":
    """`fn` (a `<stage>_table`) over the dataset's batches, in `StageActor` workers."""
    import ray.data

    cpus = _cpus()
    concurrency = ex.concurrency or cpus
    return ds.map_batches(StageActor, fn_constructor_args=(fn, options, worker_env(), metadata),
                          batch_format="pyarrow", batch_size=ex.batch_rows,
                          compute=ray.data.ActorPoolStrategy(size=concurrency),
                          num_cpus=actor_cpus(concurrency, cpus), zero_copy_batch=True)


def actor_cpus(concurrency: int, cpus: int) -> float:
    """CPUs each worker reserves. Read and write tasks need a whole CPU beside the workers, which
    hold theirs for the whole job: a pool that reserves every CPU waits forever (measured: 2
    workers x 1 CPU on 2 CPUs never start). So the pool shares what the tasks leave."""
    if concurrency <= cpus - 1:
        return 1.0
    return max(0.05, round((cpus - 1) / concurrency, 2)) if cpus > 1 else round(0.5 / concurrency, 2)


def from_table(table: "pa.Table", batch_rows: int) -> "ray.data.Dataset":
    """A table already in memory as a dataset of batch-sized blocks (one block feeds one worker)."""
    import ray.data

    step = max(1, batch_rows)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)] or [table])


def collect(ds: "ray.data.Dataset") -> "pa.Table":
    """The whole dataset on the driver, in order."""
    import pyarrow as pa
    import ray

    with errors():
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows or t.num_columns]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


class _ShardNames:
    """`part-TASK-UUID.parquet`: deterministic per task (a retried task replaces its own file)."""

    def __new__(cls):
        from ray.data.datasource import FilenameProvider

        class ShardNames(FilenameProvider):
            def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
                return f"part-{task_index:06d}-{write_uuid}.parquet"

        return ShardNames(file_format="parquet")


def write_dir(ds: "ray.data.Dataset", dest: str, provenance: list[dict[str, Any]]) -> dict[str, Any]:
    """Shards written by the workers into `dest`, then the manifest (last: a failed job leaves a
    folder that reads as incomplete)."""
    from safesample import shards

    folder = shards.begin_dir_output(dest)
    with errors():
        ds.write_parquet(str(folder), filename_provider=_ShardNames())
    return shards.write_manifest(folder, provenance)


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


