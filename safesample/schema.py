"""The columns each stage reads and adds, and validation with messages that say how to fix it.

One registry of well-known columns, so every stage means the same by `response` or
`embedding`, and a missing column's error names the command that produces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from safesample.errors import DataError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # string | bool | float | int | vector
    produced_by: str  # how a user gets this column
    description: str = ""


def _col(name: str, kind: str, produced_by: str, description: str = "") -> Column:
    return Column(name, kind, produced_by, description)


_FROM_DATA = "your input data"
COLUMNS: dict[str, Column] = {c.name: c for c in [
    _col("id", "string", "any stage (generated from content when missing)", "stable row id"),
    _col("instruction", "string", _FROM_DATA + " (map another column with --text or --map)", "the user request"),
    _col("input", "string", _FROM_DATA, "optional extra input of an Alpaca-style task"),
    _col("output", "string", _FROM_DATA, "the answer of an Alpaca-style task"),
    _col("response", "string", "your input data, or `safesample label --generate MODEL`", "the model's reply"),
    _col("prompt", "string", _FROM_DATA + " (or pass --prompt-col)", "an evaluation prompt"),
    _col("category", "string", "`safesample cluster --reference REF.parquet`", "harm category"),
    _col("harmful_request", "bool", "`safesample label`", "is the request harmful"),
    _col("refusal", "bool", "`safesample label`", "is the response a refusal"),
    _col("harmful_response", "bool", "`safesample label`", "is the response itself harmful"),
    _col("behavior", "string", "`safesample label`", "behavior class of the pair"),
    _col("refusal_style", "string", "`safesample label`", "full_refusal / partial_refusal / compliance"),
    _col("label_backend", "string", "`safesample label`"),
    _col("label_error", "string", "`safesample label`"),
    _col("label_truncated", "bool", "`safesample label`", "the response was cut for the judge model"),
    _col("embedding", "vector", "`safesample embed`", "sentence embedding (float32 list)"),
    _col("category_score", "float", "`safesample cluster --reference REF.parquet`"),
    _col("categories", "any", "`safesample cluster --reference REF.parquet`",
         "multi-label harm categories (list of strings), the row's own category first"),
    _col("cluster", "int", "`safesample cluster`", "semantic cluster id"),
    _col("cluster_distance", "float", "`safesample cluster`"),
    _col("cluster_size", "int", "`safesample cluster`"),
    _col("select_reason", "string", "`safesample select`"),
    _col("select_rank", "int", "`safesample select`"),
    _col("source", "string", "`safesample mix`"),
    _col("origin", "string", "`safesample mix`", "an input's own `source` value (e.g. its dataset)"),
    _col("messages", "any", "`safesample mix`", "the pair as a chat: a list of {role, content}"),
    _col("eval_group", "string", "`safesample judge`", "harmful / benign / unflagged evaluation prompt"),
    _col("rules_refusal", "bool", "`safesample judge`", "the rule classifier's refusal verdict"),
    _col("reward", "float", "`safesample judge --scorer reward`", "reward / harmfulness model score"),
    *(_col(f"{kind}_{name}", kind_, f"`safesample judge --scorer {kind}`")
      for kind in ("wildguard", "llm")
      for name, kind_ in (("harmful_request", "bool"), ("refusal", "bool"), ("harmful_response", "bool"),
                          ("error", "string"))),
]}


def column(name: str) -> Column:
    return COLUMNS.get(name) or Column(name, "any", _FROM_DATA)


def kind_of(dtype: "pa.DataType") -> str:
    import pyarrow as pa

    t = pa.types
    if t.is_null(dtype):
        return "null"
    if t.is_string(dtype) or t.is_large_string(dtype) or t.is_string_view(dtype):
        return "string"
    if t.is_boolean(dtype):
        return "bool"
    if t.is_integer(dtype):
        return "int"
    if t.is_floating(dtype):
        return "float"
    if (t.is_list(dtype) or t.is_large_list(dtype) or t.is_fixed_size_list(dtype)) and \
            t.is_floating(dtype.value_type):
        return "vector"
    return str(dtype)


def _compatible(found: str, wanted: str) -> bool:
    if wanted == "any" or found == wanted or found == "null":  # an all-null column fits any kind
        return True
    return wanted == "float" and found == "int"


def require(table: "pa.Table", names: Iterable[str | Column], command: str) -> None:
    """Raise a DataError naming the first missing or mistyped column and how to get it."""
    present = {f.name: f.type for f in table.schema}
    for item in names:
        col = item if isinstance(item, Column) else column(item)
        if col.name not in present:
            found = ", ".join(present) or "no columns"
            raise DataError(f"`safesample {command}` needs a column {col.name!r}, which the input "
                            f"lacks (found: {found})",
                            f"{col.name!r} comes from {col.produced_by}")
        kind = kind_of(present[col.name])
        if not _compatible(kind, col.kind):
            raise DataError(f"column {col.name!r} has type {present[col.name]}, but "
                            f"`safesample {command}` needs {col.kind} values",
                            f"{col.name!r} comes from {col.produced_by}; check that the input "
                            "was not converted along the way")


def parse_maps(specs: Sequence[str] | None) -> dict[str, str]:
    """`--map answer=output --map question=instruction` (or comma-separated) -> {old: new}."""
    mapping: dict[str, str] = {}
    for spec in specs or []:
        for item in spec.split(","):
            old, sep, new = (s.strip() for s in item.partition("="))
            if not sep or not old or not new:
                raise UsageError(f"bad --map {item.strip()!r}: expected OLD=NEW",
                                 "e.g. --map answer=output --map question=instruction")
            if old in mapping and mapping[old] != new:
                raise UsageError(f"--map maps {old!r} twice ({mapping[old]!r} and {new!r})",
                                 "give each column one new name")
            mapping[old] = new
    targets = list(mapping.values())
    if len(set(targets)) != len(targets):
        raise UsageError("--map gives two columns the same new name", "map each column to its own name")
    return mapping
