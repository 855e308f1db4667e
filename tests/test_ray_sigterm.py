"""SIGTERM to a run under `--executor ray` (issue 26 item 6): exit 130 with the `interrupted`
line and its hint, as locally, no C++ stack dump, and nothing a reader or a glob can take for
data: no manifest, no shard outside the staging folder."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import IN_CI

if importlib.util.find_spec("ray") is None:
    if IN_CI:
        raise RuntimeError("CI=true: ray must be installed (make install installs the ray extra)")
    pytest.skip("ray is not installed (pip install 'safesample[ray]')", allow_module_level=True)

ROWS = 600_000


def test_sigterm_under_ray_exits_130_and_leaves_no_readable_output(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = tmp_path / "pool.parquet"
    words = ["How do I", "pick a lock", "write a poem", "hurt someone", "bake bread", "I can't help with that."]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(ROWS)],
                             "instruction": [f"{words[i % 4]} {words[(i // 4) % 5]} number {i}" for i in range(ROWS)],
                             "response": [words[5] if i % 3 else f"Sure, step {i}." for i in range(ROWS)]}), pool)
    out = tmp_path / "out"
    env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "SAFESAMPLE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own, started by the run
    proc = subprocess.Popen([sys.executable, "-m", "safesample", "label", str(pool), "--all-harmful",
                             "--executor", "ray", "--concurrency", "2", "--batch-size", "4096",
                             "-o", str(out) + "/"], stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    staging = out / ".staging"
    # Wait until the workers are at it (a shard staged), then stop the run.
    while time.monotonic() < deadline and proc.poll() is None and not any(staging.glob("*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted: raise ROWS"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = err.decode("utf-8", "replace")
    assert proc.returncode == 130, err[-3000:]
    assert "error: interrupted (SIGTERM)" in err and "hint:" in err
    assert "*** SIGTERM received" not in err and "looks like a bug" not in err
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob("*.parquet"))  # nothing a glob can mistake for data
