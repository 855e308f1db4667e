"""How the report writes numbers: the page template's filters, and the sections' findings."""

from __future__ import annotations

import math
from typing import Any


def pct(value: Any, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage ("12.5 %"); "–" for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.{digits}f} %"


def pp(value: Any) -> str:
    """A difference of rates in percentage points, signed ("+3.1")."""
    if value is None:
        return "–"
    return f"{100 * float(value):+.1f}"


def num(value: Any, digits: int = 3) -> str:
    """A number to `digits` significant digits (an integral float without its ".0")."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if not value.is_integer() else str(int(value))
    return str(value)



# Control characters in data (NUL, ESC and the rest of C0 but tab and newlines, DEL, C1) never
# reach the page raw: they show as the Unicode control pictures (U+2400...), so a reader sees
# that they were there and no terminal escape or NUL lands in the HTML.
_CONTROL = {i: 0x2400 + i for i in range(32) if i not in (9, 10, 13)}
_CONTROL[0x7F] = 0x2421
_CONTROL.update({i: f"\\x{i:02x}" for i in range(0x80, 0xA0)})
_CONTROL.update({i: 0xFFFD for i in range(0xD800, 0xE000)})  # lone surrogates cannot be written as UTF-8


def visible(value: Any) -> Any:
    """Text with its control characters shown as symbols (the template's `finalize`: every value
    the page prints passes here); anything else unchanged."""
    if isinstance(value, str):
        cleaned = str.translate(value, _CONTROL)
        return type(value)(cleaned) if type(value) is not str else cleaned
    return value


EXAMPLE_CHARS = 4000  # longest prompt or response shown in an example, in characters


def cut(value: Any, limit: int = EXAMPLE_CHARS) -> Any:
    """A long text cut to `limit` characters with a note of how much was left out (once, where
    the example is built: a response shown in several comparisons is never embedded whole)."""
    if not isinstance(value, str) or len(value) <= limit:
        return value
    return (f"{value[:limit]}\n[... {len(value) - limit:,} more characters not shown; the whole text is in "
            "the judge table]")
