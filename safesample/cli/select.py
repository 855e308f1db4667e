"""`safesample select`: pick a budget of safety examples; the logic lives in safesample.select."""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated, Optional

import typer

from safesample import console
from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose, argv,
                                   load, save, setup)

NAME = "select"
HELP = """Select a budget of safety examples: behavior-aware and diverse across harm categories.

Strategies: random (the baseline); stratified (k = n // #categories per category, smallest
first, random within, random fill); prototype (per category, closest to the category
centroid); similarity (per category, most similar to the category's reference set:
category_score, else the category's mean embedding); diverse (the default: quotas over harm
category x behavior, then round-robin over semantic clusters, least covered first; inside a
cluster farthest-first from its earlier picks, its first pick a central row far from all picks).

Without --behavior, diverse takes refusal and explanation rows in equal shares; the other
strategies take any behavior. Always excluded unless asked: rows whose response is harmful
(--keep-harmful), exact and near duplicates (--dedup, --keep-duplicates), and rows matching an
evaluation prompt (--exclude, by normalised text and by embedding cosine >= --exclude-threshold;
prompts without embeddings are embedded with the pool's model from its provenance).

A coverage report (categories, behaviors, clusters covered, mean pairwise cosine distance, and
the mean of 10 random draws of the same budget) goes to stderr and, with --report, to JSON.
A budget the pool cannot supply is an error (exit 1), never a shorter output.

Examples:

\b
  safesample select clustered.parquet --budget 100 -o picked.parquet
  safesample select clustered.parquet --budget 0.5% --of benign.parquet -o picked.parquet
  safesample select clustered.parquet --budget 200 --behavior refusal=0.7,explanation=0.3 \\
      --exclude harmbench.parquet --report sel.json -o picked.parquet
  safesample select pool.parquet --strategy stratified --category-col category_coarse \\
      --budget 50 -o picked.parquet
  safesample select clustered.parquet --budget 100 -o - | safesample mix benign.parquet - -o train.jsonl
"""


class Strategy(str, Enum):
    random = "random"
    stratified = "stratified"
    prototype = "prototype"
    similarity = "similarity"
    diverse = "diverse"


Budget = Annotated[str, typer.Option("--budget", "-n", help="Rows to pick (100), or a share of the "
                                     "benign set (0.5%, with --of).", show_default=False)]


def command(input: Input, budget: Budget, output: Output = "-",
            of: Annotated[Optional[str], typer.Option("--of", help="The benign table a percentage "
                                                      "--budget is a share of.", show_default=False)] = None,
            strategy: Annotated[Strategy, typer.Option("--strategy", "-s", help="How to pick.")] = Strategy.diverse,
            behavior: Annotated[Optional[str], typer.Option(
                "--behavior", help="Behaviors to pick and their shares: 'refusal', "
                "'refusal,explanation' or 'refusal=0.7,explanation=0.3'. Needs `safesample label`.",
                show_default=False)] = None,
            category_col: Annotated[str, typer.Option("--category-col", help="Column of harm "
                                                      "categories.")] = "category",
            dedup: Annotated[float, typer.Option("--dedup", help="Drop a pick whose cosine to an "
                                                 "earlier pick is at least this.")] = 0.95,
            keep_duplicates: Annotated[bool, typer.Option("--keep-duplicates", help="Do not drop exact "
                                                          "or near duplicates.")] = False,
            keep_harmful: Annotated[bool, typer.Option("--keep-harmful", help="Allow rows labelled "
                                                       "harmful_response (never wise).")] = False,
            exclude: Annotated[Optional[list[str]], typer.Option(
                "--exclude", help="Evaluation prompts (table with 'prompt' or 'instruction') that must "
                "not be trained on; repeatable.", show_default=False)] = None,
            exclude_threshold: Annotated[float, typer.Option("--exclude-threshold", help="Cosine at or "
                                                             "above which a row matches an --exclude prompt.")] = 0.9,
            report: Annotated[Optional[str], typer.Option("--report", help="Also write the coverage "
                                                          "report as JSON here.", show_default=False)] = None,
            seed: Seed = 0, limit: Limit = None, batch_size: BatchSize = 64, dry_run: DryRun = False,
            quiet: Quiet = False, verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    from safesample import select as stage
    from safesample.errors import UsageError
    from safesample.tables import check_output, get_provenance, read_table

    behavior_spec = stage.parse_behavior(behavior)
    if [input, of, *(exclude or [])].count("-") > 1:
        raise UsageError("only one table can come from stdin ('-')", "write the others to files first")
    threshold = None if keep_duplicates else dedup
    if not 0 < dedup <= 1:
        raise UsageError(f"--dedup {dedup} is outside (0, 1]",
                         "it is a cosine similarity; use --keep-duplicates to switch the check off")
    if not 0 < exclude_threshold <= 1:
        raise UsageError(f"--exclude-threshold {exclude_threshold} is outside (0, 1]",
                         "it is a cosine similarity; 0.9 is a sound default")
    if not dry_run:
        check_output(output)
        if report is not None:
            check_output_folder(report)
    of_rows = read_table(of).num_rows if of is not None else None
    rows = stage.parse_budget(budget, of_rows)
    started = time.perf_counter()
    table = load(input, limit)
    console.debug(f"read the pool in {time.perf_counter() - started:.2f} s")
    excluded = [(path, read_table(path)) for path in exclude or []]
    args = {"budget": budget, "rows": rows, "of": of, "strategy": strategy.value, "behavior": behavior,
            "category_col": category_col, "dedup": threshold, "keep_harmful": keep_harmful,
            "exclude": exclude or [], "exclude_threshold": exclude_threshold, "limit": limit,
            "argv": argv()}
    if dry_run:
        _print_plan(stage, table, rows, strategy.value, behavior_spec, category_col, threshold,
                    keep_harmful, excluded, exclude_threshold)
        return
    has_emb = "embedding" in table.column_names and table.column("embedding").null_count == 0
    exclusions = stage.exclusions_from_tables(
        excluded, exclude_threshold, has_emb, stage.default_embedder(get_provenance(table), batch_size),
        batch_size) if excluded else None
    started = time.perf_counter()
    result = stage.select(table, rows, strategy.value, behavior=behavior_spec, category_col=category_col,
                          dedup=threshold, keep_harmful=keep_harmful, exclusions=exclusions, seed=seed,
                          warn=console.warn)
    console.debug(f"selected {rows} rows and drew {stage.RANDOM_DRAWS} random baselines in "
                  f"{time.perf_counter() - started:.2f} s")
    model, _ = stage.pool_embedding_model(get_provenance(table))
    save(result.table, output, NAME, args, seed=seed, models={"embedding": model} if model else None,
         inputs=[input, *(exclude or []), *([of] if of else [])])
    _show_report(stage, result.report)
    if report is not None:
        _write_json(result.report, report)


def check_output_folder(path: str) -> None:
    from pathlib import Path

    from safesample.errors import UsageError

    dest = Path(path)
    if dest.is_dir() or not dest.parent.is_dir():
        raise UsageError(f"cannot write the report to {path!r}",
                         "pass a file in an existing folder, e.g. --report sel.json")


def _write_json(data: dict, path: str) -> None:
    import json
    from pathlib import Path

    from safesample.tables import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    console.info(f"wrote the coverage report to {path}")


def _show_report(stage, report: dict) -> None:
    if console.verbosity() < console.NORMAL:
        return
    from rich.table import Table

    grid = Table(title=f"coverage: {report['strategy']}, {report['budget']} rows, seed {report['seed']}",
                 title_justify="left")
    grid.add_column("")
    grid.add_column("selection", justify="right")
    grid.add_column(f"random (mean of {report['random']['draws']})", justify="right")
    grid.add_column("available", justify="right")
    for row in stage.report_rows(report):
        grid.add_row(*row)
    console.console.print(grid)
    excluded = {k: v for k, v in report["excluded"].items() if v}
    if excluded:
        console.info("excluded: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in excluded.items()))
    for note in report["notes"]:
        console.info(f"note: {note}")


def _print_plan(stage, table, rows, strategy, behavior, category_col, dedup, keep_harmful, excluded,
                exclude_threshold) -> None:
    """--dry-run: validate the columns, count candidates and quotas; load no model, write nothing."""
    import numpy as np

    # Validates the exclude tables and reads their texts; embedding them waits for a real run.
    exclusions = stage.exclusions_from_tables(excluded, exclude_threshold, False, None)
    plan = stage.plan_selection(table, strategy, behavior=behavior, category_col=category_col,
                                dedup=dedup, keep_harmful=keep_harmful, exclusions=exclusions,
                                warn=console.warn)
    pool = plan.pool
    caps = np.zeros((len(pool.behaviors), len(pool.categories)), dtype=np.int64)
    np.add.at(caps, (pool.beh, pool.cat), 1)
    quotas = stage.allocate_nested(rows, caps, plan.weights)
    console.console.print(f"plan: select {rows} of {table.num_rows} rows with --strategy {strategy}; "
                          f"{len(pool)} candidates after exclusions", markup=False)
    for key, value in plan.excluded.items():
        if value:
            console.console.print(f"  excluded {key.replace('_', ' ')}: {value}", markup=False)
    if strategy in ("prototype", "similarity", "diverse"):
        for b, name in enumerate(pool.behaviors):
            shares = ", ".join(f"{pool.categories[c]} {q}" for c, q in enumerate(quotas[b]) if q)
            console.console.print(f"  quota {name}: {int(quotas[b].sum())} ({shares})", markup=False)
    if quotas.sum() < rows:
        console.warn(f"only {int(quotas.sum())} candidates for a budget of {rows}")
    for note in plan.notes:
        console.console.print(f"  note: {note}", markup=False)
    console.console.print("dry run: nothing written", markup=False)
