"""Select a budget of safety examples: behavior-aware, spread over harm categories and meaning.

Strategies (all deterministic for a seed):

- `random`      the baseline: a seeded random draw.
- `stratified`  the paper's stratified sampling: k = n // #categories from each category
                (smallest first), random within, then a random fill of what is left.
- `prototype`   per category an equal quota of the rows closest to the category centroid.
- `similarity`  per category an equal quota of the rows most similar to the category's reference
                set (`category_score` from `safesample cluster --reference`, else the mean cosine
                to the category's own rows).
- `diverse`     the method: quotas over harm category x behavior, and within each quota a
                round-robin over semantic clusters (the least covered cluster first); inside a
                cluster farthest-first from its earlier picks, a cluster's first pick being the
                one of its most central rows that is farthest from all picks so far.

Always excluded unless asked: pairs whose response is harmful, exact duplicates (normalised
instruction text) and near duplicates (cosine >= `dedup` to a row already picked), and rows
matching an evaluation prompt (normalised text, or cosine >= `exclude_threshold`). The checks
that need embeddings run on candidates as they are picked, so a 1,000,000-row pool costs no
pool x pool or pool x eval similarity matrix.

A pool with repeated or missing ids is refused: a selection never holds two rows with the same id.

Everything on the pool is numpy-vectorised; Python loops run over picks (the budget), not rows.

The package, in the order of the algorithm:

- `options.py`     the strategies, `SelectOptions`, the --budget and --behavior specs
- `pool.py`        validate the columns, exclude rows (harmful responses, other behaviors), group
                   the candidates by behavior x category x cluster (`plan_selection`)
- `quotas.py`      how many picks each group gets, and filling the quotas pick by pick
- `exclusions.py`  evaluation prompts (decontamination) and duplicates, checked pick by pick
- `strategies.py`  random, stratified, prototype, similarity, diverse
- `contrast.py`    `--contrast`: benign look-alikes of the picks, answered normally (over-refusal)
- `report.py`      coverage of the selection against random draws of the same budget
- here             the stage: `plan` (--dry-run), `select_table` (options in, `SelectResult` out)
                   and `select` (the same with plain arguments)

Embeddings are read through `safesample.vectors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from safesample.errors import DataError, UsageError
from safesample.reporter import SILENT, Reporter
from safesample.select.contrast import CONTRAST, DEFAULT_SHARE, SAFETY, add_contrast, split_budget, text_column
from safesample.select.acceptor import Acceptor
from safesample.select.exclusions import (EmbedTexts, Exclusions, default_embedder, exclusions_from_tables,
                                          normalise, shared)
from safesample.select.options import (ALL_BEHAVIORS, BEHAVIORS, EMBEDDING_STRATEGIES, NO_CATEGORY, RANDOM_DRAWS,
                                       SAFE_BEHAVIORS, STRATEGIES, SelectOptions, parse_behavior, parse_budget)
from safesample.select.pool import Plan, Pool, Texts, plan_selection
from safesample.select.quotas import allocate, allocate_nested, group_caps
from safesample.select.report import build_report, coverage, report_rows
from safesample.select.strategies import STRATEGY_FUNCTIONS
from safesample.select.targeted import Targets, build_targets, pick_targeted, risky_rows
# Embeddings are read by safesample.vectors; these names stay importable from here.
from safesample.vectors import Vectors, embedding_matrix
from safesample.vectors import embedding_model
from safesample.vectors import provenance_model as pool_embedding_model

if TYPE_CHECKING:
    import pyarrow as pa


__all__ = [
    "ALL_BEHAVIORS", "BEHAVIORS", "CONTRAST", "DEFAULT_SHARE", "EMBEDDING_STRATEGIES", "NO_CATEGORY", "RANDOM_DRAWS", "SAFE_BEHAVIORS",
    "SAFETY", "STRATEGIES", "EmbedTexts", "Exclusions", "Plan", "Pool", "SelectOptions", "SelectResult", "Texts", "Vectors",
    "allocate", "allocate_nested", "coverage", "default_embedder", "embedding_matrix", "exclusions_from_tables",
    "normalise", "parse_behavior", "parse_budget", "plan", "plan_selection", "pool_embedding_model",
    "report_rows", "select", "select_table", "take_rows", "validate",
]


@dataclass
class SelectResult:
    table: "pa.Table"  # the picked rows, in select_rank order, with select_reason / select_rank
    report: dict[str, Any]
    models: dict[str, str] = field(default_factory=dict)  # the pool's embedding model, for provenance


def validate(options: SelectOptions) -> None:
    """The checks of the options alone (before any table is read)."""
    if options.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {options.strategy!r}", "choose one of: " + ", ".join(STRATEGIES))
    if options.dedup is not None and not 0 < options.dedup <= 1:
        raise UsageError(f"--dedup {options.dedup} is outside (0, 1]",
                         "it is a cosine similarity (0.95 is a sound default, 1 drops only identical "
                         "vectors); use --keep-duplicates to switch the check off")
    if not 0 < options.exclude_threshold <= 1:
        raise UsageError(f"--exclude-threshold {options.exclude_threshold} is outside (0, 1]",
                         "it is a cosine similarity; 0.9 is a sound default")
    if options.budget < 1:
        raise UsageError(f"the budget must be at least one row, not {options.budget}", "e.g. --budget 100")
    if not 0 <= options.contrast_lexical <= 1:
        raise UsageError(f"--contrast-lexical {options.contrast_lexical:g} is outside [0, 1]",
                         "it is the weight of a shared harmful-sounding word next to the cosine; 0 turns it off")


def check_against(options: SelectOptions, against: "tuple[str, pa.Table] | None") -> None:
    """--against and --strategy targeted come together; the table is an `audit` output."""
    if options.strategy == "targeted" and against is None:
        raise UsageError("--strategy targeted needs the risky benign rows: --against AUDITED",
                         "audit the benign rows first: safesample audit benign.parquet -o audited.parquet")
    if against is not None and options.strategy != "targeted":
        raise UsageError(f"--against is for --strategy targeted, not {options.strategy}",
                         "add --strategy targeted, or drop --against")
    if against is not None:
        risky_rows(*against, options.against_top)  # the columns and --against-top, before any work


def counts(options: SelectOptions, contrast: bool) -> tuple[int, int]:
    """(safety picks, look-alikes) of a selection: the budget alone, or split by --contrast-share."""
    if not contrast:
        return options.budget, 0
    return split_budget(options.budget, options.contrast_share, options.contrast_within_budget)


def plan(table: "pa.Table", options: SelectOptions, *, exclude: Sequence[tuple[str, "pa.Table"]] = (),
         contrast: tuple[str, "pa.Table"] | None = None, against: tuple[str, "pa.Table"] | None = None,
         reporter: Reporter = SILENT) -> list[str]:
    """What --dry-run prints: the columns validated, candidates counted, quotas allocated; the
    --exclude and --contrast tables are read, but prompts without embeddings are not embedded (no model)."""
    validate(options)
    check_against(options, against)
    _refuse_blank(table)
    budget, n_contrast = counts(options, contrast is not None)
    if contrast is not None:
        _check_contrast(table, *contrast)
    options = SelectOptions(**{**options.__dict__, "budget": budget})
    exclusions = exclusions_from_tables(exclude, options.exclude_threshold, False, None)
    planned = plan_selection(table, options.strategy, behavior=options.behavior, category_col=options.category_col,
                             dedup=options.dedup, keep_harmful=options.keep_harmful, exclusions=exclusions,
                             reporter=reporter)
    pool = planned.pool
    quotas = allocate_nested(options.budget, group_caps(pool), planned.weights)
    lines = [f"plan: select {options.budget} of {table.num_rows} rows with --strategy {options.strategy}; "
             f"{len(pool)} candidates after exclusions"]
    lines += [f"  excluded {key.replace('_', ' ')}: {value}" for key, value in planned.excluded.items() if value]
    if options.strategy in EMBEDDING_STRATEGIES:
        for b, name in enumerate(pool.behaviors):
            shares = ", ".join(f"{pool.categories[c]} {q}" for c, q in enumerate(quotas[b]) if q)
            lines.append(f"  quota {name}: {int(quotas[b].sum())} ({shares})")
    if quotas.sum() < options.budget:
        reporter.warn(f"only {int(quotas.sum())} candidates for a budget of {options.budget}")
    if contrast is not None:
        name, other = contrast
        embedded = "its own embeddings" if "embedding" in other.column_names else "embedded with the pool's model"
        lines.append(f"  contrast: {n_contrast} benign look-alikes of the picks from {name} ({other.num_rows} rows, "
                     f"{embedded}), {'within' if options.contrast_within_budget else 'on top of'} the budget")
    if against is not None:
        risky = risky_rows(*against, options.against_top)
        lines.append(f"  targets: the {risky.num_rows} riskiest rows of {against[0]} (by audit_score), one "
                     "counter-example each in turn")
    lines += [f"  note: {note}" for note in planned.notes]
    return lines


def _check_contrast(table: "pa.Table", name: str, other: "pa.Table") -> None:
    """Before any work: the pool has embeddings to compare with, the contrast table has text."""
    if "embedding" not in table.column_names or table.column("embedding").null_count:
        raise DataError("--contrast finds look-alikes by embedding cosine, but the pool has no (complete) "
                        "'embedding' column", "run `safesample embed` on the pool first")
    text_column(other, name)


def _refuse_blank(table: "pa.Table") -> None:
    """Pool rows without an instruction (empty, blank, invisible) are refused, as everywhere."""
    from safesample.texts import refuse_blank

    if "instruction" in table.column_names:
        refuse_blank(table, "instruction", "pool rows")


def select_table(table: "pa.Table", options: SelectOptions, *, exclude: Sequence[tuple[str, "pa.Table"]] = (),
                 contrast: tuple[str, "pa.Table"] | None = None, against: tuple[str, "pa.Table"] | None = None,
                 reporter: Reporter = SILENT, embedder: "Callable[[], EmbedTexts] | None" = None) -> SelectResult:
    """The stage: `options.budget` rows of `table`, none matching an `exclude` table's prompts.

    `exclude` holds (name, table) pairs of evaluation prompts; those without embeddings are
    embedded with `embedder()` (default: the pool's own model, loaded only then, its vectors
    cached). `contrast` (name, table) adds benign look-alikes of the picks (`select.contrast`):
    `options.contrast_share` per pick, on top of the budget or within it. `against` (name, an
    `audit` output) gives `--strategy targeted` its risky rows (`select.targeted`)."""
    import time

    validate(options)
    check_against(options, against)
    _refuse_blank(table)
    budget, n_contrast = counts(options, contrast is not None)
    if contrast is not None:
        _check_contrast(table, *contrast)
    has_emb = "embedding" in table.column_names and table.column("embedding").null_count == 0
    factory = shared(embedder if embedder is not None else default_embedder(table, options.batch_size, reporter))
    exclusions = exclusions_from_tables(exclude, options.exclude_threshold, has_emb, factory,
                                        options.batch_size) if exclude else None
    targets = build_targets(*against, options.against_top, factory) if against is not None else None
    started = time.perf_counter()
    result = select(table, budget, options.strategy, behavior=options.behavior,
                    category_col=options.category_col, dedup=options.dedup, keep_harmful=options.keep_harmful,
                    exclusions=exclusions, seed=options.seed, random_draws=options.random_draws, reporter=reporter,
                    targets=targets)
    if targets is not None:
        result.report["targets"] = {"against": targets.source, "risky_rows": len(targets.ids),
                                    "answered": targets.answered}
    reporter.debug(f"selected {budget} rows and drew {options.random_draws} random baselines in "
                   f"{time.perf_counter() - started:.2f} s")
    model, _ = embedding_model(table)
    if contrast is not None:
        started = time.perf_counter()
        name, other = contrast
        with _one_blas_thread():
            result.table, section = add_contrast(
                result.table, table, name, other, n_contrast, dedup=options.dedup, lexical=options.contrast_lexical,
                exclusions=exclusions, embedder=factory, seed=options.seed, pool_model=model)
        result.report["contrast"] = dict(section, within_budget=options.contrast_within_budget)
        reporter.debug(f"chose {n_contrast} look-alikes in {time.perf_counter() - started:.2f} s")
    result.models = {"embedding": model} if model else {}
    return result


def select(table: "pa.Table", budget: int, strategy: str = "diverse", *,
           behavior: dict[str, float] | None = None, category_col: str = "category",
           dedup: float | None = 0.95, keep_harmful: bool = False,
           exclusions: Exclusions | None = None, seed: int = 0, random_draws: int = RANDOM_DRAWS,
           reporter: Reporter = SILENT, targets: Targets | None = None) -> SelectResult:
    """Pick exactly `budget` rows of `table` with `strategy`; raise DataError when it cannot.
    `targets`: the risky benign rows `--strategy targeted` answers."""
    import pyarrow as pa

    validate(SelectOptions(budget, strategy, dedup=dedup))
    if budget > table.num_rows:
        raise DataError(f"the budget is {budget} rows but the pool has only {table.num_rows}",
                        "lower --budget, or select from a larger pool")
    plan = plan_selection(table, strategy, behavior=behavior, category_col=category_col,
                          dedup=dedup, keep_harmful=keep_harmful, exclusions=exclusions, reporter=reporter)
    pool = plan.pool
    acceptor = Acceptor(pool, budget, dedup, exclusions)
    rng = np.random.default_rng(seed)
    with _one_blas_thread():
        if strategy == "targeted":
            if targets is None:
                raise UsageError("--strategy targeted needs the risky benign rows: --against AUDITED",
                                 "pass the output of `safesample audit` on the benign fine-tuning rows")
            picks = pick_targeted(pool, budget, plan.weights, acceptor, targets)
        else:
            picks = STRATEGY_FUNCTIONS[strategy](pool, budget, plan.weights, acceptor, rng)
    if len(picks) < budget:
        counts = dict(plan.excluded, **acceptor.rejected)
        detail = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items() if v)
        raise DataError(f"the pool can supply only {len(picks)} of the {budget} rows asked for"
                        + (f" (excluded {detail})" if detail else ""),
                        "lower --budget, widen --behavior, or relax the exclusions "
                        "(--dedup, --exclude-threshold, --keep-duplicates)")
    positions = np.array([p for p, _ in picks], dtype=np.int64)
    # Columns of an earlier `select` (e.g. on a mixture) describe that selection: replace them.
    out = take_rows(table, pool.rows[positions]).drop_columns(
        [c for c in ("select_reason", "select_rank") if c in table.column_names])
    out = out.append_column("select_reason", pa.array([r for _, r in picks], pa.string()))
    out = out.append_column("select_rank", pa.array(np.arange(1, budget + 1), pa.int64()))
    with _one_blas_thread():
        report = build_report(plan, strategy, budget, seed, positions, acceptor, random_draws, dedup, exclusions)
    return SelectResult(out, report)


def take_rows(table: "pa.Table", rows: np.ndarray) -> "pa.Table":
    """`table.take(rows)` batch by batch: pyarrow's take on a chunked column may first
    concatenate its chunks, a full copy of a 1M x 384 embedding column for 200 rows."""
    import pyarrow as pa

    batches = table.to_batches()
    offsets = np.cumsum([0] + [b.num_rows for b in batches])
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    chunk_of = np.searchsorted(offsets[1:], sorted_rows, side="right")
    parts = []
    for k in np.unique(chunk_of):
        local = sorted_rows[chunk_of == k] - offsets[k]
        parts.append(batches[k].take(pa.array(local)))
    picked = pa.Table.from_batches(parts, schema=table.schema) if parts else table.slice(0, 0)
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[order] = np.arange(len(rows))
    return picked.combine_chunks().take(pa.array(inverse))


def _one_blas_thread():
    """Picking runs thousands of small matrix-vector products, which a multi-threaded BLAS
    makes several times slower (thread hand-offs, worse on a busy machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(1, user_api="blas")
