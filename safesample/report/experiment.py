"""An experiment's summary.json (what `experiments/summarize.py` writes; `make experiment`):
the one module of the report that reads its format.

It tells a summary.json from its keys (`arms`, `table`), draws its section (each arm's rates,
mean over seeds with min-max whiskers; the paired-over-seeds differences and the smallest one
the design detects; exact McNemar tests against the random arm), and names the facts its
provenance shows. A change to summarize.py's output is met here only.
"""

from __future__ import annotations

from typing import Any

from safesample.report.formatting import num

SUMMARY_KEYS = frozenset({"arms", "table"})


def is_summary(data: dict[str, Any]) -> bool:
    """Whether a JSON object is an experiment summary.json."""
    return SUMMARY_KEYS <= set(data)


def facts(data: dict[str, Any]) -> list[tuple[str, str]]:
    """What the provenance section shows of a summary.json."""
    return [("command", str(data.get("command")))]


def experiment_section(summaries: list[tuple[str, dict[str, Any]]], chart, findings) -> list[dict[str, Any]]:
    """One item per summary.json given, as (the input's name, its JSON): the arms' table, a chart
    of the refusal rates over seeds, the paired and McNemar comparisons, and what to say."""
    out = []
    for name, d in summaries:
        rows = d.get("table") or []
        metrics = list(dict.fromkeys(k for r in rows for k in r if isinstance(r[k], dict) and "mean" in r[k]))
        # summary.json names its log-odds metrics; everything else is a rate in [0, 1]
        scores = [m for m in metrics if m in set(d.get("scores") or ())]
        rates = [m for m in metrics if m not in scores]
        labels = [f"{r['strategy']}" + (f" · {r['budget']}" if r.get("budget") else "") for r in rows]
        series, errors = [], []
        for m in rates:
            series.append((m, [r[m]["mean"] if m in r else None for r in rows]))
            errors.append([(r[m]["min"], r[m]["max"]) if m in r and r.get("seeds", 1) > 1 else None for r in rows])
        paired = [p for p in d.get("paired_over_seeds") or [] if p.get("n_seeds", 0) > 1]
        item = {"name": name, "command": d.get("command"), "metrics": rates, "scores": scores, "rows": rows,
                "mcnemar": d.get("mcnemar_vs_random") or [], "paired": paired, "chart": None}
        if series:
            from safesample.report.charts import grouped_bars

            item["chart"] = chart("experiment", f"Experiment arms ({name})",
                                  grouped_bars(labels, series, title="refused, mean over seeds "
                                               "(whiskers: min–max)", ylabel="refused", errors=errors,
                                               horizontal=True),
                                  "Each arm: strategy · budget (safety rows mixed in). 'aligned' is the model "
                                  "before fine-tuning, 'none' the benign-only fine-tune.")
        for p in paired:
            if p["metric"] in ("harmful refusal score", "harmful P(refusal)") and p.get("mdd_80") is not None:
                k, unit = (100, " points") if p["metric"] not in scores else (1, " log-odds")
                findings.append(
                    f"Experiment {name}: {p['arm']} minus {p['vs']} at budget {p['budget']}, {p['metric']}, "
                    f"paired over {p['n_seeds']} seeds: {k * p['diff_mean']:+.3g}{unit} (paired t p = "
                    f"{num(p.get('p_t'))}); the smallest difference this design detects (80 % power) is "
                    f"{k * p['mdd_80']:.3g}{unit}.")
        sig = [m for m in item["mcnemar"] if m.get("p") is not None and m["p"] < 0.05]
        if item["mcnemar"]:
            findings.append(f"Experiment {name}: {len(sig)} of {len(item['mcnemar'])} paired arm-vs-random "
                            "comparisons differ at p < 0.05 (exact McNemar on the harmful prompts).")
        out.append(item)
    return out

