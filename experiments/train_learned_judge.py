"""Train the `learned` refusal judge: logistic regression on the MiniLM embedding of the response
plus the rules' features, on the DEV part of shared/data/refusal_labels only (the held-out split,
sha256(instruction) % 10 < 3, is never seen), and write its coefficients (no rows, no pickle) to
safesample/data/learned_judge.npz.

Run: .venv/bin/python experiments/train_learned_judge.py [--out PATH] [--C 1.0]
Then: .venv/bin/python bench/bench_rules_accuracy.py (the table compares it with the rules).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_rules_accuracy import DATA, gold_styles, held_out  # noqa: E402


def main() -> int:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from safesample.backends.learned_judge import LABELS, features, save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "safesample" / "data" / "learned_judge.npz"))
    parser.add_argument("--C", type=float, default=1.0)
    args = parser.parse_args()
    df = pd.read_parquet(DATA / "refusal_labels" / "refusal_labels.parquet")
    df["gold"] = gold_styles(df)
    dev = df[~df["instruction"].map(held_out) & df["gold"].notna()]
    x, model_name = features(dev["response"].tolist())
    y = np.array([LABELS.index(g) for g in dev["gold"]])
    clf = LogisticRegression(C=args.C, max_iter=2000, class_weight="balanced")
    clf.fit(x, y)
    print(f"trained on {len(dev)} dev rows ({dict(zip(*np.unique(dev['gold'], return_counts=True)))}); "
          f"train accuracy {clf.score(x, y):.3f}")
    save(args.out, clf.coef_, clf.intercept_, model_name, C=args.C, rows=len(dev))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
