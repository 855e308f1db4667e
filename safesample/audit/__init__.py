"""The `audit` stage: score each benign fine-tuning row by how much training on it may erode
safety, before training on it.

Some benign rows erode a model's safety far more than others (He, Xia & Henderson, COLM 2024;
DataShield, 2026): rows whose representations sit close to compliant answers to harmful
requests. The stage measures that with forward passes only:

1. anchors: harmful requests answered by complying and by refusing (`label`'s behavior columns;
   a bundled HH-RLHF set by default), see `anchors.py`;
2. the compliance direction: mean response-token hidden state of compliant anchors minus that
   of refusing ones, at a layer chosen by how well it separates anchors it was not fit on, see
   `direction.py`; fit once and cached;
3. per row, formatted exactly as `finetune` trains on it (`prompting.training_tokens`: the same
   template, special tokens and cut as TRL), one forward pass stopped at that layer:
   `audit_score` (DataShield's compliance shift: mean response-token projection on the direction
   minus the last prompt token's), `audit_similarity` (mean cosine of the last token to compliant
   anchors minus to refusing ones), `response_tokens`, `audit_truncated`, `audit_error`; cached
   per row, see `rows.py`;
4. over the whole table: `audit_z`, `audit_rank` (1 = the row most like compliance), and
   `--drop-top` (the kept rows in the table, the dropped ones in `flagged`).

Every input column is kept and the input order too. Length and format confound such scores
(He et al.): the summary gives the score's Spearman correlation with response length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from safesample.audit.anchors import Anchors, anchors_from_table, read_anchors
from safesample.audit.direction import Direction, candidate_layers, cached_direction, fit_direction
from safesample.audit.options import DEFAULT_MODEL, AuditOptions, check, drop_count
from safesample.audit.rows import COLUMNS, RowStats, answer_column, count_cached, rank_rows, score_rows
from safesample.errors import DataError, UsageError
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.backends.hidden_states import ForwardModel, ModelInfo

__all__ = ["AuditOptions", "AuditResult", "Anchors", "Direction", "COLUMNS", "DEFAULT_MODEL", "audit_table",
           "batch_options", "check_model", "fit_direction", "finish", "load_anchors", "plan", "prepare", "provenance",
           "score_rows", "validate"]

COMMAND = "audit"


@dataclass
class AuditResult:
    table: "pa.Table"  # every input row and column with the audit columns (the kept rows with --drop-top)
    flagged: "pa.Table | None"  # the rows --drop-top dropped, highest score first
    direction: Direction
    options: AuditOptions  # as run: the dtype resolved, the direction set (what `provenance` reads)
    models: dict[str, str] = field(default_factory=dict)  # for provenance
    summary: dict[str, Any] = field(default_factory=dict)


def validate(table: "pa.Table", options: AuditOptions) -> None:
    """Every check that needs no model: options, the columns rows are read through, --drop-top."""
    from safesample.schema import kind_of

    check(options)
    names = table.column_names
    for role, column in options.columns.items():
        if column not in names:
            raise DataError(f"--map {column}={role}: the input has no column {column!r} "
                            f"(found: {', '.join(names) or 'no columns'})", "check the column name")
    answer = answer_column(table, options)
    needed = [("instruction", options.columns.get("instruction", "instruction")), ("output", answer)]
    for role, column in needed:
        if column is None or column not in names:
            wanted = "'output' (or 'response')" if role == "output" else repr(role)
            raise DataError(f"`safesample audit` needs a column {wanted}, which the input lacks "
                            f"(found: {', '.join(names) or 'no columns'})",
                            f"map the column that holds it: --map COLUMN={role}")
        kind = kind_of(table.schema.field(column).type)
        if kind not in ("string", "null"):
            raise DataError(f"column {column!r} ({role}) holds {table.schema.field(column).type}, not text",
                            f"map a text column to {role!r} with --map COLUMN={role}")
    # (an executor validates an empty table of the input's schema: the count is checked again on the rows)
    if options.drop_top is not None and not options.drop_top.strip().endswith("%") and table.num_rows:
        k = drop_count(options.drop_top, table.num_rows)
        if k > table.num_rows:
            raise UsageError(f"--drop-top {options.drop_top} is more than the {table.num_rows} rows of the input",
                             "pass a smaller count, or a share such as 5%")


def check_model(options: AuditOptions) -> "ModelInfo":
    """The model's config (no weights): a causal LM, and --layer within its layers."""
    from safesample.backends.hidden_states import model_info

    info = model_info(options.model)
    if options.layer is not None and options.layer > info.num_layers:
        raise UsageError(f"--layer {options.layer} is out of range: {options.model} has {info.num_layers} layers",
                         f"pass 1..{info.num_layers}, or leave --layer out to choose one on the anchors")
    return info


def load_anchors(options: AuditOptions) -> Anchors:
    table, name = read_anchors(options.anchors)
    return anchors_from_table(table, name, options.seed)


def _dtype(options: AuditOptions) -> str:
    from safesample.backends.hidden_states import resolve_dtype

    return resolve_dtype(options.dtype)


def plan(table: "pa.Table", options: AuditOptions) -> list[str]:
    """What --dry-run prints: the rows, model, anchors, layer and what the cache holds; loads no model."""
    validate(table, options)
    info = check_model(options)
    anchors = load_anchors(options)
    dtype = _dtype(options)
    counts = anchors.counts
    lines = [f"plan: audit {table.num_rows} rows (as `finetune --template {options.template}` trains on them, cut "
             f"at {options.max_tokens} tokens{'' if options.truncate else ', longer rows refused'}) with "
             f"{options.model} ({dtype}, {info.num_layers} layers), batches of {options.batch_size}",
             f"anchors: {anchors.name}: {counts['compliant']} compliant, {counts['refusing']} refusing, "
             f"{counts['pairs']} pairs by instruction ({counts['ignored']} rows of neither kind)"]
    direction = cached_direction(anchors, info, options, dtype)
    if direction is not None:
        cached = count_cached(table, direction, options)
        lines.append(f"direction: cached, {direction.describe()}")
        lines.append(f"rows: {cached} cached, {table.num_rows - cached} to run through layers 1-{direction.layer}")
    else:
        layers = [options.layer] if options.layer is not None else candidate_layers(info.num_layers)
        how = f"--layer {options.layer}" if options.layer is not None else \
            f"layer chosen among {layers[0]}-{layers[-1]} by cross-validated AUROC"
        lines.append(f"direction: to fit on {len(anchors)} anchors ({how})")
        lines.append(f"rows: {table.num_rows} to run through the layers up to the chosen one")
    if options.drop_top is not None:
        lines.append(f"then drop the top {options.drop_top} rows by audit_score")
    return lines


def prepare(table: "pa.Table", options: AuditOptions, *, reporter: Reporter = SILENT,
            load_model: "Callable[..., ForwardModel] | None" = None) -> AuditOptions:
    """Before any row is scored (an executor calls this once, with the input or an empty table of
    its schema): options and columns checked, the dtype resolved and the compliance direction fit
    or read from the cache, so every batch scores with one direction and the provenance names
    its layer. Loads the model only when the direction is not cached."""
    from safesample.backends.hidden_states import LazyModel

    if options.direction is not None:
        validate(table, options)
        return options
    dtype = _dtype(options)
    model = LazyModel(options.model, dtype, reporter=reporter, loader=load_model)
    try:
        return _prepare(table, options, model, reporter)
    finally:
        model.close()


def _prepare(table: "pa.Table", options: AuditOptions, model, reporter: Reporter) -> AuditOptions:
    from dataclasses import replace

    validate(table, options)
    info = check_model(options)
    options = replace(options, dtype=model.dtype)
    direction = fit_direction(load_anchors(options), model, info, options, model.dtype, reporter=reporter)
    return replace(options, direction=direction)


def audit_table(table: "pa.Table", options: AuditOptions, *, reporter: Reporter = SILENT,
                load_model: "Callable[..., ForwardModel] | None" = None) -> AuditResult:
    """Audit every row of `table`; `load_model(name, dtype, reporter=...)` loads the model
    (default: `safesample.backends.hidden_states.load`), called only when the direction or some
    row is not in the cache, and once at most. With `options.whole_table` False
    (`batch_options`), only the per-row columns are added: `finish` ranks the rows once all
    batches are done."""
    from safesample.backends.hidden_states import LazyModel

    model = LazyModel(options.model, _dtype(options), reporter=reporter, loader=load_model)
    stats = RowStats()
    try:
        if options.direction is None:
            options = _prepare(table, options, model, reporter)
        else:
            validate(table, options)
        scored = score_rows(table, options.direction, model, options, reporter=reporter, stats=stats)
    finally:
        model.close()
    reporter.info(f"audited {stats.rows} rows at {options.direction.describe()}: {stats.cached} from the cache, "
                  f"{stats.computed} computed, {stats.truncated} cut at {options.max_tokens} tokens, "
                  f"{stats.errors} without a score")
    if not options.whole_table:
        return AuditResult(scored, None, options.direction, options, provenance(options)[1], {"rows": stats.rows})
    return finish(table, scored, options, reporter=reporter, stats=stats)


def finish(table: "pa.Table", rows: "pa.Table", options: AuditOptions, *, reporter: Reporter = SILENT,
           stats: RowStats | None = None) -> AuditResult:
    """The whole-table part over `rows` (the input `table` with the per-row columns of every
    batch): audit_z, audit_rank, --drop-top and the summary."""
    if options.direction is None:  # not prepared: the direction from the cache the batches filled
        options = prepare(table.slice(0, 0), options, reporter=reporter)
    done = rank_rows(rows, options.direction, options, reporter=reporter, stats=stats)
    return AuditResult(done.table, done.flagged, options.direction, options, provenance(options)[1], done.summary)


def batch_options(options: AuditOptions) -> AuditOptions:
    """The options each batch of an executor runs with: per-row columns only."""
    from dataclasses import replace

    return replace(options, drop_top=None, whole_table=False)


def provenance(options: AuditOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """What an `audit` output records: its arguments, the layer read and its held-out AUROC (once
    `prepare` fit the direction), and the model and anchors."""
    direction = options.direction
    args = {"model": options.model, "anchors": options.anchors, "layer": options.layer,
            "template": options.template, "max_tokens": options.max_tokens, "truncate": options.truncate,
            "dtype": options.dtype, "batch_size": options.batch_size, "drop_top": options.drop_top,
            "map": {old: role for role, old in options.columns.items()}, "seed": options.seed,
            "cache": options.cache, "flagged": options.flagged,
            "layer_read": direction.layer if direction else None,
            "held_out_auroc": direction.held_out_auroc if direction else None}
    models = {"audit": options.model, "audit_anchors": direction.anchors_name if direction else
              (options.anchors or "bundled")}
    return args, models
