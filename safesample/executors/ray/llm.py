"""GPU generation on a Ray cluster: an engine whose `generate()` sends the prompts to a
`ray.data.llm` vLLM processor.

The stage itself runs on the driver: it writes the prompts (chat template, Alpaca template),
looks them up in the cache, and asks this engine only for what is missing, so templates, greedy
decoding, max tokens and the cache mean what they mean locally; a LoRA adapter (a `finetune`
output folder) is named per row as vLLM's LoRA model.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from safesample.backends.generation import EngineBase
from safesample.errors import ModelError
from safesample.executors.base import ExecutorOptions
from safesample.executors.ray.failures import errors
from safesample.executors.ray.cluster import cluster_gpus, worker_env
from safesample.reporter import SILENT, Reporter


def wants_vllm(engine: str) -> bool:
    """Generation on the cluster's GPUs through vLLM: asked for, or `auto` with GPUs and vLLM."""
    import importlib.util

    if engine == "vllm":
        return True
    return engine == "auto" and cluster_gpus() > 0 and importlib.util.find_spec("vllm") is not None


class RayLLMEngine(EngineBase):
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

    def _generate(self, ids: list[list[int]], todo: list[int], new_tokens: int, results: list[str | None],
                  progress) -> None:
        import ray.data

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
        ds = ray.data.from_items([{"row": i, "ids": ids[i]} for i in todo])
        with errors():
            rows = processor(ds).take_all()
        for row in rows:
            results[int(row["row"])] = row["text"]  # None (no text) is counted below, not blanked
        missing = sum(results[i] is None for i in todo)
        if missing:
            raise ModelError(f"the vLLM processor returned no text for {missing} of {len(todo)} prompts",
                             "see the Ray logs (rerun with -v)")
        if progress:
            progress(len(todo))

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


