"""What every command shares: the common options, set-up, input loading and output writing.

The options are declared once here so `-o`, `--seed`, `-q`, `-v`, `--dry-run`, `--limit` and
`--batch-size` mean the same in every command.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from safesample import console, stdio
from safesample.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.executors import ExecutorOptions, StageRun
    from safesample.tables import RunFiles

Input = Annotated[str, typer.Argument(help="Input table (.parquet, .arrow, .csv, .jsonl), or '-' for stdin.",
                                      show_default=False)]
Output = Annotated[str, typer.Option("--output", "-o", help="Output table (.parquet), or '-' for an "
                                     "Arrow stream on stdout (refused on a terminal).")]
# numpy, scikit-learn and torch take seeds in 0..2**32-1: outside it is a usage error, in every command.
SEED_MAX = 2 ** 32 - 1
Seed = Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX,
                                   help="Random seed; the same seed gives the same output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only: no progress, no summary.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More detail; tracebacks on errors.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Validate inputs and print the plan; load no "
                                      "model, write nothing.")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, help="Process only the first N rows.",
                                              show_default=False)]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Rows per model batch.")]
# Where a per-row stage runs (label, embed, judge, audit): see safesample.executors.
Executor = Annotated[str, typer.Option("--executor", help="Where the per-row work runs: local (this "
                                       "process) or ray (Ray Data over a cluster, vLLM on its GPUs).")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Ray cluster to use, e.g. ray://head:10001 [default: $RAY_ADDRESS, else a local "
    "Ray started for the run].", show_default=False)]
Concurrency = Annotated[Optional[int], typer.Option(
    "--concurrency", min=1, help="Ray workers per stage (each loads the model once) [default: one per "
    "CPU; vLLM: one per GPU].", show_default=False)]


# Options that name files a command writes, with the flag users know them by, and options that
# name tables it reads: checked against each other by `setup()` before any work.
OUTPUT_OPTIONS = {"output": "-o", "report": "--report", "summary": "--summary",
                  "disagreements": "--disagreements"}
INPUT_OPTIONS = ("input", "inputs", "reference", "of", "exclude", "compare", "contrast", "against", "anchors")


def setup(quiet: bool = False, verbose: bool = False) -> None:
    """Start of every command body: verbosity, stdout kept for data only, warnings of the
    library modules sent to the console, and the command's files checked against each other
    (no output may be an input or another output)."""
    if quiet and verbose:
        raise UsageError("-q/--quiet and -v/--verbose contradict each other", "pass one of them")
    console.set_verbosity(console.QUIET if quiet else console.VERBOSE if verbose else console.NORMAL)
    stdio.protect_stdout()
    from safesample import cache
    from safesample.tables import RunFiles

    global _run
    check_numbers()
    cache.report_to(console.CONSOLE)
    _run = RunFiles(console.CONSOLE)
    check_paths(_command_params())


def check_numbers() -> None:
    """Every option value of the running command, before any work: a float must be finite
    (`nan`, `inf` parse as floats but mean nothing), an integer must fit 64 bits, and text must
    be UTF-8 (a path that exists may be any bytes). Ranges of their own (e.g. `--seed`,
    `--limit`) are declared with the option."""
    import math

    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        flag = next((o for o in getattr(param, "opts", []) if o.startswith("--")), param.name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                bad = f"{flag} {v} is not a finite number"
            elif isinstance(v, int) and not isinstance(v, bool) and not -2 ** 63 <= v < 2 ** 63:
                bad = f"{flag} {v} is out of range"
            else:
                continue
            raise UsageError(bad, f"pass a number in the option's range: see `safesample {ctx.command.name} --help`")
        if isinstance(value, (str, list, tuple)) and param.name not in OUTPUT_OPTIONS:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                # Bytes that are not UTF-8 reach Python as lone surrogates: fine in a path that
                # exists (the file system takes any bytes), unusable in text that goes into a table.
                if isinstance(v, str) and _SURROGATE.search(v) and not os.path.lexists(v):
                    raise UsageError(f"{flag} {v!a} is not valid UTF-8 text",
                                     "pass the value in UTF-8 (a file name in another encoding must exist)")


_SURROGATE = re.compile("[\ud800-\udfff]")


def needs(parents: dict[str, str]) -> None:
    """Before any work: an option typed on the command line whose parent option is absent is a
    usage error (it would be ignored silently). `parents`: parameter name -> its parent's."""
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return
    flags = {p.name: next((o for o in getattr(p, "opts", []) if o.startswith("--")), p.name)
             for p in ctx.command.params}
    for child, parent in parents.items():
        if ctx.get_parameter_source(child) == ParameterSource.COMMANDLINE and not ctx.params.get(parent):
            raise UsageError(f"{flags[child]} has no effect without {flags[parent]}",
                             f"pass {flags[parent]} too, or drop {flags[child]}")


def _command_params() -> dict[str, Any]:
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    return dict(ctx.params) if ctx is not None else {}


# The files this command reads and writes (`safesample.tables.RunFiles`), made by `setup()`:
# every table read or written through the helpers below is checked against it.
_run: "RunFiles | None" = None


def files() -> "RunFiles | None":
    """This run's files, to hand to the table functions a command calls directly."""
    return _run


def end_run() -> None:
    """Called by `main()` when a command ends: the next one (a test calls main() repeatedly in
    one process) starts with no files claimed."""
    global _run
    _run = None


def check_paths(params: dict[str, Any]) -> None:
    """Register the command's inputs and outputs (by option name); a collision is a UsageError."""
    from safesample.tables import STDIO

    def paths(value: Any) -> list[str]:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [str(v) for v in values if isinstance(v, (str, os.PathLike)) and str(v) and str(v) != STDIO]

    if _run is None:
        return
    from safesample.tables import claim_source

    for name in INPUT_OPTIONS:
        for path in paths(params.get(name)):
            claim_source(path, _run)  # a shard folder or glob: each of its files
    for name, flag in OUTPUT_OPTIONS.items():
        for path in paths(params.get(name)):
            _run.claim_output(path, flag)


def load(source: str, limit: int | None = None) -> "pa.Table":
    """Read the input table, keep the first `limit` rows, and make sure it has an `id`."""
    from safesample.tables import load_table

    table = load_table(source, limit, _run)
    console.debug(f"read {table.num_rows} rows x {table.num_columns} columns from {source}")
    _note_overwrites(table)
    return table


def _note_overwrites(table: "pa.Table") -> None:
    """The running command's input already has columns its stage writes: say they are replaced
    (per-row stages say it in `executors.base.prepare`)."""
    from typer._click.globals import get_current_context

    from safesample import stages

    ctx = get_current_context(silent=True)
    if ctx is not None and ctx.command.name in stages.NAMES and not stages.get(ctx.command.name).per_row:
        note = stages.get(ctx.command.name).overwrite_note(table.column_names)
        if note:
            console.info(note)


def save(table: "pa.Table", output: str, command: str, args: dict[str, Any], *,
         seed: int | None = None, models: dict[str, str] | None = None,
         inputs: list[str] | None = None, history: list[dict[str, Any]] | None = None) -> None:
    """Write the result with this stage's provenance appended (to `history`, the inputs' records,
    when the table does not carry them itself)."""
    from safesample.tables import provenance_entry, with_provenance, write_table

    entry = provenance_entry(command, args, seed=seed, models=models, inputs=inputs, argv=argv())
    if history is not None:
        table, entry = with_provenance(table, entry, history=history), None
    write_table(table, output, provenance=entry, run=_run)
    where = "stdout" if output == "-" else output
    console.info(f"wrote {table.num_rows} rows x {table.num_columns} columns to {where}")


def check_output(output: str, what: str = "-o") -> None:
    """Before any work: the output can be written, and is no input of this run."""
    from safesample import tables

    tables.check_output(output, what, _run)


def read(source: str) -> "pa.Table":
    """A table this command reads besides its input (a reference, an --of or --exclude table)."""
    from safesample.tables import read_table

    return read_table(source, _run)


def check_side_output(path: "str | os.PathLike | None", flag: str) -> None:
    """Before any work: a side output (`--report`, `--summary`, the report's page) can be
    written where asked, and is neither an input nor another output. None: not asked for."""
    from safesample.tables import check_writable

    if path is not None:
        check_writable(str(path), flag, _run)


def write_json(data: dict[str, Any], path: str, what: str = "report", flag: str | None = None) -> None:
    """A JSON side output (--report, --summary)."""
    import json

    write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n", path, what, flag)


def write_text(text: str, path: str, what: str, flag: str | None = None) -> None:
    """A side output, written like tables: atomically (never half a file), never over an input or
    another output of this run, with the umask's mode."""
    from pathlib import Path

    from safesample.tables import atomic_path

    with atomic_path(Path(path), what=flag, run=_run) as tmp:
        tmp.write_text(text, encoding="utf-8")
    console.info(f"wrote the {what} to {path}")


def print_plan(lines: list[str]) -> None:
    """What --dry-run prints, the same way for every command: the stage's `plan(...)` lines."""
    for line in lines:
        console.console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.console.print("dry run: no model loaded, nothing written", markup=False, highlight=False)


_argv: list[str] | None = None


def record_argv(args: list[str] | None) -> None:
    """Called by `main()`: the arguments of this run, for provenance (tests pass them in-process)."""
    global _argv
    _argv = list(args) if args is not None else None


def argv() -> list[str]:
    """The command line of this run, without the program name."""
    return list(_argv) if _argv is not None else sys.argv[1:]


def executor_options(executor: str, address: str | None, concurrency: int | None, batch_size: int,
                     quiet: bool = False, verbose: bool = False) -> "ExecutorOptions":
    from safesample.executors import ExecutorOptions, validate

    ex = ExecutorOptions(kind=executor, address=address, concurrency=concurrency, batch_size=batch_size,
                         quiet=quiet, verbose=verbose)
    validate(ex)
    return ex


def run_stage(name: str, options: Any, source: str, output: str, ex: "ExecutorOptions", *,
              limit: int | None = None, seed: int | None = None, dry_run: bool = False,
              inputs: list[str] | None = None, context: dict[str, Any] | None = None) -> "StageRun | None":
    """A per-row stage from its registry entry, on the executor `ex` names: `--dry-run` prints the
    stage's plan (nothing loaded, nothing written); else the executor reads, runs and writes."""
    from safesample import stages
    from safesample.executors import run_stage as execute

    stage = stages.get(name)
    if dry_run:
        table = load(source, limit)
        plan = stage.function("plan")(table, options, **(context or {}))
        print_plan(plan + [f"would write {'stdout' if output == '-' else output}"])
        return None
    return execute(stage, options, source=source, output=output, ex=ex, limit=limit, seed=seed, argv=argv(),
                   inputs=inputs, run=_run, reporter=console.CONSOLE, context=context)
