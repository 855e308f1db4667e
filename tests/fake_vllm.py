"""Strict stand-ins for vLLM 0.32's offline API, built from its recorded interface.

`LLM`, `SamplingParams` and `LoRARequest` take exactly the parameters vLLM 0.32.0 takes (names,
kinds, order: see `vllm_0_32_interface.json`, which tests/test_vllm_contract.py checks against the
wheel's source), so a misspelt or renamed keyword is a TypeError here as it would be on a GPU.
`LLM(**kwargs)` accepts only `EngineArgs` fields beyond its named parameters, as vLLM forwards
them there. `LLM.generate` validates like vLLM's input processor (empty prompt, prompt not
shorter than max_model_len: `VLLMValidationError`, which like vLLM's is no ValueError), refuses a
LoRA request without `enable_lora` or above `max_lora_rank`, and answers with RequestOutput-like
objects carrying `token_ids` (and `text` only when `detokenize`).
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from vllm_interface import snapshot

API = snapshot()


def _default(source: str | None):
    if source is None:
        return inspect.Parameter.empty
    try:
        return ast.literal_eval(source)
    except ValueError:
        return source  # an expression (e.g. msgspec.field(...)): kept as its text


def build_signature(params: list[list], with_self: bool = True) -> inspect.Signature:
    out = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] if with_self else []
    out += [inspect.Parameter(name, getattr(inspect.Parameter, kind), default=_default(default))
            for name, kind, default in params]
    return inspect.Signature(out)


def field_signature(fields: list[list], with_self: bool = True) -> inspect.Signature:
    """A msgspec Struct's __init__: its fields in order, positional or keyword."""
    return build_signature([[name, "POSITIONAL_OR_KEYWORD", default] for name, default in fields], with_self)


class VLLMValidationError(Exception):
    """As vllm.exceptions.VLLMValidationError (a VLLMClientError, not a ValueError)."""


class SamplingParams:
    __signature__ = field_signature(API["SamplingParams"], with_self=False)

    def __init__(self, *args, **kwargs):
        bound = field_signature(API["SamplingParams"]).bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)
        self.given = dict(kwargs)


class LoRARequest:
    __signature__ = field_signature(API["LoRARequest"], with_self=False)

    def __init__(self, *args, **kwargs):
        bound = field_signature(API["LoRARequest"]).bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)
        if self.lora_int_id < 1:  # as LoRARequest.__post_init__
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
        assert self.lora_path, "lora_path cannot be empty"


class LLM:
    """vllm.LLM's constructor and generate(); `answer(token_ids, params) -> token ids` decides
    what it generates (default: a few fixed tokens, then nothing)."""

    __signature__ = build_signature(API["LLM.__init__"], with_self=False)
    answer: Callable[[list[int], Any], list[int]] = staticmethod(lambda ids, params: [5, 6, 7][:params.max_tokens])

    def __init__(self, *args, **kwargs):
        bound = build_signature(API["LLM.__init__"]).bind(self, *args, **kwargs)
        bound.apply_defaults()
        extra = bound.arguments.pop("kwargs", {})
        unknown = sorted(set(extra) - set(API["EngineArgs"]))
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got unexpected keyword argument(s) {unknown}")
        self.kwargs = {**{k: v for k, v in bound.arguments.items() if k != "self"}, **extra}
        self.given = dict(kwargs, **({"model": args[0]} if args else {}))
        model_max = _config_max(self.kwargs["model"])
        max_len = extra.get("max_model_len") or model_max
        if model_max and max_len > model_max:
            raise ValueError(f"User-specified max_model_len ({max_len}) is greater than the derived "
                             f"max_model_len ({model_max})")
        self.model_config = SimpleNamespace(max_model_len=max_len)
        self.stopped = 0
        self.llm_engine = SimpleNamespace(model_config=self.model_config,
                                          engine_core=SimpleNamespace(shutdown=self._shutdown))
        self.calls: list[tuple] = []

    def _shutdown(self, timeout=None):
        self.stopped += 1

    def generate(self, *args, **kwargs):
        bound = build_signature(API["LLM.generate"]).bind(self, *args, **kwargs)
        bound.apply_defaults()
        call = {k: v for k, v in bound.arguments.items() if k != "self"}
        prompts, params, lora = call["prompts"], call["sampling_params"], call["lora_request"]
        self.calls.append(call)
        if lora is not None:
            if not isinstance(lora, LoRARequest):
                raise TypeError(f"lora_request must be a LoRARequest, not {type(lora).__name__}")
            if not self.kwargs.get("enable_lora"):
                raise ValueError(f"LoRA is not enabled! {lora}")
            rank = _adapter_rank(lora.lora_path)
            limit = self.kwargs.get("max_lora_rank", 16)
            if rank > limit:
                raise ValueError(f"LoRA rank {rank} is greater than max_lora_rank {limit}.")
        for p in prompts:
            n = len(p["prompt_token_ids"])
            if n == 0:
                raise VLLMValidationError("The decoder prompt cannot be empty")
            if n >= self.model_config.max_model_len:
                raise VLLMValidationError(f"The decoder prompt (length {n}) is longer than the maximum "
                                          f"model length of {self.model_config.max_model_len}.")
        outputs = []
        for p in prompts:
            ids = list(self.answer(p["prompt_token_ids"], params))[:params.max_tokens]
            text = f"<{len(ids)} tokens>" if params.detokenize else ""
            outputs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                           outputs=[SimpleNamespace(index=0, text=text, token_ids=ids)]))
        return outputs


LLM.generate.__signature__ = build_signature(API["LLM.generate"])


def _config_max(model: str) -> int | None:
    try:
        return json.loads(Path(model, "config.json").read_text()).get("max_position_embeddings")
    except OSError:
        return None


def _adapter_rank(path: str) -> int:
    config = json.loads(Path(path, "adapter_config.json").read_text())
    return max([config["r"], *(config.get("rank_pattern") or {}).values()])


def factories(made: list | None = None, answer: Callable | None = None) -> dict[str, Any]:
    """load_engine's llm_factory / params_factory / lora_factory, with `made` collecting the LLMs."""

    def llm_factory(**kwargs):
        llm = LLM(**kwargs)
        if answer is not None:
            llm.answer = answer
        if made is not None:
            made.append(llm)
        return llm

    return {"llm_factory": llm_factory, "params_factory": SamplingParams, "lora_factory": LoRARequest}
