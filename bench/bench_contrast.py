"""Benchmark `select --contrast` (issue 13): are the look-alikes real look-alikes, and is it fast?

Setup: the real safety pool (Safety-Tuned LLaMAs, 2,483 harmful requests) embedded with the
default model (`safesample embed`, all-MiniLM-L6-v2); a benign table of GPTeacher (6,458 rows)
with XSTest's 250 *safe* prompts mixed in (XSTest's prompts are built to look harmful and be
benign: homonyms, figurative language, safe targets, safe contexts, definitions, history,
privacy of public figures). For a budget of 100 random picks, 50 look-alikes (the default share):

1. quality: the share of the look-alikes that are XSTest safe prompts against the share a
   random draw of 50 benign rows gets (250 / 6,708 = 3.7 %): the ratio, over seeds 0-4; with
   embeddings alone (--contrast-lexical 0) and with the lexical signal (0.1, 0.2, 0.3);
2. speed: the whole command (`safesample select POOL --budget 100 --contrast BENIGN -o out`, a
   process: start-up, reading, embedding BENIGN when it has no embeddings, choosing, writing) on a
   20,000-row benign table (GPTeacher + Alpaca tables + XSTest safe, topped up with reworded
   copies to 20,000 distinct instructions). Run twice: the first run embeds whatever texts the
   embedding cache lacks (the one-off cost: the first time ever, all 20,000), the second finds
   every vector in the cache; both times are printed with what was embedded.

    python bench/bench_contrast.py             # writes into build/bench_contrast/
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SAFESAMPLE_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "build" / "bench_contrast"  # build/ is git-ignored
CLI = [sys.executable, "-m", "safesample"]
ENV = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def run(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"failed: safesample {' '.join(args)}\n{proc.stderr}")
    return seconds, proc.stderr


def read(name: str) -> pa.Table:
    return pq.read_table(DATA / name / f"{name}.parquet")


def pairs(table: pa.Table, text: str = "instruction", answer: str = "output") -> pa.Table:
    return pa.table({"id": table.column("id").cast(pa.string()), "instruction": table.column(text).cast(pa.string()),
                     "output": table.column(answer).cast(pa.string()) if answer in table.column_names
                     else pa.array(["(a helpful answer)"] * table.num_rows)})


def xstest_safe() -> pa.Table:
    xs = read("xstest")
    return pairs(xs.filter(pc.equal(xs.column("label"), "safe")), text="prompt")


def quality(pool_path: Path, benign_path: Path, n_xs: int) -> dict:
    """In-process (the stage the CLI calls), seeds 0-4, lexical weights 0 / 0.1 / 0.2 / 0.3."""
    sys.path.insert(0, str(REPO))
    from safesample import select as sel
    from safesample.tables import read_table

    pool, benign = read_table(str(pool_path)), read_table(str(benign_path))
    base = n_xs / benign.num_rows
    out = {"random_share": round(base, 4), "benign_rows": benign.num_rows, "xstest_safe": n_xs}
    for lexical in (0.0, 0.1, 0.2, 0.3):
        shares, cosines = [], []
        for seed in range(5):
            options = sel.SelectOptions(budget=100, strategy="random", seed=seed, random_draws=1,
                                        contrast_lexical=lexical)
            result = sel.select_table(pool, options, contrast=(benign_path.name, benign))
            ids = result.table.column("id").to_pylist()[100:]
            shares.append(sum(i.startswith("xstest") for i in ids) / len(ids))
            cosines.append(result.report["contrast"]["mean_cosine"])
        out[f"lexical={lexical:g}"] = {"xstest_share": round(float(np.mean(shares)), 4),
                                       "ratio": round(float(np.mean(shares)) / base, 1),
                                       "per_seed": [round(s, 3) for s in shares],
                                       "mean_cosine": round(float(np.mean(cosines)), 3)}
        print(f"  lexical {lexical:g}: {np.mean(shares):.1%} of look-alikes are XSTest safe prompts "
              f"(random {base:.1%}): ratio {np.mean(shares) / base:.1f}; per seed {shares}", flush=True)
    return out


def twenty_k(xs: pa.Table) -> pa.Table:
    parts = [pairs(read(n)) for n in ("gpteacher", "alpaca_gpt4_demo", "alpaca_eval", "alpaca_seed_tasks")]
    real = pa.concat_tables([*parts, xs])
    need = 20_000 - real.num_rows
    base = parts[0]
    rows = np.arange(need) % base.num_rows
    prefixes = ["Please answer: ", "Task: ", "Could you help? ", "Request: "]
    extra = pa.table({
        "id": [f"variant-{i}" for i in range(need)],
        "instruction": [prefixes[(i // base.num_rows) % len(prefixes)] + base.column("instruction")[int(r)].as_py()
                        for i, r in enumerate(rows)],
        "output": base.column("output").take(pa.array(rows))})
    return pa.concat_tables([real, extra])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    pool = OUT / "pool.parquet"
    if not pool.exists():  # the real pool, embedded once (the embedding cache makes reruns cheap)
        pq.write_table(read("safety_tuned_llamas").select(["id", "instruction", "response"]), OUT / "pool.raw.parquet")
        seconds, _ = run("embed", str(OUT / "pool.raw.parquet"), "-o", str(pool), "-q")
        print(f"embedded the pool in {seconds:.1f} s")
    xs = xstest_safe()
    benign = OUT / "gpteacher_xstest.parquet"
    pq.write_table(pa.concat_tables([pairs(read("gpteacher")), xs]), benign)
    embedded = OUT / "gpteacher_xstest.emb.parquet"
    seconds, _ = run("embed", str(benign), "-o", str(embedded), "-q")
    print(f"embedded the benign table in {seconds:.1f} s")
    print("1. look-alike quality: budget 100 (random picks), 50 look-alikes, seeds 0-4")
    results = {"quality": quality(pool, embedded, xs.num_rows)}

    big = OUT / "benign20k.parquet"
    pq.write_table(twenty_k(xs), big)
    print("2. whole command on a 20,000-row benign table without embeddings (embedded with the pool's model)")
    timings = []
    for attempt in ("first run", "second run"):
        seconds, err = run("select", str(pool), "--budget", "100", "--strategy", "random", "--contrast", str(big),
                           "--report", str(OUT / "report.json"), "-o", str(OUT / "picked.parquet"))
        note = re.search(r"embedded (\d+) texts with .*?: (\d+) from the cache, (\d+) computed \(([\d.]+) s\)", err)
        embedded_note = (f"{note.group(3)} texts embedded ({note.group(4)} s), {note.group(2)} from the cache"
                         if note else "no embedding")
        timings.append({"run": attempt, "seconds": round(seconds, 2), "embedding": embedded_note})
        print(f"  {attempt}: {seconds:.1f} s ({embedded_note})", flush=True)
    report = json.loads((OUT / "report.json").read_text())["contrast"]
    results["speed_20k"] = {"rows": 20_000, "runs": timings, "contrast": report}
    (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
