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
from safesample.report.shapes import check_shape

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
    "audit": "an `audit` output table (benign rows scored)",
}
EXPECTED = ("a `select` output table or its --report JSON, a `judge` output table or its --summary "
            "JSON, the pool table (label/embed/cluster output), an `audit` output, or an experiment summary.json")


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
    """One input: a JSON report or summary (told by its keys, its values checked), or a table
    (a file in any format the other commands read, JSON Lines included, a shard folder, a glob)."""
    from safesample.tables import shards
    from safesample.tables import get_provenance, read_table

    p = Path(path)
    sharded = path != "-" and shards.is_sharded(path)
    if path != "-" and not sharded:
        if not p.exists():
            raise UsageError(f"input file {path!r} does not exist", "check the path; report reads "
                             + EXPECTED)
        if p.suffix.lower() not in (".jsonl", ".ndjson"):
            with open(p, "rb") as fh:
                head = fh.read(64).lstrip()
            if p.suffix.lower() == ".json" or head.startswith(b"{"):
                found = _json_input(path, p.read_bytes())
                if found is not None:
                    return found
    table = read_table(path, run)
    history = get_provenance(table)
    kind = table_kind(table, history)
    if kind is None:
        cols = ", ".join(table.column_names[:10]) + (", ..." if table.num_columns > 10 else "")
        raise DataError(f"{path!r} is none of the report's inputs (a table with columns {cols})",
                        f"report reads {EXPECTED}")
    size = sha = None
    if sharded:
        files = shards.shard_files(path)[0]
        size = sum(f.stat().st_size for f in files)
        sha = hashlib.sha256("".join(file_hash(f) for f in files).encode()).hexdigest()[:12]
    elif path != "-":
        size = p.stat().st_size
        sha = file_hash(p)
    return ReportInput(path, kind, table=table, provenance=history, size=size, sha256=sha)


def _json_input(path: str, raw: bytes) -> ReportInput | None:
    """A JSON report or summary; None when the file is JSON Lines (a table: one object per
    line, which its second line tells, or a single line that is no report)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path!r} is not UTF-8 text (byte {exc.start})", f"report reads {EXPECTED}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if _object_line(lines[0] if lines else ""):
            return None  # JSON Lines: one object per line
        raise DataError(f"{path!r} is not valid JSON ({exc})", f"report reads {EXPECTED}") from None
    kind = json_kind(data)
    if kind is None:
        if len(lines) == 1 and isinstance(data, dict) and not path.lower().endswith(".json"):
            return None  # a one-row JSON Lines table
        keys = ", ".join(map(str, list(data)[:8])) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path!r} is none of the report's inputs (JSON with {keys})", f"report reads {EXPECTED}")
    check_shape(data, kind, path)
    return ReportInput(path, kind, data=data, size=len(raw), sha256=hashlib.sha256(raw).hexdigest()[:12])


def _object_line(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


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
    if {"audit_score", "audit_rank"} <= cols:  # an `audit` output
        return "audit"
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

