"""The ONNX export of a sentence-transformers model's transformer, once per model.

`torch.onnx.export(..., dynamo=True)` of the transformer alone (token embeddings out; pooling and
normalisation stay in numpy, as the model's config says), fused with ONNX Runtime's transformer
optimiser (SkipLayerNormalization, BiasGelu) and cached under `cache_dir()/onnx/`, keyed by the
model, the export recipe and the runtimes. It stays in float32 on purpose (see
`safesample.backends.embedding`: int8 made a text's vector depend on its batch mates).

What it needs of the model comes in as arguments (its name, fingerprint and folder; the
tokenizer and max length the embedding backend reads from the model's config), so this module
imports nothing of `embedding`, which imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from safesample.reporter import SILENT, Reporter

# Bump when the export recipe changes, so older cached exports (and vectors) are not reused.
# 2: float32 with fused layers (was int8 dynamic quantisation, batch dependent).
EXPORT_FORMAT = 2
ONNX_FILE = "model.fp32.onnx"


class ExportedModel(Protocol):
    """What the export needs of a model (`embedding.EmbeddingModel` has it)."""

    name: str  # recorded in meta.json and the cache key
    fingerprint: str  # changes when the files change: a new export
    path: str  # the model's folder


def export_dir(model: ExportedModel) -> Path:
    """Where the export of `model` is cached (keyed by the model, the recipe and the runtimes)."""
    from safesample.cache import cache_dir, settings_key

    key = settings_key(model=model.name, fingerprint=model.fingerprint, format=EXPORT_FORMAT,
                       onnxruntime=package_version("onnxruntime"), torch=package_version("torch"))
    return cache_dir() / "onnx" / key


def package_version(package: str) -> str:
    """The installed version of `package`, or "none"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def ensure_export(model: ExportedModel, tokenizer: Any, max_length: int, *, reporter: Reporter = SILENT) -> Path:
    """The folder of the float32 ONNX export of `model`, exporting it first when not cached
    (`tokenizer`: the model's `tokenizers` tokenizer, padding to the longest text and cutting at
    `max_length`, the model's max_seq_length)."""
    dest = export_dir(model)
    if (dest / "meta.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    reporter.info(f"exporting {model.name} to ONNX float32 (once; cached in {dest.parent})")
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=dest.parent))
    try:
        meta = export_onnx(Path(model.path), work, tokenizer, max_length)
        (work / "meta.json").write_text(json.dumps({**meta, "model": model.name, "precision": "fp32",
                                                    "format": EXPORT_FORMAT}))
        try:
            os.rename(work, dest)  # atomic: another process either sees the whole export or none
        except OSError:
            if not (dest / "meta.json").exists():  # not a concurrent export that won the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def export_onnx(folder: Path, work: Path, tokenizer: Any, max_length: int) -> dict:
    """Export the transformer of the model in `folder` to `work/model.fp32.onnx`.

    Only the transformer is exported (token embeddings out); pooling and normalisation run in
    numpy, as the model's own config says. The graph is fused with ONNX Runtime's transformer
    optimiser where it can (it stays float32: every op works row by row, nothing per batch).
    """
    import logging
    import warnings

    import torch
    from transformers import AutoModel

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    transformer = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    import inspect

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
    fp32 = work / "model.onnx"
    logging.disable(logging.WARNING)  # the exporter and quantiser log hints meant for their developers
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(TokenEmbeddings(transformer), tuple(example), str(fp32), dynamo=True,
                              dynamic_shapes={"args": tuple(dynamic[n] for n in names)},
                              input_names=names, output_names=["token_embeddings"],
                              verbose=False, report=False)
            fused = _fuse(fp32, work / ONNX_FILE, transformer.config)
    finally:
        logging.disable(logging.NOTSET)
    for path in work.glob("model.onnx*"):
        path.unlink()
    return {"dim": int(transformer.config.hidden_size), "inputs": names, "fused": fused,
            "sha256": _file_hash(work / ONNX_FILE)}


def _fuse(src: Path, dest: Path, config) -> bool:
    """Fuse layer norms and GELUs (ORT's transformer optimiser); a plain copy when it cannot."""
    import onnx

    try:
        from onnxruntime.transformers.optimizer import optimize_model

        heads = int(getattr(config, "num_attention_heads", 0) or 0)
        optimized = optimize_model(str(src), model_type="bert", num_heads=heads,
                                   hidden_size=int(config.hidden_size))
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
