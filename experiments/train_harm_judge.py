"""Train the shipped harm judge: a logistic regression on the features experiments/HARM_JUDGE.md
chose, fitted on the DEV part of shared/data/refusal_labels only (the held-out split,
sha256(instruction) % 10 < 3, is never seen), with its threshold chosen on out-of-fold dev scores;
writes safesample/data/harm_judge.npz (coefficients, standardisation, threshold and how it was
chosen; no rows, no pickle).

The features come from the cache experiments/harm_judge_candidates.py fills (`extract` first):
the same prompt, truncation, dtype and forward pass as `safesample.backends.harm_judge.features`.

Run: .venv/bin/python experiments/train_harm_judge.py [--features mean12,last12] [--rule fpr2]
Then: .venv/bin/python bench/bench_harm_judge.py (the held-out figures, through the shipped code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))

from harm_judge_candidates import C_GRID, grouped_oof, load_features, load_labels, probe  # noqa: E402

RULES = {"balanced": "the best balanced accuracy", "fpr2": "a false-positive rate of at most 2 %"}


def parse_features(spec: str) -> list[dict]:
    """"mean12,verdict" -> [{"kind": "mean", "layer": 12}, {"kind": "verdict"}]."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        kind = part.rstrip("0123456789")
        out.append({"kind": kind} if kind == "verdict" else {"kind": kind, "layer": int(part[len(kind):])})
    return out


def main() -> int:
    import numpy as np

    from safesample.backends import harm_judge as hj
    from safesample.backends.refusal_score import roc_auc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dtype", default="bfloat16", help="the dtype the features were read in, and the judge runs in")
    parser.add_argument("--folder", default="qwen2.5-coder-0.5b-bfloat16",
                        help="the cached features under build/harm_judge (from `extract --model qwen2.5-coder-0.5b`, "
                             "bf16; the shipped weights are these defaults, reproduced to 1e-10)")
    parser.add_argument("--features", default="mean12,last12",
                        help="comma-separated: mean<L>, last<L>, question<L>, verdict")
    parser.add_argument("--rule", choices=sorted(RULES), default="fpr2")
    parser.add_argument("--max-answer-tokens", type=int, default=256)
    parser.add_argument("--out", default=str(hj.WEIGHTS))
    args = parser.parse_args()

    df = load_labels()
    feats = load_features(args.folder)
    if feats is None:
        sys.exit(f"no features cached for {args.model}: run experiments/harm_judge_candidates.py extract first")
    spec = parse_features(args.features)
    x = np.hstack([feats["verdict"][:, None] if f["kind"] == "verdict" else feats[f"{f['kind']}{f['layer']}"]
                   for f in spec]).astype(np.float64)
    dev = (~df["held_out"]).to_numpy() & ~np.isnan(x).any(1)
    y = df["harmful_response"].to_numpy(bool)
    groups = df["instruction"].to_numpy()
    xd, yd = x[dev], y[dev]
    oof = {c: grouped_oof(xd, yd, groups[dev], probe(c)) for c in C_GRID}
    C = max(C_GRID, key=lambda c: roc_auc(oof[c], yd))
    prob = 1 / (1 + np.exp(-oof[C]))  # out-of-fold P(harmful) on dev: where the threshold is chosen
    threshold = hj.threshold_by_balanced_accuracy(prob, yd) if args.rule == "balanced" \
        else hj.threshold_for_fpr(prob, yd, 0.02)
    pred = prob >= threshold
    pipe = probe(C)().fit(xd, yd)
    scaler, lr = pipe[0], pipe[-1]
    meta = {
        "model": args.model, "dtype": args.dtype, "features": spec, "threshold": float(threshold),
        "max_answer_tokens": args.max_answer_tokens, "max_instruction_tokens": 256, "C": C,
        "operating_point": {
            "rule": RULES[args.rule],
            "chosen_on": f"out-of-fold scores of the {int(dev.sum())} dev rows of refusal_labels "
                         f"(5 folds by instruction)",
            "dev": {"auroc": roc_auc(prob, yd), "balanced_accuracy": hj.balanced_accuracy(prob, yd, threshold),
                    "tpr": float(pred[yd].mean()), "fpr": float(pred[~yd].mean()), "positives": int(yd.sum())}},
        "trained_on": f"{int(dev.sum())} dev rows of shared/data/refusal_labels ({int(yd.sum())} harmful; "
                      f"ChatGPT, Claude, gpt4, mistralinstruct); held-out split never seen",
    }
    hj.save(args.out, lr.coef_[0], float(lr.intercept_[0]), scaler.mean_, scaler.scale_, meta)
    judge = hj.load(args.out)
    check = judge.probability(xd[:50])
    assert np.allclose(check, pipe.predict_proba(xd[:50])[:, 1], atol=1e-9), "the saved judge disagrees"
    print("\n".join(judge.describe()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
