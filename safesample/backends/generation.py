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

- `TransformersEngine`: `model.generate` over batches, left padding, prompts sorted by length so
  a batch wastes little padding, results put back in input order.
- `VLLMEngine`: `vllm.LLM(...).generate(token prompts, SamplingParams(temperature=0, ...),
  lora_request=LoRARequest(...))`, checked against vLLM 0.32.0's source by
  tests/test_vllm_contract.py. vLLM is imported only here and only when used; `llm_factory`,
  `params_factory` and `lora_factory` are the seam where tests put a fake (vLLM needs a GPU).
  GGUF models reach vLLM as their cached de-quantised copy (vLLM 0.32 has no GGUF loader);
  `max_model_len` defaults to the longest prompt plus `max_new_tokens` (rounded up), not the
  model's maximum, so a 128K-context model does not reserve a full-length KV cache.

A prompt an engine cannot run (no tokens; rejected by vLLM's validation) comes back as None with
its reason in `engine.last_errors`, instead of aborting the batch; `cached_generate` reports it
per row. Engines are context managers: `close()` (or leaving the `with` block) releases the
weights (transformers: the model dropped, garbage collected, CUDA cache emptied; vLLM: its engine
shut down too), so a run that switches models holds one at a time. A closed engine loads again
if it is used again.

`cached_generate` keeps outputs in the on-disk cache keyed by (model fingerprint, engine, dtype,
settings, prompt hash), written chunk by chunk, so a rerun or a run after a crash only generates
what is new.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from safesample.backends.models import (ModelRef, adapter_config, adapter_rank, check_offline, context_length,
                                        ensure_gguf_copy, eos_token_ids, load_causal_lm, load_tokenizer,
                                        quiet_libraries, release_memory, resolve, resolve_dtype)
from safesample.errors import ModelError, UsageError
from safesample.reporter import SILENT, Advance, Reporter

ENGINES = ("auto", "transformers", "vllm")
# The ranks vLLM 0.32 accepts as max_lora_rank (`MaxLoRARanks` in vllm/config/lora.py; the
# contract test reads them from the wheel). An adapter's rank is rounded up to the next one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's default max_model_len is sized from the prompts, in steps of this many tokens.
MAX_MODEL_LEN_STEP = 256


class Engine(Protocol):
    name: str  # "transformers" or "vllm"
    model_name: str  # the model as the user named it (for provenance)
    fingerprint: str  # what identifies the weights (for cache keys)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 progress: Advance | None = None) -> list[str | None]: ...

    def chat(self, instructions: list[str], system: str | None = None, max_new_tokens: int | None = None,
             progress: Advance | None = None) -> list[str | None]: ...

    def format_chat(self, instructions: list[str], system: str | None = None) -> list[str]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Engine": ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class EngineSettings:
    """How a model is served. `max_model_len` bounds prompts on both engines; the rest are vLLM's."""

    max_model_len: int | None = None  # None: the longest prompt + max_new_tokens (vLLM); the model's (truncation)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # None: vLLM's default (0.92 in 0.32)
    enforce_eager: bool = False

    def check(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 16:
            raise UsageError(f"--max-model-len {self.max_model_len} is too small", "pass 16 tokens or more")
        if self.tensor_parallel_size < 1:
            raise UsageError("--tensor-parallel-size must be at least 1", "pass the number of GPUs to shard over")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise UsageError("--gpu-memory-utilization must be in (0, 1]", "e.g. 0.9 for 90 % of the GPU")

    @property
    def vllm_only(self) -> bool:
        return (self.tensor_parallel_size != 1 or self.gpu_memory_utilization is not None
                or self.enforce_eager)


def engine_settings(opts: Any) -> dict[str, Any]:
    """load_engine's keyword arguments from a stage's options (label, judge): engine, batch
    size, dtype and the serving settings, by the same names."""
    names = ("engine", "batch_size", "dtype", "max_model_len", "tensor_parallel_size",
             "gpu_memory_utilization", "enforce_eager")
    return {name: getattr(opts, name) for name in names if hasattr(opts, name)}


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


def model_fingerprint(ref: ModelRef) -> str:
    """The model's name plus, for local folders, the size and time of its weight files.

    A folder retrained in place (e.g. `finetune -o runs/lora-0` again) then gets new cache keys
    instead of stale generations.
    """
    parts: list[Any] = [ref.name]
    for folder in filter(None, [ref.path, ref.adapter]):
        path = Path(folder)
        if path.is_dir():
            for f in sorted(path.iterdir()):
                if f.suffix in (".safetensors", ".bin", ".gguf", ".json") and f.is_file():
                    stat = f.stat()
                    parts.append([f.name, stat.st_size, int(stat.st_mtime)])
    return json.dumps(parts)


class EngineBase:
    name = "base"

    def __init__(self, ref: ModelRef, tokenizer, batch_size: int, max_new_tokens: int, dtype: str,
                 max_model_len: int | None):
        if batch_size < 1 or max_new_tokens < 1:
            raise UsageError("batch size and max new tokens must be at least 1", "pass positive numbers")
        self.ref = ref
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.dtype = dtype  # resolved: float32, bfloat16 or float16
        self.max_model_len = max_model_len  # given by the user; else the model's context bounds prompts
        self.model_name = ref.name
        self.fingerprint = model_fingerprint(ref)
        self.eos_ids = eos_token_ids(tokenizer, ref)
        self.truncated_prompts = 0  # prompts cut to fit the context window (from the left)
        self.last_errors: dict[int, str] = {}  # prompts of the last generate() that could not run
        self.cache_chunk = max(batch_size * 8, 64)  # prompts per cache write in cached_generate

    def close(self) -> None:
        """Release the weights (a later use loads them again)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def format_chat(self, instructions: list[str], system: str | None = None) -> list[str]:
        """Prompt texts for instructions: the tokenizer's chat template when it has one."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            prompts = []
            for text in instructions:
                messages = ([{"role": "system", "content": system}] if system else []) + \
                    [{"role": "user", "content": text}]
                prompts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            return prompts
        # No template: the raw instruction (after a system text, if any), with the BOS token the
        # tokenizer would have added itself, since prompts are tokenized without added specials.
        bos = tok.bos_token or ""
        return [f"{bos}{system}\n\n{text}" if system else f"{bos}{text}" for text in instructions]

    def chat(self, instructions: list[str], system: str | None = None, max_new_tokens: int | None = None,
             progress: Advance | None = None) -> list[str | None]:
        return self.generate(self.format_chat(instructions, system), max_new_tokens, progress)

    def context_length(self) -> int | None:
        """What bounds prompt + answer: --max-model-len when given, else the model's own context."""
        return self.max_model_len or context_length(self.ref)

    def _encode(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        """Token ids of each prompt, cut from the left to leave room for the answer; a prompt
        with no tokens is recorded in `last_errors`."""
        self.last_errors = {}
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        limit = self.context_length()
        if limit:
            room = max(limit - max_new_tokens, 8)
            for i, seq in enumerate(ids):
                if len(seq) > room:
                    ids[i] = seq[-room:]  # keep the end: the generation prompt lives there
                    self.truncated_prompts += 1
        for i, seq in enumerate(ids):
            if not seq:
                self.last_errors[i] = "empty prompt: it has no tokens"
        return ids

    def _decode(self, token_ids: Sequence[int]) -> str:
        """The answer's text: its tokens up to the first EOS, special tokens skipped (both engines)."""
        ids = list(token_ids)
        stops = [k for k, t in enumerate(ids) if t in self.eos_ids]
        if stops:
            ids = ids[:stops[0]]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 progress: Advance | None = None) -> list[str | None]:
        raise NotImplementedError


class TransformersEngine(EngineBase):
    """Greedy batched generation with transformers (CPU or GPU)."""

    name = "transformers"

    def __init__(self, ref: ModelRef, batch_size: int = 16, max_new_tokens: int = 256, dtype: str = "auto",
                 device: str | None = None, model=None, tokenizer=None, max_model_len: int | None = None,
                 reporter: Reporter = SILENT):
        tokenizer = tokenizer or load_tokenizer(ref, padding_side="left")
        resolved = resolve_dtype(dtype, device)
        super().__init__(ref, tokenizer, batch_size, max_new_tokens, resolved, max_model_len)
        self._model = model
        self._load = lambda: load_causal_lm(ref, dtype=resolved, device=device, reporter=reporter)

    def close(self) -> None:
        """Drop the model (the only reference this engine holds), collect, empty the CUDA cache."""
        if self._model is not None:
            self._model = None
            release_memory()

    @property
    def model(self):
        """Loaded on first use: a rerun served from the cache never loads the weights."""
        if self._model is None:
            self._model = self._load()
            self._model.eval()
        return self._model

    def context_length(self) -> int | None:
        if self.max_model_len:
            return self.max_model_len
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None) or context_length(self.ref)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 progress: Advance | None = None) -> list[str | None]:
        import torch

        self.last_errors = {}
        if not prompts:
            return []
        new_tokens = max_new_tokens or self.max_new_tokens
        ids = self._encode(prompts, new_tokens)
        # Longest first: similar lengths share a batch (little padding), and a batch that does not
        # fit in memory fails at the start rather than after an hour.
        order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: -len(ids[i]))
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]
        device = next(self.model.parameters()).device
        results: list[str | None] = [None] * len(ids)
        if progress and len(order) < len(ids):
            progress(len(ids) - len(order))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends at the same column
                input_ids[row, width - len(ids[i]):] = torch.tensor(ids[i], dtype=torch.long)
                mask[row, width - len(ids[i]):] = 1
            with torch.inference_mode():
                # repetition_penalty=1.0 overrides a generation_config value, as vLLM ignores it.
                out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                          max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                          repetition_penalty=1.0, pad_token_id=pad_id,
                                          eos_token_id=self.eos_ids or None)
            for row, i in enumerate(batch):
                results[i] = self._decode(out[row, width:].tolist())
            if progress:
                progress(len(batch))
        return results


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

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 progress: Advance | None = None) -> list[str | None]:
        self.last_errors = {}
        if not prompts:
            return []
        new_tokens = max_new_tokens or self.max_new_tokens
        ids = self._encode(prompts, new_tokens)
        todo = [i for i in range(len(ids)) if ids[i]]
        results: list[str | None] = [None] * len(ids)
        if progress and len(todo) < len(ids):
            progress(len(ids) - len(todo))
        if not todo:
            return results
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
        return results

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


# --------------------------------------------------------------------------------------------
# the cache


def cached_generate(engine: "Engine", prompts: list[str], *, max_new_tokens: int | None = None,
                    cache: bool = True, progress: Advance | None = None, namespace: str = "generations",
                    purpose: str = "generate", errors: dict[int, str] | None = None) -> tuple[list[str], int]:
    """Generate for `prompts`, reusing cached outputs; returns (outputs, number of cache hits).

    Keyed by (model fingerprint, engine, dtype, max new tokens, max model len, purpose) and the
    prompt text, so a changed prompt template, model or setting never reuses an output made under
    another. Outputs are written to the cache chunk by chunk (`engine.cache_chunk` prompts), so
    a crash or Ctrl-C keeps what was generated. A prompt the engine could not run gets "" (never
    cached) and, when `errors` is given, its reason under its index.
    """
    from safesample.cache import Cache, settings_key, text_key

    new_tokens = max_new_tokens or getattr(engine, "max_new_tokens", None)
    scope = settings_key(model=engine.fingerprint, engine=engine.name, max_new_tokens=new_tokens,
                         decoding="greedy", purpose=purpose, dtype=getattr(engine, "dtype", None),
                         max_model_len=getattr(engine, "max_model_len", None))
    keys = [text_key(p) for p in prompts]
    fresh: dict[str, str] = {}
    failed: dict[str, str] = {}
    with Cache(namespace, scope, enabled=cache) as store:
        found = store.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if progress and len(prompts) - len(missing):
            progress(len(prompts) - len(missing))
        # Unique missing prompts only: duplicated rows are generated once.
        todo = list(dict.fromkeys(keys[i] for i in missing))
        first = {keys[i]: i for i in reversed(missing)}
        step = max(int(getattr(engine, "cache_chunk", 0) or 256), 1)
        for start in range(0, len(todo), step):
            part = todo[start:start + step]
            outputs = engine.generate([prompts[first[k]] for k in part], max_new_tokens=new_tokens,
                                      progress=progress)
            if len(outputs) != len(part):
                raise RuntimeError(f"the engine returned {len(outputs)} outputs for {len(part)} prompts")
            reasons = getattr(engine, "last_errors", None) or {}
            done = []
            for j, (k, text) in enumerate(zip(part, outputs)):
                if text is None:
                    failed[k] = reasons.get(j, "the engine returned no output")
                else:
                    fresh[k] = text
                    done.append((k, text.encode("utf-8", "surrogatepass")))
            store.put_many(done)
    texts = []
    for i, k in enumerate(keys):
        if k in found:
            texts.append(found[k].decode("utf-8", "surrogatepass"))
        elif k in fresh:
            texts.append(fresh[k])
        else:
            texts.append("")
            if errors is not None:
                errors[i] = failed[k]
    return texts, len(prompts) - len(missing)
