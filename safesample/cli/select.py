"""`safesample select`: pick a budget of safety examples; the logic lives in safesample.select."""

from __future__ import annotations

import math
import time
from enum import Enum
from typing import Annotated, Optional

import typer

from safesample import console
from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose,
                                   check_output, check_side_output, load, needs, print_plan, read, save, setup,
                                   write_json)

NAME = "select"
HELP = """Select a budget of safety examples: behavior-aware and diverse across harm categories.

Strategies: random (the baseline); stratified (k = n // #categories per category, smallest
first, random within, random fill); prototype (per category, closest to the category
centroid); similarity (per category, most similar to the category's reference set:
category_score, else the category's mean embedding); diverse (the default: quotas over harm
category x behavior, then round-robin over semantic clusters, least covered first; inside a
cluster farthest-first from its earlier picks, its first pick a central row far from all picks);
targeted (with --against AUDITED, an `audit` output: the safety rows nearest by embedding to the
benign rows audit ranks riskiest, its top --against-top, one counter-example per risky row in
turn, riskiest first, within the category x behavior quotas).

Without --behavior, diverse takes refusal and explanation rows in equal shares; the other
strategies take any behavior. Always excluded unless asked: rows whose response is harmful
(--keep-harmful), exact and near duplicates (--dedup, --keep-duplicates), and rows matching an
evaluation prompt (--exclude, by normalised text and by embedding cosine >= --exclude-threshold;
prompts without embeddings are embedded with the pool's model from its provenance).

A coverage report (categories, behaviors, clusters covered, mean pairwise cosine distance, and
the mean of 10 random draws of the same budget) goes to stderr and, with --report, to JSON.
A budget the pool cannot supply is an error (exit 1), never a shorter output.

--contrast BENIGN adds benign look-alikes of the picks, answered normally, against over-refusal:
rows of BENIGN (instruction + output; embedded with the pool's model when they have no
embeddings, cached) nearest to the picks by cosine, benign by label where labels exist
(harmful_request, harmful_response, refusal, behavior), dealt round-robin (each pick its nearest
unused look-alike, closest first), never a duplicate (id, normalised text, --dedup) and never a
row --exclude would drop. The default --contrast-share 0.5 (half as many look-alikes as picks)
keeps the refusal signal the larger one and the look-alikes close to their picks; they come on
top of --budget unless --contrast-within-budget. Rows get select_role (safety / contrast),
contrast_for (the pick's id) and select_reason; `mix` trains contrast rows as benign rows
(source=contrast). Fewer look-alikes than asked is an error (exit 1), never a shorter output.

Examples:

\b
  safesample select clustered.parquet --budget 100 -o picked.parquet
  safesample select clustered.parquet --budget 0.5% --of benign.parquet -o picked.parquet
  safesample select clustered.parquet --budget 200 --behavior refusal=0.7,explanation=0.3 \\
      --exclude harmbench.parquet --report sel.json -o picked.parquet
  safesample select pool.parquet --strategy stratified --category-col category_coarse \\
      --budget 50 -o picked.parquet
  safesample select clustered.parquet --budget 100 -o - | safesample mix benign.parquet - -o train.jsonl
  safesample select clustered.parquet --budget 100 --contrast instructions.parquet -o - \\
      | safesample mix benign.parquet - -o train.jsonl
  safesample audit benign.parquet -o audited.parquet
  safesample select clustered.parquet --strategy targeted --against audited.parquet --budget 16 -o picked.parquet
"""


class Strategy(str, Enum):
    random = "random"
    stratified = "stratified"
    prototype = "prototype"
    similarity = "similarity"
    diverse = "diverse"
    targeted = "targeted"


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
            contrast: Annotated[Optional[str], typer.Option(
                "--contrast", help="Benign (instruction, output) table to add look-alikes of the picks "
                "from (against over-refusal).", show_default=False)] = None,
            contrast_share: Annotated[float, typer.Option("--contrast-share", help="Look-alikes per "
                                                          "safety pick.")] = 0.5,
            contrast_within_budget: Annotated[bool, typer.Option(
                "--contrast-within-budget", help="Count look-alikes against --budget (default: on top).")] = False,
            contrast_lexical: Annotated[float, typer.Option(
                "--contrast-lexical", help="Weight (0-1) of a shared harmful-sounding word next to the "
                "cosine; 0 is off.")] = 0.0,
            against: Annotated[Optional[str], typer.Option(
                "--against", metavar="AUDITED", help="For --strategy targeted: the `audit` output of the "
                "benign fine-tuning rows (its riskiest rows get counter-examples).", show_default=False)] = None,
            against_top: Annotated[str, typer.Option(
                "--against-top", metavar="N|P%", help="How many of the --against rows are targets: the N (or "
                "P% of the scored) rows with the highest audit_score.")] = "10%",
            report: Annotated[Optional[str], typer.Option("--report", help="Also write the coverage "
                                                          "report as JSON here.", show_default=False)] = None,
            seed: Seed = 0, limit: Limit = None, batch_size: BatchSize = 64, dry_run: DryRun = False,
            quiet: Quiet = False, verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    from safesample import select as stage
    from safesample.console import CONSOLE
    from safesample.errors import UsageError

    needs({"exclude_threshold": "exclude", "contrast_share": "contrast", "contrast_within_budget": "contrast",
           "contrast_lexical": "contrast", "against_top": "against"})
    behavior_spec = stage.parse_behavior(behavior)
    if behavior_spec and "=" in behavior:  # weights given: say how they were read when they do not sum to 1
        total = sum(float(part.partition("=")[2]) for part in behavior.split(","))
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            CONSOLE.warn(f"--behavior weights sum to {total:g}, not 1: read as shares of the budget, "
                         + ", ".join(f"{name} {share:.0%}" for name, share in behavior_spec.items()))
    if [input, of, contrast, against, *(exclude or [])].count("-") > 1:
        raise UsageError("only one table can come from stdin ('-')", "write the others to files first")
    if not 0 < dedup <= 1:
        raise UsageError(f"--dedup {dedup} is outside (0, 1]",
                         "it is a cosine similarity; use --keep-duplicates to switch the check off")
    options = stage.SelectOptions(  # the budget is set below, once the --of table is read
        budget=1, strategy=strategy.value, behavior=behavior_spec, category_col=category_col,
        dedup=None if keep_duplicates else dedup, keep_harmful=keep_harmful, exclude_threshold=exclude_threshold,
        seed=seed, batch_size=batch_size, contrast_share=contrast_share,
        contrast_within_budget=contrast_within_budget, contrast_lexical=contrast_lexical, against_top=against_top)
    stage.validate(options)
    if not dry_run:
        check_output(output)
        check_side_output(report, "--report")
    options.budget = stage.parse_budget(budget, read(of).num_rows if of is not None else None)
    started = time.perf_counter()
    table = load(input, limit)
    CONSOLE.debug(f"read the pool in {time.perf_counter() - started:.2f} s")
    excluded = [(path, read(path)) for path in exclude or []]
    look_alikes = (contrast, load(contrast)) if contrast is not None else None
    risky = (against, read(against)) if against is not None else None
    if dry_run:
        print_plan(stage.plan(table, options, exclude=excluded, contrast=look_alikes, against=risky, reporter=CONSOLE))
        return
    result = stage.select_table(table, options, exclude=excluded, contrast=look_alikes, against=risky,
                                reporter=CONSOLE)
    args = {"budget": budget, "rows": options.budget, "of": of, "strategy": strategy.value, "behavior": behavior,
            "category_col": category_col, "dedup": options.dedup, "keep_harmful": keep_harmful,
            "exclude": exclude or [], "exclude_threshold": exclude_threshold, "limit": limit, "contrast": contrast,
            "contrast_share": contrast_share, "contrast_within_budget": contrast_within_budget,
            "contrast_lexical": contrast_lexical, "against": against,
            "against_top": against_top if against else None}
    save(result.table, output, NAME, args, seed=seed, models=result.models or None,
         inputs=[input, *(exclude or []), *([of] if of else []), *([contrast] if contrast else []),
                 *([against] if against else [])])
    _show_report(stage, result.report)
    if report is not None:
        write_json(result.report, report, "coverage report")


def _show_report(stage, report: dict) -> None:
    if console.verbosity() < console.NORMAL:
        return
    console.table(f"coverage: {report['strategy']}, {report['budget']} rows, seed {report['seed']}",
                  ["", "selection", f"random (mean of {report['random']['draws']})", "available"],
                  stage.report_rows(report))
    excluded = {k: v for k, v in report["excluded"].items() if v}
    if excluded:
        console.info("excluded: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in excluded.items()))
    for note in report["notes"]:
        console.info(f"note: {note}")
    dropped = {k: v for k, v in report.get("contrast", {}).get("excluded", {}).items() if v}
    if dropped:
        console.info("contrast candidates excluded: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                                  for k, v in dropped.items()))
