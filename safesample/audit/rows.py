"""Scoring rows (per row, batch by batch) and finishing the table (ranks, z-scores, drop-top).

`score_rows` is the per-row part: each row's columns depend only on the row and the direction,
never on its batch mates (right padding; tested), so an executor may call it on any slice of
the table. `rank_rows` needs the whole table: z-scores and ranks are relative to every row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safesample.audit.direction import Direction, row_scores
from safesample.audit.options import AuditOptions, drop_count
from safesample.errors import UsageError
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.backends.hidden_states import LazyModel

# The per-row columns `score_rows` adds, and the whole-table ones `rank_rows` adds.
ROW_COLUMNS = ("audit_score", "audit_similarity", "response_tokens", "audit_truncated", "audit_error")
TABLE_COLUMNS = ("audit_z", "audit_rank")
COLUMNS = ROW_COLUMNS + TABLE_COLUMNS
TOP_ROWS = 5  # rows named in the summary
# Rows tokenized, run and written to the cache at a time: an interrupted run keeps what it did
# (256 rows are about a minute at 4-5 rows/s).
CHUNK = 256
LENGTH_WARNING = 0.5  # |Spearman rho| of score and response length above which the score may be length


@dataclass
class RowStats:
    rows: int = 0
    cached: int = 0
    computed: int = 0
    errors: int = 0
    truncated: int = 0


def answer_column(table: "pa.Table", options: AuditOptions) -> str | None:
    """The column holding the answer: --map's, else `output`, else `response` (as finetune reads)."""
    names = table.column_names
    for role in ("output", "response"):
        if role in options.columns:
            return options.columns[role]
    return "output" if "output" in names else "response" if "response" in names else None


def row_fields(table: "pa.Table", options: AuditOptions) -> tuple[list[Any], list[Any], list[Any]]:
    def values(role: str, column: str | None) -> list[Any]:
        column = options.columns.get(role, column)
        if column is None or column not in table.column_names:
            return [None] * table.num_rows
        return table.column(column).to_pylist()

    return (values("instruction", "instruction"), values("input", "input"),
            values("output", answer_column(table, options)))


def row_keys(instructions: list[Any], inputs: list[Any], outputs: list[Any]) -> list[str]:
    """A row's cache key: its text fields (the template, cut and model are in the scope)."""
    from safesample.cache import text_key

    return [text_key(str(i or ""), str(x or ""), str(o or "")) for i, x, o in zip(instructions, inputs, outputs)]


def cache_scope(direction: Direction, options: AuditOptions) -> str:
    """Everything a row's scores depend on besides its text: model files, dtype, layer, template,
    cut, anchors (the direction's settings) and whether long rows are cut or refused."""
    from safesample.cache import settings_key

    return settings_key(**direction.settings(), truncate=options.truncate)


def _blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def score_rows(table: "pa.Table", direction: Direction, model: "LazyModel", options: AuditOptions, *,
               reporter: Reporter = SILENT, stats: RowStats | None = None) -> "pa.Table":
    """`table` with the per-row columns (ROW_COLUMNS) added; rows found in the cache (same model
    files, dtype, layer, template, cut and anchors) are not run, and the model loads only when
    some row is not cached."""
    import pyarrow as pa

    from safesample.cache import Cache
    from safesample.tables import put_column

    stats = stats if stats is not None else RowStats()
    instructions, inputs, outputs = row_fields(table, options)
    n = table.num_rows
    stats.rows += n
    results: list[dict[str, Any] | None] = [None] * n
    keys = row_keys(instructions, inputs, outputs)
    with Cache("audit_scores", cache_scope(direction, options), enabled=options.cache) as cache, \
            reporter.progress(n, "auditing", unit="rows") as advance:
        found = cache.get_many(keys)
        todo: list[int] = []
        for i in range(n):
            if _blank(outputs[i]):
                results[i] = {"error": "empty response: nothing to score"}
            elif _blank(instructions[i]):
                results[i] = {"error": "empty instruction: finetune refuses such rows"}
            elif keys[i] in found:
                results[i] = json.loads(found[keys[i]])
                stats.cached += 1
            else:
                todo.append(i)
        advance(n - len(todo))
        for first in range(0, len(todo), CHUNK):  # the cache is written chunk by chunk
            chunk = todo[first:first + CHUNK]
            _score_chunk(model.get(), chunk, instructions, inputs, outputs, results, direction, options, advance)
            cache.put_many([(keys[i], json.dumps(results[i]).encode()) for i in chunk])
            stats.computed += len(chunk)
    stats.errors += sum(1 for r in results if r.get("error"))
    stats.truncated += sum(1 for r in results if r.get("truncated"))
    columns = {
        "audit_score": pa.array([r.get("score") for r in results], pa.float64()),
        "audit_similarity": pa.array([r.get("similarity") for r in results], pa.float64()),
        "response_tokens": pa.array([r.get("tokens") for r in results], pa.int64()),
        "audit_truncated": pa.array([r.get("truncated") if not r.get("error") else None for r in results],
                                    pa.bool_()),
        "audit_error": pa.array([r.get("error") for r in results], pa.string()),
    }
    for name, values in columns.items():
        table = put_column(table, name, values)
    return table


def _score_chunk(fm, chunk: list[int], instructions: list[Any], inputs: list[Any], outputs: list[Any],
                 results: list[dict[str, Any] | None], direction: Direction, options: AuditOptions, advance) -> None:
    """Tokenize the rows of `chunk` as training would, run them to the direction's layer and
    fill their `results` (scores, token counts, or the reason there is no score)."""
    from safesample.backends.hidden_states import pooled_states
    from safesample.prompting import training_tokens

    run, sequences, spans = [], [], []
    for i in chunk:
        tokens = training_tokens(fm.tokenizer, instructions[i], inputs[i] or None, outputs[i], options.template)
        full = len(tokens.ids)
        if full > options.max_tokens and not options.truncate:
            results[i] = {"error": f"too long: {full} tokens, over --max-tokens {options.max_tokens} (--no-truncate)"}
            continue
        cut = tokens.cut(options.max_tokens)
        if cut.response_len < 1:
            results[i] = {"error": f"no response token: the prompt alone fills --max-tokens {options.max_tokens} "
                                   "(training drops such rows too)"}
            continue
        p, m = cut.prompt_len, len(cut.ids)
        run.append(i)
        sequences.append(cut.ids)
        spans.append({"response": (p, m), "last_prompt": (p - 1, p), "last": (m - 1, m)})
        results[i] = {"tokens": cut.response_len, "truncated": full > options.max_tokens}
    advance(len(chunk) - len(run))
    if not run:
        return
    states = pooled_states(fm, sequences, spans, [direction.layer], batch_size=options.batch_size, progress=advance)
    score, similarity = row_scores(states["response"][:, 0], states["last_prompt"][:, 0], states["last"][:, 0],
                                   direction)
    for j, i in enumerate(run):
        results[i].update(score=float(score[j]), similarity=float(similarity[j]))


# --------------------------------------------------------------------------------------------
# the whole table


@dataclass
class Finished:
    table: "pa.Table"  # the kept rows (all rows without --drop-top)
    flagged: "pa.Table | None"  # the dropped rows, highest score first
    summary: dict[str, Any]


def rank_rows(table: "pa.Table", direction: Direction, options: AuditOptions, *, reporter: Reporter = SILENT,
              stats: RowStats | None = None) -> Finished:
    """audit_z and audit_rank over the scored rows, --drop-top, and the summary."""
    import numpy as np
    import pyarrow as pa
    from scipy.stats import spearmanr

    from safesample.tables import put_column

    score = table.column("audit_score").to_numpy(zero_copy_only=False).astype(float)
    scored = ~np.isnan(score)
    n_scored = int(scored.sum())
    z = np.full(len(score), np.nan)
    if n_scored >= 2:
        std = score[scored].std()
        z[scored] = (score[scored] - score[scored].mean()) / std if std > 0 else 0.0
    order = sorted(np.flatnonzero(scored), key=lambda i: (-score[i], i))  # ties: input order
    rank = np.zeros(len(score), dtype=np.int64)
    rank[order] = np.arange(1, n_scored + 1)
    table = put_column(table, "audit_z", pa.array(z, pa.float64(), mask=~scored))
    table = put_column(table, "audit_rank", pa.array(rank, pa.int64(), mask=~scored))

    tokens = table.column("response_tokens").to_numpy(zero_copy_only=False).astype(float)
    rho = float(spearmanr(score[scored], tokens[scored]).statistic) if n_scored >= 3 else None
    if rho is not None and np.isnan(rho):
        rho = None
    ids = table.column("id").to_pylist() if "id" in table.column_names else list(range(len(score)))
    instructions = row_fields(table, options)[0]
    top = [{"id": ids[i], "rank": int(rank[i]), "audit_score": round(float(score[i]), 4),
            "audit_z": round(float(z[i]), 3) if not np.isnan(z[i]) else None,
            "response_tokens": int(tokens[i]), "instruction": str(instructions[i] or "")[:80]}
           for i in order[:TOP_ROWS]]
    errors = [e for e in table.column("audit_error").to_pylist() if e]
    summary: dict[str, Any] = {
        "model": direction.model, "dtype": direction.dtype, "template": direction.template,
        "max_tokens": direction.max_tokens, "layer": direction.layer, "layer_forced": direction.forced,
        "held_out_auroc": direction.held_out_auroc, "cv_auroc_by_layer": direction.cv_auroc,
        "anchors": direction.anchors_name, "anchor_counts": direction.anchors, "rows": len(score),
        "scored": n_scored, "errors": len(errors), "truncated": sum(1 for t in table.column("audit_truncated")
                                                                     .to_pylist() if t),
        "cached": stats.cached if stats else None, "computed": stats.computed if stats else None,
        "spearman_length": rho, "top": top, "dropped": 0,
        "score_mean": float(score[scored].mean()) if n_scored else None,
        "score_std": float(score[scored].std()) if n_scored else None,
    }
    if errors:
        reasons: dict[str, int] = {}
        for e in errors:  # every message starts with its reason, then a colon
            reasons[e.split(":")[0]] = reasons.get(e.split(":")[0], 0) + 1
        summary["error_reasons"] = reasons
        reporter.warn(f"{len(errors)} of {len(score)} rows have no score (audit_error): "
                      + "; ".join(f"{k} ({v})" for k, v in reasons.items()))
    if rho is not None and abs(rho) > LENGTH_WARNING:
        which = "long" if rho > 0 else "short"
        reporter.warn(f"the score follows response length (Spearman rho {rho:+.2f} with response_tokens): "
                      f"the top rows are mostly {which} answers; compare with a length-matched random draw "
                      "before trusting it")
    flagged = None
    if options.drop_top is not None:
        k = drop_count(options.drop_top, n_scored)
        if k > n_scored:
            raise UsageError(f"--drop-top {options.drop_top} asks for {k} rows, but only {n_scored} of the "
                             f"{len(score)} rows have a score", "pass a smaller count, or a share such as 5%")
        dropped = np.zeros(len(score), dtype=bool)
        dropped[order[:k]] = True
        flagged = table.take(pa.array(order[:k], pa.int64()))
        table = table.filter(pa.array(~dropped))
        summary["dropped"] = k
    return Finished(table, flagged, summary)


def count_cached(table: "pa.Table", direction: Direction, options: AuditOptions) -> int:
    """How many rows' scores are in the cache already (for --dry-run)."""
    from safesample.cache import Cache

    instructions, inputs, outputs = row_fields(table, options)
    keys = row_keys(instructions, inputs, outputs)
    with Cache("audit_scores", cache_scope(direction, options), enabled=options.cache) as cache:
        found = cache.get_many(keys)
    return sum(1 for k in keys if k in found)
