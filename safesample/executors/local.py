"""The local executor: the stage function on the whole table, in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa


def run(fn: Callable[..., Any], table: "pa.Table", options: Any, *, reporter: Reporter = SILENT,
        **collaborators: Any) -> Any:
    """`fn(table, options, reporter=..., **collaborators)`: what `<stage>_table` returns."""
    return fn(table, options, reporter=reporter, **collaborators)
