"""Build the default anchor set `safesample audit` ships with (safesample/data/audit_anchors.jsonl).

An anchor is a harmful request with an answer that complies or one that refuses; `audit` takes the
difference of their mean hidden states as its compliance direction. The best anchors answer the
same request both ways, so the direction is about complying, not about the topic. Anthropic's
HH-RLHF harmless-base test split (MIT licence) has exactly that: two sampled answers per
red-team request, `response` (chosen) and `rejected_response` (rejected). This script keeps the
requests where one answer refuses and the other complies:

1. label both answers with `safesample label --judge rules --all-harmful` (the label stage
   called as a library: the same rule classifier, every request counted as harmful, since these
   are red-team prompts; the answers' own harm stays unknown, as the rules cannot tell it);
2. keep the pairs where one answer is a full refusal and the other compliance (partial
   refusals are neither kind, so they are left out);
3. skip pairs with an answer longer than --max-chars (about 150 tokens: the anchor pass stays
   cheap, and cutting an answer could cut off its refusal or its compliance);
4. drop requests whose normalised text (lower case, punctuation folded) equals an evaluation
   prompt (HarmBench, AdvBench, XSTest, Safety-Tuned-LLaMAs eval), and repeated requests.

Every kept request gives two rows (one of each kind), written with the label columns as `label`
writes them, so `audit` reads them by its usual anchor rules. The counts go to stdout and into
the SOURCE note (safesample/data/AUDIT_ANCHORS.md), which this script does not write.

    python experiments/build_audit_anchors.py --shared ../shared/data --out safesample/data/audit_anchors.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa

EVAL_SETS = ("harmbench", "advbench", "xstest", "safety_tuned_llamas_eval")
_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """The exact-match key of `select --exclude` (safesample.select.exclusions.normalise)."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def rules_labels(instructions: list[str], responses: list[str]) -> pd.DataFrame:
    """`safesample label --judge rules --all-harmful` on (instruction, response) pairs."""
    from safesample.label import LabelOptions, label_table

    table = pa.table({"id": [str(i) for i in range(len(responses))], "instruction": instructions,
                      "response": responses})
    labelled = label_table(table, LabelOptions(judge="rules", all_harmful=True)).table
    return labelled.select(["harmful_request", "refusal", "harmful_response", "behavior",
                            "refusal_style"]).to_pandas()


def eval_keys(shared: Path) -> set[str]:
    keys: set[str] = set()
    for name in EVAL_SETS:
        frame = pd.read_parquet(shared / name / f"{name}.parquet", columns=["prompt"])
        keys.update(normalise(p) for p in frame["prompt"].dropna())
    return keys


def build(shared: Path, max_chars: int) -> tuple[list[dict], dict[str, int]]:
    hh = pd.read_parquet(shared / "hh_rlhf_harmless" / "hh_rlhf_harmless.parquet")
    counts = {"source_rows": len(hh)}
    hh = hh[hh["response"].fillna("").str.strip().ne("") & hh["rejected_response"].fillna("").str.strip().ne("")]
    chosen = rules_labels(hh["instruction"].tolist(), hh["response"].tolist())
    rejected = rules_labels(hh["instruction"].tolist(), hh["rejected_response"].tolist())
    chosen.index = rejected.index = hh.index
    styles = chosen["refusal_style"] + "/" + rejected["refusal_style"]
    pair = styles.isin(["full_refusal/compliance", "compliance/full_refusal"])
    counts["refusal_vs_compliance_pairs"] = int(pair.sum())
    short = (hh["response"].str.len() <= max_chars) & (hh["rejected_response"].str.len() <= max_chars)
    counts["dropped_long"] = int((pair & ~short).sum())
    keys = hh["instruction"].map(normalise)
    in_eval = keys.isin(eval_keys(shared))
    counts["dropped_eval_overlap"] = int((pair & short & in_eval).sum())
    keep = pair & short & ~in_eval
    repeated = keep & keys.where(keep).duplicated()  # the same request twice: keep the first
    counts["dropped_repeated"] = int(repeated.sum())
    keep &= ~repeated
    rows = []
    for index in hh.index[keep]:
        src = hh.loc[index]
        for which, answer, labels in (("chosen", src["response"], chosen.loc[index]),
                                      ("rejected", src["rejected_response"], rejected.loc[index])):
            rows.append({"id": f"{src['id']}-{which}", "instruction": src["instruction"], "response": answer,
                         "harmful_request": bool(labels["harmful_request"]), "refusal": bool(labels["refusal"]),
                         "harmful_response": None,  # the rules cannot tell harm
                         "behavior": None if pd.isna(labels["behavior"]) else labels["behavior"],
                         "refusal_style": labels["refusal_style"],
                         "source": f"{src['source']} ({which})", "turns": int(src["n_human_turns"])})
    counts["pairs"] = int(keep.sum())
    counts["rows"] = len(rows)
    counts["single_turn_pairs"] = int((hh.loc[keep, "n_human_turns"] == 1).sum())
    counts["refusing_rows"] = sum(r["refusal"] for r in rows)
    counts["compliant_rows"] = sum(not r["refusal"] for r in rows)
    return rows, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, required=True, help="the shared/data folder")
    ap.add_argument("--out", type=Path, required=True, help="the anchors file (.jsonl)")
    ap.add_argument("--max-chars", type=int, default=600, help="skip pairs with a longer answer")
    a = ap.parse_args()
    rows, counts = build(a.shared, a.max_chars)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    print(json.dumps(counts, indent=1))
    print(f"wrote {len(rows)} anchors to {a.out}")


if __name__ == "__main__":
    main()
