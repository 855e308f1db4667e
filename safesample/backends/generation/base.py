"""The engine contract: the `Engine` protocol, `EngineBase` (what every engine shares: `generate`
itself, with prompts encoded and cut from the left to fit the context and empty ones skipped,
answers decoded up to the first EOS, the chat template, the model fingerprint; an engine writes
only `_generate`), and `EngineSettings` (how a model is served).

The engines themselves are in `transformers_engine` and `vllm_engine`; `load_engine` (the package)
picks one; `cache.cached_generate` reuses their outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from safesample.backends.models import ModelRef, context_length, eos_token_ids
from safesample.errors import UsageError
from safesample.reporter import Advance

ENGINES = ("auto", "transformers", "vllm")


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
        """Greedy answers in prompt order; None where a prompt could not run (why: `last_errors`).

        What every engine shares (the token budget, the encoding, skipping empty prompts); the
        engine's `_generate` answers the rest."""
        self.last_errors = {}
        if not prompts:
            return []
        new_tokens = max_new_tokens or self.max_new_tokens
        ids = self._encode(prompts, new_tokens)
        todo = [i for i in range(len(ids)) if ids[i]]
        results: list[str | None] = [None] * len(ids)
        if progress and len(todo) < len(ids):
            progress(len(ids) - len(todo))
        if todo:
            self._generate(ids, todo, new_tokens, results, progress)
        return results

    def _generate(self, ids: list[list[int]], todo: list[int], new_tokens: int, results: list[str | None],
                  progress: Advance | None) -> None:
        """Fill `results[i]` for each prompt index in `todo` (its token ids: `ids[i]`), calling
        `progress` as answers arrive."""
        raise NotImplementedError
