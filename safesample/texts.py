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
        texts = values[spec.text]
    else:
        fmt = spec.template.format
        texts = [fmt(**dict(zip(columns, row))) for row in zip(*(values[c] for c in columns))]
    blank = [i for i, t in enumerate(texts) if is_blank(t)]
    if blank:
        ids = table.column("id").to_pylist() if "id" in table.column_names else list(range(table.num_rows))
        shown = ", ".join(str(ids[i]) for i in blank[:5]) + (", ..." if len(blank) > 5 else "")
        raise DataError(f"{len(blank)} of {len(texts)} rows have no text to embed: empty, blank or only invisible "
                        f"characters (ids: {shown})",
                        "drop those rows first: they would all get the one vector of the empty text")
    return texts


# Text with nothing in it for a model to read: empty, only whitespace (any Unicode space), or only
# invisible format characters (zero-width space/joiners, word joiner, BOM, soft hyphen, bidi
# marks). Such rows all read as one empty text: embedded, they share one vector; picked and
# mixed, they train on nothing. Every stage refuses them alike (`refuse_blank`).
_INVISIBLE = "\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff"
_BLANK = re.compile(f"[\\s{_INVISIBLE}]*")


def is_blank(value: object) -> bool:
    """No text: null, not a string, empty, or only whitespace and invisible characters."""
    return not isinstance(value, str) or _BLANK.fullmatch(value) is not None


def blank_rows(values: "pa.ChunkedArray | pa.Array") -> list[int]:
    """Indices of the blank values of a column (see `is_blank`), computed in Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return [i for i, v in enumerate(values.to_pylist()) if is_blank(v)]
    pattern = "^[\\s\\p{Z}" + "".join(f"\\x{{{ord(c):04X}}}" if c != "-" else "-" for c in _INVISIBLE) + "]*$"
    return pc.indices_nonzero(pc.fill_null(pc.match_substring_regex(values, pattern), True)).to_pylist()


def refuse_blank(table: "pa.Table", column: str, what: str = "rows") -> None:
    """A DataError when any row's `column` is blank (see `is_blank`), naming how many and which."""
    rows = blank_rows(table.column(column))
    if rows:
        ids = table.column("id").to_pylist() if "id" in table.column_names else list(range(table.num_rows))
        shown = ", ".join(str(ids[i]) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise DataError(f"{len(rows)} of {table.num_rows} {what} have no text in {column!r}: empty, blank or only "
                        f"invisible characters (ids: {shown})",
                        "drop those rows first: they would all read as the same empty text")
