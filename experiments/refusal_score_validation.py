"""Validate the `refusal_score` judge scorer against greedy generation judged by the rules.

Three steps (each cheap to rerun; generations and scores are cached by `safesample judge`):

  prepare  cut the validation prompts into OUT/eval.parquet: HarmBench test behaviors without
           context (standard, not copyright) and XSTest safe prompts, each split by a hash of its
           id into a `dev` half (where the openings are chosen) and a `test` half (where the AUC
           is reported);
  logprobs the log-probability of every candidate opening (the model's own refusal openings vs
           compliance openings) after each chat-formatted prompt (an .npz of numbers);
  choose   on the dev half only: the AUC against the rules verdict on the greedy response of
           the logit of the refusal mass (all refusal openings, and the best subsets) and of the
           log-odds of refusal vs compliance openings (each, and the best sets); the defaults in
           safesample/backends/refusal_score.py were chosen this way;
  report   from a table written by `safesample judge --scorer rules,refusal_score`: the AUC of
           `refusal_score` against `rules_refusal` on the test half (and dev, and all), the
           threshold that best separates them on dev and its accuracy on test; figures only
           (no prompt or response text) to --json.

Run (CPU, `nice`, 2 threads) as in experiments/REFUSAL_SCORE.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _half(key: str) -> str:
    return "dev" if int(hashlib.sha256(key.encode()).hexdigest(), 16) % 2 == 0 else "test"


def _take(df: pd.DataFrame, n: int, salt: str) -> pd.DataFrame:
    order = df["id"].map(lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())
    return df.assign(_o=order).sort_values("_o").head(n).drop(columns="_o")


def prepare(a: argparse.Namespace) -> None:
    hb = pd.read_parquet(a.shared / "harmbench" / "harmbench.parquet")
    hb = hb[(hb["functional_category"] == "standard") & (hb["split"] == "test")]
    xs = pd.read_parquet(a.shared / "xstest" / "xstest.parquet")
    xs = xs[xs["label"] == "safe"]
    harmful = _take(hb, a.harmful_n, "refusal-score")[["id", "prompt", "category"]].assign(label="harmful")
    safe = _take(xs, a.safe_n, "refusal-score")[["id", "prompt"]].assign(category="xstest_safe", label="safe")
    ev = pd.concat([harmful, safe], ignore_index=True)
    ev["id"] = ev["id"].astype(str)
    ev["split"] = ev["id"].map(_half)
    a.out.mkdir(parents=True, exist_ok=True)
    ev.to_parquet(a.out / "eval.parquet", index=False)
    print(f"{len(ev)} prompts ({len(harmful)} harmful, {len(safe)} safe; "
          f"{(ev['split'] == 'dev').sum()} dev / {(ev['split'] == 'test').sum()} test) -> {a.out / 'eval.parquet'}",
          file=sys.stderr)


def logprobs(a: argparse.Namespace) -> None:
    """log P(opening | prompt) of every candidate opening after every prompt -> an .npz (numbers only)."""
    import numpy as np

    from safesample.backends.generation import load_engine
    from safesample.backends.refusal_score import opening_logprobs

    ev = pd.read_parquet(a.eval)
    start = time.time()
    with load_engine(a.model, engine="transformers", batch_size=a.batch_size) as engine:
        texts = engine.format_chat(ev["prompt"].tolist())
        lp = opening_logprobs(engine.model, engine.tokenizer, texts, a.refusal + a.compliance,
                              batch_size=a.batch_size)
    np.savez(a.out, ids=ev["id"].to_numpy(str), logprobs=lp, refusals=np.array(a.refusal),
             compliances=np.array(a.compliance), seconds=time.time() - start)
    print(f"{lp.shape} log-probs in {time.time() - start:.0f} s -> {a.out}", file=sys.stderr)


def choose(a: argparse.Namespace) -> None:
    """On the dev half only: AUC of each candidate opening set's log-odds vs the rules verdict."""
    import itertools

    import numpy as np

    from safesample.backends.refusal_score import log_odds, roc_auc

    data = np.load(a.logprobs)
    refusals, compliances = list(data["refusals"]), list(data["compliances"])
    judged = pd.read_parquet(a.judged).set_index("id")
    ids = list(data["ids"])
    dev = [i for i, k in enumerate(ids) if judged.loc[k, "split"] == "dev"]
    y = judged.loc[[ids[i] for i in dev], "rules_refusal"].astype(bool).to_numpy()
    lp = data["logprobs"][dev]
    nr = len(refusals)

    def auc(rs, cs):
        return roc_auc(log_odds(lp[:, list(rs) + [nr + c for c in cs]], len(rs)), y)

    def mass_auc(rs):  # the logit of the refusal mass (no compliance openings)
        return roc_auc(log_odds(lp[:, list(rs)], len(rs)), y)

    all_r, all_c = range(nr), range(len(compliances))
    masses = sorted(((mass_auc(rs), len(rs), rs) for k in range(1, nr + 1)
                     for rs in itertools.combinations(all_r, k)), key=lambda t: (-t[0], -t[1]))
    result = {"dev_prompts": len(dev), "dev_refused": int(y.sum()), "logprob_seconds": float(data["seconds"]),
              "auc_refusal_mass_all_refusals": mass_auc(all_r),
              "best_refusal_mass_subsets": [{"auc": a_, "refusals": [refusals[r] for r in rs]}
                                            for a_, _, rs in masses[:4]],
              "auc_log_odds_all_candidates": auc(all_r, all_c),
              "auc_each_refusal_vs_all_compliance": {refusals[r]: auc([r], all_c) for r in all_r},
              "auc_all_refusal_vs_each_compliance": {compliances[c]: auc(all_r, [c]) for c in all_c}}
    # Leave-one-out from the full sets: drop the candidates whose removal raises dev AUC.
    sets = []
    for kr in range(max(1, nr - 3), nr + 1):
        for rs in itertools.combinations(all_r, kr):
            for kc in range(max(1, len(compliances) - 3), len(compliances) + 1):
                for cs in itertools.combinations(all_c, kc):
                    sets.append((auc(rs, cs), len(rs) + len(cs), rs, cs))
    sets.sort(key=lambda t: (-t[0], -t[1]))
    result["best_sets"] = [{"auc": s, "refusals": [refusals[r] for r in rs],
                            "compliances": [compliances[c] for c in cs]} for s, _, rs, cs in sets[:5]]
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


def report(a: argparse.Namespace) -> None:
    from safesample.backends.refusal_score import validate_score

    judged = pd.read_parquet(a.judged)
    meta = json.loads(a.summary.read_text()) if a.summary and a.summary.exists() else {}
    out: dict = {"model": a.model_name, "judged_rows": int(len(judged))}
    for name, part in (("test", judged[judged["split"] == "test"]), ("dev", judged[judged["split"] == "dev"]),
                       ("all", judged)):
        dev = judged[judged["split"] == "dev"]
        v = validate_score(part["refusal_score"].to_numpy(), part["rules_refusal"].astype(bool).to_numpy(),
                           threshold_from=(dev["refusal_score"].to_numpy(),
                                           dev["rules_refusal"].astype(bool).to_numpy()))
        out[name] = {"prompts": int(len(part)), "harmful": int((part["label"] == "harmful").sum()),
                     "safe": int((part["label"] == "safe").sum()), **v}
    for label in ("harmful", "safe"):
        part = judged[judged["label"] == label]
        out[f"{label}_rules_refusal_rate"] = float(part["rules_refusal"].astype(bool).mean())
        out[f"{label}_mean_refusal_score"] = float(part["refusal_score"].mean())
    if meta:
        out["judge_summary_overall"] = {k: meta["overall"].get(k) for k in
                                        ("refusal_rate", "over_refusal_rate", "mean_refusal_score")}
    out.update({k: v for k, v in vars(a).items() if k in ("note",) and v})
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--harmful-n", type=int, default=60)
    p.add_argument("--safe-n", type=int, default=20)
    g = sub.add_parser("logprobs")
    g.add_argument("eval", type=Path)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--model", default="qwen2.5-coder-0.5b")
    g.add_argument("--refusal", action="append", required=True)
    g.add_argument("--compliance", action="append", required=True)
    g.add_argument("--batch-size", type=int, default=8)
    c = sub.add_parser("choose")
    c.add_argument("judged", type=Path, help="the table `safesample judge --scorer rules` wrote")
    c.add_argument("--logprobs", type=Path, required=True)
    c.add_argument("--json", type=Path)
    r = sub.add_parser("report")
    r.add_argument("judged", type=Path)
    r.add_argument("--summary", type=Path)
    r.add_argument("--model-name", default="qwen2.5-coder-0.5b")
    r.add_argument("--note")
    r.add_argument("--json", type=Path)
    a = ap.parse_args()
    {"prepare": prepare, "logprobs": logprobs, "choose": choose, "report": report}[a.step](a)


if __name__ == "__main__":
    main()
