"""`safesample mix`: the training mixture; the logic lives in safesample.mix."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from safesample import console
from safesample.cli.common import DryRun, Limit, Output, Quiet, Seed, Verbose, argv, check_output, files, load, setup

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
    from safesample.tables import merged_provenance, provenance_entry, with_provenance

    mapping = stage.parse_maps(map_)
    share = stage.parse_ratio(ratio) if ratio is not None else None
    if inputs.count("-") > 1:
        raise UsageError("only one input can come from stdin ('-')", "write the others to files first")
    if not dry_run:
        check_output(output)
    # Read before checking the count, so a bad path or a terminal on stdin says so first.
    tables = [load(path, limit) for path in inputs]
    if len(tables) < 2:
        raise UsageError("mix needs a benign table and at least one safety table",
                         "safesample mix BENIGN.parquet SAFETY.parquet [MORE ...] -o train.parquet")
    parts = [stage.Part(path, stage.BENIGN if i == 0 else stage.SAFETY, table)
             for i, (path, table) in enumerate(zip(inputs, tables))]
    table = stage.mix(parts, mapping=mapping, seed=seed, shuffle=not no_shuffle, fmt=format.value,
                      system=system, slim=slim, ratio=share, safety_budget=safety_budget, reporter=console.CONSOLE)
    counts = stage.mix_counts([table])
    look_alikes = f" + {counts[stage.CONTRAST]} contrast" if counts[stage.CONTRAST] else ""
    benign = counts[stage.BENIGN] + counts[stage.CONTRAST]  # look-alikes are benign rows
    summary = (f"{counts[stage.BENIGN]} benign{look_alikes} + {counts[stage.SAFETY]} safety rows "
               f"({counts[stage.SAFETY] / max(benign, 1):.2%} safety per benign row)")
    if dry_run:
        console.console.print(f"plan: mix {summary}; columns: {', '.join(table.column_names)}", markup=False)
        console.console.print("dry run: nothing written", markup=False)
        return
    console.info(f"mixed {summary}")
    args = {"inputs": inputs, "map": map_ or [], "format": format.value, "system": system, "slim": slim,
            "shuffle": not no_shuffle, "ratio": ratio, "safety_budget": safety_budget, "limit": limit}
    # Both inputs' histories, then this stage: `save` would only see the merged table's.
    table = with_provenance(table, provenance_entry(NAME, args, seed=seed, inputs=list(inputs), argv=argv()),
                            history=merged_provenance(tables))
    save_merged(table, output)


def save_merged(table, output: str) -> None:
    from safesample.tables import write_table

    write_table(table, output, run=files())
    where = "stdout" if output == "-" else output
    console.info(f"wrote {table.num_rows} rows x {table.num_columns} columns to {where}")
