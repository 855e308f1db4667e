"""Batched greedy generation with a causal LM: vLLM on a GPU, transformers anywhere.

Both engines take the same prompts and tokenize them the same way (with the model's own
tokenizer, special tokens written into the prompt text rather than added), so a judge prompt
means the same thing on either engine and the parsing downstream does not care which ran.

- `TransformersEngine`: `model.generate` over batches, left padding, prompts sorted by length so
  a batch wastes little padding, results put back in input order.
- `VLLMEngine`: `vllm.LLM(...).generate(token prompts, SamplingParams(temperature=0, ...))`.
  vLLM is imported only here and only when used; `llm_factory` / `params_factory` are the seam
  where tests put a fake engine object (vLLM needs a GPU).

Engines are context managers: `close()` (or leaving the `with` block) releases the weights
(transformers: the model dropped, garbage collected, CUDA cache emptied; vLLM: its engine shut
down too), so a run that switches models holds one at a time. A closed engine loads again if it
is used again.

`cached_generate` keeps outputs in the on-disk cache keyed by (model fingerprint, engine,
settings, prompt hash), so a rerun only generates what is new.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from safesample.backends.models import (ModelRef, check_offline, load_causal_lm, load_tokenizer, quiet_libraries,
                                        release_memory, resolve)
from safesample.errors import ModelError, UsageError
from safesample.reporter import SILENT, Advance, Reporter

ENGINES = ("auto", "transformers", "vllm")


class Engine(Protocol):
    name: str  # "transformers" or "vllm"
    model_name: str  # the model as the user named it (for provenance)
    fingerprint: str  # what identifies the weights (for cache keys)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 progress: Advance | None = None) -> list[str]: ...

    def chat(self, instructions: list[str], system: str | None = None, max_new_tokens: int | None = None,
             progress: Advance | None = None) -> list[str]: ...

    def format_chat(self, instructions: list[str], system: str | None = None) -> list[str]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Engine": ...

    def __exit__(self, *exc: object) -> None: ...


def vllm_available() -> bool:
    """vLLM is importable and a CUDA device is there (vLLM cannot run on a CPU here)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def load_engine(model: str, engine: str = "auto", batch_size: int = 16, max_new_tokens: int = 256,
                dtype: str = "auto", *, llm_factory: Callable[..., Any] | None = None,
                params_factory: Callable[..., Any] | None = None, reporter: Reporter = SILENT) -> "Engine":
    """Resolve `model` and start an engine for it (use it as a context manager, or `close()` it).

    engine="auto" picks vLLM when it is importable and CUDA is available, else transformers.
    Unless `reporter.verbose`, the libraries' own bars and warnings are silenced.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}", "use one of: " + ", ".join(ENGINES))
    ref = resolve(model)
    check_offline(ref)  # an uncached hub id fails now, before torch and transformers load
    if engine == "auto":
        engine = "vllm" if llm_factory is not None or vllm_available() else "transformers"
    quiet_libraries(reporter)
    if engine == "vllm":
        return VLLMEngine(ref, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype,
                          llm_factory=llm_factory, params_factory=params_factory)
    return TransformersEngine(ref, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype,
                              reporter=reporter)


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


class _EngineBase:
    name = "base"

    def __init__(self, ref: ModelRef, tokenizer, batch_size: int, max_new_tokens: int):
        if batch_size < 1 or max_new_tokens < 1:
            raise UsageError("batch size and max new tokens must be at least 1", "pass positive numbers")
        self.ref = ref
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.model_name = ref.name
        self.fingerprint = model_fingerprint(ref)
        self.truncated_prompts = 0  # prompts cut to fit the context window (from the left)

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
             progress: Advance | None = None) -> list[str]:
        return self.generate(self.format_chat(instructions, system), max_new_tokens, progress)

    def _encode(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        """Token ids of each prompt, cut from the left to leave room for the answer."""
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        limit = self._context_length()
        if limit:
            room = max(limit - max_new_tokens, 8)
            for i, seq in enumerate(ids):
                if len(seq) > room:
                    ids[i] = seq[-room:]  # keep the end: the generation prompt lives there
                    self.truncated_prompts += 1
        return ids

    def _context_length(self) -> int | None:
        return None

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 progress: Advance | None = None) -> list[str]:
        raise NotImplementedError


class TransformersEngine(_EngineBase):
    """Greedy batched generation with transformers (CPU or GPU)."""

    name = "transformers"

    def __init__(self, ref: ModelRef, batch_size: int = 16, max_new_tokens: int = 256, dtype: str = "auto",
                 device: str | None = None, model=None, tokenizer=None, reporter: Reporter = SILENT):
        tokenizer = tokenizer or load_tokenizer(ref, padding_side="left")
        super().__init__(ref, tokenizer, batch_size, max_new_tokens)
        self._model = model
        self._load = lambda: load_causal_lm(ref, dtype=dtype, device=device, reporter=reporter)

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

    def _context_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 progress: Advance | None = None) -> list[str]:
        import torch

        if not prompts:
            return []
        new_tokens = max_new_tokens or self.max_new_tokens
        ids = self._encode(prompts, new_tokens)
        # Longest first: similar lengths share a batch (little padding), and a batch that does not
        # fit in memory fails at the start rather than after an hour.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(self.model.parameters()).device
        results: list[str | None] = [None] * len(ids)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends at the same column
                seq = ids[i]
                if seq:
                    input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                    mask[row, width - len(seq):] = 1
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                          max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                          pad_token_id=pad_id, eos_token_id=tok.eos_token_id)
            for row, i in enumerate(batch):
                results[i] = tok.decode(out[row, width:], skip_special_tokens=True)
            if progress:
                progress(len(batch))
        return [r or "" for r in results]


class VLLMEngine(_EngineBase):
    """Greedy offline batched generation with vLLM (GPU)."""

    name = "vllm"

    def __init__(self, ref: ModelRef, batch_size: int = 16, max_new_tokens: int = 256, dtype: str = "auto",
                 llm_factory: Callable[..., Any] | None = None,
                 params_factory: Callable[..., Any] | None = None, tokenizer=None):
        if llm_factory is None or params_factory is None:
            try:
                import vllm  # noqa: F401 - heavy, GPU only: imported on use
            except ImportError as exc:
                raise ModelError("the vLLM engine needs the vllm package, which is not installed",
                                 "on a GPU host: pip install 'safesample[vllm]'; elsewhere use "
                                 "--engine transformers") from exc
            llm_factory = llm_factory or _vllm_llm
            params_factory = params_factory or _vllm_params
        tokenizer = tokenizer or load_tokenizer(ref, padding_side="left")
        super().__init__(ref, tokenizer, batch_size, max_new_tokens)
        self._params_factory = params_factory
        self._lora = None
        kwargs: dict[str, Any] = {"model": ref.path, "tokenizer": ref.adapter if ref.adapter and
                                  Path(ref.adapter, "tokenizer_config.json").exists() else ref.path,
                                  "dtype": dtype, "seed": 0}
        if ref.gguf_file:
            kwargs["model"] = os.path.join(ref.path, ref.gguf_file)
        if ref.adapter:
            kwargs["enable_lora"] = True
            self._lora = ref.adapter
        self._llm = None
        self._llm_factory = llm_factory
        self._llm_kwargs = kwargs

    def close(self) -> None:
        """Shut vLLM's engine down (its workers hold the weights and the KV cache), then drop it."""
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        _shutdown_vllm(llm)
        del llm
        release_memory()

    @property
    def llm(self):
        """Started on first use: a rerun served from the cache never starts vLLM."""
        if self._llm is None:
            try:
                self._llm = self._llm_factory(**self._llm_kwargs)
            except (OSError, ValueError, RuntimeError) as exc:
                raise ModelError(f"vLLM could not load {self.ref.spec!r}: {str(exc).splitlines()[0][:200]}",
                                 "check the model path and GPU memory, or use --engine transformers") from exc
        return self._llm

    def _context_length(self) -> int | None:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:
            return None

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 progress: Advance | None = None) -> list[str]:
        if not prompts:
            return []
        new_tokens = max_new_tokens or self.max_new_tokens
        ids = self._encode(prompts, new_tokens)
        params = self._params_factory(temperature=0.0, max_tokens=new_tokens)
        extra: dict[str, Any] = {}
        if self._lora:
            from vllm.lora.request import LoRARequest

            extra["lora_request"] = LoRARequest("adapter", 1, self._lora)
        results: list[str] = []
        # vLLM schedules its own batches; chunks here only pace the progress bar.
        chunk = max(self.batch_size * 16, 256)
        for start in range(0, len(ids), chunk):
            part = [{"prompt_token_ids": seq} for seq in ids[start:start + chunk]]
            outputs = self.llm.generate(part, params, use_tqdm=False, **extra)
            results.extend(out.outputs[0].text for out in outputs)
            if progress:
                progress(len(part))
        return results


def _shutdown_vllm(llm) -> None:
    """Best effort, in the order vLLM offers it: `LLM.shutdown()` (newer releases), else the V1
    engine core's `shutdown()`; then its model-parallel groups, when vLLM itself is loaded (a
    fake engine in tests never imports it)."""
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


# --------------------------------------------------------------------------------------------
# the cache


def cached_generate(engine: "Engine", prompts: list[str], *, max_new_tokens: int | None = None,
                    cache: bool = True, progress: Advance | None = None, namespace: str = "generations",
                    purpose: str = "generate") -> tuple[list[str], int]:
    """Generate for `prompts`, reusing cached outputs; returns (outputs, number of cache hits).

    Keyed by (model fingerprint, engine, max new tokens, purpose) and the prompt text, so a
    changed prompt template, model or setting never reuses an output made under another.
    """
    from safesample.cache import Cache, settings_key, text_key

    new_tokens = max_new_tokens or getattr(engine, "max_new_tokens", None)
    scope = settings_key(model=engine.fingerprint, engine=engine.name, max_new_tokens=new_tokens,
                         decoding="greedy", purpose=purpose)
    keys = [text_key(p) for p in prompts]
    with Cache(namespace, scope, enabled=cache) as store:
        found = store.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if progress and len(prompts) - len(missing):
            progress(len(prompts) - len(missing))
        # Unique missing prompts only: duplicated rows are generated once.
        todo = list(dict.fromkeys(keys[i] for i in missing))
        first = {keys[i]: i for i in reversed(missing)}
        outputs = engine.generate([prompts[first[k]] for k in todo], max_new_tokens=new_tokens,
                                  progress=progress) if todo else []
        fresh = dict(zip(todo, outputs))
        store.put_many((k, v.encode("utf-8", "surrogatepass")) for k, v in fresh.items())
    texts = [found[k].decode("utf-8", "surrogatepass") if k in found else fresh[k] for k in keys]
    return texts, len(prompts) - len(missing)
