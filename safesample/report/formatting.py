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

