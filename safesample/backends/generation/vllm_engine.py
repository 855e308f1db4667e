"""The vLLM engine: greedy offline batched generation on a GPU.

`vllm.LLM(...).generate(token prompts, SamplingParams(temperature=0, ...),
lora_request=LoRARequest(...))`, checked against vLLM 0.32.0's source by
tests/test_vllm_contract.py. vLLM is imported only here and only when used; `llm_factory`,
`params_factory` and `lora_factory` are the seam where tests put a fake (vLLM needs a GPU).
GGUF models reach vLLM as their cached de-quantised copy (vLLM 0.32 has no GGUF loader);
`max_model_len` defaults to the longest prompt plus `max_new_tokens` (rounded up), not the
model's maximum, so a 128K-context model does not reserve a full-length KV cache. A prompt vLLM
rejects is retried alone, so only its row fails.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

from safesample.backends.generation.base import EngineBase, EngineSettings
from safesample.backends.models import (ModelRef, adapter_config, adapter_rank, context_length, ensure_gguf_copy,
                                        load_tokenizer, release_memory, resolve_dtype)
from safesample.errors import ModelError
from safesample.reporter import SILENT, Advance, Reporter


# The ranks vLLM 0.32 accepts as max_lora_rank (`MaxLoRARanks` in vllm/config/lora.py; the
# contract test reads them from the wheel). An adapter's rank is rounded up to the next one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's default max_model_len is sized from the prompts, in steps of this many tokens.
MAX_MODEL_LEN_STEP = 256


def vllm_available() -> bool:
    """vLLM is importable and a CUDA device is there (vLLM cannot run on a CPU here)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def vllm_lora_rank(rank: int) -> int | None:
    """The smallest max_lora_rank vLLM accepts that holds `rank` (None: above vLLM's largest)."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def vllm_cannot_load(ref: ModelRef) -> str | None:
    """Why vLLM 0.32 would refuse this model, or None. GGUF is no reason: vLLM gets the
    de-quantised copy. The adapter checks are those of vLLM's PEFTHelper.validate_legal."""
    config = adapter_config(ref)
    if not config:
        return None
    problems = []
    rank = adapter_rank(ref) or 0
    if vllm_lora_rank(rank) is None:
        problems.append(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")
    if config.get("use_dora"):
        problems.append("the adapter uses DoRA")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("the adapter trains biases")
    extra = [m for m in (config.get("modules_to_save") or []) if m not in ("classifier", "score")]
    if extra:
        problems.append(f"the adapter saves full modules ({', '.join(extra)})")
    return "; ".join(problems) or None


class VLLMEngine(EngineBase):
    """Greedy offline batched generation with vLLM (GPU)."""

    name = "vllm"

    def __init__(self, ref: ModelRef, batch_size: int = 16, max_new_tokens: int = 256, dtype: str = "auto",
                 settings: EngineSettings | None = None, llm_factory: Callable[..., Any] | None = None,
                 params_factory: Callable[..., Any] | None = None, lora_factory: Callable[..., Any] | None = None,
                 tokenizer=None, reporter: Reporter = SILENT):
        if llm_factory is None or params_factory is None or (ref.adapter and lora_factory is None):
            try:
                import vllm  # noqa: F401 - heavy, GPU only: imported on use
            except ImportError as exc:
                raise ModelError("the vLLM engine needs the vllm package, which is not installed",
                                 "on a GPU host: pip install 'safesample[vllm]'; elsewhere use "
                                 "--engine transformers") from exc
            llm_factory = llm_factory or _vllm_llm
            params_factory = params_factory or _vllm_params
            lora_factory = lora_factory or _vllm_lora
        self.settings = settings or EngineSettings()
        self.settings.check()
        tokenizer = tokenizer or load_tokenizer(ref, padding_side="left")
        resolved = resolve_dtype(dtype, "cuda")
        super().__init__(ref, tokenizer, batch_size, max_new_tokens, resolved, self.settings.max_model_len)
        self.reporter = reporter
        self._params_factory = params_factory
        self._lora_factory = lora_factory
        self._llm = None
        self._llm_len: int | None = None  # the max_model_len the running engine was started with
        self._llm_factory = llm_factory
        self.cache_chunk = max(batch_size * 64, 1024)  # vLLM schedules its own batches

    def close(self) -> None:
        """Shut vLLM's engine down (its workers hold the weights and the KV cache), then drop it."""
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        _shutdown_vllm(llm)
        del llm
        release_memory()

    def llm_kwargs(self, max_model_len: int | None) -> dict[str, Any]:
        """What vllm.LLM(...) is given (every name is checked against vLLM 0.32 by the contract test)."""
        ref = ensure_gguf_copy(self.ref, self.reporter)  # vLLM 0.32 cannot read GGUF
        tokenizer = ref.adapter if ref.adapter and Path(ref.adapter, "tokenizer_config.json").exists() else ref.path
        kwargs: dict[str, Any] = {"model": ref.path, "tokenizer": tokenizer, "dtype": self.dtype, "seed": 0,
                                  "tensor_parallel_size": self.settings.tensor_parallel_size,
                                  "enforce_eager": self.settings.enforce_eager}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if self.settings.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
        if ref.adapter:
            kwargs["enable_lora"] = True
            kwargs["max_lora_rank"] = vllm_lora_rank(adapter_rank(ref) or 1)
            kwargs["max_loras"] = 1
        return kwargs

    def _start(self, needed: int | None):
        """The running engine, started (or restarted larger) so `needed` tokens fit."""
        if self.settings.max_model_len:
            length = self.settings.max_model_len
        else:
            model_max = self.context_length()
            length = -(-(needed or MAX_MODEL_LEN_STEP) // MAX_MODEL_LEN_STEP) * MAX_MODEL_LEN_STEP
            length = min(length, model_max) if model_max else length
        if self._llm is not None and (self._llm_len is None or self._llm_len >= length):
            return self._llm
        if self._llm is not None:
            self.reporter.debug(f"restarting vLLM with max_model_len {length} (was {self._llm_len})")
            self.close()
        try:
            self._llm = self._llm_factory(**self.llm_kwargs(length))
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - vLLM raises many kinds; each is a model error here
            raise _model_error(self.ref, exc, "starting vLLM") from exc
        self._llm_len = length
        return self._llm

    @property
    def llm(self):
        """Started on first use: a rerun served from the cache never starts vLLM."""
        return self._start(None)

    def context_length(self) -> int | None:
        # A GGUF model's context comes from its de-quantised copy, which vLLM needs anyway.
        return self.settings.max_model_len or context_length(ensure_gguf_copy(self.ref, self.reporter))

    def _params(self, new_tokens: int):
        # Greedy; EOS: the tokenizer's and generation_config's (stop_token_ids); no repetition
        # penalty; token ids out, decoded here as the transformers engine decodes them.
        return self._params_factory(temperature=0.0, max_tokens=new_tokens, repetition_penalty=1.0,
                                    stop_token_ids=list(self.eos_ids), detokenize=False)

    def _generate(self, ids: list[list[int]], todo: list[int], new_tokens: int, results: list[str | None],
                  progress: Advance | None) -> None:
        llm = self._start(max(len(ids[i]) for i in todo) + new_tokens)
        params = self._params(new_tokens)
        extra: dict[str, Any] = {}
        if self.ref.adapter:
            extra["lora_request"] = self._lora_factory("adapter", 1, self.ref.adapter)
        # vLLM schedules its own batches; chunks here only pace the progress bar.
        chunk = max(self.batch_size * 16, 256)
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            for i, text in zip(part, self._run(llm, [ids[i] for i in part], part, params, extra)):
                results[i] = text
            if progress:
                progress(len(part))

    def _run(self, llm, seqs: list[list[int]], rows: list[int], params, extra) -> list[str | None]:
        """One generate call; a prompt vLLM rejects is retried alone, so only its row fails."""
        try:
            outputs = llm.generate([{"prompt_token_ids": seq} for seq in seqs], params, use_tqdm=False, **extra)
        except Exception as exc:  # noqa: BLE001
            if not _is_prompt_error(exc):
                raise _model_error(self.ref, exc, "generating") from exc
            if len(seqs) == 1:
                self.last_errors[rows[0]] = f"vLLM rejected the prompt: {_first_line(exc)}"
                return [None]
            return [text for seq, row in zip(seqs, rows) for text in self._run(llm, [seq], [row], params, extra)]
        return [self._decode(_completion_ids(out)) if _completion_ids(out) is not None else out.outputs[0].text
                for out in outputs]


def _completion_ids(out) -> list[int] | None:
    """The generated token ids of a vLLM RequestOutput (its first CompletionOutput)."""
    ids = getattr(out.outputs[0], "token_ids", None)
    return None if ids is None else list(ids)


def _is_prompt_error(exc: BaseException) -> bool:
    """vLLM's validation of one request (empty or over-long prompt): VLLMValidationError in 0.32,
    which is no ValueError; matched by name, so a fake raising its own class matches too."""
    return any(c.__name__ in ("VLLMValidationError", "VLLMClientError") for c in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _model_error(ref: ModelRef, exc: BaseException, doing: str) -> ModelError:
    text = _first_line(exc)
    hint = "check the model path and GPU memory (--gpu-memory-utilization, --max-model-len), or use --engine transformers"
    if "lora" in text.lower():
        hint = "check the adapter (vLLM needs a plain LoRA: no DoRA, bias or saved modules), or use --engine transformers"
    elif "memory" in text.lower() or "kv cache" in text.lower():
        hint = ("lower --max-model-len, raise --gpu-memory-utilization, shard with --tensor-parallel-size, "
                "or free the GPU")
    elif "max_model_len" in text or "max_position_embeddings" in text:
        hint = "pass a --max-model-len within the model's context length"
    return ModelError(f"vLLM failed {doing} {ref.spec!r}: {text}", hint)


def _shutdown_vllm(llm) -> None:
    """Best effort, in the order vLLM offers it: `LLM.shutdown()` (newer releases), else the V1
    engine core's `shutdown()` (vLLM 0.32: `llm.llm_engine.engine_core`); then its model-parallel
    groups, when vLLM itself is loaded (a fake engine in tests never imports it)."""
    import contextlib
    import sys

    stop = getattr(llm, "shutdown", None)
    if stop is None:
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        stop = getattr(core, "shutdown", None)
    if callable(stop):
        with contextlib.suppress(Exception):
            stop()
    if "vllm" in sys.modules:
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import (destroy_distributed_environment,
                                                         destroy_model_parallel)

            destroy_model_parallel()
            destroy_distributed_environment()


def _vllm_llm(**kwargs):
    from vllm import LLM

    return LLM(**kwargs)


def _vllm_params(**kwargs):
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def _vllm_lora(name: str, int_id: int, path: str):
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, int_id, path)
