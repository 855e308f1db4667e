"""Benchmark `safesample cluster` end to end: read -> k-means -> write, wall time and peak memory.

Writes N x DIM float32 unit vectors around 100 hidden centres (default 1,000,000 x 384) to a temp
Parquet file, runs `safesample cluster IN -o OUT --k K` as a subprocess (so the time includes
start-up, reading and writing, and the peak RSS is the command's own), and compares with
scikit-learn's KMeans (k-means++ init) measured in the same run. KMeans on a million rows takes
minutes here, so by default it runs on a sample and its time is extrapolated linearly in rows
(KMeans' cost per iteration is linear in n); the output says so. Targets (issue 4): < 60 s and
< 8 GiB for 1M x 384, k=100.

    python bench/bench_cluster.py              # full size
    python bench/bench_cluster.py --n 100000   # smaller
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGET_S = 60.0
TARGET_GIB = 8.0


def vectors(n: int, dim: int, seed: int, start: int = 0, centres: int = 100) -> np.ndarray:
    """Rows start..start+n of a fixed synthetic pool (each chunk reproducible on its own)."""
    hidden = np.random.default_rng(seed).normal(size=(centres, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, start])
    x = hidden[rng.integers(0, centres, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_pool(path: Path, n: int, dim: int, seed: int, chunk: int = 65_536) -> None:
    """Written chunk by chunk (little memory here) in the layout `safesample embed` writes
    (safesample.tables: vectors plain, other columns zstd, 65,536-row groups)."""
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(path, schema, compression={"id": "zstd", "embedding": "none"},
                          use_dictionary=["id"]) as writer:
        for lo in range(0, n, chunk):
            x = vectors(min(chunk, n - lo), dim, seed, lo)
            emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
            ids = pa.array([f"row{i}" for i in range(lo, lo + len(x))])
            writer.write_table(pa.table([ids, emb], schema=schema))


def run_cluster(src: Path, dest: Path, k: int, algorithm: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GiB, stderr) of one `safesample cluster` run."""
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "safesample", "cluster", str(src), "-o", str(dest), "--k", str(k),
           "--algorithm", algorithm]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"safesample cluster failed:\n{stderr}")
    return wall, usage.ru_maxrss / 2**20, stderr  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--algorithm", default="auto", help="safesample's --algorithm (auto = faiss if installed)")
    parser.add_argument("--sklearn-sample", type=int, default=100_000,
                        help="rows for sklearn KMeans (extrapolated to --n when smaller)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="folder for the temp Parquet files")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-cluster-") as tmp:
        src, dest = Path(tmp) / "pool.parquet", Path(tmp) / "clustered.parquet"
        t = time.perf_counter()
        write_pool(src, args.n, args.dim, args.seed)
        print(f"pool: {args.n:,} x {args.dim} float32 ({src.stat().st_size / 2**30:.2f} GiB Parquet), "
              f"written in {time.perf_counter() - t:.1f} s (not timed below)")

        wall, rss, stderr = run_cluster(src, dest, args.k, args.algorithm)
        out = pq.read_table(dest, columns=["cluster", "cluster_distance", "cluster_size"])
        n_clusters = len(set(out.column("cluster").to_numpy().tolist()))
        ours_sq = float(np.mean(out.column("cluster_distance").to_numpy().astype(np.float64) ** 2))
        algo = next((line.split("(")[1].split(",")[0] for line in stderr.splitlines()
                     if line.startswith("clusters:")), args.algorithm)
        print(f"safesample cluster ({algo}): {wall:.1f} s end to end (read, k-means, write), "
              f"peak RSS {rss:.2f} GiB, {n_clusters} clusters, mean squared distance {ours_sq:.4f}")
        del out

    from sklearn.cluster import KMeans

    m = min(args.n, args.sklearn_sample)
    x = vectors(m, args.dim, args.seed)
    t = time.perf_counter()
    km = KMeans(n_clusters=args.k, random_state=args.seed).fit(x)
    sk_fit = time.perf_counter() - t
    sk_time = sk_fit * args.n / m
    note = "" if m == args.n else f" (measured {sk_fit:.1f} s on {m:,} rows, extrapolated linearly to {args.n:,})"
    print(f"sklearn KMeans (k-means++, fit only, no I/O): {sk_time:.1f} s{note}, "
          f"mean squared distance {km.inertia_ / m:.4f}")

    print(f"ratio: safesample end to end is {sk_time / wall:.1f}x faster than sklearn KMeans' fit alone")
    print(f"targets: {wall:.1f} s vs {TARGET_S:.0f} s ({'met' if wall < TARGET_S else 'MISSED'}), "
          f"{rss:.2f} GiB vs {TARGET_GIB:.0f} GiB ({'met' if rss < TARGET_GIB else 'MISSED'})")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} CPUs"
          + (" (the machine was shared; figures are taken under load)" if load > 1.5 else ""))


if __name__ == "__main__":
    main()
