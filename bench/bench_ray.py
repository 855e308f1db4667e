"""`--executor ray` on a local 2-CPU Ray vs the local executor: label (rules) and embed, 200k rows.

The rows: instructions and responses of the real safety pools and Alpaca answers, repeated to
ROWS distinct rows (each repeat gets a number appended, so neither the embedding cache nor its
dedup of equal texts can skip work; embed runs with --no-cache). The input is a shard folder of
4 Parquet files. Each command runs end to end through the CLI (read, stage, write): the local
executor reads the folder as one table and writes one file; the Ray executor joins a Ray
started once beforehand with 2 CPUs (its start-up is timed separately) and writes shards from
its workers. Prints each time and the ratio local / Ray (goal >= 0.9: Ray's overhead must not
eat a single machine's throughput).

Run: .venv/bin/python bench/bench_ray.py [ROWS] [EMBED_ROWS]
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SAFESAMPLE_SHARED_DATA", REPO.parent / "shared" / "data"))


def pairs(rows: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = []
    for name, inst, resp in [("safety_tuned_llamas", "instruction", "response"),
                             ("do_not_answer", "instruction", "response"),
                             ("alpaca_gpt4_demo", "instruction", "output")]:
        path = DATA / name / f"{name}.parquet"
        if not path.exists():
            raise SystemExit(f"missing {path}; set SAFESAMPLE_SHARED_DATA")
        t = pq.read_table(path, columns=[inst, resp])
        base += [(a, b) for a, b in zip(t.column(0).to_pylist(), t.column(1).to_pylist()) if a and b]
    base = list(dict.fromkeys(base))
    out = [(a, b) if i < len(base) else (f"{a} ({i // len(base)})", f"{b} ({i // len(base)})")
           for i, (a, b) in enumerate((base * (rows // len(base) + 1))[:rows])]
    return pa.table({"id": [f"r{i}" for i in range(rows)], "instruction": [a for a, _ in out],
                     "response": [b for _, b in out]})


def timed(*args: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "safesample", *args, "-q"], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"failed: safesample {' '.join(args)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> int:
    import ray

    from safesample.shards import write_sharded

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    embed_rows = int(sys.argv[2]) if len(sys.argv) > 2 else rows
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp_path = Path(tmp)
        os.environ["SAFESAMPLE_CACHE_DIR"] = str(tmp_path / "cache")
        table = pairs(max(rows, embed_rows))
        write_sharded(table.slice(0, rows), str(tmp_path / "in") + "/", rows_per_shard=-(-rows // 4))
        write_sharded(table.slice(0, embed_rows), str(tmp_path / "ein") + "/", rows_per_shard=-(-embed_rows // 4))
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        startup = time.perf_counter() - start
        address = ray.get_runtime_context().gcs_address
        ray_args = ("--executor", "ray", "--ray-address", address)
        print(f"ray start-up (ray.init, 2 CPUs): {startup:.1f} s")
        # Warm-up: the ONNX export is made and cached once, and Ray's workers start.
        timed("embed", str(tmp_path / "ein"), "--limit", "200", "--no-cache", "-o", str(tmp_path / "w.parquet"))
        results = {}
        for stage, src, extra in [("label (rules)", "in", ("label", "--all-harmful")),
                                  ("embed (onnx)", "ein", ("embed", "--no-cache"))]:
            cmd, *opts = extra
            local = timed(cmd, str(tmp_path / src), *opts, "-o", str(tmp_path / f"{cmd}.local.parquet"))
            remote = timed(cmd, str(tmp_path / src), *opts, *ray_args, "-o", str(tmp_path / f"{cmd}.ray") + "/")
            n = rows if src == "in" else embed_rows
            results[stage] = (n, local, remote)
            print(f"{stage}: {n} rows; local {local:.1f} s ({n / local:,.0f} rows/s), "
                  f"ray 2 CPUs {remote:.1f} s ({n / remote:,.0f} rows/s); ratio local/ray = {local / remote:.2f}x "
                  f"(goal >= 0.9x)")
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
