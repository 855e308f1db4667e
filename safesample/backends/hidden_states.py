"""Forward passes of a causal LM that return pooled hidden states, computing only the layers read.

For scorers that read a model's representations instead of its generations (`audit`; later the
harm judge and the refusal score can share it): load a model by name, run token sequences
through it in batches, and return per-row means of the hidden states over token spans (the
response tokens, the last prompt token, ...) at several layers at once, as float32 numpy.

Layers are numbered as transformers' `hidden_states` tuple: 0 is the embedding output, i (1..L)
the output of decoder layer i; layer L is the final normed state, as transformers returns it.

Why it is built this way (Qwen2.5-Coder-0.5B on a 2-core CPU, ENVIRONMENT.md):
- The pass stops at the deepest layer it reads: a forward hook on that decoder layer keeps its
  output and raises a private exception, caught around the call, so the later layers and the
  LM head (151k-token vocabulary) never run: the first 12 of 24 layers ran at 2.1 rows/s against
  0.91 rows/s for all of them (ENVIRONMENT.md), the first 4 of 24 at 5.7x the rows/s of all 24
  (bench/bench_audit.py, bf16). The decoder is called without its LM head even for a full
  pass: no logits are needed.
- Right padding: every row's tokens sit at positions 0..n-1 as when it runs alone (causal
  attention never looks at the padding after it), so spans index from the start, default
  position ids are right, and a row's states do not depend on its batch mates (tested).
- Rows are sorted by length before batching, so a batch wastes little padding; results come
  back in input order.
- dtype `auto` is bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, or a
  CPU with avx512_bf16 / AMX, which ran the same 12 layers 2.1x faster than fp32 with mean
  hidden states at cosine 1.0000), float32 elsewhere. A caller keeps it only where its own
  scores agree with fp32's (audit: bench/bench_audit.py).

torch and transformers are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from safesample.errors import ModelError, UsageError
from safesample.reporter import SILENT, Advance, Reporter

if TYPE_CHECKING:
    import numpy as np

DTYPES = ("auto", "float32", "bfloat16")
# (start, end) token positions of one span of one row, end exclusive.
Span = tuple[int, int]


# --------------------------------------------------------------------------------------------
# what a model is, without loading its weights


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as the user named it
    model_type: str
    num_layers: int
    hidden_size: int
    fingerprint: str  # the model files (name, sizes, times): part of every cache key


def model_info(model: str) -> ModelInfo:
    """The model's layer count and width from its config, without loading weights; a ModelError
    when the model is not a causal LM (e.g. a sentence encoder or a classifier)."""
    from safesample.backends.generation import model_fingerprint
    from safesample.backends.models import check_offline, resolve

    ref = resolve(model)
    check_offline(ref)
    config = _config(ref)
    model_type = str(config.get("model_type") or "")
    text = config.get("text_config") or {}
    layers = config.get("num_hidden_layers") or text.get("num_hidden_layers")
    hidden = config.get("hidden_size") or text.get("hidden_size")
    archs = [str(a) for a in config.get("architectures") or []]
    causal = _causal_model_types()
    if (archs and not any("CausalLM" in a or "LMHead" in a for a in archs)) or model_type not in causal \
            or not layers or not hidden:
        what = ", ".join(archs) or model_type or "an unknown architecture"
        raise ModelError(f"{model!r} is not a causal language model ({what})",
                         "pass a causal LM that generates text: a named model (qwen2.5-coder-0.5b), "
                         "a folder saved with save_pretrained, or a `safesample finetune` output")
    return ModelInfo(model, model_type, int(layers), int(hidden), model_fingerprint(ref))


def _config(ref) -> dict[str, Any]:
    """The model's config.json (a folder, or the de-quantised copy of a GGUF file), else what
    transformers reads from the GGUF header or the local hub cache."""
    import os

    from safesample.backends.models import gguf_copy_dir

    folder = gguf_copy_dir(ref) if ref.gguf_file else Path(ref.path)
    path = folder / "config.json" if folder is not None else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {exc}", "the model folder may be damaged") from exc
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        kwargs["local_files_only"] = True
    try:
        return AutoConfig.from_pretrained(ref.path, **kwargs).to_dict()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of {ref.spec!r}: {str(exc).splitlines()[0][:200]}",
                         "pass a named model, or a folder saved with save_pretrained") from exc


def _causal_model_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def cpu_has_bf16() -> bool:
    """The CPU computes bfloat16 natively (avx512_bf16 or AMX; Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """`auto`: bfloat16 on a bf16 GPU or a CPU with native bf16, float32 elsewhere."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}", "use one of: " + ", ".join(DTYPES))
    if dtype != "auto":
        return dtype
    from safesample.backends.models import resolve_dtype as engine_dtype

    device = device or _default_device()
    if device.startswith("cuda"):
        return engine_dtype("auto", device)
    return "bfloat16" if cpu_has_bf16() else "float32"


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------
# a loaded model


class ForwardModel:
    """A causal LM and its tokenizer, loaded for forward passes only (eval mode, no gradients)."""

    def __init__(self, name: str, model: Any, tokenizer: Any, dtype: str, fingerprint: str):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.fingerprint = fingerprint
        self.num_layers = len(_decoder_layers(model))
        self.hidden_size = int(model.config.get_text_config().hidden_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def close(self) -> None:
        from safesample.backends.models import release_memory

        self.model = None
        release_memory()

    def __enter__(self) -> "ForwardModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(model: str, dtype: str = "auto", device: str | None = None, *,
         reporter: Reporter = SILENT) -> ForwardModel:
    """Load `model` (a named model, folder, hub id in the local cache, or adapter folder) with its
    tokenizer; a ModelError when it is not a causal LM."""
    import time

    from safesample.backends import models

    info = model_info(model)  # fails fast, before the weights, on a classifier or an encoder
    ref = models.resolve(model)
    device = device or _default_device()
    dtype = resolve_dtype(dtype, device)
    reporter.info(f"loading {model} ({dtype}, {device})")
    start = time.perf_counter()
    tokenizer = models.load_tokenizer(ref, padding_side="right")
    lm = models.load_causal_lm(ref, dtype=dtype, device=device, reporter=reporter)
    lm.eval()
    reporter.debug(f"loaded {model} in {time.perf_counter() - start:.1f} s")
    return ForwardModel(model, lm, tokenizer, dtype, info.fingerprint)


class LazyModel:
    """A model that loads on first use (`get()`), so work found in a cache loads nothing.
    `loader(name, dtype, reporter)` defaults to `load`."""

    def __init__(self, name: str, dtype: str = "auto", *, reporter: Reporter = SILENT,
                 loader: Callable[..., ForwardModel] | None = None):
        self.name = name
        self.dtype = dtype
        self.reporter = reporter
        self.loader = loader or (lambda n, d, reporter: load(n, d, reporter=reporter))
        self._model: ForwardModel | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> ForwardModel:
        if self._model is None:
            self._model = self.loader(self.name, self.dtype, reporter=self.reporter)
        return self._model

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None


# --------------------------------------------------------------------------------------------
# forward passes


class _StopForward(Exception):
    """Raised by the hook on the deepest layer read: the rest of the pass is not needed."""


def _decoder_layers(model: Any):
    """The model's stack of decoder layers (a ModuleList), through a PEFT wrapper too."""
    import torch

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return layers
    count = model.config.get_text_config().num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}",
                     "hidden states need a decoder-only causal LM (Llama, Qwen, Mistral, ...)")


def _final_norm(model: Any):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("norm", "final_layernorm", "ln_f"):
        module = getattr(decoder, name, None)
        if module is not None:
            return module
    return None


def layer_states(model: Any, input_ids, attention_mask, layers: Sequence[int], *,
                 stop_early: bool = True) -> dict[int, Any]:
    """One batch through the decoder: {layer: hidden states [batch, tokens, hidden]}, stopping
    after the deepest layer in `layers` unless `stop_early` is False (then every layer runs)."""
    decoder_layers = _decoder_layers(model)
    n = len(decoder_layers)
    if not layers or min(layers) < 0 or max(layers) > n:
        raise UsageError(f"layers {sorted(layers)} are outside 0..{n}", f"the model has {n} layers")
    wanted = set(layers)
    deepest = max(wanted)
    captured: dict[int, Any] = {}
    handles = []

    def keep(index: int, stop: bool):
        def hook(_module, _args, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
            if stop:
                raise _StopForward
        return hook

    stop_at = deepest if stop_early and deepest < n else None
    norm = _final_norm(model)
    try:
        if 0 in wanted:
            handles.append(model.get_input_embeddings().register_forward_hook(keep(0, stop_at == 0)))
        for index in sorted(wanted - {0}):
            if index == n and norm is not None:
                handles.append(norm.register_forward_hook(keep(n, False)))
            else:
                handles.append(decoder_layers[index - 1].register_forward_hook(keep(index, index == stop_at)))
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        try:
            decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def pooled_states(fm: ForwardModel, sequences: Sequence[Sequence[int]],
                  spans: Sequence[Mapping[str, Span]], layers: Sequence[int], *, batch_size: int = 8,
                  stop_early: bool = True, progress: Advance | None = None) -> dict[str, "np.ndarray"]:
    """Per row and layer, the mean hidden state over each named span of that row.

    `sequences` are token ids (already cut to length); `spans[i]` maps a name ("response",
    "last_prompt", ...) to (start, end) in row i, end exclusive, non-empty. Returns
    {name: float32 array [rows, len(layers), hidden]}, rows in input order.
    """
    import numpy as np
    import torch

    if len(spans) != len(sequences):
        raise ValueError("one span mapping per sequence")
    names = list(spans[0]) if spans else []
    layer_list = list(layers)
    out = {name: np.zeros((len(sequences), len(layer_list), fm.hidden_size), dtype=np.float32)
           for name in names}
    for i, (seq, row) in enumerate(zip(sequences, spans)):
        for name, (start, end) in row.items():
            if not 0 <= start < end <= len(seq):
                raise ValueError(f"row {i}: span {name} ({start}, {end}) is empty or outside its "
                                 f"{len(seq)} tokens")
    tok = fm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    device = fm.device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # similar lengths share a batch
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        width = max(len(sequences[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # right padding: positions as when the row runs alone
            ids[row, :len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
            mask[row, :len(sequences[i])] = 1
        with torch.inference_mode():
            states = layer_states(fm.model, ids.to(device), mask.to(device), layer_list, stop_early=stop_early)
            for k, layer in enumerate(layer_list):
                hidden = states[layer].float()
                for row, i in enumerate(batch):
                    for name, (start, end) in spans[i].items():
                        out[name][i, k] = hidden[row, start:end].mean(0).cpu().numpy()
        del states
        if progress:
            progress(len(batch))
    return out
