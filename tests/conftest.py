"""Shared test helpers: run the real CLI in a subprocess, locate the shared datasets, small tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAFESAMPLE_SHARED_DATA", REPO.parent / "shared" / "data"))
# CI always has the datasets beside the clone: there a missing folder is a failure, not a skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m safesample ARGS` for real; stdout as bytes, stderr as text."""
    full_env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "safesample", *args], input=stdin,
                          capture_output=True, env=full_env, timeout=timeout, **kwargs)
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    return proc


def shell(script: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a bash script under pipefail, with this interpreter's `safesample` first on PATH."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def shared_dataset(name: str) -> Path:
    """A real dataset from shared/data; skips the test on a clone without it (fails under CI=true)."""
    path = SHARED_DATA / name / f"{name}.parquet"
    if not path.exists():
        need_shared_data(f"dataset {name!r}")
    return path


def need_shared_data(what: str = "the shared datasets") -> Path:
    """Skip (or, under CI=true, fail) when shared/data is absent; returns its folder."""
    if not SHARED_DATA.is_dir() or not any(SHARED_DATA.iterdir()):
        message = (f"needs {what} from {SHARED_DATA}, which is absent; set SAFESAMPLE_SHARED_DATA "
                   "to the shared/data folder to run it")
        if IN_CI:
            pytest.fail(message + " (CI=true: CI always has it)")
        pytest.skip(message)
    return SHARED_DATA


def no_output_left(folder: Path) -> list[str]:
    """Files a failed command left behind in `folder` (should be none)."""
    return sorted(p.name for p in folder.iterdir())


def write_columns(path: Path, **columns) -> Path:
    """A Parquet file of the given columns (lists), at `path`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def failed_cleanly(proc, code: int, folder: Path, *words: str) -> None:
    """The command failed with `code`, an error: + hint: pair naming each of `words`, no traceback,
    and no output (nothing named out* or .out* in `folder`)."""
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("error: ") and "\nhint: " in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert not [f for f in no_output_left(folder) if f.startswith(("out", ".out"))]


@pytest.fixture
def pairs_table(tmp_path: Path) -> Path:
    """A small (instruction, response) table as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": ["a", "b", "c"],
        "instruction": ["How do I pick a lock?", "Write a poem about rain.", "Insult my coworker."],
        "response": ["I can't help with that.", "Rain on the roof...", "I won't write insults."],
    })
    path = tmp_path / "pairs.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture
def offline_models(tmp_path_factory, monkeypatch) -> None:
    """No model hub, and one generation/verdict cache for the whole test session."""
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A randomly initialised tiny Llama with a chat template (built once per test module)."""
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny")
