"""The ONNX export of an embedding model (issue 27, issue 26 item 11): made once at install and
used by a fresh cache without exporting; verified on load, a damaged one rebuilt with a warning,
a missing one exported with a progress line; an unwritable cache folder falls back to a temporary
folder; the int8 graph keeps vectors bitwise batch-invariant."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli

TINY_TEXTS = ["How do I pick a lock?", "Write a poem about rain.", "Hi", "", "Explain photosynthesis in simple "
              "words, step by step, for a child of ten who has never heard of chlorophyll."]
CLI_TEXTS = [t for t in TINY_TEXTS if t.strip()]  # `embed` refuses rows without text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tiny_bert import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory) -> Path:
    """An installed-style export of the tiny model (the install step, into its own root)."""
    from safesample.backends.embedding import export_for_install

    root = tmp_path_factory.mktemp("installed")
    folder, made = export_for_install(str(tiny), root)
    assert made and (folder / "meta.json").exists()
    again, made_again = export_for_install(str(tiny), root)  # re-running the install step keeps it
    assert again == folder and not made_again
    return root


def _env(monkeypatch, onnx_root: Path, cache: Path) -> None:
    monkeypatch.setenv("SAFESAMPLE_ONNX_DIR", str(onnx_root))
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(cache))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_installed_export_is_used_and_verified(tiny, tiny_export, tmp_path, monkeypatch):
    from safesample.backends.embedding import load_encoder
    from safesample.backends.onnx_export import FILES
    from safesample.reporter import RecordingReporter

    _env(monkeypatch, tiny_export, tmp_path / "fresh-cache")
    reporter = RecordingReporter()
    encoder = load_encoder(str(tiny), "onnx", reporter=reporter)
    assert reporter.messages == []  # no export, no warning
    assert not (tmp_path / "fresh-cache" / "onnx").exists()
    [folder] = [p for p in tiny_export.iterdir() if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["files"]) == set(FILES) and meta["format"] >= 3
    for entry in meta["files"].values():
        assert _sha(folder / entry["name"]) == entry["sha256"]
    assert encoder.precision == "int8" and encoder.encode(TINY_TEXTS).shape == (5, 32)


@pytest.mark.parametrize("damage", ["int8", "both"])
def test_a_damaged_export_is_rebuilt_with_a_warning(tiny, tiny_export, tmp_path, monkeypatch, damage):
    from safesample.backends.embedding import load_encoder
    from safesample.reporter import RecordingReporter

    root = tmp_path / "installed"
    shutil.copytree(tiny_export, root)
    [folder] = [p for p in root.iterdir() if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    _env(monkeypatch, tiny_export, tmp_path / "cache-ok")
    want = load_encoder(str(tiny), "onnx").encode(TINY_TEXTS)
    for precision in (["int8"] if damage == "int8" else ["int8", "fp32"]):
        path = folder / meta["files"][precision]["name"]
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10  # one flipped bit, same size
        path.write_bytes(bytes(data))
    _env(monkeypatch, root, tmp_path / "cache")
    reporter = RecordingReporter()
    got = load_encoder(str(tiny), "onnx", reporter=reporter).encode(TINY_TEXTS)
    said = " ".join(m for _, m in reporter.messages)
    assert any("damaged" in w for w in reporter.warnings()), reporter.messages
    assert "exporting" in said  # the rebuild says what it does
    if damage == "int8":
        assert "from the verified float32 one" in said  # the fast path: no torch export
    np.testing.assert_array_equal(got, want)  # the rebuilt export gives the same vectors
    rebuilt = tmp_path / "cache" / "onnx" / folder.name
    assert json.loads((rebuilt / "meta.json").read_text())["files"]["int8"]["sha256"] == \
        meta["files"]["int8"]["sha256"]
    quiet = RecordingReporter()  # the next load finds the rebuilt one first: no warning again
    load_encoder(str(tiny), "onnx", reporter=quiet)
    assert quiet.messages == []


def test_a_missing_export_is_made_with_a_progress_line_then_kept(tiny, tmp_path):
    env = {"SAFESAMPLE_ONNX_DIR": str(tmp_path / "none-installed"), "SAFESAMPLE_CACHE_DIR": str(tmp_path / "cache")}
    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"instruction": CLI_TEXTS}), table)
    first = cli("embed", str(table), "--model", str(tiny), "-o", str(tmp_path / "a.parquet"), env=env)
    assert first.returncode == 0, first.stderr
    assert "exporting" in first.stderr and (tmp_path / "cache" / "onnx").is_dir()
    second = cli("embed", str(table), "--model", str(tiny), "--no-cache", "-o", str(tmp_path / "b.parquet"), env=env)
    assert second.returncode == 0, second.stderr
    assert "exporting" not in second.stderr and "warning" not in second.stderr


@pytest.mark.parametrize("cache", ["a file", "a link into a read-only system folder"])
def test_an_unwritable_cache_folder_falls_back_to_a_temporary_one(tiny, tmp_path, cache):
    """Issue 26 item 11: `embed --no-cache` crashed when the cache folder could not be written,
    because the export lives under it; now the export goes to a temporary folder, with a warning."""
    folder = tmp_path / "cache"
    if cache == "a file":
        folder.write_text("not a folder")
    else:
        target = Path("/proc/self/safesample-cache")  # /proc refuses new entries, even to root
        folder.symlink_to(target)
        try:
            (folder / "probe").mkdir(parents=True)
        except OSError:
            pass
        else:
            pytest.skip("this /proc accepts new folders")
    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"instruction": CLI_TEXTS}), table)
    out = tmp_path / "out.parquet"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = cli("embed", str(table), "--model", str(tiny), "--no-cache", "-o", str(out),
               env={"SAFESAMPLE_CACHE_DIR": str(folder), "SAFESAMPLE_ONNX_DIR": str(tmp_path / "none"),
                    "TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "warning: cannot write the cache folder" in said and "temporary folder" in said
    assert pq.read_table(out).num_rows == len(CLI_TEXTS)
    assert not list(tmp.glob("safesample-onnx-*"))  # the temporary export is gone


@pytest.mark.slow
def test_learned_judge_runs_with_an_unwritable_cache_folder(tmp_path):
    """Issue 26 item 11, `label --judge learned`: the installed export needs no cache folder."""
    from safesample.backends.onnx_export import find_export
    from safesample.backends.embedding import resolve_model

    if find_export(resolve_model(None)) is None:
        pytest.skip("no installed export of the default model (run `make install`)")
    folder = tmp_path / "cache"
    folder.write_text("a file where the cache folder should be")
    table = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"instruction": ["How do I pick a lock?", "Write a poem."],
                             "response": ["I can't help with that.", "Rain on the roof."]}), table)
    proc = cli("label", str(table), "--judge", "learned", "--all-harmful", "-o", str(tmp_path / "out.parquet"),
               env={"SAFESAMPLE_CACHE_DIR": str(folder)})
    assert proc.returncode == 0, proc.stderr
    assert "looks like a bug" not in proc.stderr
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 2


@pytest.mark.slow
def test_fresh_cache_uses_the_installed_export_without_torch(tmp_path):
    """The default model's export from `make install`: a fresh cache neither exports nor imports
    torch or transformers."""
    from safesample.backends.embedding import resolve_model
    from safesample.backends.onnx_export import find_export

    if find_export(resolve_model(None)) is None:
        pytest.skip("no installed export of the default model (run `make install`)")
    code = ("import sys; from safesample.backends.embedding import load_encoder; "
            "from safesample.reporter import RecordingReporter; r = RecordingReporter(); "
            "enc = load_encoder(None, 'onnx', reporter=r); v = enc.encode(['hello there']); "
            "print(v.shape, r.messages, [m for m in ('torch', 'transformers', 'sentence_transformers') "
            "if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SAFESAMPLE_CACHE_DIR": str(tmp_path / "fresh")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(1, 384) [] []"
    assert not (tmp_path / "fresh" / "onnx").exists()


def test_per_token_int8_is_bitwise_batch_invariant_on_the_tiny_model(tiny, tiny_export, tmp_path, monkeypatch):
    from safesample.backends.embedding import load_encoder

    _env(monkeypatch, tiny_export, tmp_path / "cache")
    texts = [f"{t} {i}" for i in range(12) for t in TINY_TEXTS]
    for precision in ("int8", "fp32"):
        encoder = load_encoder(str(tiny), "onnx", precision=precision)
        base = encoder.encode(texts, 64)
        for size in (1, 8):
            np.testing.assert_array_equal(encoder.encode(texts, size), base)
        perm = np.random.default_rng(0).permutation(len(texts))
        shuffled = np.empty_like(base)
        shuffled[perm] = encoder.encode([texts[i] for i in perm], 8)
        np.testing.assert_array_equal(shuffled, base)


def test_the_rewrite_replaces_every_weight_matmul_and_keeps_the_rest(tiny_export):
    import onnx

    from safesample.backends.onnx_export import FILES

    [folder] = [p for p in tiny_export.iterdir() if p.is_dir()]
    fp32 = onnx.load(str(folder / FILES["fp32"]))
    int8 = onnx.load(str(folder / FILES["int8"]))
    weights = {i.name for i in fp32.graph.initializer}
    matmuls = [n for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("MatMulIntegerToFloat") == len(matmuls) > 0
    assert "SkipLayerNormalization" not in ops and "DynamicQuantizeLinear" not in ops  # nothing per batch
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["int8_matmuls"] == len(matmuls)
