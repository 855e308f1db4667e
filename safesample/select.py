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

Everything on the pool is numpy-vectorised; Python loops run over picks (the budget), not rows.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from safesample.errors import DataError, ModelError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

STRATEGIES = ("random", "stratified", "prototype", "similarity", "diverse")
BEHAVIORS = ("refusal", "explanation", "harmful_compliance", "benign_compliance", "over_refusal")
# What `diverse` picks when no --behavior is given: the behaviors of a good safety example.
SAFE_BEHAVIORS = ("refusal", "explanation")
EMBEDDING_STRATEGIES = ("prototype", "similarity", "diverse")
RANDOM_DRAWS = 10
NO_CATEGORY = "(none)"
ALL_BEHAVIORS = "(all)"

Warn = Callable[[str], None]
EmbedTexts = Callable[[list[str]], np.ndarray]


# --------------------------------------------------------------------------------------------
# parsing the command line's budget and behavior specs


def parse_budget(spec: str, of_rows: int | None = None) -> int:
    """`100` -> 100 rows; `0.5%` -> 0.5 % of `of_rows` (the benign set), rounded half up."""
    text = str(spec).strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            share = math.nan
        if not math.isfinite(share) or share <= 0:
            raise UsageError(f"bad --budget {spec!r}: a percentage must be a positive number",
                             "write e.g. --budget 0.5% --of benign.parquet, or a row count: --budget 100")
        if of_rows is None:
            raise UsageError(f"--budget {spec} is a share of the benign set, but no --of was given",
                             "add --of benign.parquet (the paper: 0.5% of 20,000 benign rows = 100)")
        rows = math.floor(share / 100 * of_rows + 0.5)
        if rows < 1:
            raise UsageError(f"--budget {spec} of {of_rows} benign rows is less than one row",
                             "use a larger share or a row count")
        return rows
    if of_rows is not None:
        raise UsageError("--of only applies to a percentage budget",
                         f"write --budget {text}% to take a share of the --of table, or drop --of")
    if not re.fullmatch(r"\+?\d+", text) or int(text) < 1:
        raise UsageError(f"bad --budget {spec!r}: expected a positive row count or a percentage",
                         "e.g. --budget 100, or --budget 0.5% --of benign.parquet")
    return int(text)


def parse_behavior(spec: str | None) -> dict[str, float] | None:
    """`refusal` or `refusal,explanation` (equal shares) or `refusal=0.7,explanation=0.3`."""
    if spec is None or not spec.strip():
        return None
    hint = ("e.g. --behavior refusal, or --behavior refusal=0.7,explanation=0.3; behaviors: "
            + ", ".join(BEHAVIORS))
    weights: dict[str, float] = {}
    parts = [p.strip() for p in spec.split(",")]
    with_weights = ["=" in p for p in parts]
    if any(with_weights) and not all(with_weights):
        raise UsageError(f"bad --behavior {spec!r}: give a weight to every behavior or to none", hint)
    for part in parts:
        name, _, raw = part.partition("=")
        name = name.strip()
        if name not in BEHAVIORS:
            raise UsageError(f"bad --behavior {spec!r}: unknown behavior {name!r}", hint)
        if name in weights:
            raise UsageError(f"bad --behavior {spec!r}: {name!r} is listed twice", hint)
        try:
            weight = float(raw) if raw else 1.0
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight <= 0:
            raise UsageError(f"bad --behavior {spec!r}: the weight of {name!r} must be a positive number",
                             hint)
        weights[name] = weight
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


# --------------------------------------------------------------------------------------------
# quotas


def allocate(total: int, caps: Sequence[int] | np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Split `total` units over groups in proportion to `weights`, none above its cap.

    Water-filling: a group that cannot take its share gives all it has and the rest is shared
    among the others; integer shares by largest remainder, ties to the group with more room,
    then the earlier group. Returns at most sum(caps) units in all.
    """
    caps = np.asarray(caps, dtype=np.int64)
    w = np.ones(len(caps)) if weights is None else np.asarray(weights, dtype=float)
    alloc = np.zeros(len(caps), dtype=np.int64)
    active = (caps > 0) & (w > 0)
    remaining = int(min(total, caps[active].sum()))
    while remaining > 0 and active.any():
        ids = np.flatnonzero(active)
        share = remaining * w[ids] / w[ids].sum()
        room = caps[ids] - alloc[ids]
        full = room <= share + 1e-9
        if full.any():
            alloc[ids[full]] = caps[ids[full]]
            remaining -= int(room[full].sum())
            active[ids[full]] = False
            continue
        base = np.floor(share + 1e-9).astype(np.int64)
        alloc[ids] += base
        left = remaining - int(base.sum())
        frac = np.round(share - base, 9)
        order = sorted(range(len(ids)), key=lambda i: (-frac[i], -room[i], ids[i]))
        for i in order[:left]:
            alloc[ids[i]] += 1
        remaining = 0
    return alloc


def allocate_nested(total: int, caps: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Quotas over behavior x category: behaviors by weight, then categories equally."""
    per_behavior = allocate(total, caps.sum(axis=1), weights)
    return np.stack([allocate(int(n), caps[b]) for b, n in enumerate(per_behavior)]) \
        if len(caps) else np.zeros_like(caps)


# --------------------------------------------------------------------------------------------
# exclusions


@dataclass
class Exclusions:
    """Evaluation prompts a selection must not contain (decontamination)."""

    texts: list[str] = field(default_factory=list)  # raw prompt texts, normalised when used
    embeddings: np.ndarray | None = None  # unit rows, or None when not available
    threshold: float = 0.9
    sources: list[str] = field(default_factory=list)

    def keys(self) -> set[str]:
        if not hasattr(self, "_keys"):
            self._keys = {normalise(t) for t in self.texts}
        return self._keys


def exclusions_from_tables(tables: Sequence[tuple[str, "pa.Table"]], threshold: float,
                           pool_has_embeddings: bool, embed_texts: Callable[[], EmbedTexts] | None,
                           batch_size: int = 256) -> Exclusions:
    """Read eval tables (`prompt` or `instruction`, optional `embedding`) into an Exclusions.

    Tables without embeddings are embedded with `embed_texts()` (a factory, so no model is
    loaded when every table brings its own vectors or the pool has none to compare with).
    """
    if not 0 < threshold <= 1:
        raise UsageError(f"--exclude-threshold {threshold} is outside (0, 1]",
                         "it is a cosine similarity; 0.9 is a sound default")
    texts: list[str] = []
    vectors: list[np.ndarray] = []
    encoder: EmbedTexts | None = None
    for name, table in tables:
        col = next((c for c in ("prompt", "instruction") if c in table.column_names), None)
        if col is None:
            raise DataError(f"--exclude table {name!r} has neither a 'prompt' nor an 'instruction' column "
                            f"(found: {', '.join(table.column_names) or 'no columns'})",
                            "pass a table of evaluation prompts, e.g. ../shared/data/harmbench")
        part = [t for t in table.column(col).to_pylist() if t]
        texts.extend(part)
        if not pool_has_embeddings:
            continue
        if "embedding" in table.column_names:
            vectors.append(embedding_matrix(table.filter(table.column(col).is_valid()), name=repr(name)))
        elif part:
            if embed_texts is None:
                raise ModelError(f"--exclude table {name!r} has no embeddings and no embedding model "
                                 "is available to compare it with the pool",
                                 f"embed it with the pool's model: safesample embed {name} --text {col} "
                                 "-o eval.embedded.parquet, and pass that to --exclude")
            if encoder is None:
                encoder = embed_texts()
            vectors.append(_unit(np.asarray(encoder(part), dtype=np.float32)))
    embeddings = np.concatenate(vectors) if vectors else None
    return Exclusions(texts, embeddings, threshold, [name for name, _ in tables])


def pool_embedding_model(history: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(model, backend) of the latest `embed` stage in a table's provenance."""
    for entry in reversed(history):
        if entry.get("command") == "embed":
            models = entry.get("models") or {}
            model = models.get("embedding") or models.get("model") or next(iter(models.values()), None)
            args = entry.get("args") or {}
            return model or args.get("model"), args.get("backend")
    return None, None


def default_embedder(history: list[dict[str, Any]], batch_size: int = 256) -> Callable[[], EmbedTexts]:
    """A factory that loads the pool's own embedding model (named in its provenance)."""

    def factory() -> EmbedTexts:
        model, backend = pool_embedding_model(history)
        if model is None:
            raise ModelError("the pool's provenance names no embedding model, so the --exclude "
                             "prompts cannot be embedded the same way",
                             "embed the exclude table with the pool's model (`safesample embed "
                             "eval.parquet --text prompt -o eval.emb.parquet`) and pass that")
        try:
            from safesample.backends import embedding
        except ImportError as exc:
            raise ModelError("no embedding backend is installed to embed the --exclude prompts",
                             "embed the exclude table with `safesample embed` and pass that") from exc
        encoder = embedding.load_encoder(model, backend) if backend else embedding.load_encoder(model)
        return lambda texts: np.asarray(encoder.encode(texts), dtype=np.float32)

    return factory


# --------------------------------------------------------------------------------------------
# vectors and text


class Vectors:
    """Unit embedding vectors of a table's rows, gathered on demand from zero-copy views of the
    Arrow chunks: `v[pos]` one vector, `v[lo:hi]` or `v[array]` a matrix.

    `positions` (optional) maps the caller's positions to table rows, so a selection over a
    re-ordered candidate list never copies the whole (n, d) column.
    """

    def __init__(self, table: "pa.Table", column: str = "embedding", positions: np.ndarray | None = None,
                 name: str = "the input"):
        import pyarrow as pa

        col = table.column(column)
        kind = col.type
        if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
                or not pa.types.is_floating(kind.value_type):
            raise DataError(f"column {column!r} of {name} has type {kind}, not a list of floats",
                            f"{column!r} comes from `safesample embed`")
        if col.null_count:
            raise DataError(f"{col.null_count} rows of {name} have no {column!r}",
                            "re-run `safesample embed` on the whole table")
        self.name = name
        self.dim = _dimension(col, name)
        self.views = [_chunk_matrix(chunk, self.dim, name) for chunk in col.chunks if len(chunk)]
        self.offsets = np.cumsum([0] + [len(v) for v in self.views])
        self.positions = positions
        self.length = len(positions) if positions is not None else int(self.offsets[-1])
        self.dense: np.ndarray | None = None

    def __len__(self) -> int:
        return self.length

    def materialize(self) -> None:
        """Gather every vector once, in position order: later slices are views. Worth it when a
        strategy scans most rows (prototype, similarity, diverse with many picks)."""
        if self.dense is None:
            self.dense = self[0:self.length]

    def _rows(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            key = np.arange(*key.indices(self.length))
        key = np.asarray(key, dtype=np.int64)
        return self.positions[key] if self.positions is not None else key

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.dense is not None:
            return self.dense[key]
        if isinstance(key, (int, np.integer)):
            row = int(self.positions[key]) if self.positions is not None else int(key)
            k = int(np.searchsorted(self.offsets, row, side="right")) - 1
            return _unit(self.views[k][row - self.offsets[k]][None, :])[0]
        rows = self._rows(key)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if len(self.views) == 1:
            out[:] = self.views[0][rows]
        else:
            chunk_of = np.searchsorted(self.offsets[1:], rows, side="right")
            for k, view in enumerate(self.views):
                sel = np.flatnonzero(chunk_of == k)
                if len(sel):
                    out[sel] = view[rows[sel] - self.offsets[k]]
        return _unit(out)


def embedding_matrix(table: "pa.Table", column: str = "embedding", name: str = "the input") -> np.ndarray:
    """All of a table's embeddings as a float32 (n, d) matrix of unit vectors."""
    vectors = Vectors(table, column, name=name)
    return vectors[0:len(vectors)]


def _dimension(col: "pa.ChunkedArray", name: str) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_fixed_size_list(col.type):
        return col.type.list_size
    lengths = pc.list_value_length(col)
    lo, hi = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    if lo != hi:
        raise DataError(f"{name} has embeddings of mixed dimensions ({lo} to {hi})",
                        "embed the whole table with one model: `safesample embed`")
    return int(lo or 0)


def _chunk_matrix(chunk: "pa.Array", dim: int, name: str) -> np.ndarray:
    values = chunk.flatten().to_numpy(zero_copy_only=False)
    if len(values) != len(chunk) * dim:
        raise DataError(f"{name} has embeddings of mixed dimensions", "re-run `safesample embed`")
    return values.reshape(len(chunk), dim)


def _unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise DataError("embeddings must be a matrix of vectors", "re-run `safesample embed`")
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    if not np.isfinite(norms).all():  # a NaN or inf anywhere in a row shows in its norm
        raise DataError("some embeddings hold NaN or infinite values", "re-run `safesample embed`")
    if len(norms) and np.abs(norms - 1).max() > 1e-3:
        matrix = matrix / np.where(norms > 0, norms, 1)[:, None]
    return matrix


_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Lower case, punctuation and runs of spaces folded to one space: the exact-match key."""
    return _NON_WORD.sub(" ", text.lower()).strip()


class Texts:
    """A string column read row by row without converting it all to Python."""

    def __init__(self, column: "pa.ChunkedArray", positions: np.ndarray | None = None):
        self.chunks = [c for c in column.chunks if len(c)]
        self.offsets = np.cumsum([0] + [len(c) for c in self.chunks])
        self.positions = positions

    def __getitem__(self, pos: int) -> str | None:
        row = int(self.positions[pos]) if self.positions is not None else int(pos)
        k = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.chunks[k][row - self.offsets[k]].as_py()


# --------------------------------------------------------------------------------------------
# the selection


@dataclass
class SelectResult:
    table: "pa.Table"  # the picked rows, in select_rank order, with select_reason / select_rank
    report: dict[str, Any]


@dataclass
class _Pool:
    """The candidate rows, sorted by (behavior, category) so each group is a contiguous slice."""

    rows: np.ndarray  # pool row index of each position
    beh: np.ndarray  # behavior code per position
    cat: np.ndarray  # category code per position
    behaviors: list[str]
    categories: list[str]
    emb: Vectors | None  # unit embeddings per position, gathered on demand
    texts: Texts | None  # the instruction (or prompt) per position
    cluster: np.ndarray | None  # cluster id per position (-1 = none)
    cluster_dist: np.ndarray | None
    cat_score: np.ndarray | None
    n_clusters: int
    key: np.ndarray = field(default=None)  # behavior * #categories + category, ascending

    def __post_init__(self) -> None:
        self.key = self.beh * len(self.categories) + self.cat

    def __len__(self) -> int:
        return len(self.rows)

    def slice(self, b: int, c: int | None = None) -> tuple[int, int]:
        """Positions [lo, hi) of behavior b (and category c)."""
        if c is None:
            lo_key, hi_key = b * len(self.categories), (b + 1) * len(self.categories)
        else:
            lo_key = b * len(self.categories) + c
            hi_key = lo_key + 1
        return int(np.searchsorted(self.key, lo_key)), int(np.searchsorted(self.key, hi_key))


class _Acceptor:
    """Decides, pick by pick, whether a candidate may join: not taken, not an exact duplicate
    (normalised text) or near duplicate (cosine) of an earlier pick, not matching an evaluation
    prompt by text or by cosine. Rejected candidates are never considered again."""

    def __init__(self, pool: _Pool, budget: int, dedup: float | None, exclusions: Exclusions | None):
        self.pool = pool
        self.taken = np.zeros(len(pool), dtype=bool)
        self.picked: list[int] = []
        self.dedup = dedup if pool.emb is not None else None
        self.exact = dedup is not None and pool.texts is not None
        self.eval_keys = exclusions.keys() if exclusions is not None and pool.texts is not None else set()
        self.eval = exclusions.embeddings if exclusions is not None and pool.emb is not None else None
        self.eval_threshold = exclusions.threshold if exclusions is not None else 1.0
        self.seen: set[str] = set()
        self._key: tuple[int, str | None] = (-1, None)
        dim = pool.emb.dim if pool.emb is not None else 0
        self.vecs = np.empty((budget, dim), dtype=np.float32)
        self.rejected = {"exact_duplicate": 0, "eval_exact": 0, "near_duplicate": 0, "eval_similar": 0}

    def _reject(self, pos: int, why: str) -> bool:
        self.taken[pos] = True
        self.rejected[why] += 1
        return False

    def ok(self, pos: int) -> bool:
        if self.taken[pos]:
            return False
        if self.exact or self.eval_keys:
            text = self.pool.texts[pos]
            key = normalise(text) if text else None
            self._key = (pos, key)
            if key is not None and key in self.eval_keys:
                return self._reject(pos, "eval_exact")
            if key is not None and self.exact and key in self.seen:
                return self._reject(pos, "exact_duplicate")
        if self.pool.emb is None or (self.eval is None and self.dedup is None):
            return True
        vec = self.pool.emb[pos]
        self._vec = (pos, vec)
        if self.eval is not None and len(self.eval) and float((self.eval @ vec).max()) >= self.eval_threshold:
            return self._reject(pos, "eval_similar")
        n = len(self.picked)
        if self.dedup is not None and n and float((self.vecs[:n] @ vec).max()) >= self.dedup:
            return self._reject(pos, "near_duplicate")
        return True

    def take(self, pos: int) -> None:
        self.taken[pos] = True
        if self.pool.emb is not None:
            cached = getattr(self, "_vec", (-1, None))
            self.vecs[len(self.picked)] = cached[1] if cached[0] == pos else self.pool.emb[pos]
        if self.exact:
            key = self._key[1] if self._key[0] == pos else normalise(self.pool.texts[pos] or "")
            if key:
                self.seen.add(key)
        self.picked.append(pos)


Pick = tuple[int, str]  # (position, reason)


def select(table: "pa.Table", budget: int, strategy: str = "diverse", *,
           behavior: dict[str, float] | None = None, category_col: str = "category",
           dedup: float | None = 0.95, keep_harmful: bool = False,
           exclusions: Exclusions | None = None, seed: int = 0, random_draws: int = RANDOM_DRAWS,
           warn: Warn = lambda message: None) -> SelectResult:
    """Pick exactly `budget` rows of `table` with `strategy`; raise DataError when it cannot."""
    import pyarrow as pa

    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}", "choose one of: " + ", ".join(STRATEGIES))
    if dedup is not None and not 0 < dedup <= 1:
        raise UsageError(f"--dedup {dedup} is outside (0, 1]",
                         "it is a cosine similarity; 0.95 is a sound default, 1 drops only identical vectors")
    if budget < 1:
        raise UsageError(f"the budget must be at least one row, not {budget}", "e.g. --budget 100")
    if budget > table.num_rows:
        raise DataError(f"the budget is {budget} rows but the pool has only {table.num_rows}",
                        "lower --budget, or select from a larger pool")
    plan = plan_selection(table, strategy, behavior=behavior, category_col=category_col,
                          dedup=dedup, keep_harmful=keep_harmful, exclusions=exclusions, warn=warn)
    pool = plan.pool
    acceptor = _Acceptor(pool, budget, dedup, exclusions)
    rng = np.random.default_rng(seed)
    with _one_blas_thread():
        picks = _STRATEGY[strategy](pool, budget, plan.weights, acceptor, rng)
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
        report = _report(plan, strategy, budget, seed, positions, acceptor, random_draws, dedup, exclusions)
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


@dataclass
class Plan:
    pool: _Pool
    weights: list[float]  # per behavior code
    excluded: dict[str, int]
    pool_rows: int
    pool_categories: int
    pool_behaviors: int | None
    pool_clusters: int | None
    notes: list[str]
    has_behavior: bool
    has_category: bool


def plan_selection(table: "pa.Table", strategy: str, *, behavior: dict[str, float] | None = None,
                   category_col: str = "category", dedup: float | None = 0.95,
                   keep_harmful: bool = False, exclusions: Exclusions | None = None,
                   warn: Warn = lambda message: None) -> Plan:
    """Validate the columns, apply the row exclusions and group the candidates (no picking)."""
    import pyarrow.compute as pc

    from safesample.schema import kind_of, require

    n = table.num_rows
    names = table.column_names
    notes: list[str] = []
    if strategy in EMBEDDING_STRATEGIES and "embedding" not in names:
        raise DataError(f"`--strategy {strategy}` needs an 'embedding' column, which the input lacks",
                        "run `safesample embed` (and `safesample cluster` for categories and clusters) "
                        "first, or use --strategy random or stratified")
    has_emb = "embedding" in names
    if has_emb:
        require(table, ["embedding"], "select")
        missing = table.column("embedding").null_count
        if missing and strategy in EMBEDDING_STRATEGIES:
            raise DataError(f"{missing} of {n} rows have no 'embedding'",
                            "run `safesample embed` on the whole pool (a mixed table has none for "
                            "benign rows), or use --strategy random or stratified")
        if missing:
            warn(f"{missing} rows have no embedding: near-duplicate and eval-similarity checks are off")
            has_emb = False

    # behavior
    has_behavior = "behavior" in names and table.column("behavior").null_count < n
    if behavior is not None:
        require(table, ["behavior"], "select")
        if not has_behavior:
            raise DataError("--behavior needs behavior labels, but the 'behavior' column is empty",
                            "run `safesample label` on the pool first")
    beh_values = _strings(table, "behavior") if has_behavior else None
    if strategy == "diverse" and behavior is None:
        if has_behavior:
            present = set(pc.unique(beh_values).to_pylist())
            safe = [b for b in SAFE_BEHAVIORS if b in present]
            if not safe:
                raise DataError("no row has a safe behavior (refusal or explanation) to pick from",
                                "pass --behavior with the behaviors you want, e.g. --behavior "
                                + ",".join(sorted(p for p in present if p)))
            behavior = {b: 1 / len(safe) for b in safe}
            notes.append("behaviors " + " + ".join(safe) + " in equal shares (the default; set --behavior)")
        else:
            warn("no behavior labels (column 'behavior'): all rows count as one behavior; "
                 "run `safesample label` for behavior-aware selection")
    keep = np.ones(n, dtype=bool)
    excluded: dict[str, int] = {}

    # harmful responses never belong in a safety set
    if "harmful_response" in names:
        if kind_of(table.schema.field("harmful_response").type) not in ("bool", "null"):
            require(table, ["harmful_response"], "select")
        if not keep_harmful:
            harmful = _bools(table, "harmful_response")
            excluded["harmful_response"] = int(harmful.sum())
            keep &= ~harmful
    elif not keep_harmful:
        warn("no 'harmful_response' labels: pairs with harmful responses cannot be excluded; "
             "run `safesample label` first")

    # behavior filter
    beh_names: list[str]
    if behavior is not None:
        beh_names = list(behavior)
        codes = _codes(beh_values, beh_names)
        outside = codes < 0
        excluded["other_behavior"] = int((outside & keep).sum())
        keep &= ~outside
        beh_code = np.maximum(codes, 0)
        weights = [behavior[b] for b in beh_names]
    else:
        beh_names = [ALL_BEHAVIORS]
        beh_code = np.zeros(n, dtype=np.int64)
        weights = [1.0]

    # text: exact duplicates and exact eval matches are checked on candidates as they are picked
    text_col = next((c for c in ("instruction", "prompt") if c in names), None)
    if exclusions is not None and not has_emb and exclusions.texts:
        warn("the pool has no embeddings: --exclude drops exact text matches only; run "
             "`safesample embed` to drop near matches too")
    if text_col is None and (dedup is not None or (exclusions is not None and exclusions.texts)):
        warn("no 'instruction' or 'prompt' column: exact duplicates and exact eval matches are not checked")

    # categories: a code per row, smallest category (among candidates) first
    has_category = category_col in names and table.column(category_col).null_count < n
    uses_category = strategy in ("stratified", "prototype", "similarity", "diverse")
    if category_col in names and has_category and kind_of(table.schema.field(category_col).type) != "string":
        raise DataError(f"column {category_col!r} has type {table.schema.field(category_col).type}, "
                        "but categories must be strings",
                        "pick a string column with --category-col, or run `safesample cluster`")
    if has_category:
        cat_values = pc.fill_null(_strings(table, category_col), NO_CATEGORY)
        dictionary = pc.dictionary_encode(cat_values)
        raw_codes = dictionary.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        labels = dictionary.dictionary.to_pylist()
        sizes = np.bincount(raw_codes[keep], minlength=len(labels))
        order = sorted(range(len(labels)), key=lambda i: (sizes[i], labels[i]))
        remap = np.empty(len(labels), dtype=np.int64)
        remap[order] = np.arange(len(labels))
        cat_code = remap[raw_codes]
        categories = [labels[i] for i in order]
        pool_categories = len(labels)
    else:
        if uses_category:
            warn(f"no harm categories (column {category_col!r}): all rows count as one category; "
                 "run `safesample cluster` (or pass --category-col)")
        cat_code = np.zeros(n, dtype=np.int64)
        categories = [NO_CATEGORY]
        pool_categories = 1 if n else 0

    # group the candidates: by behavior, then category, then cluster; table order within
    clusters = _ints(table, "cluster") if "cluster" in names else None
    candidates = np.flatnonzero(keep)
    key = beh_code[candidates] * len(categories) + cat_code[candidates]
    minor = clusters[candidates] if clusters is not None and len(candidates) else None
    if minor is not None and int(minor.max()) < 1 << 31:
        key = key * (int(minor.max()) + 2) + (minor + 1)  # one sort key; clusters are >= -1
    elif minor is not None:
        key = np.lexsort((minor, key))
        key = np.argsort(key)  # rank in (group, cluster) order
    rows = candidates[np.argsort(key, kind="stable")]
    pool_clusters = None
    if clusters is not None:
        pool_clusters = _n_distinct(clusters)
    elif strategy == "diverse" and has_emb:
        notes.append("no 'cluster' column: farthest-first on the embeddings within each quota")
    emb = Vectors(table, positions=rows) if has_emb else None
    if emb is not None and exclusions is not None and exclusions.embeddings is not None \
            and len(exclusions.embeddings) and exclusions.embeddings.shape[1] != emb.dim:
        raise DataError(f"the --exclude embeddings have {exclusions.embeddings.shape[1]} dimensions, "
                        f"the pool's {emb.dim}",
                        "embed both with the same model (`safesample embed --model ...`)")
    pool = _Pool(
        rows=rows, beh=beh_code[rows], cat=cat_code[rows], behaviors=beh_names, categories=categories,
        emb=emb, texts=Texts(table.column(text_col), rows) if text_col else None,
        cluster=clusters[rows] if clusters is not None else None,
        cluster_dist=_floats(table, "cluster_distance")[rows] if "cluster_distance" in names else None,
        cat_score=_floats(table, "category_score")[rows] if "category_score" in names else None,
        n_clusters=pool_clusters or 0)
    pool_behaviors = len(pc.unique(beh_values).drop_null()) if has_behavior else None
    return Plan(pool, weights, excluded, n, pool_categories, pool_behaviors, pool_clusters, notes,
                has_behavior, has_category)


# ---- column helpers (vectorised, null-safe)


def _strings(table: "pa.Table", name: str) -> "pa.Array":
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.cast(pa.string()) if not pa.types.is_string(col.type) else col


def _bools(table: "pa.Table", name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name)
    if pa.types.is_null(col.type):
        return np.zeros(table.num_rows, dtype=bool)
    return pc.fill_null(col, False).to_numpy().astype(bool)


def _ints(table: "pa.Table", name: str) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.fill_null(table.column(name), -1).to_numpy().astype(np.int64)


def _floats(table: "pa.Table", name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(table.column(name).cast(pa.float64()), np.nan).to_numpy()


def _n_distinct(values: np.ndarray) -> int:
    """How many distinct non-negative ids (negative = none)."""
    values = values[values >= 0]
    if not len(values):
        return 0
    if values.max() < 1 << 24:
        return int(np.count_nonzero(np.bincount(values)))
    return int(len(np.unique(values)))


def _codes(values: "pa.Array", names: list[str]) -> np.ndarray:
    """Index of each value in `names`, -1 when absent or null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pc.index_in(values, value_set=pa.array(names, pa.string())), -1) \
        .to_numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------
# strategies: each returns [(position, reason)] in pick order


def _caps(pool: _Pool) -> np.ndarray:
    caps = np.zeros((len(pool.behaviors), len(pool.categories)), dtype=np.int64)
    np.add.at(caps, (pool.beh, pool.cat), 1)
    return caps


def _describe(pool: _Pool, b: int, c: int | None) -> str:
    parts = []
    if c is not None and pool.categories != [NO_CATEGORY]:
        parts.append(f"category={pool.categories[c]}")
    if pool.behaviors != [ALL_BEHAVIORS]:
        parts.append(f"behavior={pool.behaviors[b]}")
    return ", ".join(parts)


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _quota_picks(pool: _Pool, budget: int, weights: list[float], acceptor: _Acceptor,
                 make: Callable[[int, int], Iterator[Pick]], by_category: bool = True) -> list[Pick]:
    """Fill quotas over behavior (x category) groups, pick by pick, re-sharing any shortfall.

    Groups are served round-robin, one pick each per turn, so `select_rank` interleaves them
    and the first k ranks of a selection are themselves balanced.
    """
    caps = _caps(pool) if by_category else _caps(pool).sum(axis=1, keepdims=True)
    shape = caps.shape
    flat_caps = caps.ravel()
    taken = np.zeros_like(flat_caps)
    exhausted = np.zeros(len(flat_caps), dtype=bool)
    pickers: dict[int, Iterator[Pick]] = {}
    picks: list[Pick] = []
    while len(picks) < budget:
        limit = np.where(exhausted, taken, flat_caps).reshape(shape)
        want = np.maximum(allocate_nested(budget, limit, weights).ravel() - taken, 0)
        if not want.any():
            break
        while want.any() and len(picks) < budget:
            for g in np.flatnonzero(want):
                if len(picks) >= budget:
                    break
                if g not in pickers:
                    b, c = divmod(int(g), shape[1])
                    pickers[g] = make(b, c if by_category else None)
                pick = next(pickers[g], None)
                if pick is None:
                    exhausted[g] = True
                    want[g] = 0
                    continue
                acceptor.take(pick[0])
                picks.append(pick)
                taken[g] += 1
                want[g] -= 1
    return picks


def _random_order(lo: int, hi: int, rng: np.random.Generator) -> Iterator[int]:
    """Positions lo..hi-1 in a seeded random order, lazily: a big range is sampled (repeats
    skipped) rather than permuted, since a draw of 200 from 1,000,000 needs a few hundred."""
    n = hi - lo
    if n <= 1 << 16:
        yield from (lo + rng.permutation(n)).tolist()
        return
    seen: set[int] = set()
    for _ in range(16):
        for pos in rng.integers(lo, hi, 4096).tolist():
            if pos not in seen:
                seen.add(pos)
                yield pos
    # Only after 65,536 draws (a heavily excluded pool): the rest in a full random order.
    for pos in (lo + rng.permutation(n)).tolist():
        if pos not in seen:
            yield pos


def _pick_random(pool: _Pool, budget: int, weights: list[float], acceptor: _Acceptor,
                 rng: np.random.Generator) -> list[Pick]:
    def make(b: int, c: int | None) -> Iterator[Pick]:
        lo, hi = pool.slice(b)
        where = _describe(pool, b, None)
        reason = _join(where, f"random draw ({'within the behavior quota' if where else 'uniform over the pool'})")
        for pos in _random_order(lo, hi, rng):
            if acceptor.ok(int(pos)):
                yield int(pos), reason

    return _quota_picks(pool, budget, weights, acceptor, make, by_category=False)


def _pick_stratified(pool: _Pool, budget: int, weights: list[float], acceptor: _Acceptor,
                     rng: np.random.Generator) -> list[Pick]:
    """The paper's stratified sampling: k = n // #categories per category, smallest category
    first, random within; the remainder a random fill from the candidates left."""
    caps = _caps(pool)
    shares = allocate(budget, caps.sum(axis=1), weights)
    picks: list[Pick] = []

    def draw(lo: int, hi: int, count: int, reason: Callable[[int], str]) -> int:
        got = 0
        for pos in _random_order(lo, hi, rng):
            if got >= count or len(picks) >= budget:
                break
            if acceptor.ok(int(pos)):
                acceptor.take(int(pos))
                picks.append((int(pos), reason(int(pos))))
                got += 1
        return got

    def fill_reason(pos: int) -> str:
        return _join(_describe(pool, int(pool.beh[pos]), int(pool.cat[pos])), "stratified: random fill")

    for b, share in enumerate(shares):
        present = [c for c in range(len(pool.categories)) if caps[b, c]]  # smallest first
        if not present or not share:
            continue
        k = int(share) // len(present)
        got = 0
        for c in present:
            lo, hi = pool.slice(b, c)
            text = _join(_describe(pool, b, c), f"stratified: {k} per category of {len(present)}, random within")
            got += draw(lo, hi, k, lambda pos, text=text: text)
        lo, hi = pool.slice(b)
        draw(lo, hi, int(share) - got, fill_reason)  # the behavior's remainder
    if len(picks) < budget:  # shortfalls of one behavior go to any candidate left
        draw(0, len(pool), budget - len(picks), fill_reason)
    return picks


def _ranked(pool: _Pool, budget: int, weights: list[float], acceptor: _Acceptor,
            score: Callable[[int, int, int, int], np.ndarray], what: str) -> list[Pick]:
    def make(b: int, c: int | None) -> Iterator[Pick]:
        lo, hi = pool.slice(b, c)
        scores = score(lo, hi, b, c)
        order = np.argsort(-scores, kind="stable")
        where = _describe(pool, b, c)
        for n, i in enumerate(order, 1):
            pos = lo + int(i)
            if acceptor.ok(pos):
                yield pos, _join(where, f"{_ordinal(n)} {what} ({scores[i]:.3f})")

    return _quota_picks(pool, budget, weights, acceptor, make)


def _pick_prototype(pool: _Pool, budget: int, weights: list[float], acceptor: _Acceptor,
                    rng: np.random.Generator) -> list[Pick]:
    pool.emb.materialize()  # every candidate is scored

    def score(lo: int, hi: int, b: int, c: int) -> np.ndarray:
        vecs = pool.emb[lo:hi]
        return vecs @ _unit(vecs.mean(axis=0, keepdims=True))[0]

    return _ranked(pool, budget, weights, acceptor, score, "closest to the category centroid, cosine")


def _pick_similarity(pool: _Pool, budget: int, weights: list[float], acceptor: _Acceptor,
                     rng: np.random.Generator) -> list[Pick]:
    given = pool.cat_score is not None and not np.isnan(pool.cat_score).all()
    if not given:
        pool.emb.materialize()  # every candidate is scored
    means: dict[int, np.ndarray] = {}

    def score(lo: int, hi: int, b: int, c: int) -> np.ndarray:
        if given:
            return np.nan_to_num(pool.cat_score[lo:hi], nan=-np.inf)
        if c not in means:  # the category's own rows, across behaviors: its reference set
            rows = np.flatnonzero(pool.cat == c)
            means[c] = pool.emb[rows].mean(axis=0)
        return pool.emb[lo:hi] @ means[c]

    what = ("most similar to the category reference, category_score" if given
            else "most similar to the category's rows, mean cosine")
    return _ranked(pool, budget, weights, acceptor, score, what)


FARTHEST_SAMPLE = 20_000  # farthest-first scans at most this many rows of one cluster
CENTRAL_CORE = 64  # a cluster's first pick: among this many of its most central rows


def _pick_diverse(pool: _Pool, budget: int, weights: list[float], acceptor: _Acceptor,
                  rng: np.random.Generator) -> list[Pick]:
    """Quotas over category x behavior; inside each quota a round-robin over its semantic
    clusters (the cluster least covered by the whole selection first, then the larger), and
    inside a cluster farthest-first: the row farthest from the picks already in that cluster
    (from any quota). A cluster's first pick is, of its CENTRAL_CORE rows nearest the
    centroid, the one farthest from every pick so far (the very first pick: the most central).

    Comparing a row with the picks of its own cluster only keeps the cost at about
    rows x picks-per-cluster (not rows x budget): the clusters already keep the picks apart.
    Distances are brought up to date lazily, when a cluster's turn comes, as one matrix product
    with the cluster's picks made since its last turn. A cluster (or a quota without clusters)
    larger than FARTHEST_SAMPLE rows scans a seeded sample of that many rows.
    """
    cluster_picks: dict[Any, list[np.ndarray]] = {}  # vectors picked per cluster, over all quotas
    minor = pool.cluster if pool.cluster is not None else np.zeros(len(pool), dtype=np.int64)
    cells = 1 + np.count_nonzero((np.diff(pool.key) != 0) | (np.diff(minor) != 0)) if len(pool) else 0
    if 2 * budget > cells:  # most clusters get scanned, some revisited: gather all vectors once
        pool.emb.materialize()

    def make(b: int, c: int | None) -> Iterator[Pick]:
        lo, hi = pool.slice(b, c)
        where = _describe(pool, b, c)
        ids = pool.cluster[lo:hi] if pool.cluster is not None else np.full(hi - lo, -1, dtype=np.int64)
        cuts = np.flatnonzero(np.diff(ids)) + 1  # positions are sorted by cluster within a group
        state = []
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, hi - lo]):
            u = int(ids[s])
            state.append({"id": u, "key": u if u >= 0 else ("quota", b, c), "s": int(s), "e": int(e),
                          "hits": 0, "open": True, "cand": None})
        while True:
            open_ = [st for st in state if st["open"]]
            if not open_:
                return
            st = min(open_, key=lambda t: (t["hits"], len(cluster_picks.get(t["key"], ())), t["s"] - t["e"],
                                           t["id"]))
            s, e = st["s"], st["e"]
            if st["cand"] is None:
                n = e - s
                st["cand"] = lo + (np.arange(s, e) if n <= FARTHEST_SAMPLE else
                                   np.sort(s + rng.choice(n, FARTHEST_SAMPLE, replace=False)))
                st["mind"] = np.full(len(st["cand"]), np.inf, dtype=np.float32)
                st["live"] = np.ones(len(st["cand"]), dtype=bool)
                st["seen"] = 0
            chosen, how = None, ""
            earlier = cluster_picks.setdefault(st["key"], [])
            if not earlier:
                dist = pool.cluster_dist[st["cand"]] if pool.cluster_dist is not None and st["id"] >= 0 else None
                if dist is None or np.isnan(dist).all():
                    members = pool.emb[st["cand"]]
                    dist = -(members @ members.mean(axis=0))
                order = np.argsort(np.nan_to_num(dist, nan=np.inf), kind="stable")
                picked = len(acceptor.picked)
                if picked:
                    # Among the cluster's most central rows, the one farthest from every pick
                    # so far: representative of its cluster, and away from the rest.
                    core = order[:CENTRAL_CORE]
                    far = (1 - pool.emb[st["cand"][core]] @ acceptor.vecs[:picked].T).min(axis=1)
                    order = np.r_[core[np.argsort(-far, kind="stable")], order[CENTRAL_CORE:]]
                for j in order:
                    if not st["live"][j]:
                        continue
                    st["live"][j] = False
                    if acceptor.ok(int(st["cand"][j])):
                        chosen = int(st["cand"][j])
                        how = ("nearest to centroid" if not picked else
                               f"of the {min(CENTRAL_CORE, len(order))} most central, farthest from earlier picks")
                        break
            else:
                if st["seen"] < len(earlier):
                    new = np.stack(earlier[st["seen"]:])
                    np.minimum(st["mind"], (1 - pool.emb[st["cand"]] @ new.T).min(axis=1), out=st["mind"])
                    st["seen"] = len(earlier)
                while st["live"].any():
                    j = int(np.argmax(np.where(st["live"], st["mind"], -np.inf)))
                    st["live"][j] = False
                    if acceptor.ok(int(st["cand"][j])):
                        chosen = int(st["cand"][j])
                        scope = "in the cluster" if st["id"] >= 0 else "in the quota"
                        how = f"farthest from earlier picks {scope} (cosine distance {float(st['mind'][j]):.3f})"
                        break
            if chosen is None:
                st["open"] = False
                continue
            st["hits"] += 1
            earlier.append(pool.emb[chosen])
            label = f"cluster {st['id']} of {pool.n_clusters}" if st["id"] >= 0 and pool.n_clusters else ""
            yield chosen, _join(where, label, how)

    return _quota_picks(pool, budget, weights, acceptor, make)


_STRATEGY = {"random": _pick_random, "stratified": _pick_stratified, "prototype": _pick_prototype,
             "similarity": _pick_similarity, "diverse": _pick_diverse}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --------------------------------------------------------------------------------------------
# coverage report


def _random_draw(pool: _Pool, budget: int, dedup: float | None, exclusions: Exclusions | None,
                 rng: np.random.Generator) -> np.ndarray:
    """A random draw under the same exclusions as `--strategy random`, with the near-duplicate
    check done a batch of candidates at a time (one Gram matrix, not a product per row)."""
    acc = _Acceptor(pool, budget, dedup, exclusions)
    acc.dedup = None  # it checks text and eval prompts row by row; near duplicates are done here
    order = _random_order(0, len(pool), rng)
    got: list[int] = []
    near = dedup if pool.emb is not None else None
    kept = np.empty((0, pool.emb.dim if pool.emb is not None else 0), dtype=np.float32)
    while len(got) < budget:
        batch = [pos for pos in itertools.islice(order, 2 * (budget - len(got)) + 16) if acc.ok(pos)]
        if not batch:
            break
        if near is None:
            got.extend(batch[:budget - len(got)])
            continue
        vecs = pool.emb[np.array(batch)]
        against_kept = (vecs @ kept.T).max(axis=1) if len(kept) else np.full(len(batch), -np.inf)
        gram = vecs @ vecs.T
        blocked = against_kept >= near  # too close to a row kept earlier in the draw
        accepted: list[int] = []
        for i, pos in enumerate(batch):
            if len(got) >= budget:
                break
            if blocked[i]:
                continue
            accepted.append(i)
            got.append(pos)
            blocked |= gram[i] >= near
        kept = np.concatenate([kept, vecs[accepted]])
    return np.array(got, dtype=np.int64)


def coverage(pool: _Pool, positions: np.ndarray) -> dict[str, Any]:
    """Categories, behaviors and clusters covered by `positions`, and their mean pairwise
    cosine distance (computed on the selection only)."""
    out: dict[str, Any] = {
        "categories": int(len(np.unique(pool.cat[positions]))) if pool.categories != [NO_CATEGORY] else None,
        "behaviors": int(len(np.unique(pool.beh[positions]))) if pool.behaviors != [ALL_BEHAVIORS] else None,
        "clusters": None, "mean_pairwise_distance": None,
    }
    if pool.cluster is not None:
        ids = pool.cluster[positions]
        out["clusters"] = int(len(np.unique(ids[ids >= 0])))
    if pool.emb is not None and len(positions) > 1:
        vecs = pool.emb[positions].astype(np.float64)
        total = vecs.sum(axis=0)
        k = len(positions)
        # mean over pairs i != j of cos = (|sum|^2 - sum |v|^2) / (k (k - 1))
        mean_cos = (total @ total - np.einsum("ij,ij->", vecs, vecs)) / (k * (k - 1))
        out["mean_pairwise_distance"] = round(float(1 - mean_cos), 6)
    return out


def _report(plan: Plan, strategy: str, budget: int, seed: int, positions: np.ndarray,
            acceptor: _Acceptor, draws: int, dedup: float | None,
            exclusions: Exclusions | None) -> dict[str, Any]:
    pool = plan.pool
    available = {
        "categories": _n_distinct(pool.cat) if plan.has_category else None,
        "behaviors": _n_distinct(pool.beh) if pool.behaviors != [ALL_BEHAVIORS] else None,
        "clusters": _n_distinct(pool.cluster) if pool.cluster is not None else None,
    }
    sel = coverage(pool, positions)
    baseline: list[dict[str, Any]] = []
    for k in range(draws):  # random draws from the same candidates under the same exclusions
        got = _random_draw(pool, budget, dedup, exclusions, np.random.default_rng([seed, k + 1]))
        baseline.append(coverage(pool, got))
    random_mean = {key: (round(float(np.mean([b[key] for b in baseline])), 6)
                         if baseline and baseline[0][key] is not None else None)
                   for key in sel}
    counts: dict[str, dict[str, int]] = {}
    for b, c in zip(pool.beh[positions], pool.cat[positions]):
        inner = counts.setdefault(pool.behaviors[b], {})
        inner[pool.categories[c]] = inner.get(pool.categories[c], 0) + 1
    excluded = dict(plan.excluded, **{f"{k}_rejected": v for k, v in acceptor.rejected.items()})
    return {
        "strategy": strategy, "budget": budget, "seed": seed,
        "pool_rows": plan.pool_rows, "candidate_rows": len(pool),
        "pool": {"categories": plan.pool_categories if plan.has_category else None,
                 "behaviors": plan.pool_behaviors, "clusters": plan.pool_clusters},
        "available": available,
        "excluded": excluded,
        "exclude_sources": exclusions.sources if exclusions is not None else [],
        "selection": sel,
        "random": dict(random_mean, draws=draws),
        "counts": counts,
        "notes": plan.notes,
    }


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, selection, random mean, available) rows for a terminal table."""
    sel, rnd, avail = report["selection"], report["random"], report["available"]

    def fmt(value: Any, digits: int = 1) -> str:
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) and not float(value).is_integer() \
            else str(int(value)) if isinstance(value, (int, float)) else str(value)

    rows = []
    for key, label in (("categories", "categories covered"), ("behaviors", "behaviors covered"),
                       ("clusters", "clusters covered")):
        if sel.get(key) is not None:
            rows.append((label, fmt(sel[key]), fmt(rnd.get(key)), fmt(avail.get(key))))
    if sel.get("mean_pairwise_distance") is not None:
        rows.append(("mean pairwise cosine distance", f"{sel['mean_pairwise_distance']:.3f}",
                     f"{rnd['mean_pairwise_distance']:.3f}" if rnd.get("mean_pairwise_distance") is not None else "-",
                     "-"))
    return rows
