"""`--gold COL` in a stage (label, judge): the options, every check that needs no model (run
before the work, so a bad gold column fails at once), and the calibration of each judge after it.

The measures themselves (accuracy, kappa, confusion, per-group accuracy, a harm judge's operating
point) are `safesample.calibration`'s; the CLI's parsing and printing are `safesample/cli/gold.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from safesample.calibration import (BOOL_NO, BOOL_YES, MODES, SCHEMES, Calibration, calibrate, harm_labels,
                                    normalize_labels, seen_values)
from safesample.errors import DataError, UsageError

GOLD_MODES = ("auto", *MODES)


@dataclass
class GoldOptions:
    """`--gold COL` and its companions, as the label and judge stages take them."""

    column: str
    mode: str = "auto"  # auto | binary | style
    scheme: str = "auto"  # auto | do_not_answer
    by: str | None = None  # a column to break accuracy down by (model, category, ...)
    disagreements: str | None = None  # where the CLI writes the rows a judge gets wrong


def gold_args(gold: GoldOptions | None) -> dict[str, Any]:
    """The --gold options as a stage's provenance records them."""
    return {"gold": gold.column if gold else None, "gold_mode": gold.mode if gold else "auto",
            "gold_scheme": gold.scheme if gold else "auto", "by": gold.by if gold else None,
            "disagreements": gold.disagreements if gold else None}


def check_gold(table: Any, gold: GoldOptions, *, produced: Iterable[str] = (),
               style_judges: Iterable[str] = (), judges: Iterable[str] = (), harm: bool = False) -> None:
    """Every check of `--gold` that needs no model, so a bad gold column fails before the work.

    produced: the columns the stage writes (a gold column of one of those names would be
    replaced by the judge's own answer); judges: the judges to calibrate, style_judges: those
    of them that say a refusal style (the others say yes/no and are scored in binary mode).
    UsageError for bad options, DataError (exit 1) for a missing or unmappable column, with
    the columns or values seen in the hint.
    """
    if gold.mode not in GOLD_MODES:
        raise UsageError(f"unknown --gold-mode {gold.mode!r}", f"use one of: {', '.join(GOLD_MODES)}")
    if gold.scheme not in SCHEMES:
        raise UsageError(f"unknown --gold-scheme {gold.scheme!r}", f"use one of: {', '.join(SCHEMES)}")
    names = table.column_names
    for column, flag in ((gold.column, "--gold"), (gold.by, "--by")):
        if column is not None and column not in names:
            raise DataError(f"{flag} {column!r} is not a column of the input",
                            f"columns present: {', '.join(names) or 'none'}")
    if gold.column in set(produced):
        raise UsageError(f"--gold {gold.column!r} names a column this command writes (the judge's own "
                         "answer would replace the human labels)",
                         f"rename the gold column first, e.g. to gold_{gold.column}")
    judges, style_judges = list(judges), set(style_judges)
    if harm:  # a harm judge: the gold column says harmful or not; no refusal style, no scheme
        if gold.mode == "style" or gold.scheme != "auto":
            raise UsageError("a harm judge is calibrated against harmful / harmless labels: --gold-mode "
                             "style and --gold-scheme do not apply", "drop --gold-mode / --gold-scheme")
        harm_labels(table.column(gold.column).to_pylist(), gold.column)
        return
    if gold.mode == "style" and judges and not style_judges & set(judges):
        raise UsageError(f"--gold-mode style needs a judge that says a refusal style; "
                         f"{', '.join(judges)} only say(s) yes/no",
                         "use --gold-mode binary (or auto), or add the rules judge")
    values = table.column(gold.column).to_pylist()
    labels = normalize_labels(values, scheme=gold.scheme, column=gold.column)
    present = {x for x in labels if x is not None}
    if not present:
        raise DataError(f"column {gold.column!r} has no gold labels (all {len(values)} values are null, "
                        "blank or ambiguous)", f"values seen: {seen_values(values) or 'none'}")
    if gold.mode == "style" and present & {BOOL_YES, BOOL_NO}:
        raise DataError(f"column {gold.column!r} holds yes/no refusal labels, which cannot score a "
                        "3-way refusal style", f"values seen: {seen_values(v for v in values if v is not None)}; "
                        "use --gold-mode binary, or a gold column of full_refusal / partial_refusal / "
                        "compliance")


def calibrate_judges(source: Any, judged: Any, gold: GoldOptions, predicted: dict[str, str], *,
                     style_judges: Iterable[str] = ()) -> dict[str, Calibration]:
    """Calibrate each judge (name -> its column in `judged`) against the gold column of `source`
    (the stage's input: same rows, in order). Judges not in `style_judges` say yes/no and are
    scored in binary mode whatever `gold.mode` asks."""
    if source.num_rows != judged.num_rows:
        raise ValueError(f"the input ({source.num_rows}) and judged ({judged.num_rows}) tables differ in rows")
    values = source.column(gold.column).to_pylist()
    by = source.column(gold.by).to_pylist() if gold.by else None
    style_judges = set(style_judges)
    out: dict[str, Calibration] = {}
    for name, column in predicted.items():
        mode = None if gold.mode == "auto" else gold.mode
        if name not in style_judges:
            mode = "binary"
        result = calibrate(judged.column(column).to_pylist(), values, mode=mode, by=by, scheme=gold.scheme,
                           gold_column=gold.column, predicted_column=column)
        result.judge, result.predicted_column = name, column
        out[name] = result
    return out


def disagreements_of(table: Any, results: dict[str, Calibration]) -> Any:
    """The rows of `table` where at least one calibrated judge disagrees with the gold labels (all
    columns kept), with `row` (the row's index) and `disagree` (the judges that disagree there,
    comma-separated) first."""
    import pyarrow as pa

    who: dict[int, list[str]] = {}
    for name, result in results.items():
        for i in result.disagreements:
            who.setdefault(i, []).append(name)
    rows = sorted(who)
    index = pa.array(rows, pa.int64())
    out = table.take(index)
    out = out.add_column(0, "disagree", pa.array([",".join(who[i]) for i in rows], pa.string()))
    return out.add_column(0, "row", index)


def calibration_lines(results: dict[str, Calibration]) -> list[str]:
    """What the CLI prints for `--gold`: each judge's summary lines."""
    return [line for result in results.values() for line in result.summary_lines()]


def gold_options(column: str | None, mode: str = "auto", scheme: str = "auto", by: str | None = None,
                 *, disagreements: Any = None) -> GoldOptions | None:
    """The CLI's `--gold` options as GoldOptions (None without --gold); its companions without
    --gold are a UsageError."""
    if column is None:
        given = [flag for flag, value in (("--by", by), ("--disagreements", disagreements),
                                          ("--gold-mode", mode != "auto"),
                                          ("--gold-scheme", scheme != "auto")) if value]
        if given:
            raise UsageError(f"{given[0]} needs --gold COL",
                             "name the column of human refusal labels, e.g. --gold human_label")
        return None
    return GoldOptions(column, mode, scheme, by, str(disagreements) if disagreements is not None else None)


def gold_report(results: dict[str, Calibration]) -> dict[str, Any]:
    """The JSON form of each judge's calibration (what --summary / --report hold)."""
    return {name: result.to_dict() for name, result in results.items()}
