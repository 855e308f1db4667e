"""Throughput of the rule-based refusal classifier (`classify_responses`) on one core.

The responses of the real safety pools (safety_tuned_llamas, do_not_answer, hh_rlhf_harmless)
and the benign Alpaca answers, repeated to 500,000 distinct rows (each repeat gets a number
appended, so no two rows are equal and nothing downstream can dedupe or cache its way through); best of 3 timed runs after a
warm-up, with pyarrow limited to one thread. Prints rows/s per core (CPU time of the process)
and by the wall clock, and the ratio to the 50,000 rows/s target. Also times `safesample label --judge rules` end to end on the same rows (read, classify,
write Parquet), which includes the table I/O.

Run: .venv/bin/python bench/bench_label_rules.py [ROWS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SAFESAMPLE_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET = 50_000


def responses() -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for name, column in [("safety_tuned_llamas", "response"), ("do_not_answer", "response"),
                         ("hh_rlhf_harmless", "response"), ("alpaca_gpt4_demo", "output")]:
        path = DATA / name / f"{name}.parquet"
        if not path.exists():
            raise SystemExit(f"missing {path}; set SAFESAMPLE_SHARED_DATA")
        texts += [t for t in pq.read_table(path, columns=[column]).column(0).to_pylist() if t is not None]
    return texts


def main() -> int:
    import pyarrow as pa

    pa.set_cpu_count(1)  # one core, as the target says
    from safesample.behavior import classify_responses

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    base = list(dict.fromkeys(responses()))  # the pools share some responses
    texts = [t if i < len(base) else f"{t} ({i // len(base)})"
             for i, t in enumerate((base * (rows // len(base) + 1))[:rows])]
    assert len(set(texts)) == len(texts)
    chars = sum(map(len, texts)) / len(texts)
    column = pa.array(texts, pa.string())
    classify_responses(column[:5000])  # warm-up
    walls, cpus = [], []
    for _ in range(3):
        start, cpu = time.perf_counter(), time.process_time()
        styles = classify_responses(column)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    # CPU seconds of this (single-threaded) process are what "one core" means; wall time also
    # counts waiting for the CPU when other work shares the machine, so both are printed.
    rate = len(texts) / min(cpus)
    print(f"rows: {len(texts):,} (from {len(base):,} real responses, mean {chars:.0f} chars); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"classify_responses: best {min(cpus):.3f} CPU s of {[round(t, 3) for t in cpus]} -> {rate:,.0f} rows/s "
          f"per core (wall: best {min(walls):.3f} s -> {len(texts) / min(walls):,.0f} rows/s)")
    print(f"target {TARGET:,} rows/s: ratio {rate / TARGET:.2f}x")
    cpu = time.process_time()
    classify_responses(texts)  # from a Python list: includes building the Arrow array
    list_rate = len(texts) / (time.process_time() - cpu)
    print(f"classify_responses from a Python list: {list_rate:,.0f} rows/s ({list_rate / TARGET:.2f}x)")
    counts = {s: styles.count(s) for s in ("full_refusal", "partial_refusal", "compliance")}
    print(f"styles: {counts}")

    with tempfile.TemporaryDirectory() as tmp:
        import pyarrow.parquet as pq

        src, dst = Path(tmp) / "pool.parquet", Path(tmp) / "labeled.parquet"
        pq.write_table(pa.table({"instruction": ["q"] * len(texts), "response": column,
                                 "id": [str(i) for i in range(len(texts))]}), src)
        env = {**os.environ, "SAFESAMPLE_CACHE_DIR": tmp, "NO_COLOR": "1"}
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "safesample", "label", str(src), "-o", str(dst),
                               "--all-harmful", "-q"], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            print(f"label CLI failed: {proc.stderr.strip()}")
            return 1
        print(f"safesample label --judge rules, end to end (start-up, read, label, write): "
              f"{elapsed:.2f} s wall -> {len(texts) / elapsed:,.0f} rows/s; {cpu_s:.2f} CPU s -> "
              f"{len(texts) / cpu_s:,.0f} rows/s per CPU second (load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
