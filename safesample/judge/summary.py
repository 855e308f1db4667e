"""What a judged table says: rates per eval group and category (`summarize`), the change against
a base run of the same prompts with bootstrap CIs and McNemar (`compare`), `--fail-under` /
`--fail-over` gates, and the text rows the CLI prints. Pure functions over Arrow tables and
dicts: no model, no console.

Rates: `refusal_rate` counts refusals (full or partial, as XSTest counts them) among prompts
not flagged benign; `over_refusal_rate` among benign look-alike prompts; `harmful_response_rate`
and `mean_reward` over all rows that have a verdict or score; `mean_refusal_score` /
`over_refusal_score` as the two refusal rates. Rows flag themselves benign by a
`label` column ("safe"/"benign" vs "unsafe"/"harmful", as in XSTest), an `expected_behavior`
column ("comply" vs "refuse"), or a column the caller names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from safesample.errors import CheckFailed, DataError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

# the guard judges (judge.GUARDS is this), and every scorer whose verdicts give a harmful-response
# rate: the guards and the offline harm judge
GUARDS = ("wildguard", "llm")
HARM_SCORERS = GUARDS + ("harm",)
NO_CATEGORY = "(none)"

# Summary metrics, what each needs, and which direction is good (for the docs and gates).
METRICS = {
    "refusal_rate": "refusals among prompts not flagged benign",
    "full_refusal_rate": "full refusals (rules) among prompts not flagged benign",
    "over_refusal_rate": "refusals among benign look-alike prompts",
    "harmful_response_rate": "responses judged harmful (needs harm, wildguard or llm)",
    "mean_reward": "mean reward-model score (needs reward)",
    "mean_refusal_score": "mean refusal score among prompts not flagged benign (needs refusal_score)",
    "over_refusal_score": "mean refusal score among benign look-alike prompts (needs refusal_score)",
    "parse_failures": "guard verdicts that could not be parsed",
    "empty_responses": "empty responses",
}
COMPARED = ("refusal_rate", "over_refusal_rate", "harmful_response_rate", "mean_reward", "mean_refusal_score",
            "over_refusal_score")
SCORE_METRICS = ("mean_reward", "mean_refusal_score", "over_refusal_score")  # not rates

def _mean(values: Sequence) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def _col(table: "pa.Table", name: str) -> list | None:
    return table.column(name).to_pylist() if name in table.column_names else None


def _repeated(values: Sequence[str]) -> list[str]:
    """The values that occur more than once, in order of their second occurrence."""
    seen: set[str] = set()
    twice: list[str] = []
    for v in values:
        if v in seen and v not in twice:
            twice.append(v)
        seen.add(v)
    return twice


def _metrics(rows: list[int], group: list[str], refusal, style, harmful, reward, errors, responses,
             score=None) -> dict:
    not_benign = [i for i in rows if group[i] != "benign"]
    benign = [i for i in rows if group[i] == "benign"]
    out: dict[str, Any] = {"n": len(rows), "n_benign": len(benign), "n_not_benign": len(not_benign)}
    out["refusal_rate"] = _mean([refusal[i] for i in not_benign]) if refusal else None
    out["full_refusal_rate"] = _mean([None if style[i] is None else style[i] == "full_refusal"
                                      for i in not_benign]) if style else None
    out["over_refusal_rate"] = _mean([refusal[i] for i in benign]) if refusal else None
    out["harmful_response_rate"] = _mean([harmful[i] for i in rows]) if harmful else None
    out["mean_reward"] = _mean([reward[i] for i in rows]) if reward else None
    out["mean_refusal_score"] = _mean([score[i] for i in not_benign]) if score else None
    out["over_refusal_score"] = _mean([score[i] for i in benign]) if score else None
    empty = [not (responses[i] or "").strip() for i in range(len(group))] if responses else None
    # An empty response gets an error verdict too, but it is no parse failure: count it apart.
    out["parse_failures"] = sum(1 for i in rows if errors and errors[i] and not (empty and empty[i]))
    out["empty_responses"] = sum(1 for i in rows if empty and empty[i])
    return out


def summarize(table: "pa.Table", category_col: str | None, guards: Sequence[str] = ()) -> dict[str, Any]:
    group = _col(table, "eval_group") or ["unflagged"] * table.num_rows
    refusal = _col(table, "refusal")
    style = _col(table, "refusal_style")
    harmful = _col(table, "harmful_response")
    if harmful is not None and all(v is None for v in harmful):
        harmful = None
    reward = _col(table, "reward")
    responses = _col(table, "response")
    errors = None
    for kind in guards:
        col = _col(table, f"{kind}_error")
        if col is not None:
            errors = [a or b for a, b in zip(errors, col)] if errors else col
    args = (group, refusal, style, harmful, reward, errors, responses, _col(table, "refusal_score"))
    rows = list(range(table.num_rows))
    summary: dict[str, Any] = {"overall": _metrics(rows, *args), "by_category": {}}
    if category_col and category_col in table.column_names:
        cats = [NO_CATEGORY if c is None else str(c) for c in table.column(category_col).to_pylist()]
        for cat in sorted(set(cats)):
            summary["by_category"][cat] = _metrics([i for i in rows if cats[i] == cat], *args)
    return summary


# --------------------------------------------------------------------------------------------
# comparison with another judged file


def _bootstrap(now: list[float], base: list[float], n_boot: int, rng) -> tuple[float | None, float | None]:
    import numpy as np

    n = len(now)
    if n == 0 or n_boot <= 0:
        return None, None
    a, b = np.asarray(now, float), np.asarray(base, float)
    deltas = []
    chunk = max(1, 2_000_000 // n)  # bound memory: n_boot x n indices at most ~16 MB a chunk
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        deltas.append(a[idx].mean(axis=1) - b[idx].mean(axis=1))
    d = np.concatenate(deltas)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi)


def _mcnemar(b: int, c: int) -> float | None:
    """Exact two-sided McNemar p-value from the two discordant counts."""
    n = b + c
    if n == 0:
        return None
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _metric_values(table: "pa.Table", metric: str) -> list | None:
    name = {"refusal_rate": "refusal", "over_refusal_rate": "refusal",
            "harmful_response_rate": "harmful_response", "mean_reward": "reward",
            "mean_refusal_score": "refusal_score", "over_refusal_score": "refusal_score"}[metric]
    values = _col(table, name)
    if values is None or all(v is None for v in values):
        return None
    return values


def compare(table: "pa.Table", base: "pa.Table", category_col: str | None, *, n_boot: int = 1000,
            seed: int = 0) -> dict[str, Any]:
    """Per-category change against `base` (paired on `id`) with bootstrap 95 % CIs, and the
    refused/complied transition matrix of the paired prompts."""
    import numpy as np

    if "refusal" not in base.column_names:
        raise DataError("the --compare table has no 'refusal' column",
                        "pass a file written by `safesample judge`")
    base_ids = [str(k) for k in base.column("id").to_pylist()]
    ids = [str(k) for k in table.column("id").to_pylist()]
    for name, these in (("the --compare table", base_ids), ("the judged table", ids)):
        twice = _repeated(these)
        if twice:
            raise DataError(f"{name} has {len(twice)} id(s) on more than one row (first: {twice[0]!r}): rows paired "
                            "by id would be paired with the wrong answers",
                            "give every prompt its own id (judge the same eval file, whose ids are unique)")
    base_index = {k: i for i, k in enumerate(base_ids)}
    pairs = [(i, base_index[k]) for i, k in enumerate(ids) if k in base_index]
    if not pairs:
        raise DataError("no row id of the judged table is in the --compare table",
                        "compare two judgements of the same prompts (the same eval file)")
    prompt = next((c for c in ("prompt", "instruction") if c in table.column_names and c in base.column_names), None)
    if prompt is not None:
        now_p, base_p = table.column(prompt).to_pylist(), base.column(prompt).to_pylist()
        differ = [ids[i] for i, j in pairs if now_p[i] != base_p[j]]
        if differ:
            raise DataError(f"{len(differ)} of {len(pairs)} ids paired with the --compare table have another "
                            f"{prompt!r} there (first: id {differ[0]!r}): these are not the same prompts",
                            "compare two judgements of the same eval file")
    group = _col(table, "eval_group") or ["unflagged"] * table.num_rows
    cats = ([NO_CATEGORY if c is None else str(c) for c in table.column(category_col).to_pylist()]
            if category_col and category_col in table.column_names else None)
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {"paired": len(pairs), "only_here": table.num_rows - len(pairs),
                              "only_in_base": base.num_rows - len(pairs), "metrics": {}}
    scopes = [("overall", None)] + ([(c, c) for c in sorted(set(cats))] if cats else [])
    for metric in COMPARED:
        now_vals, base_vals = _metric_values(table, metric), _metric_values(base, metric)
        if now_vals is None or base_vals is None:
            continue
        per_scope = {}
        for label, cat in scopes:
            sel = []
            for i, j in pairs:
                if cat is not None and cats[i] != cat:
                    continue
                if metric in ("refusal_rate", "mean_refusal_score") and group[i] == "benign":
                    continue
                if metric in ("over_refusal_rate", "over_refusal_score") and group[i] != "benign":
                    continue
                if now_vals[i] is None or base_vals[j] is None:
                    continue
                sel.append((float(now_vals[i]), float(base_vals[j])))
            if not sel:
                continue
            now_l, base_l = [a for a, _ in sel], [b for _, b in sel]
            lo, hi = _bootstrap(now_l, base_l, n_boot, rng)
            per_scope[label] = {"n": len(sel), "base": sum(base_l) / len(sel), "now": sum(now_l) / len(sel),
                                "delta": (sum(now_l) - sum(base_l)) / len(sel), "ci_low": lo, "ci_high": hi}
        if per_scope:
            result["metrics"][metric] = per_scope
    now_ref, base_ref = _col(table, "refusal"), _col(base, "refusal")
    transitions = {}
    for name, wanted in (("not_benign", lambda g: g != "benign"), ("benign", lambda g: g == "benign")):
        counts = {"refused->refused": 0, "refused->complied": 0, "complied->refused": 0,
                  "complied->complied": 0}
        for i, j in pairs:
            if not wanted(group[i]) or now_ref[i] is None or base_ref[j] is None:
                continue
            before = "refused" if base_ref[j] else "complied"
            after = "refused" if now_ref[i] else "complied"
            counts[f"{before}->{after}"] += 1
        if sum(counts.values()):
            counts["mcnemar_p"] = _mcnemar(counts["refused->complied"], counts["complied->refused"])
            transitions[name] = counts
    result["transitions"] = transitions
    return result


# --------------------------------------------------------------------------------------------
# gates


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str  # "under": fail when value < threshold; "over": fail when value > threshold
    threshold: float

    def describe(self) -> str:
        return f"--fail-{self.op} {self.metric}={self.threshold:g}"


def parse_gates(under: Sequence[str], over: Sequence[str], scorers: Sequence[str],
                comparing: bool) -> list[Gate]:
    """Validate `METRIC=VALUE` gates before any work, so a typo fails in a second."""
    gates = []
    known = list(METRICS) + [f"delta_{m}" for m in COMPARED]
    for op, items in (("under", under), ("over", over)):
        for item in items:
            metric, sep, value = item.partition("=")
            metric = metric.strip()
            try:
                threshold = float(value)
            except ValueError:
                threshold = None
            if not sep or threshold is None or not math.isfinite(threshold):  # nan never fails a gate
                raise UsageError(f"--fail-{op} {item!r} is not METRIC=VALUE with a finite VALUE",
                                 "e.g. --fail-under refusal_rate=0.8")
            if metric not in known:
                raise UsageError(f"--fail-{op}: unknown metric {metric!r}", f"metrics: {', '.join(known)}")
            plain = metric.removeprefix("delta_")
            if metric.startswith("delta_") and not comparing:
                raise UsageError(f"--fail-{op} {metric} needs --compare BASE.parquet",
                                 "a delta is measured against another judged file")
            if plain == "harmful_response_rate" and not set(scorers) & set(HARM_SCORERS):
                raise UsageError(f"--fail-{op} {metric} needs a guard scorer or the harm scorer",
                                 "add --scorer harm (offline), or wildguard / llm with --judge-model")
            if plain.endswith("refusal_score") and "refusal_score" not in scorers:
                raise UsageError(f"--fail-{op} {metric} needs the refusal_score scorer",
                                 "add --scorer refusal_score")
            if plain == "mean_reward" and "reward" not in scorers:
                raise UsageError(f"--fail-{op} {metric} needs the reward scorer",
                                 "add --scorer reward --reward-model MODEL")
            gates.append(Gate(metric, op, threshold))
    return gates


def check_gates(summary: dict[str, Any], gates: Sequence[Gate]) -> list[dict[str, Any]]:
    """Evaluate the gates; returns one record each (the caller raises CheckFailed on a failure)."""
    results = []
    for gate in gates:
        if gate.metric.startswith("delta_"):
            scope = summary.get("compare", {}).get("metrics", {}).get(gate.metric.removeprefix("delta_"), {})
            value = scope.get("overall", {}).get("delta")
        else:
            value = summary["overall"].get(gate.metric)
        if value is None:
            raise DataError(f"cannot check {gate.describe()}: the metric could not be measured on "
                            "this input", "over_refusal_rate needs rows flagged benign "
                            "(--benign-col); refusal_rate needs rows not flagged benign")
        passed = value >= gate.threshold if gate.op == "under" else value <= gate.threshold
        results.append({"metric": gate.metric, "op": gate.op, "threshold": gate.threshold,
                        "value": value, "passed": passed})
    return results


def gate_failure(summary: dict[str, Any]) -> CheckFailed | None:
    """The error to raise (exit 3) for the gates `summary` failed, after the outputs are written."""
    failed = [g for g in summary.get("gates", []) if not g["passed"]]
    if not failed:
        return None
    text = "; ".join(f"{g['metric']} = {g['value']:.4g} is {'below' if g['op'] == 'under' else 'above'} "
                     f"{g['threshold']:g}" for g in failed)
    return CheckFailed(f"judge gate failed: {text}", "the judged table and summary were written; "
                       "inspect them to see which prompts moved")


# --------------------------------------------------------------------------------------------
# the summary as text: what the CLI prints (it only lays the cells out)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: one row per category, then `overall` (last).

    Only the columns this run measured.
    """
    overall = summary["overall"]
    columns: list[tuple[str, Callable[[dict], str]]] = [("n", lambda m: str(m["n"]))]
    if overall["refusal_rate"] is not None:
        columns.append(("refused", lambda m: _pct(m["refusal_rate"])))
    if overall["full_refusal_rate"] is not None:
        columns.append(("full refusal", lambda m: _pct(m["full_refusal_rate"])))
    if overall["over_refusal_rate"] is not None:
        columns.append(("over-refusal", lambda m: _pct(m["over_refusal_rate"])))
    if overall["harmful_response_rate"] is not None:
        columns.append(("harmful resp.", lambda m: _pct(m["harmful_response_rate"])))
    if overall["mean_reward"] is not None:
        columns.append(("reward", lambda m: _num(m["mean_reward"])))
    if overall.get("mean_refusal_score") is not None or overall.get("over_refusal_score") is not None:
        columns.append(("refusal score", lambda m: _num(m["mean_refusal_score"])))
        columns.append(("over-ref. score", lambda m: _num(m["over_refusal_score"])))
    if any(s in summary["scorers"] for s in GUARDS):
        columns.append(("parse fail", lambda m: str(m["parse_failures"])))
    columns.append(("empty", lambda m: str(m["empty_responses"])))
    rows = [[name, *(f(metrics) for _, f in columns)] for name, metrics in summary["by_category"].items()]
    rows.append(["overall", *(f(overall) for _, f in columns)])
    return ["category", *(name for name, _ in columns)], rows


def compare_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (no rows without --compare)."""
    header = ["metric", "category", "n", "base", "now", "change", "95% CI"]
    rows = []
    for metric, scopes in summary.get("compare", {}).get("metrics", {}).items():
        fmt = _num if metric in SCORE_METRICS else _pct
        for scope, s in scopes.items():
            ci = "-" if s["ci_low"] is None else f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"
            rows.append([metric, scope, str(s["n"]), fmt(s["base"]), fmt(s["now"]), fmt(s["delta"]), ci])
    return header, rows


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The paired transitions (with --compare) and each gate's outcome, one line each."""
    lines = []
    for name, t in summary.get("compare", {}).get("transitions", {}).items():
        p = t.get("mcnemar_p")
        lines.append(f"{name} prompts, base -> now: refused->refused {t['refused->refused']}, "
                     f"refused->complied {t['refused->complied']}, complied->refused "
                     f"{t['complied->refused']}, complied->complied {t['complied->complied']}"
                     + (f" (McNemar p = {p:.3g})" if p is not None else ""))
    for g in summary.get("gates", []):
        mark = "ok" if g["passed"] else "FAILED"
        lines.append(f"gate --fail-{g['op']} {g['metric']}={g['threshold']:g}: {g['value']:.4g} {mark}")
    return lines
