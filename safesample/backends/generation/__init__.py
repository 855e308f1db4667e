"""Batched greedy generation with a causal LM: vLLM on a GPU, transformers anywhere.

Both engines follow one generation contract, so a judge prompt means the same thing on either
engine and greedy outputs agree up to numerics:

- prompts are tokenized by the model's own tokenizer without added special tokens (the chat
  template or the caller writes them into the text), and cut from the left to fit
  `context - max_new_tokens`, where context is `max_model_len` when given, else the model's
  `max_position_embeddings` (the same number for both engines);
- greedy decoding, no repetition penalty (vLLM ignores generation_config once SamplingParams is
  passed; transformers is told 1.0 explicitly), and generation stops at any EOS token: the
  tokenizer's and every `eos_token_id` of generation_config;
- the dtype is resolved before either engine sees it (`auto`: bf16 on a bf16 GPU, fp32
  elsewhere) and is part of the cache key;
- outputs are the generated token ids up to the first EOS, decoded by the same tokenizer call
  (vLLM is asked not to detokenize).

- `TransformersEngine` (transformers_engine.py): `model.generate` over batches, left padding,
  prompts sorted by length so a batch wastes little padding, results put back in input order.
- `VLLMEngine` (vllm_engine.py): `vllm.LLM(...).generate(token prompts, SamplingParams(...))`,
  checked against vLLM 0.32.0's source by tests/test_vllm_contract.py; vLLM is imported there
  only, and only when used.

A prompt an engine cannot run (no tokens; rejected by vLLM's validation) comes back as None with
its reason in `engine.last_errors`, instead of aborting the batch; `cached_generate` reports it
per row. Engines are context managers: `close()` (or leaving the `with` block) releases the
weights (transformers: the model dropped, garbage collected, CUDA cache emptied; vLLM: its engine
shut down too), so a run that switches models holds one at a time. A closed engine loads again
if it is used again.

`cached_generate` keeps outputs in the on-disk cache keyed by (model fingerprint, engine, dtype,
settings, prompt hash), written chunk by chunk, so a rerun or a run after a crash only generates
what is new.

The package: `base` (the `Engine` protocol, `EngineBase`, `EngineSettings`, the model
fingerprint), `transformers_engine`, `vllm_engine`, `cache` (`cached_generate`); here
`load_engine`, which picks the engine, and every public name of those modules.
"""

from __future__ import annotations

from typing import Any, Callable

from safesample.backends.generation.base import (ENGINES, Engine, EngineBase, EngineSettings, engine_settings,
                                                 model_fingerprint)
from safesample.backends.generation.cache import cached_generate
from safesample.backends.generation.transformers_engine import TransformersEngine
from safesample.backends.generation.vllm_engine import (MAX_MODEL_LEN_STEP, VLLM_LORA_RANKS, VLLMEngine,
                                                        vllm_available, vllm_cannot_load, vllm_lora_rank)
from safesample.backends.models import check_offline, quiet_libraries, resolve
from safesample.errors import ModelError, UsageError
from safesample.reporter import SILENT, Reporter

__all__ = ["ENGINES", "MAX_MODEL_LEN_STEP", "VLLM_LORA_RANKS", "Engine", "EngineBase", "EngineSettings",
           "TransformersEngine", "VLLMEngine", "cached_generate", "engine_settings", "load_engine",
           "model_fingerprint", "vllm_available", "vllm_cannot_load", "vllm_lora_rank"]


def load_engine(model: str, engine: str = "auto", batch_size: int = 16, max_new_tokens: int = 256,
                dtype: str = "auto", *, max_model_len: int | None = None, tensor_parallel_size: int = 1,
                gpu_memory_utilization: float | None = None, enforce_eager: bool = False,
                llm_factory: Callable[..., Any] | None = None, params_factory: Callable[..., Any] | None = None,
                lora_factory: Callable[..., Any] | None = None, reporter: Reporter = SILENT) -> "Engine":
    """Resolve `model` and start an engine for it (use it as a context manager, or `close()` it).

    engine="auto" picks vLLM when it is importable, CUDA is available and vLLM can load the
    model (see `vllm_cannot_load`; the reason is logged when it cannot), else transformers.
    Unless `reporter.verbose`, the libraries' own bars and warnings are silenced.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}", "use one of: " + ", ".join(ENGINES))
    settings = EngineSettings(max_model_len, tensor_parallel_size, gpu_memory_utilization, enforce_eager)
    settings.check()
    ref = resolve(model)
    check_offline(ref)  # an uncached hub id fails now, before torch and transformers load
    if engine != "transformers":
        reason = vllm_cannot_load(ref)
        if engine == "vllm" and reason:
            raise ModelError(f"vLLM cannot load {model!r}: {reason}", "use --engine transformers")
        if engine == "auto":
            engine = "vllm" if (llm_factory is not None or vllm_available()) and not reason else "transformers"
            if reason and (llm_factory is not None or vllm_available()):
                reporter.info(f"--engine auto: using transformers, since vLLM cannot load {model!r}: {reason}")
    quiet_libraries(reporter)
    if engine == "vllm":
        return VLLMEngine(ref, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype,
                          settings=settings, llm_factory=llm_factory, params_factory=params_factory,
                          lora_factory=lora_factory, reporter=reporter)
    if settings.vllm_only:
        reporter.warn("--tensor-parallel-size, --gpu-memory-utilization and --enforce-eager apply to "
                      "the vLLM engine only; the transformers engine ignores them")
    return TransformersEngine(ref, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype,
                              max_model_len=max_model_len, reporter=reporter)
