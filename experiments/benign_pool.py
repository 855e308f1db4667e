"""The benign instruction pool the audit runs score (data preparation only).

Every benign instruction table in ../shared/data that has answers (alpaca_gpt4_demo, gpteacher,
alpaca_seed_tasks), with an answer and an instruction, and decontaminated against the run's
evaluation prompts: a row whose instruction matches an eval prompt after normalising (lower
case, spaces and punctuation folded) or sits at cosine >= 0.9 to one (the MiniLM embedding
`select --exclude` uses) is dropped, so no arm trains on what it is judged on.

Run: .venv/bin/python experiments/benign_pool.py --shared ../shared/data --eval EVAL.parquet --out POOL.parquet
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCES = ("alpaca_gpt4_demo", "gpteacher", "alpaca_seed_tasks")
COSINE = 0.9


def normalise(text: str) -> str:
    return re.sub(r"[\W_]+", " ", str(text).lower()).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--eval", type=Path, required=True, help="the run's eval.parquet (column `prompt`)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    from safesample.backends.embedding_cache import CachedEncoder

    frames = []
    for name in SOURCES:
        df = pd.read_parquet(a.shared / name / f"{name}.parquet", columns=["id", "instruction", "input", "output"])
        frames.append(df.assign(source=name))
    pool = pd.concat(frames, ignore_index=True)
    pool["input"] = pool["input"].fillna("")
    pool = pool[(pool["instruction"].str.strip() != "") & (pool["output"].fillna("").str.strip() != "")]
    pool = pool.drop_duplicates("id")
    prompts = pd.read_parquet(a.eval, columns=["prompt"])["prompt"].tolist()
    exact = pool["instruction"].map(normalise).isin({normalise(p) for p in prompts})
    encoder = CachedEncoder()
    rows = encoder.encode(pool["instruction"].tolist())
    evals = encoder.encode(prompts)
    nearest = np.concatenate([(rows[i:i + 4096] @ evals.T).max(axis=1) for i in range(0, len(rows), 4096)])
    close = nearest >= COSINE
    kept = pool[~exact.to_numpy() & ~close].reset_index(drop=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    kept.to_parquet(a.out, index=False)
    by_source = kept["source"].value_counts().to_dict()
    print(f"benign pool: {len(kept)} rows {by_source}; dropped {int(exact.sum())} exact and "
          f"{int((close & ~exact.to_numpy()).sum())} near (cosine >= {COSINE}) matches of {len(prompts)} eval prompts")


if __name__ == "__main__":
    main()
