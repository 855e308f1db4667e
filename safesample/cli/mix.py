"""`safesample mix`: the training mixture; the logic lives in safesample.mix."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from safesample import console
from safesample.cli.common import DryRun, Limit, Output, Quiet, Seed, Verbose, check_output, load, print_plan, save, setup

NAME = "mix"
HELP = """Mix the selected safety rows into the benign fine-tuning set.

The first table is the benign set, every further table a safety set ('-' reads one of them
from a pipe). The result holds every input row exactly once with a `source` column (benign /
safety), shuffled with --seed, in Alpaca columns (instruction, input, output) and a chat
`messages` column ([{role, content}]); `-o train.jsonl` writes JSON Lines for TRL, axolotl or
LLaMA-Factory. Columns are mapped first: response -> output and prompt -> instruction by
default, and --map OLD=NEW for anything else. An input's own `source` column (e.g. the dataset
name) is kept as `origin`. Ids shared by two inputs are refused: that would train on a row twice.

Rows of `select --contrast` (select_role=contrast: benign look-alikes of the safety rows) are
trained as benign rows with their own answer, marked source=contrast; --ratio counts them as
benign. A look-alike that is already a row of the benign set (same id) is kept once, with a warning.

--ratio (safety rows per benign row) and --safety-budget check the counts and fail with exit
code 3 when they disagree.

Examples:

\b
  safesample mix benign.parquet picked.parquet -o train.parquet
  safesample mix benign.parquet picked.parquet -o train.jsonl --format chat --slim
  safesample mix alpaca.parquet picked.parquet --ratio 0.5% -o train.parquet
  safesample mix benign.parquet qa.parquet --map answer=output --map question=instruction -o train.parquet
  safesample select clustered.parquet --budget 100 -o - | safesample mix benign.parquet - -o train.parquet
"""


class Format(str, Enum):
    both = "both"
    alpaca = "alpaca"
    chat = "chat"


Inputs = Annotated[list[str], typer.Argument(help="BENIGN table, then one or more SAFETY tables "
                                             "(.parquet, .arrow, .csv, .jsonl; '-' for stdin).",
                                             show_default=False)]


def command(inputs: Inputs, output: Output = "-",
            map_: Annotated[Optional[list[str]], typer.Option(
                "--map", help="Rename a column before mixing: OLD=NEW (repeatable). Defaults: "
                "response=output, prompt=instruction.", show_default=False)] = None,
            format: Annotated[Format, typer.Option("--format", "-f", help="Alpaca columns, a chat "
                                                   "'messages' column, or both.")] = Format.both,
            system: Annotated[Optional[str], typer.Option("--system", help="A system message to open "
                                                          "every chat.", show_default=False)] = None,
            slim: Annotated[bool, typer.Option("--slim", help="Keep only id, source and the format's "
                                               "columns (smaller JSONL for trainers).")] = False,
            no_shuffle: Annotated[bool, typer.Option("--no-shuffle", help="Keep input order: benign "
                                                     "rows, then safety rows.")] = False,
            ratio: Annotated[Optional[str], typer.Option(
                "--ratio", help="Check: safety rows per benign row, e.g. 0.5% (exit 3 if not).",
                show_default=False)] = None,
            safety_budget: Annotated[Optional[int], typer.Option(
                "--safety-budget", min=0, help="Check: exactly this many safety rows (exit 3 if not).",
                show_default=False)] = None,
            seed: Seed = 0, limit: Limit = None, dry_run: DryRun = False, quiet: Quiet = False,
            verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    from safesample import mix as stage
    from safesample.errors import UsageError
    from safesample.tables import merged_provenance

    options = stage.MixOptions(mapping=stage.parse_maps(map_), seed=seed, shuffle=not no_shuffle, fmt=format.value,
                               system=system, slim=slim, ratio=stage.parse_ratio(ratio) if ratio is not None else None,
                               safety_budget=safety_budget, maps=list(map_ or []), ratio_spec=ratio)
    if inputs.count("-") > 1:
        raise UsageError("only one input can come from stdin ('-')", "write the others to files first")
    if not dry_run:
        check_output(output)
    # Read before checking the count, so a bad path or a terminal on stdin says so first.
    tables = [load(path, limit) for path in inputs]
    parts = [stage.Part(path, stage.BENIGN if i == 0 else stage.SAFETY, table)
             for i, (path, table) in enumerate(zip(inputs, tables))]
    if dry_run:
        print_plan(stage.plan(parts, options))
        return
    result = stage.mix_table(parts, options, reporter=console.CONSOLE)
    console.info(f"mixed {stage.describe(result.counts)}")
    # Every input's history, then this stage: the mixed table keeps none of its inputs' own.
    save(result.table, output, NAME, {**stage.provenance(options), "inputs": inputs, "limit": limit}, seed=seed,
         inputs=list(inputs), history=merged_provenance(tables))
