"""Benchmark `safesample embed` against plain `SentenceTransformer.encode`, same model, same texts, same run.

Texts: the instructions of safety_tuned_llamas (2,483 harmful requests) plus benign ones from
alpaca_gpt4_demo and gpteacher, 5,000 in all by default (--n for fewer). Reports:

- rows/s of the embedding itself: safesample's default encoder (ONNX int8 where onnxruntime is
  installed) through `embed_texts` with the cache off, against `SentenceTransformer.encode`
  (model loaded beforehand in both; the one-off ONNX export is timed separately);
- the same end to end: `safesample embed pool.parquet -o out.parquet` as a process (start-up,
  reading, model loading, writing included) with an empty embedding cache;
- min / mean cosine of safesample's vectors (from that output file) to the reference vectors;
- a rerun on the unchanged input (everything from the cache): its speed-up over the first run;
- batch invariance: the max cosine distance between the default encoder's vectors of the same
  texts embedded with batch sizes 1, 8 and 64 (and in another order, i.e. other batch mates).

Targets (issue 18): >= 1.5x rows/s, batch-size difference <= 1e-5 cosine distance, cosine to
torch >= 0.98, rerun >= 20x. On a shared CPU the rows/s figures swing with the load (printed at
the end); --repeat keeps the best of several alternating runs.

    python bench/bench_embed.py           # 5,000 texts
    python bench/bench_embed.py --n 500
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SAFESAMPLE_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO))


def instructions(name: str) -> list[str]:
    return pq.read_table(DATA / name / f"{name}.parquet", columns=["instruction"]).column(0).to_pylist()


def pool_texts(n: int) -> tuple[list[str], int]:
    harmful = instructions("safety_tuned_llamas")[: min(2483, math.ceil(n / 2))]
    benign = (instructions("alpaca_gpt4_demo") + instructions("gpteacher"))[: n - len(harmful)]
    return harmful + benign, len(harmful)


def cli(args: list[str], cache: Path) -> tuple[float, str]:
    env = {**os.environ, "SAFESAMPLE_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "safesample", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"safesample {' '.join(args)} failed:\n{proc.stderr}")
    return wall, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="number of texts (half harmful, half benign)")
    parser.add_argument("--batch-size", type=int, default=64, help="safesample's batch size (its default)")
    parser.add_argument("--st-batch-size", type=int, default=32, help="SentenceTransformer.encode's (its default)")
    parser.add_argument("--invariance-n", type=int, default=300, help="texts for the batch-size check")
    parser.add_argument("--repeat", type=int, default=1, help="time each in-process encoder this many times, "
                        "alternating, and keep the best (less noise on a shared machine)")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"

    from sentence_transformers import SentenceTransformer

    from safesample.backends.embedding import DEFAULT_BATCH_SIZE, choose_backend, load_encoder, resolve_model
    from safesample.backends.embedding_cache import embed_texts

    texts, n_harmful = pool_texts(args.n)
    words = np.mean([len(t.split()) for t in texts])
    print(f"texts: {len(texts):,} ({n_harmful:,} safety_tuned_llamas + {len(texts) - n_harmful:,} benign "
          f"alpaca_gpt4_demo/gpteacher instructions), {words:.1f} words on average; {os.cpu_count()} CPUs")

    model = resolve_model(None)
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        os.environ["SAFESAMPLE_CACHE_DIR"] = str(cache)
        backend = choose_backend("auto", model)
        start = time.perf_counter()
        encoder = load_encoder(model, backend, args.batch_size)  # exports once when onnx
        print(f"safesample default backend: {backend}; encoder ready in {time.perf_counter() - start:.1f} s "
              "(includes the one-off ONNX export into an empty cache)")
        st = SentenceTransformer(model.path, device="cpu")
        st.encode(texts[:64])
        encoder.encode(texts[:64])

        ours_s, theirs_s = math.inf, math.inf
        for _ in range(args.repeat):
            start = time.perf_counter()
            reference = st.encode(texts, batch_size=args.st_batch_size, convert_to_numpy=True)
            theirs_s = min(theirs_s, time.perf_counter() - start)
            start = time.perf_counter()
            embed_texts(texts, lambda: encoder, cache=None, batch_size=args.batch_size or DEFAULT_BATCH_SIZE)
            ours_s = min(ours_s, time.perf_counter() - start)
        n = len(texts)
        print(f"SentenceTransformer.encode (torch, batch {args.st_batch_size}): {n / theirs_s:7.1f} rows/s "
              f"({theirs_s:.1f} s)")
        print(f"safesample embed_texts ({backend}, batch {args.batch_size}):    {n / ours_s:7.1f} rows/s "
              f"({ours_s:.1f} s)  -> {theirs_s / ours_s:.2f}x")

        # End to end through the CLI: an empty embedding cache, the ONNX export kept.
        pool = tmp / "pool.parquet"
        pq.write_table(pa.table({"id": [f"t{i}" for i in range(n)], "instruction": texts}), pool)
        cold_cache = tmp / "cold"
        cold_cache.mkdir()
        if (cache / "onnx").exists():
            shutil.copytree(cache / "onnx", cold_cache / "onnx")
        first_s, _ = cli(["embed", str(pool), "-o", str(tmp / "out.parquet"), "--batch-size",
                          str(args.batch_size)], cold_cache)
        rerun_s, rerun_log = cli(["embed", str(pool), "-o", str(tmp / "again.parquet"), "--batch-size",
                                  str(args.batch_size)], cold_cache)
        got = np.array(pq.read_table(tmp / "out.parquet").column("embedding").to_pylist(), dtype=np.float32)
        again = np.array(pq.read_table(tmp / "again.parquet").column("embedding").to_pylist(), dtype=np.float32)
        assert np.array_equal(got, again), "the rerun must return the cached vectors"
        assert "from the cache, 0 computed" in " ".join(rerun_log.split()), rerun_log
        cosine = (got * reference).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        print(f"safesample embed CLI, end to end, empty cache: {n / first_s:7.1f} rows/s ({first_s:.1f} s, with "
              f"start-up, read, model load, write) -> {theirs_s / first_s:.2f}x encode-only "
              "SentenceTransformer")
        print(f"rerun on unchanged input (all from the cache): {rerun_s:.2f} s -> {first_s / rerun_s:.1f}x faster "
              "than the first run")
        print(f"cosine to SentenceTransformer vectors: min {cosine.min():.6f}, mean {cosine.mean():.6f}, "
              f"1st percentile {np.percentile(cosine, 1):.6f}")
        sample = texts[: min(len(texts), args.invariance_n)]
        by_size = {bs: encoder.encode(sample, bs) for bs in (1, 8, 64)}
        perm = np.random.default_rng(0).permutation(len(sample))
        shuffled = np.empty_like(by_size[64])
        shuffled[perm] = encoder.encode([sample[i] for i in perm], 64)
        base = by_size[64]

        def distance(x: np.ndarray) -> float:
            cos = (x * base).sum(axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(base, axis=1)
            return float(np.max(1 - cos))

        diffs = {f"batch {bs}": distance(v) for bs, v in by_size.items() if bs != 64}
        diffs["other batch mates"] = distance(shuffled)
        worst = max(diffs.values())
        identical = all(np.array_equal(v, base) for v in (*by_size.values(), shuffled))
        print(f"batch invariance on {len(sample)} texts (vs batch 64): "
              + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
              + f" max cosine distance; bitwise identical: {identical}")
        ratio = theirs_s / ours_s
        print(f"targets: speed {ratio:.2f}x vs 1.5x ({'met' if ratio >= 1.5 else 'MISSED'}), batch "
              f"difference {worst:.1e} vs 1e-5 ({'met' if worst <= 1e-5 else 'MISSED'}), min cosine "
              f"{cosine.min():.4f} vs 0.98 ({'met' if cosine.min() >= 0.98 else 'MISSED'}), rerun "
              f"{first_s / rerun_s:.1f}x vs 20x ({'met' if first_s / rerun_s >= 20 else 'MISSED'})")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} CPUs"
          + (" (the machine was shared; figures are taken under load)" if load > 1.5 else ""))


if __name__ == "__main__":
    main()
