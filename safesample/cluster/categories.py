"""Harm categories from a labelled reference: the nearest category centroid, the mean similarity
to the category's rows (`category_score`), and every category close enough (`categories`); the
reference's embeddings are its own when the pool's model made them, else embedded now with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from safesample.errors import DataError
from safesample.reporter import SILENT, Reporter
from safesample.tables import put_column
from safesample.vectors import embedding_matrix, unit_rows

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from safesample.texts import TextSpec

from safesample.cluster.options import ClusterOptions

CHUNK = 65_536  # rows scored at once (bounds the memory of a rows x categories product)


# --------------------------------------------------------------------------------------------
# harm categories from a reference


@dataclass
class Reference:
    labels: list[str]  # one per category, sorted
    means: "np.ndarray"  # (C, d) mean of each category's unit vectors
    counts: list[int]

    @property
    def centroids(self) -> "np.ndarray":
        import numpy as np

        return self.means / np.maximum(np.linalg.norm(self.means, axis=1, keepdims=True), 1e-12)


def missing_labels(values: list) -> list[bool]:
    """Null and blank strings are missing categories."""
    return [v is None or (isinstance(v, str) and not v.strip()) for v in values]


def reference_column(table: "pa.Table", requested: str | None) -> str:
    """The reference's label column: `requested`, else category_coarse, else category."""
    candidates = [requested] if requested else ["category_coarse", "category"]
    for name in candidates:
        if name in table.column_names:
            return name
    found = ", ".join(table.column_names)
    if requested:
        raise DataError(f"the reference table has no column {requested!r} (found: {found})",
                        "pass --reference-col with the reference's category column")
    raise DataError(f"the reference table has neither 'category_coarse' nor 'category' (found: {found})",
                    "pass --reference-col with the reference's category column")


def labelled_rows(table: "pa.Table", column: str, reporter: Reporter = SILENT) -> "pa.Table":
    """The reference rows that carry a category; refuses a reference with none."""
    import pyarrow as pa

    values = table.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
            or pa.types.is_null(values.type) or pa.types.is_dictionary(values.type)):
        raise DataError(f"the reference column {column!r} holds {values.type}, not category names",
                        "pass --reference-col with a text column of category names")
    keep = [not m for m in missing_labels(values.to_pylist())]
    dropped = keep.count(False)
    if dropped == len(keep):
        raise DataError(f"the reference column {column!r} is empty: none of its {len(keep)} rows has a "
                        "category", "pass a labelled reference table, or another --reference-col")
    if dropped:
        reporter.warn(f"ignoring {dropped} reference rows with an empty {column!r}")
    return table.filter(pa.array(keep)) if dropped else table


def build_reference(vectors: "np.ndarray", labels: list[str]) -> Reference:
    import numpy as np

    vectors = unit_rows(vectors)
    names = sorted(set(labels))
    code = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((code[v] for v in labels), dtype=np.int64, count=len(labels))
    counts = np.bincount(codes, minlength=len(names))
    means = np.zeros((len(names), vectors.shape[1]), np.float64)
    np.add.at(means, codes, vectors)
    means /= counts[:, None]
    return Reference(names, means.astype(np.float32), counts.tolist())


@dataclass
class CategoryReport:
    kept: int = 0
    assigned: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def assign_categories(table: "pa.Table", vectors: "np.ndarray", reference: Reference, threshold: float,
                      column: str = "category") -> tuple["pa.Table", CategoryReport]:
    """Fill missing categories from the reference; add `category_score` and `categories`."""
    import numpy as np
    import pyarrow as pa

    vectors = unit_rows(vectors)
    n, n_ref = len(vectors), len(reference.labels)
    scores = np.empty((n, n_ref), np.float32)
    nearest = np.empty(n, np.int64)
    norms = np.linalg.norm(reference.means, axis=1)
    for lo in range(0, n, CHUNK):
        part = vectors[lo:lo + CHUNK] @ reference.means.T
        scores[lo:lo + CHUNK] = part
        nearest[lo:lo + CHUNK] = (part / np.maximum(norms, 1e-12)).argmax(axis=1)

    current = table.column(column).to_pylist() if column in table.column_names else [None] * n
    missing = np.array(missing_labels(current), dtype=bool)
    vocab = list(reference.labels)
    code = {name: i for i, name in enumerate(vocab)}
    primary = nearest.copy()
    for i in np.flatnonzero(~missing):
        primary[i] = code.setdefault(str(current[i]), len(vocab))
        if primary[i] == len(vocab):
            vocab.append(str(current[i]))
    # Kept categories the reference does not know get no score.
    extra = len(vocab) - n_ref
    padded = np.concatenate([scores, np.full((n, extra), -np.inf, np.float32)], axis=1) if extra else scores
    rows = np.arange(n)
    category_score = padded[rows, primary] if n else np.zeros(0, np.float32)

    # Multi-label: the row's own category first, then the others above the threshold, best first.
    ranking = padded.copy()
    ranking[rows, primary] = np.inf
    order = np.argsort(-ranking, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(ranking, order, axis=1)
    include = sorted_scores >= threshold
    include[:, 0] = True
    offsets = np.concatenate([[0], np.cumsum(include.sum(axis=1))]).astype(np.int32)
    names = pa.array(vocab, pa.string())
    members = pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(order[include])))

    category = names.take(pa.array(primary))
    score_arr = pa.array(np.where(np.isfinite(category_score), category_score, np.nan).astype(np.float32),
                         mask=~np.isfinite(category_score))
    table = put_column(table, column, category)
    table = put_column(table, "category_score", score_arr)
    table = put_column(table, "categories", members)
    counts = np.bincount(primary, minlength=len(vocab))
    report = CategoryReport(kept=int((~missing).sum()), assigned=int(missing.sum()),
                            counts={vocab[i]: int(c) for i, c in enumerate(counts) if c})
    return table, report


# --------------------------------------------------------------------------------------------
# the reference's embeddings: its own when the pool's model made them, else embedded now


def reference_spec(ref_table: "pa.Table", reference_text: str | None, pool_spec) -> "TextSpec":
    """What to embed of a reference without usable embeddings: --reference-text, else the text
    the pool was embedded from (when the reference has those columns), else instruction, else
    prompt."""
    from safesample.texts import TextSpec

    if reference_text:
        return TextSpec(text=reference_text)
    names = set(ref_table.column_names)
    if pool_spec is not None and set(pool_spec.columns) <= names:
        return pool_spec
    for name in ("instruction", "prompt"):
        if name in names:
            return TextSpec(text=name)
    raise DataError("the reference table has no embeddings and no text column to embed (neither "
                    "'instruction' nor 'prompt')", "pass --reference-text COLUMN, or embed the reference "
                    "with `safesample embed REF --text COLUMN -o ref.parquet` first")


def reference_vectors(pool: "pa.Table", ref_table: "pa.Table", options: "ClusterOptions", dim: int, *,
                      embed_now: bool = True, reporter: Reporter = SILENT,
                      load_encoder: Callable[..., Any] | None = None) -> tuple["np.ndarray | None", str, str | None]:
    """The reference's embeddings: its own when made by the pool's model, else embedded now with
    the pool's model (from the embedding column's metadata, else the provenance).

    Returns (vectors, or None when `embed_now` is false and they would have to be embedded; a note
    saying which; the model used if embedded)."""
    from safesample.backends import embedding_cache
    from safesample.texts import TextSpec, texts_of
    from safesample.backends.embedding import choose_backend, resolve_model
    from safesample.vectors import embedding_model, field_info

    pool_model, pool_backend = embedding_model(pool)
    ref_info = field_info(ref_table)
    wanted = options.model or pool_model
    if "embedding" in ref_table.column_names and options.reference_text is None:
        same_model = not (ref_info.get("model") and wanted and ref_info["model"] != wanted)
        ref_vectors = embedding_matrix(ref_table, name="the reference table", unit=True)
        if same_model and ref_vectors.shape[1] == dim:
            return ref_vectors, "its own embeddings", None
        why = f"embedded with {ref_info.get('model')}" if not same_model else f"{ref_vectors.shape[1]}-d embeddings"
        reporter.info(f"the reference has {why}; embedding it again with the pool's model")
    if not wanted:
        reporter.warn("the input does not say which model embedded it; embedding the reference with the "
                      "default model (pass --model if the input used another)")
    spec = reference_spec(ref_table, options.reference_text, TextSpec.parse(field_info(pool).get("text")))
    texts = texts_of(ref_table, spec, command="cluster --reference", choose="--reference-text COLUMN")
    ref_model = resolve_model(wanted)
    chosen = choose_backend(options.backend or pool_backend or "auto", ref_model, reporter=reporter)
    what = f"template {spec.template!r}" if spec.template else f"column {spec.text!r}"
    how = f"embedded on the fly: {what} with {ref_model.name} on {chosen}"
    if not embed_now:
        return None, how, ref_model.name
    reporter.info(f"the reference has no embeddings of the pool's model; {how}")
    if load_encoder is None:
        from functools import partial

        from safesample.backends import embedding

        load_encoder = partial(embedding.load_encoder, reporter=reporter)
    with embedding_cache.cache_for(ref_model.settings(chosen), enabled=options.cache) as cache, \
            reporter.progress(None, f"embedding the reference ({chosen})", unit="texts") as advance:
        vectors = embedding_cache.embed_texts(texts, lambda: load_encoder(ref_model, chosen, options.batch_size),
                                    cache=cache, batch_size=options.batch_size, progress=advance)
    if vectors.shape[1] != dim:
        raise DataError(f"the reference embeds to {vectors.shape[1]} dims but the input has {dim}-d embeddings",
                        "pass --model with the model that embedded the input")
    return unit_rows(vectors, name="the reference's embeddings"), how, ref_model.name
