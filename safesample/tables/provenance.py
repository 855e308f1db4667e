"""Row ids and provenance: what every stage keeps and adds.

Stages keep every input column and a stable `id` (a content hash when the input has none), and
append one record per stage (command, arguments, version, seed, models, inputs, argv) to the
schema metadata, so a table says how it was made.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from safesample import __version__

if TYPE_CHECKING:
    import pyarrow as pa

PROVENANCE_KEY = b"safesample.provenance"


def ensure_id(table: "pa.Table") -> "pa.Table":
    """Give every row a stable string `id` when the table has none.

    The id is a hash of the row's content, so the same input gets the same ids on every run
    and in every stage; repeated identical rows get a `-2`, `-3`, ... suffix.
    """
    import pyarrow as pa

    if "id" in table.column_names:
        return table
    seen: dict[str, int] = {}
    ids = []
    columns = [table.column(name).to_pylist() for name in table.column_names]
    for values in zip(*columns) if columns else ():
        digest = hashlib.sha1(json.dumps(values, default=str, ensure_ascii=False).encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return table.add_column(0, "id", pa.array(ids, pa.string()))


def put_column(table: "pa.Table", name: str, values: "pa.Array | pa.ChunkedArray",
               field: "pa.Field | None" = None) -> "pa.Table":
    """Add a column, or replace it in place when it exists, so a rerun keeps the column order.

    `field` carries metadata (e.g. an embedding's model and dimension); by default a plain field
    of the values' type.
    """
    import pyarrow as pa

    field = field if field is not None else pa.field(name, values.type)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), field, values)
    return table.append_column(field, values)


def get_provenance(table: "pa.Table") -> list[dict[str, Any]]:
    meta = table.schema.metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else []


def with_provenance(table: "pa.Table", entry: dict[str, Any],
                    history: list[dict[str, Any]] | None = None) -> "pa.Table":
    """Append one stage's record (command, args, version, seed, models) to the schema metadata.

    `history` replaces the table's own earlier records, e.g. with `merged_provenance` of
    several inputs.
    """
    history = (get_provenance(table) if history is None else list(history)) + [entry]
    meta = dict(table.schema.metadata or {})
    meta.pop(b"pandas", None)  # stale once columns change; pyarrow rebuilds it when needed
    meta[PROVENANCE_KEY] = json.dumps(history).encode()
    return table.replace_schema_metadata(meta)


def provenance_entry(command: str, args: dict[str, Any], seed: int | None = None,
                     models: dict[str, str] | None = None, inputs: list[str] | None = None,
                     argv: list[str] | None = None) -> dict[str, Any]:
    """One stage's record; `argv` is the command line as typed, so a run can be repeated."""
    return {
        "command": command,
        "argv": argv,
        "args": {k: v for k, v in args.items() if _jsonable(v)},
        "inputs": inputs or [],
        "version": __version__,
        "seed": seed,
        "models": models or {},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def merged_provenance(tables: list["pa.Table"]) -> list[dict[str, Any]]:
    """Provenance of several inputs (e.g. for `mix`), each history in input order."""
    merged: list[dict[str, Any]] = []
    for table in tables:
        merged.extend(get_provenance(table))
    return merged


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
