"""How fast `safesample select` picks from a big pool, end to end (read, select, write).

A synthetic pool of --n rows (default 1,000,000) with 384-d float32 unit embeddings around 100
cluster centres, 14 harm categories, behavior labels, harmful_response flags and cluster
distances, written as Parquet the way the pipeline writes it. Timed: `select --strategy diverse
--budget 1000` against the 3 s target (issue 27), with `--strategy random` in the same run as the
baseline (both as subprocesses, so interpreter start-up and Parquet reading count), and a bare
read of the same file as the floor: decoding the 1.5 GB embedding column takes most of the time
(memory-mapped, row groups decoded in parallel), so the split shows what selection itself costs.
With --arrow the same pool is also timed as an Arrow IPC file, which is memory-mapped and never
decoded: the embedding rows a selection touches are the only ones read. Each figure is the best
of --repeat runs; the load average is printed at the start and the end.

    python bench/bench_select.py            # 1,000,000 rows
    python bench/bench_select.py --n 100000 --arrow
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 3.0
CATEGORIES = ["animal_abuse", "child_abuse", "controversial_topics", "discrimination", "drug_abuse",
              "financial_crime", "hate_speech", "misinformation", "non_violent_unethical", "privacy_violation",
              "self_harm", "sexually_explicit", "terrorism", "violence"]
BEHAVIORS = ["refusal", "explanation", "harmful_compliance", "benign_compliance", "over_refusal"]


def build_pool(n: int, dim: int, path: Path, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa

    from safesample.tables import write_table

    rng = np.random.default_rng(seed)
    k = 100
    centres = rng.standard_normal((k, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster = rng.integers(0, k, n)
    emb = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):  # in blocks, to keep the temporary noise small
        e = min(n, s + step)
        block = centres[cluster[s:e]] + 0.6 * rng.standard_normal((e - s, dim), dtype=np.float32) / np.sqrt(dim)
        emb[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    dist = 1 - np.einsum("ij,ij->i", emb, centres[cluster])
    behavior = rng.choice(BEHAVIORS, n, p=[0.5, 0.3, 0.05, 0.1, 0.05])
    category = rng.choice(CATEGORIES, n)
    table = pa.table({
        "id": pa.array([f"syn-{i:07d}" for i in range(n)]),
        "instruction": pa.array([f"synthetic request {i} about {category[i]}" for i in range(n)]),
        "response": pa.array(["I can't help with that."] * n),
        "category": pa.array(category),
        "behavior": pa.array(behavior),
        "harmful_response": pa.array(behavior == "harmful_compliance"),
        "cluster": pa.array(cluster.astype(np.int32)),
        "cluster_distance": pa.array(dist.astype(np.float32)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim),
    })
    write_table(table, str(path))


def timed(args: list[str], env: dict[str, str], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
        best = min(best, time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{args[:3]} failed ({proc.returncode}):\n{proc.stderr}")
    return best


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="pool rows")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command (best kept)")
    parser.add_argument("--arrow", action="store_true", help="also time the pool as an Arrow IPC file")
    opts = parser.parse_args()
    env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-select-") as tmp:
        pool, out = Path(tmp) / "pool.parquet", Path(tmp) / "picked.parquet"
        start = time.perf_counter()
        build_pool(opts.n, opts.dim, pool)
        print(f"pool: {opts.n:,} rows x {opts.dim}-d, {pool.stat().st_size / 2**20:,.0f} MiB "
              f"(built in {time.perf_counter() - start:.1f} s); {load_line()}")
        # The floor of any command on this pool: start Python and read the table, nothing else.
        read = timed(["-c", "import sys; from safesample.tables import read_table; read_table(sys.argv[1])",
                      str(pool)], env, opts.repeat)
        common = ["-m", "safesample", "select", str(pool), "--budget", str(opts.budget), "-o", str(out), "-q"]
        base = timed([*common, "--strategy", "random"], env, opts.repeat)
        report = Path(tmp) / "sel.json"
        diverse = timed([*common, "--strategy", "diverse", "--report", str(report)], env, opts.repeat)
        rep = json.loads(report.read_text())
        sel, rnd = rep["selection"], rep["random"]
        print(f"read only (start + read)  : {read:6.2f} s (the floor for any command on this file)")
        print(f"select --strategy random  : {base:6.2f} s (baseline; {base - read:+.2f} s over the read)")
        print(f"select --strategy diverse : {diverse:6.2f} s  ratio vs random {diverse / base:4.2f}x; "
              f"{diverse - read:+.2f} s over the read (budget {opts.budget:,}, whole command)")
        print(f"coverage diverse vs random mean: clusters {sel['clusters']} vs {rnd['clusters']}, "
              f"categories {sel['categories']} vs {rnd['categories']}, mean pairwise distance "
              f"{sel['mean_pairwise_distance']:.3f} vs {rnd['mean_pairwise_distance']:.3f}")
        if opts.arrow:
            import pyarrow.parquet as pq

            from safesample.tables import write_table

            arrow = Path(tmp) / "pool.arrow"
            write_table(pq.read_table(pool), str(arrow))
            on_arrow = timed(["-m", "safesample", "select", str(arrow), "--budget", str(opts.budget), "-o", str(out),
                              "-q", "--strategy", "diverse"], env, opts.repeat)
            print(f"select --strategy diverse on the same pool as an Arrow IPC file (memory-mapped): {on_arrow:6.2f} s")
        scale = "" if opts.n == 1_000_000 else f", at {opts.n:,} rows"
        print(f"target {TARGET_S:.0f} s end to end at 1,000,000 rows: {'PASS' if diverse < TARGET_S else 'FAIL'} "
              f"(ratio to target {diverse / TARGET_S:.2f}{scale}); selection alone "
              f"{(diverse - read) / TARGET_S:.2f} of the target")
        print(f"{load_line()} at the end" + (" (a shared machine: wall times include waiting for a CPU)"
                                             if os.getloadavg()[0] > 1.5 else ""))


if __name__ == "__main__":
    main()
