"""`--gold COL` and its companions, shared by `label` and `judge`: the options once, the checks
before any work, and the outputs after it (summary lines on stderr, the disagreeing rows).

The calibration itself is the stages' (`safesample.calibration`, `safesample.gold`); this module
only parses and writes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.calibration import Calibration
    from safesample.gold import GoldOptions

Gold = Annotated[Optional[str], typer.Option(
    "--gold", metavar="COL", help="Column of human refusal labels (full_refusal / partial_refusal / "
    "compliance, or yes/no) to calibrate the judge against: accuracy, Cohen's kappa, confusion "
    "matrix.", show_default=False)]
GoldMode = Annotated[str, typer.Option("--gold-mode", help="auto (3-way style when the gold column "
                                       "has one, else binary), binary or style.")]
GoldScheme = Annotated[str, typer.Option("--gold-scheme", help="auto, or do_not_answer (action codes "
                                         "0-5 of Do-Not-Answer).")]
By = Annotated[Optional[str], typer.Option("--by", metavar="COL", help="With --gold: accuracy per "
                                           "value of COL (model, category).", show_default=False)]
Disagreements = Annotated[Optional[Path], typer.Option(
    "--disagreements", metavar="FILE", help="With --gold: write the rows where the judge and the gold "
    "labels disagree (.parquet, .csv, .jsonl, .arrow).", show_default=False)]


def options(gold: str | None, mode: str, scheme: str, by: str | None,
            disagreements: Path | None) -> "GoldOptions | None":
    """GoldOptions from the flags (None without --gold), the disagreements path checked now."""
    from safesample.gold import gold_options
    from safesample.cli.common import check_output

    opts = gold_options(gold, mode, scheme, by, disagreements=disagreements)
    if disagreements is not None:
        check_output(str(disagreements), "--disagreements")
    return opts


def finish(table: "pa.Table", results: "dict[str, Calibration]", disagreements: Path | None) -> None:
    """Print each judge's calibration on stderr and write the disagreeing rows (atomically)."""
    from safesample.gold import calibration_lines, disagreements_of
    from safesample.console import CONSOLE
    from safesample.cli.common import files
    from safesample.tables import write_table

    for line in calibration_lines(results):
        CONSOLE.info(line)
    if disagreements is not None:
        rows = disagreements_of(table, results)
        write_table(rows, str(disagreements), what="--disagreements", run=files())
        CONSOLE.info(f"wrote {rows.num_rows} disagreeing rows to {disagreements}")


def args(gold: str | None, mode: str, scheme: str, by: str | None, disagreements: Path | None) -> dict[str, Any]:
    """The --gold options for provenance."""
    return {"gold": gold, "gold_mode": mode, "gold_scheme": scheme, "by": by,
            "disagreements": str(disagreements) if disagreements else None}
