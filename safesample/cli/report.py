"""`safesample report`: parse options, read the inputs, call the report stage, write the page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from safesample.cli.common import DryRun, Quiet, Seed, Verbose, files, print_plan, setup
from safesample.errors import UsageError

NAME = "report"
HELP = """Write one self-contained HTML report of a selection and of judged models.

Reads what the other commands write, telling each input's kind from its columns, JSON keys
and provenance: the pool table (label / embed / cluster output), a `select` output table and
its --report JSON, `judge` output tables and --summary JSONs, an experiment summary.json.
Shows a category x behavior heatmap of the pool vs the picks (vs a random draw's
expectation), clusters covered, a PCA map of the pool's embeddings with the picks, the picks
with select_reason; per-category refusal of each judged run side by side, over-refusal next
to refusal, the paired comparison (changes with 95 % CIs, refused/complied transitions, a
few example responses folded), and the provenance of every input. Two or more judge tables
are compared with the one --base names (default: the table another was judged --compare
against, else the first). The page has no network dependency: charts are inline SVG.

Examples:

\b
  safesample report picked.parquet selection.json -o report.html
  safesample report clustered.parquet picked.parquet selection.json \\
      judged.base.parquet judged.parquet -o report.html
  safesample report base.parquet lora-a.parquet lora-b.parquet --base base.parquet -o judge.html
  safesample report results/cpu/summary.json results/cpu/selection/*.json -o experiment.html
  safesample report judge.json --title "run 7: diverse, budget 100" -o run7.html
"""


def command(
    inputs: Annotated[list[str], typer.Argument(
        help="Inputs: tables (.parquet, .arrow, .csv, .jsonl, or '-' for stdin) and JSON reports.",
        show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="The HTML file to write.",
                                        show_default=False)] = "",
    title: Annotated[str, typer.Option("--title", help="The page's title.")] = "safesample report",
    note: Annotated[Optional[str], typer.Option("--note", help="A paragraph shown under the title "
                                                "(what the run can and cannot show).",
                                                show_default=False)] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="The judge table the others are "
                                                "compared with (one of the inputs).",
                                                show_default=False)] = None,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Example responses per "
                                          "transition (refused->complied, complied->refused).")] = 3,
    max_points: Annotated[int, typer.Option("--max-points", min=10, help="Pool rows drawn on the "
                                            "embedding map (a seeded sample beyond).")] = 5000,
    category_col: Annotated[str, typer.Option("--category-col", help="The harm-category column.")] = "category",
    seed: Seed = 0,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup(quiet, verbose)
    from safesample import console
    from safesample.report import ReportOptions, load_inputs, plan, report_table

    if not output:
        raise UsageError("no output file given", "pass -o report.html")
    dest = Path(output)
    if output == "-" or dest.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"the report is an HTML file, not {output!r}", "pass -o report.html")
    if not dry_run:
        _check_output(dest, inputs)
    opts = ReportOptions(title=title, note=note, base=base, examples=examples, max_points=max_points,
                         category_col=category_col, seed=seed)
    loaded = load_inputs(inputs, run=files())
    if dry_run:
        print_plan(plan(loaded, opts))
        return
    html = report_table(loaded, opts, reporter=console.CONSOLE)
    from safesample.tables import atomic_path

    try:
        with atomic_path(dest, run=files()) as tmp:
            tmp.write_text(html, encoding="utf-8")
            tmp.chmod(0o666 & ~_umask())  # a page to open and share, not a private temp file
    except OSError as exc:
        raise UsageError(f"cannot write {output!r}: {exc.strerror or exc}",
                         "pick a folder you can write to") from None
    console.info(f"wrote the report ({len(html.encode()) / 1024:.0f} KB) to {output}")


def _check_output(dest: Path, inputs: list[str]) -> None:
    """Fail before reading anything when the page cannot be written where asked."""
    import os

    if dest.is_dir():
        raise UsageError(f"output {str(dest)!r} is a directory", "pass a file path such as report.html")
    folder = dest.parent
    if not folder.is_dir():
        raise UsageError(f"output folder {str(folder)!r} does not exist", f"create it first: mkdir -p {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (dest.exists() and not os.access(dest, os.W_OK)):
        raise UsageError(f"cannot write {str(dest)!r}: permission denied", "pick a folder you can write to")
    for src in inputs:
        if src != "-" and Path(src).exists() and Path(src).resolve() == dest.resolve():
            raise UsageError(f"the output {str(dest)!r} is also an input", "write the report to a new file")


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
