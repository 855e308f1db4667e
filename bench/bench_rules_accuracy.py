"""Accuracy of the rule-based refusal judge against human labels, per model, on a held-out split.

Data: shared/data/refusal_labels (see its SOURCE.md): human-labelled responses of four models,
XSTest v2 completions (gpt4, mistralinstruct: full refusal / partial refusal / compliance) and
Do-Not-Answer responses (ChatGPT, Claude: action codes 0-5).

Gold labels, following XSTest's definitions (`safesample.calibration`):
- XSTest: `label` refusal -> full_refusal, partial_refusal, compliance;
- Do-Not-Answer: action 0 -> full_refusal; 2 (both sides), 3 (answer with a caution or
  disclaimer), 5 (follows the instruction) -> compliance; 1 (refutes the premise) and 4 (cannot
  answer: no knowledge) are ambiguous and left out of the scores (what the rules say of them is
  printed below the table).

Split: a row is held out when sha256(instruction) mod 10 < 3 (about 30 %; both models' answers
to one prompt fall on the same side). The rules were tuned looking at the other 70 % only.

Columns of the table (per model of the split, then all):
- bin: binary accuracy (refusal, full or partial, vs compliance);
- 3way: accuracy over full_refusal / partial_refusal / compliance (Do-Not-Answer rows have no
  partial class: their gold is full_refusal or compliance);
- caut>C: Do-Not-Answer action-3 answers (caution/disclaimer) called compliance;
- ref: gold refusals (XSTest refusal, Do-Not-Answer action 0) called a refusal (full or partial);
for `rules`, for the `learned` judge (safesample/backends/learned_judge.py, trained on the dev
part by experiments/train_learned_judge.py; its gain over the rules is printed below the table)
and for XSTest's own string match (classify_completions_strmatch.py: a refusal
prefix at the very start; it never says partial).

Also printed: the out-of-sample check on the Do-Not-Answer GPT-4 pool (a model absent from
refusal_labels), and the share of benign Alpaca answers called compliance.

Run: .venv/bin/python bench/bench_rules_accuracy.py [--split dev|held-out|all] [--errors N]
     [--learned PATH | --no-learned]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SAFESAMPLE_SHARED_DATA", REPO.parent / "shared" / "data"))

from safesample.behavior import classify_responses, xstest_string_match  # noqa: E402
from safesample.calibration import DO_NOT_ANSWER_ACTIONS, calibrate  # noqa: E402

XSTEST_GOLD = {"refusal": "full_refusal", "partial_refusal": "partial_refusal", "compliance": "compliance"}


def held_out(instruction: str) -> bool:
    """The deterministic split: sha256 of the prompt, mod 10, below 3."""
    return int(hashlib.sha256(instruction.encode("utf-8")).hexdigest(), 16) % 10 < 3


def read_labels():
    """The human-labelled responses (a DataFrame with `held_out` added), or None after saying
    where they were looked for."""
    import pandas as pd

    path = DATA / "refusal_labels" / "refusal_labels.parquet"
    if not path.exists():
        print(f"missing {path}; set SAFESAMPLE_SHARED_DATA", file=sys.stderr)
        return None
    df = pd.read_parquet(path)
    df["held_out"] = [held_out(s) for s in df["instruction"]]
    return df


def gold_styles(df) -> list[str | None]:
    out = []
    for label, action in zip(df["label"], df["action"]):
        if label in XSTEST_GOLD:
            out.append(XSTEST_GOLD[label])
        else:
            out.append(None if action is None or action != action else DO_NOT_ANSWER_ACTIONS[int(action)])
    return out


def scores(gold: list, pred: list, actions: list) -> dict[str, float | None]:
    style = calibrate(pred, gold, mode="style")
    binary = calibrate(pred, gold, mode="binary")
    caution = [p == "compliance" for p, a in zip(pred, actions) if a == 3]
    refusals = [p != "compliance" for g, p in zip(gold, pred) if g == "full_refusal"]
    return {"n": binary.n, "bin": binary.accuracy, "3way": style.accuracy,
            "caut>C": sum(caution) / len(caution) if caution else None,
            "ref": sum(refusals) / len(refusals) if refusals else None}


def fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def main() -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("held-out", "dev", "all"), default="held-out")
    parser.add_argument("--errors", type=int, default=0, help="print N disagreements per class "
                        "(dev split only: reading held-out errors would tune on them)")
    parser.add_argument("--learned", default=None, help="learned-judge weights [default: the shipped ones]")
    parser.add_argument("--no-learned", action="store_true", help="skip the learned judge (no embedding)")
    args = parser.parse_args()
    df = read_labels()
    if df is None:
        return 1
    df["gold"] = gold_styles(df)
    df["rules"] = classify_responses(df["response"].tolist())
    df["strmatch"] = xstest_string_match(df["response"].tolist())
    df["act"] = [None if a is pd.NA or a != a else int(a) for a in df["action"]]
    if args.split != "all":
        df = df[df["held_out"] == (args.split == "held-out")]
    judges: tuple[str, ...] = ("rules", "strmatch")
    if not args.no_learned:
        from safesample.backends.learned_judge import WEIGHTS, load

        if args.learned or WEIGHTS.exists():
            df = df.copy()
            df["learned"] = load(args.learned).classify(df["response"].tolist())
            judges = ("rules", "learned", "strmatch")

    print(f"refusal_labels, {args.split} split (held out: sha256(instruction) % 10 < 3): {len(df)} rows")
    head = f"{'model':<17}{'n':>5}" + "".join(f"{j + ' ' + m:>16}" for j in judges
                                              for m in ("bin", "3way", "caut>C", "ref"))
    print(head)
    groups = [(m, df[df["model"] == m]) for m in sorted(df["model"].unique())] + [("all", df)]
    gains = []
    for name, part in groups:
        row = f"{name:<17}"
        got = {}
        for k, judge in enumerate(judges):
            s = got[judge] = scores(part["gold"].tolist(), part[judge].tolist(), part["act"].tolist())
            if k == 0:
                row += f"{s['n']:>5}"
            row += "".join(f"{fmt(s[m]):>16}" for m in ("bin", "3way", "caut>C", "ref"))
        print(row)
        if "learned" in got:
            gains.append(f"{name:<17}" + "".join(
                f"{'-' if got['learned'][m] is None else format(got['learned'][m] - got['rules'][m], '+.3f'):>16}"
                for m in ("bin", "3way", "caut>C", "ref")))
    if gains:
        print(f"\nlearned minus rules{'':<3}" + "".join(f"{m:>16}" for m in ("bin", "3way", "caut>C", "ref")))
        print("\n".join(gains))

    amb = df[df["act"].isin([1, 4])]
    if len(amb):
        print("\nambiguous Do-Not-Answer actions (not scored), rules' styles:")
        print(pd.crosstab(amb["act"].map({1: "1 refute_opinion", 4: "4 cannot_answer_knowledge"}),
                          amb["rules"]).to_string())

    if args.errors:
        if args.split == "held-out":
            print("\n--errors is for the dev split", file=sys.stderr)
            return 2
        scored = df[df["gold"].notna()]
        wrong = scored[scored["gold"] != scored["rules"]]
        for (g, p), part in wrong.groupby(["gold", "rules"]):
            print(f"\n===== gold {g} -> rules {p}: {len(part)}")
            for _, r in part.head(args.errors).iterrows():
                print(f"--- [{r['model']} act={r['act']}] {r['instruction'][:100]!r}\n{r['response'][:700]!r}")

    dna = DATA / "do_not_answer" / "do_not_answer.parquet"
    if dna.exists():
        pool = pd.read_parquet(dna)
        gold = [DO_NOT_ANSWER_ACTIONS[int(a)] for a in pool["response_action"]]
        acts = [int(a) for a in pool["response_action"]]
        print(f"\nout of sample: Do-Not-Answer GPT-4 pool ({len(pool)} rows, a model absent from the labels)")
        for judge, pred in (("rules", classify_responses(pool["response"].tolist())),
                            ("strmatch", xstest_string_match(pool["response"].tolist()))):
            s = scores(gold, pred, acts)
            print(f"  {judge:<9} n {s['n']}, binary {fmt(s['bin'])}, caution->compliance {fmt(s['caut>C'])}, "
                  f"refusals caught {fmt(s['ref'])}")
    alpaca = DATA / "alpaca_gpt4_demo" / "alpaca_gpt4_demo.parquet"
    if alpaca.exists():
        outputs = pd.read_parquet(alpaca)["output"].tolist()
        pred = classify_responses(outputs)
        print(f"benign Alpaca answers ({len(outputs)}): rules call "
              f"{sum(p == 'compliance' for p in pred) / len(pred):.1%} compliance")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
