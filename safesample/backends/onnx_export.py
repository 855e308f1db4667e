"""The ONNX export of a sentence-transformers model's transformer: made once, at install, verified
on every load.

**Where it lives.** `make install` runs `python -m safesample.backends.onnx_install`, which writes
the export of the default model under `<venv>/share/safesample/onnx/<key>/` (or
`$SAFESAMPLE_ONNX_DIR/<key>/`), so no user's first `embed` pays for it. The key names the model
(its files' fingerprint), the export recipe and the onnxruntime version: another model, recipe or
runtime finds no folder and gets its own. A model that has none (another model, a runtime
upgraded since the install) is exported on first use into the cache (`cache_dir()/onnx/<key>/`)
with a progress line; when the cache folder cannot be written (read-only, a file, a link into a
system folder) into a temporary folder, removed at exit, with a warning.

**Verified on load.** `meta.json` records each file's sha256; a load hashes the bytes it hands to
onnxruntime. A file that does not match (a bit flipped on disk, a half-copied folder) is reported
with a warning and rebuilt: from the verified float32 file when only the int8 one is damaged
(seconds), else by a new export.

**The recipe** (`EXPORT_FORMAT`): `torch.onnx.export(..., dynamo=True)` of the transformer alone
(token embeddings out; pooling and normalisation stay in numpy, as the model's config says), with
eager attention (plain MatMul/Softmax, fewer nodes than the exported SDPA); ONNX Runtime's
transformer optimiser fuses the GELUs (`model.fp32.onnx`); then every weight MatMul becomes an
int8 product with per-token scales (`model.int8.onnx`, `onnx_int8`), batch-invariant and ~2.3x
faster. Layer norms are *not* fused into SkipLayerNormalization, here or at session load
(`DISABLED_OPTIMIZERS`): in onnxruntime 1.32 on CPU that kernel ran 6.6x slower than the
Add + LayerNormalization it replaces and took a fifth of the model's time.

What it needs of the model comes in as arguments (name, fingerprint, folder; the tokenizer and
max length the embedding backend reads from the model's config), so this module imports nothing
of `embedding`, which imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

from safesample.errors import ModelError
from safesample.reporter import SILENT, Reporter

# Bump when the export recipe changes, so older exports (and the vectors cached from them) are
# not reused. 2: float32 with fused layers (was int8 dynamic quantisation, batch dependent).
# 3: eager attention, no SkipLayerNormalization, plus the per-token int8 file.
EXPORT_FORMAT = 3
FILES = {"int8": "model.int8.onnx", "fp32": "model.fp32.onnx"}
PRECISIONS = tuple(FILES)  # the first is the default
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
ENV_DIR = "SAFESAMPLE_ONNX_DIR"
# Texts the int8 file is checked on at export (it must stay within this cosine of float32).
_CHECK_TEXTS = ["How do I pick a lock?", "Write a short poem about the sea and the wind.", "Hi", "",
                "Explain, step by step, how a bill becomes a law in the United States, and name two ways "
                "it can fail on the way.", "I can't help with that request, but here is some general "
                "safety information instead."]
_MIN_COSINE = 0.99


class ExportedModel(Protocol):
    """What the export needs of a model (`embedding.EmbeddingModel` has it)."""

    name: str  # recorded in meta.json and the key
    fingerprint: str  # changes when the files change: a new export
    path: str  # the model's folder


def package_version(package: str) -> str:
    """The installed version of `package`, or "none"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def export_key(model: ExportedModel) -> str:
    """The folder name of `model`'s export: the model, the recipe and the runtime that runs it."""
    from safesample.cache import settings_key

    return settings_key(model=model.name, fingerprint=model.fingerprint, format=EXPORT_FORMAT,
                        onnxruntime=package_version("onnxruntime"))


def installed_root() -> Path:
    """Where `make install` puts exports: $SAFESAMPLE_ONNX_DIR, else <sys.prefix>/share/safesample/onnx."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(sys.prefix) / "share" / "safesample" / "onnx"


def cache_root() -> Path:
    """Where exports made at run time go (the user's cache folder)."""
    from safesample.cache import cache_dir

    return cache_dir() / "onnx"


def _candidates(model: ExportedModel) -> list[Path]:
    key = export_key(model)
    return [cache_root() / key, installed_root() / key]


def find_export(model: ExportedModel) -> Path | None:
    """The folder of an existing export of `model` (not verified yet), or None."""
    for folder in _candidates(model):
        if _is_file(folder / "meta.json"):
            return folder
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a component is a file, or unreadable
        return False


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _verified(folder: Path, precision: str) -> tuple[bytes, dict] | None:
    """(the model file's bytes, meta.json) when its sha256 is the one meta.json records."""
    import hashlib

    meta = _read_meta(folder)
    entry = (meta.get("files") or {}).get(precision)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return None
    try:
        data = (folder / str(entry.get("name"))).read_bytes()
    except OSError:
        return None
    return (data, meta) if hashlib.sha256(data).hexdigest() == entry["sha256"] else None


def verify_export(folder: Path) -> bool:
    """Whether `folder` holds a whole export whose every file matches its meta.json."""
    return _is_file(folder / "meta.json") and all(_verified(folder, p) is not None for p in FILES)


def load_export(model: ExportedModel, precision: str, tokenizer: Any, max_length: int, *,
                reporter: Reporter = SILENT) -> tuple[bytes, dict]:
    """The verified bytes of `model`'s export in `precision` and its meta.json, exporting first
    when there is none (a progress line) and rebuilding a damaged one (a warning).

    `tokenizer`: the model's `tokenizers` tokenizer, padding to the longest text and cutting at
    `max_length`, the model's max_seq_length."""
    if precision not in FILES:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    damaged: Path | None = None
    for folder in _candidates(model):
        if not _is_file(folder / "meta.json"):
            continue
        found = _verified(folder, precision)
        if found is not None:
            return found
        reporter.warn(f"the ONNX export of {model.name} in {folder} is damaged ({FILES[precision]} does not "
                      "match the sha256 in its meta.json); rebuilding it")
        damaged = damaged or folder
    dest = build_export(model, tokenizer, max_length, reporter=reporter, reuse=damaged)
    found = _verified(dest, precision)
    if found is None:
        raise ModelError(f"the new ONNX export in {dest} does not match its own meta.json",
                         "the disk may be failing; pass --backend torch")
    return found


def build_export(model: ExportedModel, tokenizer: Any, max_length: int, *, root: Path | None = None,
                 reporter: Reporter = SILENT, reuse: Path | None = None) -> Path:
    """Export `model` into `root` (default: the cache, else a temporary folder) and return its
    folder. `reuse`: a damaged export whose float32 file, if it still verifies, saves the torch
    export. Atomic: the folder appears whole (a concurrent export that wins the race is kept)."""
    key = export_key(model)
    parent, temporary = _writable_root(root, reporter)
    dest = parent / key
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=parent))
    try:
        fp32 = _verified(reuse, "fp32") if reuse is not None else None
        steps = 2 if fp32 else 4
        how = "rebuilding the int8 file from the verified float32 one" if fp32 else \
            "once per model and onnxruntime version; about a minute on 2 cores"
        reporter.info(f"exporting {model.name} to ONNX ({how}) into {dest}")
        with reporter.progress(steps, f"exporting {model.name} to ONNX", unit="steps") as advance:
            if fp32 is not None:
                (work / FILES["fp32"]).write_bytes(fp32[0])
                meta = {k: v for k, v in fp32[1].items() if k != "files"}
            else:
                try:
                    meta = export_onnx(Path(model.path), work, tokenizer, max_length, advance=advance)
                except (ImportError, MemoryError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways on odd models
                    raise ModelError(f"cannot export {model.name} to ONNX: {str(exc).splitlines()[0][:200]}",
                                     "pass --backend torch") from exc
            meta.update(_int8_file(work, tokenizer, advance))
            meta.update(model=model.name, fingerprint=model.fingerprint, format=EXPORT_FORMAT,
                        onnxruntime=package_version("onnxruntime"), torch=package_version("torch"),
                        files={p: {"name": name, "sha256": _file_hash(work / name)} for p, name in FILES.items()})
            (work / "meta.json").write_text(json.dumps(meta, indent=1))
            advance(1)
        _move_into_place(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if temporary:
        import atexit

        atexit.register(shutil.rmtree, parent, True)
    check = meta.get("int8_check", {})
    if check.get("min_cosine", 1.0) < _MIN_COSINE:
        reporter.warn(f"the int8 export of {model.name} strays from its float32 export (cosine "
                      f"{check['min_cosine']:.4f} on {check['texts']} texts); pass --backend torch for exact vectors")
    return dest


def _writable_root(root: Path | None, reporter: Reporter) -> tuple[Path, bool]:
    """(a folder to export into, whether it is a temporary one)."""
    want = root or cache_root()
    try:
        want.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=want))
        probe.rmdir()
        return want, False
    except OSError as exc:
        if root is not None:  # an explicit destination (the install step): its error is the answer
            raise
        reason = exc.strerror or str(exc)
    folder = Path(tempfile.mkdtemp(prefix="safesample-onnx-"))
    reporter.warn(f"cannot write the cache folder {str(want.parent)!r} ({reason}); exporting the embedding "
                  f"model into a temporary folder, removed at exit (set SAFESAMPLE_CACHE_DIR to a writable "
                  "folder to keep it)")
    return folder, True


def _move_into_place(work: Path, dest: Path) -> None:
    """Rename `work` to `dest`; a damaged `dest` is moved aside first; a valid one that a
    concurrent export put there first is kept."""
    if verify_export(dest):
        return  # another process finished the same export first
    if dest.exists():
        aside = dest.with_name(f".{dest.name}.damaged-{os.getpid()}")
        os.rename(dest, aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(work, dest)  # atomic: another process sees the whole export or none
    except OSError:
        if not (dest / "meta.json").exists():
            raise


def _int8_file(work: Path, tokenizer: Any, advance) -> dict:
    """Write the per-token int8 file next to the float32 one (smoothed with the feature
    magnitudes of the calibration texts) and check it against float32."""
    from safesample.backends.onnx_int8 import quantize_per_token

    count = quantize_per_token(work / FILES["fp32"], work / FILES["int8"], _calibrate(work / FILES["fp32"], tokenizer))
    advance(1)
    vectors = {p: _run(work / FILES[p], tokenizer) for p in FILES}
    a, b = vectors["int8"], vectors["fp32"]
    cosine = (a * b).sum(axis=1) / (_norm(a) * _norm(b))
    return {"int8_matmuls": count, "int8_check": {"texts": len(a), "min_cosine": round(float(cosine.min()), 6)}}


def _calibrate(fp32: Path, tokenizer: Any) -> dict:
    """Per input of a weight MatMul: its features' largest magnitudes over the real (unpadded)
    tokens of `onnx_int8.CALIBRATION_TEXTS`, read from the float32 model."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from safesample.backends.onnx_int8 import CALIBRATION_TEXTS, smoothing_inputs

    names = smoothing_inputs(fp32)
    probe = onnx.load(str(fp32))
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = new_session(probe.SerializeToString(), threads=1)
    inputs = {i.name for i in session.get_inputs()}
    absmax: dict = {}
    for start in range(0, len(CALIBRATION_TEXTS), 8):
        enc = tokenizer.encode_batch(list(CALIBRATION_TEXTS[start:start + 8]))
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        outs = session.run(names, {k: v for k, v in feeds.items() if k in inputs})
        for name, x in zip(names, outs):
            real = np.abs(x.reshape(*mask.shape, -1)[mask.astype(bool)]).max(axis=0)
            absmax[name] = np.maximum(absmax.get(name, 0), real)
    return absmax


def _norm(x):
    import numpy as np

    return np.maximum(np.linalg.norm(x, axis=1), 1e-12)


def _run(path: Path, tokenizer: Any):
    """Mean-pooled token embeddings of the check texts (the sanity check, not the encoder)."""
    import numpy as np

    session = new_session(path.read_bytes(), threads=1)
    enc = tokenizer.encode_batch(_CHECK_TEXTS)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    hidden = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)


def new_session(model: bytes, threads: int | None = None):
    """An onnxruntime CPU session on the model's bytes, with the graph optimisations we keep."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; ORT's warnings are not for end users
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:  # else one thread per core (ORT's default)
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def export_onnx(folder: Path, work: Path, tokenizer: Any, max_length: int, advance=None) -> dict:
    """Export the transformer of the model in `folder` to `work/model.fp32.onnx` (fused GELUs,
    unfused layer norms); returns what meta.json records about it."""
    import inspect
    import logging
    import warnings

    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:  # plain MatMul/Softmax attention: a smaller graph than the exported SDPA
        transformer = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    except (TypeError, ValueError):
        transformer = AutoModel.from_pretrained(str(folder), local_files_only=True)
    transformer.eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(transformer.forward).parameters:
        names.append("token_type_ids")

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).last_hidden_state

    # Real, padded example inputs: constant or unpadded ones let the exporter specialise the
    # attention mask away, and the graph then silently disagrees with the model on real text.
    encodings = tokenizer.encode_batch(["Write a short poem about the sea and the wind.", "How do I pick a lock?",
                                        "Hi"])
    example = [torch.tensor([e.ids for e in encodings]), torch.tensor([e.attention_mask for e in encodings]),
               torch.tensor([e.type_ids for e in encodings])][:len(names)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=max(max_length, example[0].shape[1]))
    dynamic = {name: {0: batch, 1: seq} for name in names}
    raw = work / "raw.onnx"
    logging.disable(logging.WARNING)  # the exporter and optimiser log hints meant for their developers
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(TokenEmbeddings(transformer), tuple(example), str(raw), dynamo=True,
                              dynamic_shapes={"args": tuple(dynamic[n] for n in names)},
                              input_names=names, output_names=["token_embeddings"],
                              verbose=False, report=False, external_data=False)
            if advance:
                advance(1)
            fused = _fuse(raw, work / FILES["fp32"], transformer.config)
            if advance:
                advance(1)
    finally:
        logging.disable(logging.NOTSET)
    for path in work.glob("raw.onnx*"):
        path.unlink()
    return {"dim": int(transformer.config.hidden_size), "inputs": names, "fused": fused}


def _fuse(src: Path, dest: Path, config) -> bool:
    """Fuse the GELUs (ORT's transformer optimiser; layer norms left alone, see the module
    docstring); a plain copy when it cannot."""
    import onnx

    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        options.enable_skip_layer_norm = False
        heads = int(getattr(config, "num_attention_heads", 0) or 0)
        optimized = optimize_model(str(src), model_type="bert", num_heads=heads,
                                   hidden_size=int(config.hidden_size), optimization_options=options)
        optimized.save_model_to_file(str(dest))
        return True
    except Exception:  # noqa: BLE001 - fusion is an optimisation; the plain graph is correct
        onnx.save(onnx.load(str(src)), str(dest))
        return False


def _file_hash(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
