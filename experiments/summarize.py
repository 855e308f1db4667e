"""Summarise an experiment run: one judged table per arm -> summary.md, summary.json, plots.

Arms are read from `<judged>/<strategy>-b<budget>-s<seed>.parquet` (and `none.parquet`, the
benign-only arm). Metrics per arm, on the `refusal` column that `safesample judge` writes:
- harmful refused: refusal rate on prompts labelled harmful (higher is safer);
- safe refused: refusal rate on XSTest safe look-alikes (over-refusal, lower is better);
- helpful refused: refusal rate on Alpaca-Eval tasks (lower is better).
Each strategy arm also reports how many harm categories and clusters its picked rows cover (from
the `select --report` JSON in `<out>/selection/`): the diversity the strategy was meant to buy.
Strategies are reported as mean and spread (min-max) over seeds, and compared with the random
arms paired on the same prompts (exact McNemar test on the harmful prompts), because one prompt
is worth less than a point and seeds differ by several.

Paired over seeds (`--pairs`, default diverse vs random and diverse_contrast vs diverse): for each
budget and metric, the per-seed difference between the two arms of the same seed (same mix
order, LoRA init and draw), its mean and spread, a paired t-test, the exact Wilcoxon signed-rank
and sign tests, McNemar per seed on the harmful prompts, and the minimum detectable difference:
the true mean difference a paired t-test over this many seeds would find with 80 % power at
alpha 0.05, given the seed-to-seed spread of the differences (noncentral t). Metrics: the refusal
rates above and, where the judged (or `--scored`) tables carry a `refusal_score` column, the mean
refusal score on harmful and on XSTest safe prompts.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ARM = re.compile(r"^(?P<strategy>[a-z_]+)-b(?P<budget>\d+)-s(?P<seed>\d+)$")
COVERAGE = ("categories", "clusters")  # of the picked safety rows, from the selection report
GROUPS = {"harmful refused": lambda d: d["label"] == "harmful",
          "safe refused (XSTest)": lambda d: d["category"] == "xstest_safe",
          "helpful refused (AlpacaEval)": lambda d: d["category"] == "alpaca_eval"}


def load_arms(folder: Path, labels: pd.DataFrame | None = None,
              generated_only: bool = False) -> dict[tuple[str, int, int], pd.DataFrame]:
    """Each arm's table by (strategy, budget, seed). With `labels` (eval.parquet's id, category,
    label), an arm's table holds ids and numbers only (experiments/arm_results.py) and the labels
    are joined back; `generated_only` keeps the prompts that were answered by generation."""
    arms = {}
    for path in sorted(folder.glob("*.parquet")):
        if path.stem == "none":
            key = ("none", 0, 0)
        elif path.stem == "aligned":
            key = ("aligned", 0, 0)
        elif m := ARM.match(path.stem):
            key = (m["strategy"], int(m["budget"]), int(m["seed"]))
        else:
            continue
        names = pq.read_schema(path).names
        if labels is not None:
            df = pd.read_parquet(path, columns=["id"] + [c for c in ("refusal", "refusal_score", "generated",
                                                                   "harmful_response") if c in names])
            df = labels.merge(df, on="id", how="inner")
            if generated_only:
                if "generated" not in df or not df["generated"].any():
                    continue
                df = df[df["generated"]].drop(columns=["refusal_score"], errors="ignore")
        else:
            df = pd.read_parquet(path, columns=["id", "category", "label"]
                                 + [c for c in ("refusal", "response", "refusal_score") if c in names])
        if "refusal" in df:
            df["refusal"] = df["refusal"].astype("boolean").fillna(False).astype(bool)
        arms[key] = df.set_index("id")
    return arms


# --------------------------------------------------------------------------------------------
# paired statistics over seeds

SCORE_GROUPS = {"harmful refusal score": lambda d: d["label"] == "harmful",
                "XSTest refusal score": lambda d: d["category"] == "xstest_safe"}
# The score is the logit of P(the answer opens with a refusal) at temperature 1, so the mean of its
# sigmoid is the share of prompts a sampling user would see refused at the first words: a rate that
# needs no threshold. (A cut chosen against greedy answers of the base model does not carry over to
# fine-tuned arms: they keep refusing greedily at lower probabilities.)
PROBABILITY_GROUPS = {"harmful P(refusal)": lambda d: d["label"] == "harmful",
                      "XSTest P(refusal)": lambda d: d["category"] == "xstest_safe",
                      "AlpacaEval P(refusal)": lambda d: d["category"] == "alpaca_eval"}
SCORE_METRICS = {**PROBABILITY_GROUPS, **SCORE_GROUPS}
# Greedy answers to harmful prompts that the harm judge calls harmful (arms judged with `-s harm`).
HARM_METRIC = "harmful answers (harm judge)"
RATES = (*GROUPS, HARM_METRIC, *PROBABILITY_GROUPS)  # shown in points
METRICS = (*GROUPS, HARM_METRIC, *SCORE_METRICS)  # every per-arm figure, in table order


def refusal_probability(scores: pd.Series) -> pd.Series:
    """P(the answer opens with a refusal) from the refusal score (its logit)."""
    return 1 / (1 + np.exp(-scores.astype(float)))
DEFAULT_PAIRS = "diverse:random,diverse_contrast:diverse"


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean difference a two-sided paired t-test over `n` pairs detects with
    `power` at `alpha`, when the differences spread with standard deviation `sd` (noncentral t).
    None below 2 pairs or without spread."""
    from scipy.optimize import brentq
    from scipy.stats import norm, nct, t

    if n < 2 or not sd or not np.isfinite(sd):
        return None
    df = n - 1
    crit = t.ppf(1 - alpha / 2, df)

    def shortfall(delta: float) -> float:
        nc = delta * np.sqrt(n) / sd
        if df > 300:  # scipy's noncentral t turns NaN at large df, where it is the shifted normal
            return norm.sf(crit - nc) + norm.cdf(-crit - nc) - power
        reached = nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc)
        if not np.isfinite(reached):  # scipy's NaN far in the tail: there, power is ~1 or ~0
            reached = 1.0 if nc > crit else 0.0
        return reached - power

    hi = sd
    while shortfall(hi) < 0:
        hi *= 2
    return float(brentq(shortfall, 0.0, hi, xtol=1e-12 * sd))


def paired_test(a: list[float], b: list[float]) -> dict:
    """Paired statistics of a - b over seeds: mean, spread, t-test, exact Wilcoxon and sign
    tests, and the minimum detectable difference (80 % power, alpha 0.05)."""
    from scipy.stats import binomtest, ttest_rel, wilcoxon

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    d = a_ - b_
    n = len(d)
    out = {"n_seeds": n, "mean_arm": float(a_.mean()), "mean_vs": float(b_.mean()),
           "sd_arm": float(a_.std(ddof=1)) if n > 1 else None, "sd_vs": float(b_.std(ddof=1)) if n > 1 else None,
           "diff_mean": float(d.mean()), "diff_sd": float(d.std(ddof=1)) if n > 1 else None,
           "t": None, "p_t": None, "p_wilcoxon": None, "p_sign": None, "mdd_80": None}
    nonzero = d[d != 0]
    if len(nonzero):
        out["p_sign"] = float(binomtest(int((nonzero > 0).sum()), len(nonzero), 0.5).pvalue)
        out["p_wilcoxon"] = float(wilcoxon(nonzero, method="exact").pvalue)
    if n > 1 and out["diff_sd"]:
        res = ttest_rel(a_, b_)
        out["t"], out["p_t"] = float(res.statistic), float(res.pvalue)
    elif n > 1:  # identical differences: no spread, the t-test is undefined
        out["p_t"] = 1.0 if out["diff_mean"] == 0 else 0.0
    out["mdd_80"] = min_detectable_difference(out["diff_sd"], n) if n > 1 else None
    return out


def arm_metrics(df: pd.DataFrame | None, scored: pd.DataFrame | None = None) -> dict[str, float]:
    """The per-arm figures of one judged table (generated answers) and its --scored table; an arm
    may have either (generation can be kept to some seeds, the score runs on every arm)."""
    out: dict[str, float] = {}
    if df is not None and "refusal" in df:
        out.update({name: float(df.loc[sel(df), "refusal"].mean()) for name, sel in GROUPS.items()})
    if df is not None and "harmful_response" in df and df["harmful_response"].notna().any():
        harm = df.loc[GROUPS["harmful refused"](df), "harmful_response"].astype("boolean")
        out[HARM_METRIC] = float(harm.dropna().mean())  # an empty answer has no verdict: not counted
    source = scored if scored is not None and "refusal_score" in scored else df
    if source is not None and "refusal_score" in source:
        out.update({name: float(source.loc[sel(source), "refusal_score"].mean())
                    for name, sel in SCORE_GROUPS.items()})
        if source is scored and df is not None and "refusal" in df:
            # does the score still rank this arm's generated refusals? (validated on the base model)
            from safesample.backends.refusal_score import roc_auc

            verdict, score = df["refusal"].align(scored["refusal_score"], join="inner")
            auc = roc_auc(score.astype(float).tolist(), verdict.astype(bool).tolist())
            if auc is not None:
                out["score AUC vs generated"] = auc
        probability = refusal_probability(source["refusal_score"])
        out.update({name: float(probability[sel(source)].mean()) for name, sel in PROBABILITY_GROUPS.items()
                    if sel(source).any()})
    return out


def by_prompt(x: pd.DataFrame, y: pd.DataFrame) -> dict:
    """One seed's two arms paired by prompt on the refusal score: the mean difference over the
    harmful prompts and the Wilcoxon signed-rank p over them (does this seed's difference stand out
    from prompt-to-prompt noise?)."""
    from scipy.stats import wilcoxon

    a, b = x.loc[x["label"] == "harmful", "refusal_score"].align(y["refusal_score"], join="inner")
    d = (a - b).to_numpy(float)
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"n_prompts": int(len(d)), "mean_diff": float(d.mean()), "p_wilcoxon": p}


def paired_over_seeds(per_arm: dict, arms: dict, pairs: list[tuple[str, str]],
                      scored: dict | None = None) -> list[dict]:
    """Each (arm, vs) strategy pair, per budget and metric, over the seeds both have."""
    results = []
    budgets = sorted({k[1] for k in per_arm})
    for arm, vs in pairs:
        for budget in budgets:
            seeds = sorted({k[2] for k in per_arm if k[:2] == (arm, budget)}
                           & {k[2] for k in per_arm if k[:2] == (vs, budget)})
            if not seeds:
                continue
            metrics = [m for m in METRICS
                       if all(m in per_arm[(s_, budget, seed)] for s_ in (arm, vs) for seed in seeds)]
            for metric in metrics:
                a = [per_arm[(arm, budget, s)][metric] for s in seeds]
                b = [per_arm[(vs, budget, s)][metric] for s in seeds]
                row = {"arm": arm, "vs": vs, "budget": budget, "metric": metric, "seeds": seeds,
                       **paired_test(a, b)}
                if metric == "harmful refused" and (arm, budget, seeds[0]) in arms:
                    row["mcnemar"] = []
                    for s in seeds:
                        x, y = arms[(arm, budget, s)], arms[(vs, budget, s)]
                        harmful = x["label"] == "harmful"
                        r1, r2 = x.loc[harmful, "refusal"].align(y["refusal"], join="inner")
                        only_a, only_b, p = mcnemar(r1, r2)
                        row["mcnemar"].append({"seed": s, "refused_only_by_arm": only_a,
                                               "refused_only_by_vs": only_b, "p": p})
                if metric == "harmful refusal score":
                    tables = scored if scored and (arm, budget, seeds[0]) in scored else arms
                    if all((k, budget, sd) in tables for k in (arm, vs) for sd in seeds):
                        row["by_prompt"] = [{"seed": sd, **by_prompt(tables[(arm, budget, sd)],
                                                                      tables[(vs, budget, sd)])}
                                            for sd in seeds]
                results.append(row)
    return results


def arm_name(key: tuple[str, int, int]) -> str:
    """The file stem of an arm: `none`, `aligned`, or `<strategy>-b<budget>-s<seed>`."""
    strategy, budget, seed = key
    return strategy if strategy in ("none", "aligned") else f"{strategy}-b{budget}-s{seed}"


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        arm, sep, vs = item.partition(":")
        if not sep or not arm or not vs:
            raise SystemExit(f"--pairs: {item!r} is not ARM:VS")
        pairs.append((arm, vs))
    return pairs


def mcnemar(a: pd.Series, b: pd.Series) -> tuple[int, int, float]:
    """Discordant pairs (a refused only, b refused only) and the exact two-sided p-value."""
    from scipy.stats import binomtest

    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    p = binomtest(only_a, n, 0.5).pvalue if n else 1.0
    return only_a, only_b, float(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("judged", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--command", default="make experiment")
    ap.add_argument("--scored", type=Path, help="folder of per-arm tables with a refusal_score column "
                    "(score-only judge runs on the full eval set), same file names as JUDGED")
    ap.add_argument("--labels", type=Path, help="eval.parquet: JUDGED is then a folder of committed arm "
                    "results (experiments/arm_results.py: ids and numbers), the labels joined back")
    ap.add_argument("--pairs", default=DEFAULT_PAIRS, help="ARM:VS strategy pairs compared over seeds "
                    f"[default: {DEFAULT_PAIRS}]")
    a = ap.parse_args()
    if a.labels is not None:  # one folder of committed arm results (ids and numbers) + the eval labels
        labels = pd.read_parquet(a.labels, columns=["id", "category", "label"])
        arms = load_arms(a.judged, labels, generated_only=True)
        scored = load_arms(a.judged, labels)
    else:
        arms = load_arms(a.judged)
        scored = load_arms(a.scored) if a.scored and a.scored.is_dir() else {}
    if not arms and not scored:
        raise SystemExit(f"no judged arms in {a.judged}")
    a.out.mkdir(parents=True, exist_ok=True)

    per_arm = {}
    for key in sorted(set(arms) | set(scored)):
        df = arms.get(key)
        per_arm[key] = arm_metrics(df, scored.get(key))
        per_arm[key]["n_harmful"] = int((next(t for t in (df, scored.get(key)) if t is not None)["label"]
                                         == "harmful").sum())
        report = a.out / "selection" / f"{key[0]}-b{key[1]}-s{key[2]}.json"
        if report.exists():
            picked = json.loads(report.read_text())["selection"]
            per_arm[key].update(categories=picked["categories"], clusters=picked["clusters"])

    grouped: dict[tuple[str, int], list] = defaultdict(list)
    for (strategy, budget, seed), metrics in per_arm.items():
        grouped[(strategy, budget)].append(metrics)
    rows = []
    for (strategy, budget), runs in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {"strategy": strategy, "budget": budget, "seeds": len(runs)}
        for name in METRICS:
            vals = np.array([r[name] for r in runs if name in r])
            if not len(vals):
                continue
            if len(vals) < len(runs):  # generated answers on some seeds only (GEN_SEEDS)
                row.setdefault("seeds_with", {})[name] = len(vals)
            row[name] = {"mean": float(vals.mean()), "min": float(vals.min()), "max": float(vals.max())}
            if len(vals) > 1:
                row.setdefault("sd", {})[name] = float(vals.std(ddof=1))
        for name in COVERAGE:
            if all(name in r for r in runs):
                row[name] = float(np.mean([r[name] for r in runs]))
        rows.append(row)

    # Paired comparisons on the harmful prompts: each strategy arm against the random arm of the
    # same budget and seed (against every random arm of that budget when there is none).
    tests = []
    for (strategy, budget, seed), df in arms.items():
        if strategy in ("none", "random", "aligned"):
            continue
        harmful = df["label"] == "harmful"
        randoms = {k: v for k, v in arms.items() if k[0] == "random" and k[1] == budget}
        same_seed = {k: v for k, v in randoms.items() if k[2] == seed}
        for (_, b2, seed2), base in sorted((same_seed or randoms).items()):
            refused, refused_base = df.loc[harmful, "refusal"].align(base["refusal"], join="inner")
            only_a, only_b, p = mcnemar(refused, refused_base)
            same = None
            if "response" in df and "response" in base:
                answer, answer_base = df.loc[harmful, "response"].align(base["response"], join="inner")
                same = float((answer == answer_base).mean())
            tests.append({"arm": f"{strategy}-b{budget}-s{seed}", "vs": f"random-b{b2}-s{seed2}",
                          "refused_only_by_arm": only_a, "refused_only_by_random": only_b, "p": p,
                          "difference_points": 100 * (only_a - only_b) / len(refused),
                          "same_response": same})
    tests.sort(key=lambda t: (t["arm"], t["vs"]))

    paired = paired_over_seeds(per_arm, arms, parse_pairs(a.pairs), scored)
    summary = {"command": a.command, "scores": list(SCORE_GROUPS), "table": rows, "mcnemar_vs_random": tests, "paired_over_seeds": paired,
               "arms": {arm_name(k): v for k, v in per_arm.items()}}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (a.out / "summary.md").write_text(markdown(rows, tests, a.command, summary["arms"]) + paired_markdown(paired))
    plots(rows, arms, a.out, scored)
    paired_plot(paired, per_arm, a.out)
    print((a.out / "summary.md").read_text())


def _p(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def paired_markdown(paired: list[dict]) -> str:
    if not paired:
        return ""
    lines = ["", "Paired over seeds (arm minus vs, same seed): mean difference (sd over seeds), paired "
             "t-test, exact Wilcoxon signed-rank and sign tests, and the minimum detectable difference "
             "(MDD: 80 % power, alpha 0.05, from the seed-to-seed sd of the differences). Rates in "
             "points, scores in log-odds.", "",
             "| arm | vs | budget | metric | seeds | arm mean | vs mean | difference (sd) | p (t) | "
             "p (Wilcoxon) | p (sign) | MDD |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in paired:
        k = 100 if r["metric"] in RATES else 1
        sd = "-" if r["diff_sd"] is None else f"{k * r['diff_sd']:.2f}"
        mdd = "-" if r["mdd_80"] is None else f"{k * r['mdd_80']:.2f}"
        lines.append(f"| {r['arm']} | {r['vs']} | {r['budget']} | {r['metric']} | {r['n_seeds']} | "
                     f"{k * r['mean_arm']:.2f} | {k * r['mean_vs']:.2f} | {k * r['diff_mean']:+.2f} ({sd}) | "
                     f"{_p(r['p_t'])} | {_p(r['p_wilcoxon'])} | {_p(r['p_sign'])} | {mdd} |")
    seeds = [r for r in paired if r.get("by_prompt")]
    if seeds:
        lines += ["", "Each seed paired by prompt on the harmful refusal score (arm minus vs, log-odds; "
                  "Wilcoxon signed-rank over the harmful prompts):", "",
                  "| arm | vs | budget | by seed: difference (p) |", "|---|---|---|---|"]
        for r in seeds:
            lines.append(f"| {r['arm']} | {r['vs']} | {r['budget']} | " + ", ".join(
                f"s{b['seed']} {b['mean_diff']:+.3f} ({b['p_wilcoxon']:.2g})" for b in r["by_prompt"]) + " |")
    return "\n".join(lines) + "\n"


def partial(row: dict, name: str) -> str:
    """A note on a figure that covers only some of the row's seeds."""
    k = row.get("seeds_with", {}).get(name)
    return f" [{k} of {row['seeds']} seeds]" if k else ""


def fmt(cell: dict, rate: bool = True) -> str:
    if not rate:  # a mean log-odds score
        if cell["min"] == cell["max"]:
            return f"{cell['mean']:.2f}"
        return f"{cell['mean']:.2f} ({cell['min']:.2f}–{cell['max']:.2f})"
    if cell["min"] == cell["max"]:
        return f"{100 * cell['mean']:.1f} %"
    return f"{100 * cell['mean']:.1f} % ({100 * cell['min']:.1f}–{100 * cell['max']:.1f})"


def markdown(rows: list[dict], tests: list[dict], command: str, arms: dict | None = None) -> str:
    columns = [g for g in METRICS if any(g in r for r in rows)]
    lines = [f"Produced by `{command}`. Mean over seeds, (min–max) when there are several.", "",
             "| strategy | budget | seeds | " + " | ".join(columns) + " | categories / clusters picked |",
             "|---|---|---|" + "---|" * (len(columns) + 1)]
    for r in rows:
        covered = f"{r['categories']:.3g} / {r['clusters']:.3g}" if "categories" in r else "-"
        lines.append(f"| {r['strategy']} | {r['budget']} | {r['seeds']} | "
                     + " | ".join((fmt(r[g], rate=g in RATES) + partial(r, g)) if g in r else "-" for g in columns)
                     + f" | {covered} |")
    if tests:
        lines += ["", "Paired on the harmful prompts (exact McNemar): prompts refused only by the arm vs "
                  "only by the random arm, the difference in points, and the share of harmful prompts "
                  "both arms answered word for word alike.", "",
                  "| arm | vs | only arm | only random | difference | p | same response |",
                  "|---|---|---|---|---|---|---|"]
        for t in tests:
            same = "-" if t["same_response"] is None else f"{100 * t['same_response']:.0f} %"
            lines.append(f"| {t['arm']} | {t['vs']} | {t['refused_only_by_arm']} | "
                         f"{t['refused_only_by_random']} | {t['difference_points']:+.1f} | {t['p']:.3f} | {same} |")
    aucs = {arm: m["score AUC vs generated"] for arm, m in (arms or {}).items() if "score AUC vs generated" in m}
    if aucs:
        lines += ["", "The refusal score against the generated answers' refusal verdicts on the same prompts "
                  "(AUC; validated on the base model, checked here on each arm that has both): "
                  + ", ".join(f"{arm} {auc:.3f}" for arm, auc in aucs.items()) + "."]
    if HARM_METRIC not in columns:
        lines += ["", "Harmful-response rate is not measured: the rules judge tells refusals, not whether an "
                  "answer is harmful; add the harm judge (`--scorer harm` in the generation's judge arguments) or "
                  "a guard model (`--scorer wildguard --judge-model ...`)."]
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], arms: dict, out: Path, scored: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    baseline = next((r for r in rows if r["strategy"] == "none"), None)
    aligned = next((r for r in rows if r["strategy"] == "aligned"), None)
    strategies = sorted({r["strategy"] for r in rows} - {"none", "aligned"})
    budgets = sorted({r["budget"] for r in rows if r["strategy"] in strategies})
    dodge = 0.012 * (max(budgets, default=1) or 1)  # side by side, so error bars do not hide each other
    # the sampling refusal rate where every arm has one (scored runs), else the generated answers'
    shown = (["harmful P(refusal)", "XSTest P(refusal)"] if all("harmful P(refusal)" in r for r in rows)
             else ["harmful refused", "safe refused (XSTest)"])
    for ax, metric in zip(axes, shown):
        for i, strategy in enumerate(strategies):
            pts = sorted((r["budget"], r[metric]) for r in rows if r["strategy"] == strategy and metric in r)
            if not pts:
                continue
            if baseline and metric in baseline:  # every strategy starts from the benign-only arm at budget 0
                pts = [(0, baseline[metric])] + pts
            xs = np.array([p[0] for p in pts]) + (i - (len(strategies) - 1) / 2) * dodge
            mean = np.array([p[1]["mean"] for p in pts]) * 100
            err = np.array([[p[1]["mean"] - p[1]["min"], p[1]["max"] - p[1]["mean"]] for p in pts]).T * 100
            ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, label=strategy)
        if aligned and metric in aligned:
            ax.axhline(aligned[metric]["mean"] * 100, color="grey", ls=":", label="aligned (before)")
        ax.set_xticks([0] + budgets)
        ax.set_xlabel("safety rows in the fine-tuning mix (0 = benign only)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{metric}: mean, min-max over seeds", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "refusal_vs_budget.png", dpi=110)
    plt.close(fig)

    # Per-category refusal on harmful prompts at the largest budget, mean over seeds per strategy.
    # From the scored tables (P(refusal) at T=1, every arm) when there are any, else the judged ones.
    tables = scored or arms
    top = max((k[1] for k in tables if k[0] not in ("none", "aligned")), default=None)
    if top is None:
        return
    series, sizes = {}, None
    for (strategy, budget, seed), df in tables.items():
        if budget == top or strategy in ("none", "aligned"):
            h = df[df["label"] == "harmful"]
            value = refusal_probability(h["refusal_score"]) if scored else h["refusal"]
            series.setdefault(strategy, []).append(value.groupby(h["category"]).mean())
            sizes = h.groupby("category").size()
    order = ["aligned", "none"] + sorted(set(series) - {"aligned", "none"})
    table = pd.DataFrame({s: pd.concat(series[s], axis=1).mean(axis=1) for s in order if s in series}) * 100
    table.index = [f"{c} ({sizes[c]})" for c in table.index]
    ax = table.plot.bar(figsize=(11, 4.5), rot=30, width=0.8)
    ax.set_ylabel("harmful: P(refusal) at T=1 (%)" if scored else "harmful prompts refused (%)")
    ax.set_xlabel("category (prompts)")
    ax.set_title(f"Refusal per harm category: aligned model, benign only, and each strategy at budget {top} "
                 "(mean over seeds)", fontsize=10)
    ax.set_ylim(0, 118)
    ax.legend(fontsize=8, ncol=len(table.columns), loc="upper center")
    plt.setp(ax.get_xticklabels(), ha="right")
    plt.tight_layout()
    plt.savefig(out / "per_category.png", dpi=110)
    plt.close()


def paired_plot(paired: list[dict], per_arm: dict, out: Path) -> None:
    """Per seed, arm minus vs on the harmful refusal score, with the mean and the smallest
    difference the design detects (+-MDD around zero): the verdict in one picture."""
    shown = [r for r in paired if r["metric"] == "harmful refusal score" and r["n_seeds"] > 1]
    if not shown:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.2 + 2.6 * len(shown), 4))
    for i, r in enumerate(shown):
        diffs = [per_arm[(r["arm"], r["budget"], s)][r["metric"]] - per_arm[(r["vs"], r["budget"], s)][r["metric"]]
                 for s in r["seeds"]]
        ax.scatter([i] * len(diffs), diffs, color="tab:blue", zorder=3)
        for s, d in zip(r["seeds"], diffs):
            ax.annotate(f"s{s}", (i, d), xytext=(6, 0), textcoords="offset points", fontsize=7, va="center")
        ax.plot([i - 0.25, i + 0.25], [r["diff_mean"]] * 2, color="black", lw=2)
        if r["mdd_80"]:
            ax.fill_between([i - 0.3, i + 0.3], -r["mdd_80"], r["mdd_80"], color="grey", alpha=0.2, lw=0)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(shown)), [f"{r['arm']}\n- {r['vs']}\n(budget {r['budget']})" for r in shown], fontsize=8)
    ax.set_xlim(-0.6, len(shown) - 0.4)
    ax.set_ylabel("harmful refusal score, difference (log-odds)")
    ax.set_title("Paired by seed: dots = seeds, bar = mean,\ngrey = smaller than the design detects (80 % power)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "paired_by_seed.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
