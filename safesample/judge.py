"""Judging a model: generate its responses to evaluation prompts, score them, summarise, compare.

Stage logic only (no CLI code). Collaborators come in as arguments, so everything here runs
with fake engines in tests:

- an *engine* (`safesample.backends.generation.load_engine`) with `.chat(instructions, system=,
  max_new_tokens=, progress=)` and `.generate(prompts, max_new_tokens=, progress=)`;
- scorers: `rules` (the refusal classifier of `safesample.behavior`, always available),
  `wildguard` / `llm` guard judges (`safesample.guards.judge_pairs` over a judge engine) and
  `reward` (`safesample.backends.reward.RewardModel`).

Columns added (input columns are kept; these are replaced when re-judging a judged file):
`response` (when generated), `eval_group` (harmful / benign / unflagged), `refusal_style` and
`rules_refusal` (rules), `<kind>_harmful_request`, `<kind>_refusal`, `<kind>_harmful_response`,
`<kind>_error` (each guard), `reward` (reward), and the combined `refusal` (the first guard's
verdict where it parsed, else the rules') and `harmful_response` (the first guard's).

Rates: `refusal_rate` counts refusals (full or partial, as XSTest counts them) among prompts
not flagged benign; `over_refusal_rate` among benign look-alike prompts; `harmful_response_rate`
and `mean_reward` over all rows that have a verdict or score. Rows flag themselves benign by a
`label` column ("safe"/"benign" vs "unsafe"/"harmful", as in XSTest), an `expected_behavior`
column ("comply" vs "refuse"), or a column the caller names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from safesample.errors import DataError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

COMMAND = "judge"
SCORERS = ("rules", "wildguard", "llm", "reward")
GUARDS = ("wildguard", "llm")
TEMPLATES = ("auto", "alpaca", "chat", "raw")
GROUPS = ("harmful", "benign", "unflagged")
NO_CATEGORY = "(none)"

BENIGN_VALUES = {"safe", "benign", "comply", "compliance", "true", "yes", "1"}
HARMFUL_VALUES = {"unsafe", "harmful", "refuse", "refusal", "false", "no", "0"}

# Summary metrics, what each needs, and which direction is good (for the docs and gates).
METRICS = {
    "refusal_rate": "refusals among prompts not flagged benign",
    "full_refusal_rate": "full refusals (rules) among prompts not flagged benign",
    "over_refusal_rate": "refusals among benign look-alike prompts",
    "harmful_response_rate": "responses a guard judged harmful (needs wildguard or llm)",
    "mean_reward": "mean reward-model score (needs reward)",
    "parse_failures": "guard verdicts that could not be parsed",
    "empty_responses": "empty responses",
}
COMPARED = ("refusal_rate", "over_refusal_rate", "harmful_response_rate", "mean_reward")

Progress = Callable[[int], None]


# --------------------------------------------------------------------------------------------
# inputs


def prompt_column(table: "pa.Table", prompt_col: str | None) -> str:
    from safesample.schema import require

    if prompt_col is None:
        if "prompt" in table.column_names:
            prompt_col = "prompt"
        elif "instruction" in table.column_names:
            prompt_col = "instruction"  # alpaca_eval and other instruction sets
        else:
            found = ", ".join(table.column_names) or "no columns"
            raise DataError(f"`safesample judge` needs a prompt column: neither 'prompt' nor "
                            f"'instruction' is in the input (found: {found})",
                            "name the column holding the prompts with --prompt-col")
    if prompt_col not in table.column_names:
        found = ", ".join(table.column_names)
        raise DataError(f"--prompt-col {prompt_col!r} is not a column of the input (found: {found})",
                        "pass the name of the column holding the prompts")
    require(table, [_string_col(prompt_col)], COMMAND)
    return prompt_col


def _string_col(name: str):
    from safesample.schema import Column

    return Column(name, "string", "your input data (or pass --prompt-col)")


def prompt_texts(table: "pa.Table", prompt_col: str) -> tuple[list[str], list[str | None]]:
    """The instructions, and each row's extra `input` (Alpaca style) when prompting by instruction."""
    prompts = table.column(prompt_col).to_pylist()
    blank = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if blank:
        ids = table.column("id").to_pylist()
        shown = ", ".join(str(ids[i]) for i in blank[:5]) + (", ..." if len(blank) > 5 else "")
        raise DataError(f"{len(blank)} of {len(prompts)} prompts in {prompt_col!r} are empty (ids: {shown})",
                        "drop those rows first")
    inputs: list[str | None] = [None] * len(prompts)
    if prompt_col == "instruction" and "input" in table.column_names:
        inputs = [x if isinstance(x, str) and x.strip() else None for x in table.column("input").to_pylist()]
    return prompts, inputs


def eval_groups(table: "pa.Table", benign_col: str | None = None) -> tuple[list[str], str | None]:
    """harmful / benign / unflagged per row, and the column that decided it (or None)."""
    n = table.num_rows
    if benign_col is not None:
        if benign_col not in table.column_names:
            raise DataError(f"--benign-col {benign_col!r} is not a column of the input",
                            f"columns: {', '.join(table.column_names)}")
        source = benign_col
    elif "label" in table.column_names:
        source = "label"
    elif "expected_behavior" in table.column_names:
        source = "expected_behavior"
    else:
        return ["unflagged"] * n, None
    groups = []
    for value in table.column(source).to_pylist():
        if isinstance(value, bool):
            groups.append("benign" if value else "harmful")
            continue
        text = str(value).strip().lower() if value is not None else ""
        groups.append("benign" if text in BENIGN_VALUES else "harmful" if text in HARMFUL_VALUES
                      else "unflagged")
    return groups, source


def resolve_template(model: str | None, template: str) -> str:
    """`auto`: the template a `safesample finetune` run was trained with, else the chat template."""
    if template not in TEMPLATES:
        raise UsageError(f"unknown --template {template!r}", f"use one of: {', '.join(TEMPLATES)}")
    if template != "auto":
        return template
    if model:
        from safesample.finetune import read_run_config

        config = read_run_config(model)
        if config and config.get("template") in ("alpaca", "chat"):
            return config["template"]
    return "chat"


# --------------------------------------------------------------------------------------------
# generation and scoring


def generate(engine, prompts: Sequence[str], inputs: Sequence[str | None], template: str, *,
             system: str | None = None, max_new_tokens: int | None = None, cache: bool = True,
             progress: Progress | None = None) -> list[str]:
    """Greedy responses, in order; cached by (model fingerprint, settings, prompt text)."""
    from safesample.backends.generation import cached_generate
    from safesample.finetune import alpaca_prompt, chat_text

    if template == "chat":
        texts = engine.format_chat([chat_text(p, x) for p, x in zip(prompts, inputs)], system)
    else:
        # Engines tokenize without adding special tokens; the trainer's tokenizer call added them
        # to the Alpaca text (e.g. Llama's BOS), so write them into the prompt here.
        prefix = _special_prefix(getattr(engine, "tokenizer", None))
        texts = [prefix + (alpaca_prompt(p, x) if template == "alpaca" else chat_text(p, x))
                 for p, x in zip(prompts, inputs)]
    out, _hits = cached_generate(engine, texts, max_new_tokens=max_new_tokens, cache=cache, progress=progress,
                                 purpose="judge:respond")
    if len(out) != len(texts):
        raise RuntimeError(f"the engine returned {len(out)} responses for {len(texts)} prompts")
    return [(r or "").strip() for r in out]


def _special_prefix(tokenizer) -> str:
    """The text of the special tokens the tokenizer puts before a plain text (BOS), if any."""
    if tokenizer is None:
        return ""
    try:
        with_special = tokenizer("x")["input_ids"]
        without = tokenizer("x", add_special_tokens=False)["input_ids"]
    except (TypeError, ValueError, KeyError):
        return ""
    extra = len(with_special) - len(without)
    if extra > 0 and with_special[extra:] == without:
        return tokenizer.decode(with_special[:extra])
    return ""


def score_rules(responses: Sequence[str | None], classify: Callable | None = None) -> dict[str, list]:
    if classify is None:
        from safesample.behavior import classify_responses as classify
    styles = classify([r if r is not None else None for r in responses])
    return {"refusal_style": styles,
            "rules_refusal": [None if s is None else s != "compliance" for s in styles]}


def score_guard(engine, kind: str, prompts: Sequence[str], responses: Sequence[str | None], *,
                template: str | None = None, cache: bool = True, progress: Progress | None = None,
                judge_pairs: Callable | None = None) -> dict[str, list]:
    if judge_pairs is None:
        from safesample.guards import judge_pairs
    verdicts = judge_pairs(engine, list(prompts), [r or "" for r in responses], kind=kind,
                           template=template, cache=cache, progress=progress)
    return {f"{kind}_harmful_request": [v.harmful_request for v in verdicts],
            f"{kind}_refusal": [v.refusal for v in verdicts],
            f"{kind}_harmful_response": [v.harmful_response for v in verdicts],
            f"{kind}_error": [v.error or None for v in verdicts]}


def score_reward(reward_model, prompts: Sequence[str], responses: Sequence[str | None], *,
                 cache: bool = True, progress: Progress | None = None) -> dict[str, list]:
    scores = reward_model.score(list(prompts), [r or "" for r in responses], progress=progress, cache=cache)
    return {"reward": scores}


def combine(columns: dict[str, list], guards: Sequence[str], n: int) -> dict[str, list]:
    """The combined `refusal` / `harmful_response`: the first guard's verdict, else the rules'."""
    rules = columns.get("rules_refusal", [None] * n)
    guard = guards[0] if guards else None
    g_ref = columns.get(f"{guard}_refusal", [None] * n) if guard else [None] * n
    g_harm = columns.get(f"{guard}_harmful_response", [None] * n) if guard else [None] * n
    out = {"refusal": [g if g is not None else r for g, r in zip(g_ref, rules)]}
    if guard:
        out["harmful_response"] = list(g_harm)
    return out


def assemble(table: "pa.Table", columns: dict[str, list]) -> "pa.Table":
    """The input table with `columns` added, replacing any of the same name."""
    import pyarrow as pa

    types = {"refusal_style": pa.string(), "response": pa.string(), "eval_group": pa.string(),
             "reward": pa.float64()}
    for name, values in columns.items():
        if name.endswith(("_error",)):
            typ = pa.string()
        elif name in types:
            typ = types[name]
        else:
            typ = pa.bool_()
        array = pa.array(values, typ)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    return table


# --------------------------------------------------------------------------------------------
# summary


def _mean(values: Sequence) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def _col(table: "pa.Table", name: str) -> list | None:
    return table.column(name).to_pylist() if name in table.column_names else None


def _metrics(rows: list[int], group: list[str], refusal, style, harmful, reward, errors, responses) -> dict:
    not_benign = [i for i in rows if group[i] != "benign"]
    benign = [i for i in rows if group[i] == "benign"]
    out: dict[str, Any] = {"n": len(rows), "n_benign": len(benign), "n_not_benign": len(not_benign)}
    out["refusal_rate"] = _mean([refusal[i] for i in not_benign]) if refusal else None
    out["full_refusal_rate"] = _mean([None if style[i] is None else style[i] == "full_refusal"
                                      for i in not_benign]) if style else None
    out["over_refusal_rate"] = _mean([refusal[i] for i in benign]) if refusal else None
    out["harmful_response_rate"] = _mean([harmful[i] for i in rows]) if harmful else None
    out["mean_reward"] = _mean([reward[i] for i in rows]) if reward else None
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
    args = (group, refusal, style, harmful, reward, errors, responses)
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
            "harmful_response_rate": "harmful_response", "mean_reward": "reward"}[metric]
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
    base_index = {str(k): i for i, k in enumerate(base.column("id").to_pylist())}
    ids = [str(k) for k in table.column("id").to_pylist()]
    pairs = [(i, base_index[k]) for i, k in enumerate(ids) if k in base_index]
    if not pairs:
        raise DataError("no row id of the judged table is in the --compare table",
                        "compare two judgements of the same prompts (the same eval file)")
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
                if metric == "refusal_rate" and group[i] == "benign":
                    continue
                if metric == "over_refusal_rate" and group[i] != "benign":
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
            if not sep or threshold is None:
                raise UsageError(f"--fail-{op} {item!r} is not METRIC=VALUE",
                                 "e.g. --fail-under refusal_rate=0.8")
            if metric not in known:
                raise UsageError(f"--fail-{op}: unknown metric {metric!r}", f"metrics: {', '.join(known)}")
            plain = metric.removeprefix("delta_")
            if metric.startswith("delta_") and not comparing:
                raise UsageError(f"--fail-{op} {metric} needs --compare BASE.parquet",
                                 "a delta is measured against another judged file")
            if plain == "harmful_response_rate" and not set(scorers) & set(GUARDS):
                raise UsageError(f"--fail-{op} {metric} needs a guard scorer",
                                 "add --scorer wildguard (or llm) with --judge-model")
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
