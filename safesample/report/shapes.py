"""The shapes of the JSON files the report reads, checked when an input is read.

A JSON input is told by its keys (`inputs.json_kind`); this module checks the values the report
uses have the types safesample writes them with, so a file with the right keys and wrong types
(edited by hand, or written by another tool) is a DataError naming the first wrong value, never
a crash half way through the page. Keys the report does not read are not checked.
"""

from __future__ import annotations

from typing import Any, Callable

from safesample.errors import DataError

# A check returns what is wrong with a value (at the given path), or None.
Check = Callable[[Any, str], "str | None"]


def _what(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown[:40]}{'...' if len(shown) > 40 else ''}"


def number(value: Any, path: str) -> str | None:
    """A number or null (JSON has no NaN, but Python's json writes and reads it)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return None
    return f"{path} is a {_what(value)}, not a number"


def text(value: Any, path: str) -> str | None:
    if value is None or isinstance(value, str):
        return None
    return f"{path} is a {_what(value)}, not text"


def anything(value: Any, path: str) -> str | None:  # noqa: ARG001 - the Check signature
    return None


def obj(required: tuple[str, ...] = (), **fields: Check) -> Check:
    """An object (null allowed unless required at its parent); `fields` checked when present,
    `required` keys must be present and not null."""
    def check(value: Any, path: str) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            return f"{path} is a {_what(value)}, not an object"
        for key in required:
            if value.get(key) is None:
                return f"{path} has no {key!r}"
        for key, inner in fields.items():
            if key in value:
                problem = inner(value[key], f"{path}.{key}")
                if problem:
                    return problem
        return None
    return check


def mapping(inner: Check) -> Check:
    """An object of any keys, each value checked by `inner` (null allowed)."""
    def check(value: Any, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            return f"{path} is a {_what(value)}, not an object"
        for key, item in value.items():
            problem = inner(item, f"{path}.{key}")
            if problem:
                return problem
        return None
    return check


def array(inner: Check) -> Check:
    def check(value: Any, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, list):
            return f"{path} is a {_what(value)}, not a list"
        for k, item in enumerate(value):
            problem = inner(item, f"{path}[{k}]")
            if problem:
                return problem
        return None
    return check


_RATES = {k: number for k in ("n", "n_benign", "n_not_benign", "refusal_rate", "full_refusal_rate",
                              "over_refusal_rate", "harmful_response_rate", "mean_reward", "mean_refusal_score",
                              "over_refusal_score", "parse_failures", "empty_responses")}
_COMPARED = obj(**{k: number for k in ("n", "base", "now", "delta", "ci_low", "ci_high")})
_COVERAGE = {k: number for k in ("categories", "behaviors", "clusters", "mean_pairwise_distance", "draws")}

KINDS_SAID = {"judge_summary": "a `judge --summary` JSON", "selection_report": "a `select --report` JSON",
              "experiment": "an experiment summary.json"}
SHAPES: dict[str, Check] = {
    "judge_summary": obj(
        ("overall",), overall=obj(**_RATES), by_category=mapping(obj(**_RATES)), model=text, input=text,
        compare=obj(base=text, paired=number, metrics=mapping(mapping(_COMPARED)),
                    transitions=mapping(mapping(number)))),
    "selection_report": obj(
        ("selection", "random"), selection=obj(**_COVERAGE), random=obj(**_COVERAGE), available=mapping(number),
        counts=mapping(mapping(number)), budget=number, seed=number, strategy=text, pool_rows=number,
        candidate_rows=number, notes=array(text), exclude_sources=array(anything)),
    "experiment": obj(
        ("table",), command=text, scores=array(text),
        table=array(obj(("strategy",), strategy=text, budget=number, seeds=number)),
        paired_over_seeds=array(obj(metric=text, arm=text, vs=text, budget=number, n_seeds=number,
                                    diff_mean=number, mdd_80=number, p_t=number)),
        mcnemar_vs_random=array(obj(arm=text, vs=text, p=number, difference_points=number,
                                    same_response=number, refused_only_by_arm=number,
                                    refused_only_by_random=number))),
}


def _metric_cells(table: Any) -> str | None:
    """An experiment table's metric cells (objects with a mean) hold numbers."""
    for k, row in enumerate(table or []):
        for key, cell in row.items():
            if isinstance(cell, dict) and "mean" in cell:
                problem = obj(mean=number, min=number, max=number)(cell, f"$.table[{k}].{key}")
                if problem:
                    return problem
    return None


def check_shape(data: Any, kind: str, path: str) -> None:
    """A DataError naming the first value of `data` (a JSON input of `kind`) the report cannot use."""
    problem = SHAPES[kind](data, "$") if kind in SHAPES else None
    if problem is None and kind == "experiment":
        problem = _metric_cells(data.get("table"))
    if problem:
        raise DataError(f"{path!r} looks like {KINDS_SAID[kind]}, but {problem}",
                        "pass the JSON as the command wrote it (select --report, judge --summary, "
                        "experiments/summarize.py); it was changed, or written by another tool")
