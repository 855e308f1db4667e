"""Agreement of the rule-based refusal classifier with human labels, against a keyword list.

Data: shared/data/do_not_answer (GPT-4 responses with the human `response_action` label; see
its SOURCE.md). The action classes map onto refusal styles as documented at
`safesample.behavior.DO_NOT_ANSWER_STYLES` (0 -> full refusal; 3, 4 -> partial refusal;
1, 2 -> compliance). Printed for the rules and for the keyword baseline (GCG's refusal prefixes):

- 3-class accuracy and macro-F1 over full_refusal / partial_refusal / compliance;
- binary "any refusal" (full or partial) vs compliance;
- binary "full refusal" (cannot_assist) vs the rest, the task keyword lists are built for;
- the confusion matrix of each, and the raw action class against the predicted style.

The rows are split in two halves by row number (even = dev, odd = held-out): the rules were
written and adjusted looking at dev rows only, so the held-out figures are the honest ones.
Also printed: what each classifier says about benign Alpaca answers (alpaca_gpt4_demo), where
almost every answer should be compliance.

Run: .venv/bin/python bench/bench_rules_accuracy.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SAFESAMPLE_SHARED_DATA", REPO.parent / "shared" / "data"))

from safesample.behavior import (DO_NOT_ANSWER_STYLES, REFUSAL_STYLES,  # noqa: E402
                                 classify_responses, keyword_baseline)


def metrics(truth: list[str], pred: list[str], labels: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    return {"accuracy": accuracy_score(truth, pred),
            "macro_f1": f1_score(truth, pred, labels=labels, average="macro", zero_division=0),
            "confusion": confusion_matrix(truth, pred, labels=labels)}


def evaluate(truth: list[str], pred: list[str]) -> dict[str, dict]:
    styles = list(REFUSAL_STYLES)
    any_truth = ["refusal" if t != "compliance" else "compliance" for t in truth]
    any_pred = ["refusal" if p != "compliance" else "compliance" for p in pred]
    full_truth = ["full" if t == "full_refusal" else "other" for t in truth]
    full_pred = ["full" if p == "full_refusal" else "other" for p in pred]
    return {"3-class": metrics(truth, pred, styles),
            "any refusal": metrics(any_truth, any_pred, ["refusal", "compliance"]),
            "full refusal": metrics(full_truth, full_pred, ["full", "other"])}


def print_confusion(matrix, labels: list[str], rows: list[str] | None = None) -> None:
    rows = rows or labels
    width = max(len(x) for x in labels + rows) + 2
    print(" " * width + "".join(f"{x:>{width}}" for x in labels) + "   (rows: truth, columns: predicted)")
    for name, counts in zip(rows, matrix):
        print(f"{name:<{width}}" + "".join(f"{c:>{width}}" for c in counts))


def main() -> int:
    import pandas as pd

    path = DATA / "do_not_answer" / "do_not_answer.parquet"
    if not path.exists():
        print(f"missing {path}; set SAFESAMPLE_SHARED_DATA", file=sys.stderr)
        return 1
    df = pd.read_parquet(path)
    responses = df["response"].tolist()
    truth = [DO_NOT_ANSWER_STYLES[int(a)] for a in df["response_action"]]
    rules = classify_responses(responses)
    keywords = keyword_baseline(responses)
    halves = {"dev (even rows)": slice(0, None, 2), "held-out (odd rows)": slice(1, None, 2),
              "all": slice(None)}

    print(f"do_not_answer: {len(df)} GPT-4 responses with human action labels")
    print("mapping: " + ", ".join(f"{a}->{s}" for a, s in sorted(DO_NOT_ANSWER_STYLES.items()) if a != 5))
    print()
    print(f"{'split':<22}{'task':<15}{'rules acc':>10}{'rules F1':>10}{'kw acc':>9}{'kw F1':>9}")
    results = {}
    for split, sl in halves.items():
        r = evaluate(truth[sl], rules[sl])
        k = evaluate(truth[sl], keywords[sl])
        results[split] = (r, k)
        for task in r:
            print(f"{split:<22}{task:<15}{r[task]['accuracy']:>10.3f}{r[task]['macro_f1']:>10.3f}"
                  f"{k[task]['accuracy']:>9.3f}{k[task]['macro_f1']:>9.3f}")
    r_all, k_all = results["all"]
    styles = list(REFUSAL_STYLES)
    print("\nrules, 3-class confusion (all rows):")
    print_confusion(r_all["3-class"]["confusion"], styles)
    print("\nkeyword baseline, 3-class confusion (all rows):")
    print_confusion(k_all["3-class"]["confusion"], styles)

    names = df.groupby("response_action")["response_action_name"].first().to_dict()
    print("\nrules: human action class (rows) -> predicted style (columns), all rows:")
    table = pd.crosstab(pd.Series([f"{a} {names[a]}" for a in df["response_action"]], name="action"),
                        pd.Series(rules, name="predicted")).reindex(columns=styles, fill_value=0)
    print(table.to_string())
    print("\nkeyword baseline: human action class -> predicted style, all rows:")
    table = pd.crosstab(pd.Series([f"{a} {names[a]}" for a in df["response_action"]], name="action"),
                        pd.Series(keywords, name="predicted")).reindex(columns=styles, fill_value=0)
    print(table.to_string())

    alpaca = DATA / "alpaca_gpt4_demo" / "alpaca_gpt4_demo.parquet"
    if alpaca.exists():
        outputs = pd.read_parquet(alpaca)["output"].tolist()
        for name, pred in [("rules", classify_responses(outputs)), ("keywords", keyword_baseline(outputs))]:
            counts = pd.Series(pred).value_counts().reindex(styles, fill_value=0)
            print(f"\nalpaca_gpt4_demo benign answers ({len(outputs)}), {name}: "
                  + ", ".join(f"{s} {counts[s]} ({counts[s] / len(outputs):.1%})" for s in styles))

    held_r, held_k = results["held-out (odd rows)"]
    gain = held_r["3-class"]["macro_f1"] - held_k["3-class"]["macro_f1"]
    print(f"\nheld-out 3-class macro-F1: rules {held_r['3-class']['macro_f1']:.3f} vs keywords "
          f"{held_k['3-class']['macro_f1']:.3f} ({gain:+.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
