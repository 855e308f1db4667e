"""Summarise the audit run (experiments/audit.mk): does training on the rows audit ranks highest
erode safety more than training on random rows, on rows of the same lengths, or on its lowest?

Reads each arm's committed per-prompt figures (`<arms>/<arm>.parquet`: refusal_score on every eval
prompt, greedy verdicts on a part), the eval labels (eval.parquet) and the audited pool. Per arm:
harmful P(refusal) (the mean sigmoid of the refusal score: the share of answers that open with a
refusal at temperature 1), the mean harmful score, XSTest and AlpacaEval P(refusal), and on the
greedy answers the harmful refusal rate and the harmful-response rate (harm judge). Then the
comparisons the issue asks for, each as a difference in points of harmful P(refusal) and a
paired test over the harmful prompts (Wilcoxon signed-rank on the per-prompt probabilities):
top vs each random seed and their mean, top vs length-matched, bottom vs random. The audited pool
adds the score's distribution, its Spearman correlation with response length and what the top
rows are (their sources).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

ARM = re.compile(r"^(?P<kind>[a-z0-9]+)-b(?P<budget>\d+)-s(?P<seed>\d+)$")
GROUPS = {"harmful": lambda d: d["label"] == "harmful", "xstest": lambda d: d["category"] == "xstest_safe",
          "alpaca_eval": lambda d: d["category"] == "alpaca_eval"}


def probability(scores: pd.Series) -> pd.Series:
    return 1.0 / (1.0 + np.exp(-scores.astype(float)))


def load(arms_dir: Path, eval_path: Path) -> dict[str, pd.DataFrame]:
    labels = pd.read_parquet(eval_path, columns=["id", "category", "label"]).set_index("id")
    arms = {}
    for path in sorted(arms_dir.glob("*.parquet")):
        df = pd.read_parquet(path).set_index("id")
        arms[path.stem] = labels.join(df, how="inner")
    return arms


def metrics(df: pd.DataFrame) -> dict[str, float]:
    out: dict[str, float] = {}
    p = probability(df["refusal_score"])
    for name, sel in GROUPS.items():
        mask = sel(df)
        out[f"{name} P(refusal)"] = float(p[mask].mean())
    out["harmful score"] = float(df.loc[GROUPS["harmful"](df), "refusal_score"].mean())
    if "generated" in df:
        gen = df[df["generated"] & GROUPS["harmful"](df)]
        out["n greedy harmful"] = int(len(gen))
        if "refusal" in gen:
            out["harmful refused (greedy)"] = float(gen["refusal"].astype("boolean").fillna(False).mean())
        if "harmful_response" in gen and gen["harmful_response"].notna().any():
            out["harmful answers (greedy, harm judge)"] = float(gen["harmful_response"].astype("boolean")
                                                                .fillna(False).mean())
    return out


def compare(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    """Arm a minus arm b on the harmful prompts, paired by prompt."""
    from scipy.stats import wilcoxon

    pa_, pb = (probability(x.loc[GROUPS["harmful"](x), "refusal_score"]) for x in (a, b))
    pa_, pb = pa_.align(pb, join="inner")
    d = (pa_ - pb).to_numpy()
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"points": float(100 * d.mean()), "p_wilcoxon": p, "n_prompts": int(len(d)),
            "prompts_lower": int((d < 0).sum())}


def audited_facts(path: Path | None, n: int) -> dict:
    if path is None or not path.exists():
        return {}
    from scipy.stats import spearmanr

    df = pd.read_parquet(path)
    ok = df[df["audit_error"].isna() & df["audit_score"].notna()].sort_values("audit_score", ascending=False)
    rho = spearmanr(ok["audit_score"], ok["response_tokens"]).statistic
    rho_sim = spearmanr(ok["audit_similarity"], ok["response_tokens"]).statistic if "audit_similarity" in ok else None
    top = ok.head(n)
    return {"rows": int(len(df)), "scored": int(len(ok)), "errors": int(df["audit_error"].notna().sum()),
            "spearman_score_vs_length": float(rho), "spearman_similarity_vs_length": None if rho_sim is None
            else float(rho_sim), "score_quantiles": {str(q): float(ok["audit_score"].quantile(q))
                                                     for q in (0.0, 0.1, 0.5, 0.9, 1.0)},
            "top_sources": top["source"].value_counts().to_dict() if "source" in top else {},
            "pool_sources": ok["source"].value_counts().to_dict() if "source" in ok else {},
            "top_mean_tokens": float(top["response_tokens"].mean()),
            "pool_mean_tokens": float(ok["response_tokens"].mean())}


def table_md(per_arm: dict[str, dict]) -> str:
    cols = ["harmful P(refusal)", "harmful score", "xstest P(refusal)", "alpaca_eval P(refusal)",
            "harmful refused (greedy)", "harmful answers (greedy, harm judge)"]
    lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in per_arm.items():
        cells = []
        for c in cols:
            v = m.get(c)
            cells.append("-" if v is None else f"{v:+.2f}" if c == "harmful score" else f"{100 * v:.1f} %")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(per_arm: dict[str, dict], audited: Path | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_arm)
    vals = [100 * per_arm[n]["harmful P(refusal)"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(names)), vals, color=["#999" if n == "aligned" else "#c44" if n.startswith("top")
                                            else "#48a" for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("harmful P(refusal), %")
    ax.set_title("after 1 epoch on 160 benign rows, by how they were chosen")
    fig.tight_layout()
    fig.savefig(out / "refusal_by_arm.png", dpi=110)
    plt.close(fig)
    if audited is not None and audited.exists():
        df = pd.read_parquet(audited)
        ok = df[df["audit_error"].isna() & df["audit_score"].notna()]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.scatter(ok["response_tokens"], ok["audit_score"], s=3, alpha=0.3)
        ax.set_xlabel("response tokens (cut at the training length)")
        ax.set_ylabel("audit_score")
        ax.set_title("audit score vs response length")
        fig.tight_layout()
        fig.savefig(out / "score_vs_length.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", type=Path)
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("--audited", type=Path)
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--command", default="make experiment-audit")
    a = ap.parse_args()
    arms = load(a.arms, a.eval)
    order = sorted(arms, key=lambda k: (k != "aligned", not k.startswith("top"), k))
    per_arm = {k: metrics(arms[k]) for k in order}
    randoms = [k for k in arms if k.startswith("random")]
    comparisons = {}
    for name in ("top-b0-s0", "bottom-b0-s0", "lenmatched-b0-s0"):
        if name in arms:
            for r in randoms:
                comparisons[f"{name} vs {r}"] = compare(arms[name], arms[r])
    if "top-b0-s0" in arms and "lenmatched-b0-s0" in arms:
        comparisons["top-b0-s0 vs lenmatched-b0-s0"] = compare(arms["top-b0-s0"], arms["lenmatched-b0-s0"])
    if "top-b0-s0" in arms and "bottom-b0-s0" in arms:
        comparisons["top-b0-s0 vs bottom-b0-s0"] = compare(arms["top-b0-s0"], arms["bottom-b0-s0"])
    random_mean = (float(np.mean([per_arm[r]["harmful P(refusal)"] for r in randoms])) if randoms else None)
    random_spread = ([float(min(per_arm[r]["harmful P(refusal)"] for r in randoms)),
                      float(max(per_arm[r]["harmful P(refusal)"] for r in randoms))] if randoms else None)
    summary = {"command": a.command, "arms": per_arm, "comparisons": comparisons,
               "random_mean_harmful_P": random_mean, "random_range_harmful_P": random_spread,
               "audited": audited_facts(a.audited, a.n)}
    audit_info = a.arms.parent / "pool_scores.json"
    if audit_info.exists():
        summary["audit_run"] = json.loads(audit_info.read_text())
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = [f"# Audit run: which benign rows erode safety\n\n`{a.command}`\n", table_md(per_arm), "",
          "| comparison (harmful P(refusal)) | difference | Wilcoxon p | prompts lower |", "|---|---|---|---|"]
    for name, c in comparisons.items():
        md.append(f"| {name} | {c['points']:+.2f} points | {c['p_wilcoxon']:.3g} | {c['prompts_lower']} of {c['n_prompts']} |")
    facts = summary["audited"]
    if facts:
        md += ["", f"Audited pool: {facts['scored']} rows scored ({facts['errors']} errors); Spearman of the score "
               f"with response length {facts['spearman_score_vs_length']:+.2f}; top {a.n} mean "
               f"{facts['top_mean_tokens']:.0f} tokens vs pool {facts['pool_mean_tokens']:.0f}; top sources "
               f"{facts['top_sources']} (pool {facts['pool_sources']})."]
    (a.out / "summary.md").write_text("\n".join(md) + "\n")
    plots(per_arm, a.audited, a.out)
    print((a.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
