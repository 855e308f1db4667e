"""Do bf16 forward passes give the fp32 refusal scores? (the check behind the runs' `--dtype bfloat16`)

bf16 matrix work runs about twice as fast as fp32 on this CPU (avx512_bf16). An experiment may
score its arms in bf16 only where the scores agree with fp32: this compares the same model's
`refusal_score` on the same prompts in both dtypes (two `judge --scorer refusal_score` outputs)
and prints the rank and value agreement, and the P(refusal) means per eval group in each.

Run: .venv/bin/python experiments/dtype_agreement.py FP32.parquet BF16.parquet --eval EVAL.parquet -o OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("bf16", type=Path)
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    from scipy.stats import pearsonr, spearmanr

    labels = pd.read_parquet(a.eval, columns=["id", "category", "label"]).set_index("id")
    x = pd.read_parquet(a.fp32, columns=["id", "refusal_score"]).set_index("id")["refusal_score"]
    y = pd.read_parquet(a.bf16, columns=["id", "refusal_score"]).set_index("id")["refusal_score"]
    x, y = x.align(y, join="inner")
    d = (y - x).to_numpy()

    def p(s: pd.Series) -> pd.Series:
        return 1 / (1 + np.exp(-s))

    groups = {"harmful": labels["label"] == "harmful", "xstest": labels["category"] == "xstest_safe",
              "alpaca_eval": labels["category"] == "alpaca_eval"}
    out = {"n": int(len(d)), "spearman": float(spearmanr(x, y).statistic), "pearson": float(pearsonr(x, y)[0]),
           "mean_abs_diff": float(np.abs(d).mean()), "max_abs_diff": float(np.abs(d).max()),
           "mean_diff": float(d.mean()),
           "P_refusal": {name: {"fp32": float(p(x[sel.reindex(x.index, fill_value=False)]).mean()),
                                "bf16": float(p(y[sel.reindex(y.index, fill_value=False)]).mean())}
                         for name, sel in groups.items()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
