"""`--executor ray` on a local 2-CPU Ray vs the local executor: label (rules) on 200k rows and
embed (ONNX default) on 20k rows.

The rows: instructions and responses of the real safety pools and Alpaca answers, repeated to
ROWS distinct rows (each repeat gets a number appended, so neither the embedding cache nor its
dedup of equal texts can skip work; embed runs with --no-cache). The input is a shard folder of
4 Parquet files. Each command runs end to end through the CLI (start, read, stage, write): the
local executor reads the folder as one table and writes one file; the Ray executor joins a Ray
started once beforehand with 2 CPUs, bound to 127.0.0.1 (its start-up is timed separately) and
its workers read their slices of the files and write the shards. Prints each time, the load
average beside it, and the ratio local / Ray (goal >= 0.9: Ray's overhead must not eat a single
machine's throughput). Embed defaults to 20k rows so the run takes minutes on 2 cores (the
local executor embeds ~70 rows/s there); pass EMBED_ROWS for more.

Also printed: the fixed cost of a Ray run, i.e. the same command on 100 rows through Ray minus
through the local executor (joining the cluster, importing Ray Data, starting the workers and
loading their models), which a run pays once whatever its size; and each executor's throughput
past its fixed cost (rows beyond 100 over the seconds beyond the 100-row run), as the ratio the
goal is about (Ray's overhead must not eat a single machine's throughput).

Run: .venv/bin/python bench/bench_ray.py [ROWS] [EMBED_ROWS] (REPEAT=n: best of n runs each)
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
SMALL = 100  # rows of the runs that measure a run's fixed cost


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


def load() -> str:
    return "load %.2f" % os.getloadavg()[0]


def timed(*args: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    best = None
    for _ in range(int(os.environ.get("REPEAT", "1"))):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "safesample", *args, "-q"], env=env, capture_output=True,
                              text=True)
        if proc.returncode:
            raise SystemExit(f"failed: safesample {' '.join(args)}\n{proc.stderr[-3000:]}")
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return best


def main() -> int:
    import ray

    from safesample.executors import ray as rayx
    from safesample.tables.shards import write_sharded

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    embed_rows = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp_path = Path(tmp)
        os.environ["SAFESAMPLE_CACHE_DIR"] = str(tmp_path / "cache")
        table = pairs(max(rows, embed_rows))
        write_sharded(table.slice(0, rows), str(tmp_path / "in") + "/", rows_per_shard=-(-rows // 4))
        write_sharded(table.slice(0, embed_rows), str(tmp_path / "ein") + "/", rows_per_shard=-(-embed_rows // 4))
        start = time.perf_counter()
        address = rayx.start_local(num_cpus=2, log_to_driver=False, logging_level=logging.ERROR)
        startup = time.perf_counter() - start
        ray_args = ("--executor", "ray", "--ray-address", address)
        print(f"ray start-up (local Ray, 2 CPUs, at {address}): {startup:.1f} s ({load()})", flush=True)
        # Warm-up: the ONNX export is made and cached once.
        timed("embed", str(tmp_path / "ein"), "--limit", "200", "--no-cache", "-o", str(tmp_path / "w.parquet"))
        fixed = {}
        for cmd, src, opts in [("label", "in", ("--all-harmful",)), ("embed", "ein", ("--no-cache",))]:
            small = ("--limit", str(SMALL))
            local = timed(cmd, str(tmp_path / src), *opts, *small, "-o", str(tmp_path / "s.local.parquet"))
            remote = timed(cmd, str(tmp_path / src), *opts, *small, *ray_args, "-o", str(tmp_path / "s.ray") + "/")
            fixed[cmd] = (local, remote)
            print(f"{cmd} on {SMALL} rows: local {local:.1f} s, ray {remote:.1f} s: a Ray run's fixed cost "
                  f"{remote - local:+.1f} s ({load()})", flush=True)
        for stage, src, extra in [("label (rules)", "in", ("label", "--all-harmful")),
                                  ("embed (onnx)", "ein", ("embed", "--no-cache"))]:
            cmd, *opts = extra
            local = timed(cmd, str(tmp_path / src), *opts, "-o", str(tmp_path / f"{cmd}.local.parquet"))
            local_load = load()
            remote = timed(cmd, str(tmp_path / src), *opts, *ray_args, "-o", str(tmp_path / f"{cmd}.ray") + "/")
            n = rows if src == "in" else embed_rows
            print(f"{stage}: {n} rows; local {local:.1f} s ({n / local:,.0f} rows/s, {local_load}), "
                  f"ray 2 CPUs {remote:.1f} s ({n / remote:,.0f} rows/s, {load()}); "
                  f"end to end local/ray = {local / remote:.2f}x", flush=True)
            # Throughput past the fixed cost: the rows beyond SMALL over the seconds beyond the
            # SMALL-row run, per executor.
            small_local, small_ray = fixed[cmd]
            rate_local = (n - SMALL) / max(1e-6, local - small_local)
            rate_ray = (n - SMALL) / max(1e-6, remote - small_ray)
            print(f"  throughput past the fixed cost: local {rate_local:,.0f} rows/s, ray {rate_ray:,.0f} rows/s; "
                  f"ratio ray/local = {rate_ray / rate_local:.2f}x (goal >= 0.9x)", flush=True)
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
