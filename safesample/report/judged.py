"""The report's judge section: judged runs, side by side and compared.

From `judge` output tables and the JSON of `judge --summary` (a table's summary is computed
here with `safesample.judge.summary`, the one stage module the report reads): each run's rates,
per-category refusal, refusal next to over-refusal with Wilson intervals, and the paired
comparison of each run with the base run (changes with bootstrap CIs, refused/complied
transitions, a few example responses of each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesample.errors import DataError, UsageError
from safesample.report.formatting import cut, pct, pp
from safesample.report.inputs import ReportInput
from safesample.report.options import ReportOptions
from safesample.reporter import Reporter

if TYPE_CHECKING:
    import pyarrow as pa

TRANSITIONS = ("refused->complied", "complied->refused")


@dataclass
class _Run:
    name: str
    model: str | None
    summary: dict[str, Any]
    table: "pa.Table | None" = None
    inp: ReportInput | None = None
    eval_input: str | None = None


def _args(inp: ReportInput) -> dict[str, Any]:
    """The arguments of the last `judge` run its provenance records."""
    for entry in reversed(inp.provenance):
        if entry.get("command") == "judge":
            return entry.get("args") or {}
    return {}


def _judge_runs(inputs: list[ReportInput], options: ReportOptions) -> list[_Run]:
    import safesample.judge.summary as judge_summary

    runs: list[_Run] = []
    for inp in inputs:
        if inp.kind == "judge":
            args = _args(inp)
            cat = args.get("category_col") or options.category_col
            guards = [s for s in (args.get("scorers") or []) if s in judge_summary.GUARDS]
            summary = judge_summary.summarize(inp.table, cat if cat in inp.table.column_names else None, guards)
            runs.append(_Run(inp.name, args.get("model"), summary, inp.table, inp, args.get("input")))
    for inp in inputs:
        if inp.kind == "judge_summary":
            d = inp.data
            same = [r for r in runs if r.table is not None and r.model == d.get("model")
                    and r.eval_input == d.get("input") and d.get("model")]
            if same:  # the summary of a judged table given too: the table has the responses
                same[0].summary.setdefault("compare", d.get("compare"))
                continue
            runs.append(_Run(inp.name, d.get("model"), d, None, inp, d.get("input")))
    return runs


def base_input(judges: list[ReportInput], options: ReportOptions) -> ReportInput:
    """The judge input the others are compared with: --base, else the table another was
    judged --compare against, else the first."""
    if options.base is not None:
        for j in judges:
            if options.base in (j.path, j.name) or (j.path != "-" and Path(options.base).resolve() == Path(j.path).resolve()):
                return j
        raise UsageError(f"--base {options.base!r} is not one of the judge tables given",
                         "pass the path of a judge output table that is also an input")
    # a table judged with --compare names its base
    for j in judges:
        named = _args(j).get("compare")
        for other in judges:
            if named and other is not j and other.path != "-" and Path(named).resolve() == Path(other.path).resolve():
                return other
    return judges[0]


def judge_section(inputs: list[ReportInput], options: ReportOptions, chart, findings,
                  reporter: Reporter) -> dict[str, Any] | None:
    """Each judged run's rates, per-category refusal side by side, refusal next to
    over-refusal, and the comparisons: tables paired on id, else what a summary's --compare
    recorded."""
    runs = _judge_runs(inputs, options)
    if not runs:
        return None
    import safesample.judge.summary as judge_summary

    out: dict[str, Any] = {"runs": [], "charts": [], "comparisons": []}
    for r in runs:
        o = r.summary.get("overall", {})
        out["runs"].append({"name": r.name, "model": r.model, **{k: o.get(k) for k in (
            "n", "n_benign", "n_not_benign", "refusal_rate", "full_refusal_rate", "over_refusal_rate",
            "harmful_response_rate", "mean_reward", "parse_failures", "empty_responses")}})

    # per-category refusal, runs side by side
    cats = sorted({c for r in runs for c in (r.summary.get("by_category") or {})})
    if cats:
        series = [(_run_label(r), [(r.summary["by_category"].get(c) or {}).get("refusal_rate") for c in cats])
                  for r in runs]
        sizes = {c: max((r.summary["by_category"].get(c) or {}).get("n_not_benign") or 0 for r in runs) for c in cats}
        cats_with = [c for c in cats if sizes[c]]
        if cats_with:
            idx = [cats.index(c) for c in cats_with]
            series = [(n, [v[i] for i in idx]) for n, v in series]
            groups = [f"{_charts().short(c, 26)} ({sizes[c]})" for c in cats_with]
            out["charts"].append(chart("refusal_by_category", "Refusal of harmful prompts, per category",
                                       _charts().grouped_bars(groups, series, title="refused, among prompts not "
                                                              "flagged benign", ylabel="refused", horizontal=True),
                                       "Each bar: the share of a category's harmful prompts the model refused "
                                       "(prompts per category in brackets). Higher is safer."))
    # refusal next to over-refusal
    series = [("refusal (harmful prompts)", [r.summary["overall"].get("refusal_rate") for r in runs]),
              ("over-refusal (benign look-alikes)", [r.summary["overall"].get("over_refusal_rate") for r in runs])]
    if any(v is not None for _, vals in series for v in vals):
        errors = [[_wilson(r.summary["overall"].get(rate), r.summary["overall"].get(n)) for r in runs]
                  for rate, n in (("refusal_rate", "n_not_benign"), ("over_refusal_rate", "n_benign"))]
        out["charts"].append(chart("refusal_vs_over_refusal", "Refusal next to over-refusal",
                                   _charts().grouped_bars([_run_label(r) for r in runs], series,
                                                          title="refused: harmful vs benign prompts", ylabel="refused",
                                                          errors=errors, horizontal=True),
                                   "A model can look safe by refusing everything: a good run refuses the harmful "
                                   "prompts (blue) without refusing their benign look-alikes (orange). "
                                   "Whiskers: 95 % Wilson intervals."))
        for r in runs:
            o = r.summary["overall"]
            if o.get("refusal_rate") is not None and o.get("over_refusal_rate") is not None \
                    and o["over_refusal_rate"] >= o["refusal_rate"] and o["refusal_rate"] > 0:
                findings.append(f"{_run_label(r)} refuses benign look-alikes at least as often as harmful "
                                f"prompts ({pct(o['over_refusal_rate'])} of {o.get('n_benign')} vs "
                                f"{pct(o['refusal_rate'])} of {o.get('n_not_benign')}): its refusals do not "
                                "tell harmful from benign.")

    # comparisons: tables paired on id, else what a summary's --compare recorded
    tables = [r for r in runs if r.table is not None]
    done: set[str] = set()
    if len(tables) > 1:
        base_inp = base_input([r.inp for r in tables], options)
        base = next(r for r in tables if r.inp is base_inp)
        for r in tables:
            if r is base:
                continue
            cat = _args(r.inp).get("category_col") or options.category_col
            cat = cat if cat in r.table.column_names else None
            try:
                cmp = judge_summary.compare(r.table, base.table, cat, n_boot=options.bootstrap, seed=options.seed)
            except DataError as exc:
                reporter.warn(f"report: {r.name} cannot be compared with {base.name}: {exc.message}")
                continue
            out["comparisons"].append(_comparison(base.name, r, cmp, chart, findings, options,
                                                  base_run=base, now_run=r))
            done.add(r.name)
    for r in runs:
        cmp = r.summary.get("compare")
        if cmp and r.name not in done:
            base_name = Path(str(cmp.get("base") or "base")).stem
            out["comparisons"].append(_comparison(base_name, r, cmp, chart, findings, options))
    return out


def _run_label(r: _Run) -> str:
    if r.model and Path(r.model).name not in r.name:
        return f"{r.name} ({Path(r.model).name})"
    return r.name


def _wilson(p: float | None, n: int | None) -> tuple[float, float] | None:
    if p is None or not n:
        return None
    z = 1.96
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


METRIC_TITLES = {"refusal_rate": "refusal (harmful prompts)", "over_refusal_rate": "over-refusal (benign prompts)",
                 "harmful_response_rate": "harmful responses", "mean_reward": "mean reward"}


def _comparison(base_name: str, run: _Run, cmp: dict[str, Any], chart, findings, options, *,
                base_run: _Run | None = None, now_run: _Run | None = None) -> dict[str, Any]:
    title = f"{run.name} vs {base_name}"
    panels = []
    for metric, scopes in (cmp.get("metrics") or {}).items():
        if metric == "mean_reward":
            continue  # not a rate: its points would mislead on the shared axis
        rows = [(s, v["delta"], v.get("ci_low"), v.get("ci_high"), v.get("n")) for s, v in scopes.items()]
        rows.sort(key=lambda x: (x[0] != "overall", x[0]))
        panels.append((METRIC_TITLES.get(metric, metric), rows))
    item: dict[str, Any] = {"title": title, "base": base_name, "now": run.name, "paired": cmp.get("paired"),
                            "metrics": [], "transitions": [], "examples": [], "chart": None}
    for metric, scopes in (cmp.get("metrics") or {}).items():
        o = scopes.get("overall")
        if o:
            item["metrics"].append({"metric": METRIC_TITLES.get(metric, metric), **o})
    if panels:
        item["chart"] = chart("compare", f"Change: {title}", _charts().forest(panels),
                              "Per category, the change from the base run to this one, in percentage points, "
                              "with its 95 % bootstrap interval (paired on prompt id). An interval that "
                              "crosses 0 is no evidence of a change.")
    for group, counts in (cmp.get("transitions") or {}).items():
        item["transitions"].append({"group": "harmful prompts" if group == "not_benign" else "benign prompts",
                                    **{k.replace("->", "_to_"): v for k, v in counts.items()}})
    # what to say about it
    overall = [(m, s["overall"]) for m, s in (cmp.get("metrics") or {}).items() if "overall" in s and m != "mean_reward"]
    moved = sum(c.get("refused->complied", 0) + c.get("complied->refused", 0)
                for c in (cmp.get("transitions") or {}).values())
    if overall and all(v.get("ci_low") is not None and v["ci_low"] <= 0 <= v["ci_high"] for _, v in overall):
        n = cmp.get("paired")
        findings.append(f"{title}: no change is distinguishable from zero ({moved} of {n} paired prompts "
                        "changed between refused and complied; every 95 % interval includes 0). At this size "
                        "the comparison checks that the pipeline runs; it is not evidence for or against "
                        "the fine-tune.")
    else:
        for m, v in overall:
            if v.get("ci_low") is not None and (v["ci_low"] > 0 or v["ci_high"] < 0):
                findings.append(f"{title}: {METRIC_TITLES.get(m, m)} went from {pct(v['base'])} to "
                                f"{pct(v['now'])} ({pp(v['delta'])} points, 95 % CI {pp(v['ci_low'])} to "
                                f"{pp(v['ci_high'])}, n={v['n']}).")
    if base_run is not None and now_run is not None:
        item["examples"] = _examples(base_run.table, now_run.table, options)
    return item


def _examples(base: "pa.Table", now: "pa.Table", options: ReportOptions) -> list[dict[str, Any]]:
    """A few paired prompts per transition and group, with both responses."""
    pcol = _prompt_column(now)  # None: show ids only
    b_rows = {str(r["id"]): r for r in base.select([c for c in ("id", "refusal", "response") if c in base.column_names]).to_pylist()}
    cols = [c for c in ("id", "refusal", "response", "eval_group", options.category_col, pcol)
            if c and c in now.column_names]
    out: dict[tuple[str, str], list] = {}
    for r in now.select(list(dict.fromkeys(cols))).to_pylist():
        b = b_rows.get(str(r["id"]))
        if b is None or b.get("refusal") is None or r.get("refusal") is None:
            continue
        move = f"{'refused' if b['refusal'] else 'complied'}->{'refused' if r['refusal'] else 'complied'}"
        if move not in TRANSITIONS:
            continue
        group = "benign prompts" if r.get("eval_group") == "benign" else "harmful prompts"
        bucket = out.setdefault((move, group), [])
        if len(bucket) < options.examples:
            bucket.append({"id": r["id"], "category": r.get(options.category_col),
                           "prompt": cut(r.get(pcol)) if pcol else None,
                           "before": cut(b.get("response")), "after": cut(r.get("response"))})
    return [{"move": m.replace("->", " → "), "group": g, "rows": rows} for (m, g), rows in sorted(out.items())]



def _prompt_column(table: "pa.Table") -> str | None:
    """The prompts' column as `judge` finds it (`prompt`, else `instruction`), when it holds text."""
    from safesample.schema import kind_of

    present = {f.name: f.type for f in table.schema}
    name = "prompt" if "prompt" in present else "instruction" if "instruction" in present else None
    if name is None or kind_of(present[name]) not in ("string", "null"):
        return None
    return name


def _charts():
    """The chart module, imported when a chart is drawn (it imports numpy; matplotlib on use)."""
    import safesample.report.charts as charts

    return charts
