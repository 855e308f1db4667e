"""How close each arm's safety rows are to the harmful eval prompts (results/v3/picks.json).

A diagnostic for the third run: a strategy's rows teach refusal of the eval's harmful prompts
only as far as they resemble them. For every picked table, the mean over its rows of the cosine
to the nearest harmful eval prompt (the pool's embedding model), and how many rows fall below
the pool's median of that figure.

    python experiments/picks_vs_eval.py POOL EVAL_EMBEDDED PICKED... -o picks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from safesample.vectors import embedding_matrix


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pool", help="the embedded safety pool (pool.clustered.parquet)")
    p.add_argument("eval", help="the eval prompts embedded by `safesample embed --text prompt`")
    p.add_argument("picked", nargs="+", help="select outputs (picked/<arm>.parquet)")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    ev = pq.read_table(a.eval)
    ev = ev.filter(pc.equal(ev.column("label"), "harmful"))
    harmful = embedding_matrix(ev, name="the harmful eval prompts", command="picks_vs_eval", unit=True)
    pool = pq.read_table(a.pool, columns=["id", "embedding"])
    nearest = (embedding_matrix(pool, name="the pool", command="picks_vs_eval", unit=True) @ harmful.T).max(axis=1)
    median = float(np.median(nearest))
    by_id = dict(zip(pool.column("id").to_pylist(), nearest))
    out = {"pool_rows": pool.num_rows, "harmful_eval_prompts": int(len(harmful)),
           "pool_median_nearest_cosine": round(median, 4), "arms": {}}
    for path in sorted(a.picked):
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        v = np.array([by_id[i] for i in ids])
        out["arms"][Path(path).stem] = {"rows": len(v), "mean_nearest_cosine": round(float(v.mean()), 4),
                                        "below_pool_median": int((v < median).sum())}
    Path(a.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
