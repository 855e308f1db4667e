"""The report's inputs: each one read, its kind told from what it holds, and named.

A kind is told from the columns of a table or the keys of a JSON file; the provenance (the last
command that wrote a table, from the stage registry) only breaks ties, since a later stage may
have kept earlier columns. An input of no known kind is a DataError naming what report reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesample.errors import DataError, UsageError
from safesample.report.experiment import is_summary

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.tables import RunFiles

KINDS = {
    "pool": "a pool table (label / embed / cluster output)",
    "selection": "a `select` output table",
    "selection_report": "a `select --report` JSON",
    "judge": "a `judge` output table",
    "judge_summary": "a `judge --summary` JSON",
    "experiment": "an experiment summary.json (`make experiment`)",
}
EXPECTED = ("a `select` output table or its --report JSON, a `judge` output table or its --summary "
            "JSON, the pool table (label/embed/cluster output), or an experiment summary.json")


@dataclass
class ReportInput:
    path: str
    kind: str
    table: "pa.Table | None" = None
    data: dict[str, Any] | None = None
    provenance: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""
    size: int | None = None
    sha256: str | None = None

    @property
    def rows(self) -> int | None:
        return self.table.num_rows if self.table is not None else None


def load_inputs(paths: list[str], run: "RunFiles | None" = None) -> list[ReportInput]:
    """Read every input and tell its kind; an input of no known kind is a DataError."""
    if not paths:
        raise UsageError("no input given", f"pass {EXPECTED}")
    if paths.count("-") > 1:
        raise UsageError("stdin ('-') can be read once", "pass the other inputs as files")
    inputs = [load_input(p, run) for p in paths]
    name_inputs(inputs)
    return inputs


def load_input(path: str, run: "RunFiles | None" = None) -> ReportInput:
    from safesample.tables import get_provenance, read_table

    p = Path(path)
    if path != "-":
        if not p.exists():
            raise UsageError(f"input file {path!r} does not exist", "check the path; report reads "
                             + EXPECTED)
        if p.is_dir():
            raise UsageError(f"input {path!r} is a directory", f"pass files: {EXPECTED}")
        with open(p, "rb") as fh:
            head = fh.read(64).lstrip()
        if p.suffix.lower() == ".json" or head.startswith(b"{"):
            raw = p.read_bytes()
            try:
                data = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{path!r} is not valid JSON ({exc})", f"report reads {EXPECTED}") from None
            kind = json_kind(data)
            if kind is None:
                keys = ", ".join(list(data)[:8]) if isinstance(data, dict) else type(data).__name__
                raise DataError(f"{path!r} is none of the report's inputs (JSON with {keys})",
                                f"report reads {EXPECTED}")
            return ReportInput(path, kind, data=data, size=len(raw),
                               sha256=hashlib.sha256(raw).hexdigest()[:12])
    table = read_table(path, run)
    history = get_provenance(table)
    kind = table_kind(table, history)
    if kind is None:
        cols = ", ".join(table.column_names[:10]) + (", ..." if table.num_columns > 10 else "")
        raise DataError(f"{path!r} is none of the report's inputs (a table with columns {cols})",
                        f"report reads {EXPECTED}")
    size = sha = None
    if path != "-":
        size = p.stat().st_size
        sha = file_hash(p)
    return ReportInput(path, kind, table=table, provenance=history, size=size, sha256=sha)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def table_kind(table: "pa.Table", history: list[dict[str, Any]] | None = None) -> str | None:
    """`selection`, `judge`, `pool` or None, from the columns (what the table holds decides;
    the provenance only breaks ties, since a later stage may have kept earlier columns)."""
    cols = set(table.column_names)
    if {"select_reason", "select_rank"} <= cols:
        return "selection"
    if {"eval_group", "refusal"} <= cols:
        return "judge"
    from safesample.stages import table_kinds

    last = (history or [{}])[-1].get("command") if history else None
    if table_kinds().get(last) == "pool" or "embedding" in cols or {"behavior", "category"} <= cols:
        return "pool"
    return None


def json_kind(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    keys = set(data)
    if {"selection", "random", "counts"} <= keys:
        return "selection_report"
    if {"overall", "by_category"} <= keys:
        return "judge_summary"
    if is_summary(data):
        return "experiment"
    return None


def name_inputs(inputs: list[ReportInput]) -> None:
    """Short unique labels: the file stem, the parent folder added where stems repeat."""
    stems = [Path(i.path).stem if i.path != "-" else "stdin" for i in inputs]
    for i, inp in enumerate(inputs):
        name = stems[i]
        if stems.count(name) > 1 and inp.path != "-":
            name = f"{Path(inp.path).parent.name}/{name}"
        inp.name = name

