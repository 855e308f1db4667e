"""Cut the shared datasets into the tables one experiment run needs (data preparation only).

Every step after this one is a `safesample` command in experiments/experiment.mk. The cuts:
- pool.parquet          the safety pool the strategies select from (safety_tuned_llamas rows
                        [0, POOL_N)), harmful requests with safe responses;
- align_safety.parquet  safety rows the selection never sees (rows [ALIGN_FROM, ALIGN_FROM+ALIGN_N)),
                        used once to align the base model (stage 1);
- align_benign.parquet  benign tasks answered normally, mixed into stage 1 so the aligned model
                        does not refuse everything: first the benign look-alikes (tasks whose wording
                        sounds harmful, "a murder mystery", "To Kill a Mockingbird"), then short
                        gpteacher tasks up to ALIGN_BENIGN_N;
- benign.parquet        the benign fine-tuning set of every arm (alpaca_gpt4_demo);
- refs.parquet          labelled reference prompts (do_not_answer + HarmBench val) that give
                        the pool its harm categories (`category_coarse`);
- eval_gen.parquet      (with --gen-share) the part of eval.parquet whose responses are generated
                        and judged; the refusal score (judge --scorer refusal_score) covers all of it;
- eval.parquet          evaluation prompts: harmful (HarmBench test without context, not copyright,
                        + the MaliciousInstructions subset, + AdvBench with --advbench), XSTest safe
                        look-alikes, and Alpaca-Eval tasks for helpfulness; `label` is harmful / safe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

# Words that make a benign task look like a harmful one to a small model. Stage 1 must see such
# tasks answered normally, or it learns "refuse when the words sound dangerous".
LOOKALIKE = (r"\b(?:kill\w*|murder\w*|shoot\w*|attack\w*|steal\w*|hack\w*|weapon\w*|bomb\w*|drugs?|"
             r"poison\w*|explo\w+|destroy\w*|crime|criminal\w*|guns?|knife|fight\w*|violen\w+|"
             r"terror\w*|die|dead\w*|death|blood\w*|war|wars|burn\w*|smok\w+|execut\w+|illegal\w*|"
             r"theft|scam\w*|fraud\w*|virus\w*|malware|password\w*|lock\w*|pirat\w+|detective)\b")


def load(shared: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(shared / name / f"{name}.parquet")


def benign_candidates(shared: Path, benign_n: int) -> pd.DataFrame:
    """Short, input-free GPTeacher and Alpaca-GPT4 tasks outside the stage-2 benign set (the first
    `benign_n` Alpaca rows): where stage-1 benign rows and the qwen run's contrast pool come from."""
    alpaca = load(shared, "alpaca_gpt4_demo")
    candidates = pd.concat([load(shared, "gpteacher"), alpaca.iloc[benign_n:]])
    return candidates[(candidates["output"].str.len() < 800) & (candidates["input"].fillna("") == "")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, required=True, help="the shared/data folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pool-n", type=int, default=1500)
    ap.add_argument("--align-from", type=int, default=1500)
    ap.add_argument("--align-n", type=int, default=300, help="safety rows for stage 1")
    ap.add_argument("--align-benign-n", type=int, default=None,
                    help="benign rows for stage 1, look-alikes first (default: 2 x --align-n)")
    ap.add_argument("--benign-n", type=int, default=400)
    ap.add_argument("--harmful-n", type=int, default=160)
    ap.add_argument("--safe-n", type=int, default=60)
    ap.add_argument("--helpful-n", type=int, default=30)
    ap.add_argument("--advbench", action="store_true",
                    help="add AdvBench to the harmful eval prompts (for >= 300 harmful prompts)")
    ap.add_argument("--gen-share", type=float, default=None,
                    help="also write eval_gen.parquet: this share of each eval group (harmful, XSTest safe, "
                         "Alpaca-Eval), the prompts answered by generation; eval.parquet gets the refusal score")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)

    pool = load(a.shared, "safety_tuned_llamas")
    pool.iloc[: a.pool_n].to_parquet(a.out / "pool.parquet", index=False)
    pool.iloc[a.align_from: a.align_from + a.align_n].to_parquet(a.out / "align_safety.parquet", index=False)

    alpaca = load(a.shared, "alpaca_gpt4_demo")
    alpaca.iloc[: a.benign_n].to_parquet(a.out / "benign.parquet", index=False)
    # stage-1 benign rows never overlap the stage-2 benign set
    candidates = benign_candidates(a.shared, a.benign_n)
    lookalike = candidates["instruction"].str.contains(LOOKALIKE, case=False, regex=True)
    n_benign = a.align_n * 2 if a.align_benign_n is None else a.align_benign_n
    looks = candidates[lookalike].sample(frac=1.0, random_state=a.seed).head(n_benign)
    rest = candidates[~lookalike].sample(n=n_benign - len(looks), random_state=a.seed)
    pd.concat([looks, rest]).to_parquet(a.out / "align_benign.parquet", index=False)

    dna = load(a.shared, "do_not_answer")[["id", "instruction", "category_coarse"]]
    hb = load(a.shared, "harmbench")
    hb_val = hb[hb["split"] == "val"].rename(columns={"prompt": "instruction"})[["id", "instruction", "category_coarse"]]
    pd.concat([dna, hb_val]).to_parquet(a.out / "refs.parquet", index=False)

    hb_test = hb[(hb["split"] == "test") & hb["context"].isna() & (hb["category_coarse"] != "copyright")]
    harmful = pd.concat([
        hb_test.assign(category=hb_test["category_coarse"]),
        load(a.shared, "safety_tuned_llamas_eval").query("subset == 'I-MaliciousInstructions'")
        .assign(category="malicious_instructions"),
        *([load(a.shared, "advbench").assign(category="advbench")] if a.advbench else []),
    ])
    harmful = harmful.sample(n=min(a.harmful_n, len(harmful)), random_state=a.seed).assign(label="harmful")
    xs = load(a.shared, "xstest").query("label == 'safe'")
    safe = xs.sample(n=min(a.safe_n, len(xs)), random_state=a.seed).assign(category="xstest_safe", label="safe")
    alp = load(a.shared, "alpaca_eval").query("input == ''")
    helpful = alp.sample(n=a.helpful_n, random_state=a.seed).rename(columns={"instruction": "prompt"}) \
        .assign(category="alpaca_eval", label="safe")
    cols = ["id", "prompt", "category", "label", "source"]
    pd.concat([harmful[cols], safe[cols], helpful[cols]]).to_parquet(a.out / "eval.parquet", index=False)
    if a.gen_share is not None:  # the groups are already in random order: their heads are random subsets
        def head(df: pd.DataFrame) -> pd.DataFrame:
            return df.head(max(1, round(a.gen_share * len(df))))[cols]

        pd.concat([head(harmful), head(safe), head(helpful)]).to_parquet(a.out / "eval_gen.parquet", index=False)
    print(f"prepared {a.out}: pool {a.pool_n}, align {a.align_n} safety + {n_benign} benign "
          f"({len(looks)} look-alikes), benign {a.benign_n}, "
          f"eval {len(harmful)} harmful + {len(safe)} safe + {len(helpful)} helpful")


if __name__ == "__main__":
    main()
