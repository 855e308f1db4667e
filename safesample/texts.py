"""What text of a row a model reads: one column, or a template over several columns.

`embed` writes the choice into the embedding field's metadata (`TextSpec.describe()`), so
`cluster` can embed a reference table the same way; `texts_of` reads the texts, refusing a
missing column or a null value by name.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

from safesample.errors import DataError, UsageError
from safesample.schema import require

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class TextSpec:
    """What to embed: one column, or a template such as "{instruction}\\n{response}"."""

    text: str = "instruction"
    template: str | None = None

    @property
    def columns(self) -> list[str]:
        if self.template is None:
            return [self.text]
        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise UsageError(f"--template {self.template!r} is not a valid template: {exc}",
                             "name columns in braces, e.g. \"{instruction}\\n{response}\"; write {{ for a "
                             "literal brace") from exc
        fields = [f for f, _, _ in parsed]
        shaped = next((f for f, spec, conv in parsed if spec or conv or not re.fullmatch(r"[^.\[\]]*", f or "")), None)
        if shaped is not None:
            # `{id:d}` fails on text, `{instruction:>99999999}` pads every row to 100 MB: the text of
            # a column goes in as it is, so a placeholder is a bare column name.
            raise UsageError(f"--template {self.template!r}: the placeholder of {shaped.split('.')[0].split('[')[0]!r} "
                             "has a format, conversion, attribute or index; placeholders are bare column names",
                             "write {column} only, e.g. \"{instruction}\\n{response}\"")
        if not fields or any(not f or f.isdigit() for f in fields):
            raise UsageError(f"--template {self.template!r} names no columns",
                             "name columns in braces, e.g. \"{instruction}\\n{response}\"")
        return list(dict.fromkeys(fields))

    def describe(self) -> str:
        return json.dumps({"template": self.template} if self.template else {"text": self.text})

    @staticmethod
    def parse(described: str | None) -> "TextSpec | None":
        try:
            spec = json.loads(described) if described else None
        except ValueError:
            return None
        if not isinstance(spec, dict):
            return None
        return TextSpec(template=spec["template"]) if spec.get("template") else \
            TextSpec(text=spec.get("text") or "instruction")


def unescape(template: str) -> str:
    r"""Turn the `\n` and `\t` a shell passes through literally into newline and tab."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], template)


def texts_of(table: "pa.Table", spec: TextSpec, command: str = "embed",
             choose: str = "--text COLUMN or --template") -> list[str]:
    """The text to embed for every row; a missing column or a null value is a DataError."""
    import pyarrow as pa

    columns = spec.columns
    try:
        require(table, columns, command)
    except DataError as exc:
        raise DataError(exc.message, f"pick the text to embed with {choose}; {exc.hint}") from exc
    values: dict[str, list] = {}
    for name in columns:
        col = table.column(name)
        if col.null_count:
            import pyarrow.compute as pc

            first = table.filter(pc.is_null(col)).column("id")[0].as_py() if "id" in table.column_names else "?"
            raise DataError(f"column {name!r} has {col.null_count} empty (null) values (first in row id "
                            f"{first!r}); there is no text to embed there",
                            f"drop or fill those rows first, or pick another text with {choose}")
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            try:
                col = col.cast(pa.string())
            except pa.ArrowException as exc:
                raise DataError(f"column {name!r} of type {col.type} cannot be embedded as text",
                                f"pick a text column with {choose}") from exc
        values[name] = col.to_pylist()
    if spec.template is None:
        return values[spec.text]
    fmt = spec.template.format
    return [fmt(**dict(zip(columns, row))) for row in zip(*(values[c] for c in columns))]
