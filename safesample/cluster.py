"""Harm categories and semantic clusters over sentence embeddings.

Categories: a pool's own `category` is kept; rows without one get the category of a labelled
reference table by similarity (Pham et al.'s similarity scoring). Every vector is L2-normalised,
so a dot product is a cosine. For each reference category c with rows R_c,

    score(x, c) = mean over r in R_c of cos(x, r) = x . mean(R_c)

is the row's mean similarity to that category's set; the row is assigned the category whose
centroid is nearest (largest cos(x, mean(R_c)) = score / |mean(R_c)|), `category_score` is the
score of that category, and `categories` lists the row's category first, then every other
reference category whose score is at least `threshold`, highest first (multi-label membership).

Clusters: k-means over the unit vectors, over all rows or within each group of a column
(`within="category"`), with faiss when installed (it trains on a sample of 256 rows per
centroid, which is what makes a million rows fast) or scikit-learn's MiniBatchKMeans; both are
deterministic for a seed. Each row gets `cluster` (ids unique across groups), `cluster_distance`
(Euclidean distance to its centroid, in [0, 2] for unit vectors) and `cluster_size`.

`k="auto"` picks k = round(sqrt(n / 2)) clamped to [1, 100] for each group of n rows: the usual
rule of thumb, which grows with the pool but keeps clusters of about sqrt(2n) rows; it needs no
extra passes over the data, unlike silhouette search.

An all-zero embedding has no direction (its cosine to every category is 0): it is refused with a
DataError naming its id, never given a category with score 0.0. Embeddings are read and checked
by `safesample.vectors` (dimension, finite values, the dimension the embedding model records).

The stage: `ClusterOptions`, `plan(table, options, reference=...)` (what --dry-run prints) and
`cluster_table(table, options, reference=..., reporter=...)`, which embeds a reference that lacks
the pool's embeddings with the pool's own model (`reference_vectors`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from safesample.errors import DataError, UsageError
from safesample.reporter import SILENT, Advance, Reporter
from safesample.schema import require
from safesample.tables import put_column
from safesample.vectors import embedding_matrix, numpy_to_arrow, unit_rows

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from safesample.texts import TextSpec

ALGORITHMS = ("auto", "sklearn", "faiss")
AUTO_K_MAX = 100
MISSING = None  # the group key of rows without a category
_CHUNK = 65_536


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
    for lo in range(0, n, _CHUNK):
        part = vectors[lo:lo + _CHUNK] @ reference.means.T
        scores[lo:lo + _CHUNK] = part
        nearest[lo:lo + _CHUNK] = (part / np.maximum(norms, 1e-12)).argmax(axis=1)

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
# semantic clusters


def parse_k(value: str | int) -> int | None:
    """`--k`: a positive number, or `auto` (None)."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise UsageError(f"--k must be a positive number or 'auto', not {value!r}", "e.g. --k 20 or --k auto")
    return k


def auto_k(n: int) -> int:
    """round(sqrt(n / 2)), at least 1 and at most AUTO_K_MAX."""
    return max(1, min(AUTO_K_MAX, round(math.sqrt(n / 2))))


def choose_algorithm(requested: str) -> str:
    if requested not in ALGORITHMS:
        raise UsageError(f"unknown --algorithm {requested!r}", f"pass one of: {', '.join(ALGORITHMS)}")
    import importlib.util

    has_faiss = importlib.util.find_spec("faiss") is not None
    if requested == "faiss" and not has_faiss:
        raise UsageError("--algorithm faiss needs faiss, which is not installed",
                         "pip install 'safesample[faiss]', or pass --algorithm sklearn")
    if requested == "auto":
        return "faiss" if has_faiss else "sklearn"
    return requested


def kmeans_centroids(vectors: "np.ndarray", k: int, algorithm: str, seed: int) -> "np.ndarray":
    """k centroids of `vectors` (float32, C-contiguous), deterministic for a seed.

    Both algorithms start from k-means++ seeds drawn on a sample (random seeds often merge two
    true clusters and split a third; k-means++ over all rows would cost more than the k-means).
    """
    import numpy as np

    if k == 1:
        return vectors.mean(axis=0, keepdims=True).astype(np.float32)
    if k >= len(vectors):  # one cluster per row; k-means could leave some empty
        return np.array(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    init = _kmeans_plusplus(_sample(vectors, max(4096, 40 * k), rng), k, seed)
    if algorithm == "faiss":
        import faiss

        # faiss trains on 256 rows per centroid, which is what makes a million rows fast;
        # min_points_per_centroid=1: small groups are fine here, and faiss would warn on them.
        km = faiss.Kmeans(vectors.shape[1], k, niter=20, seed=seed, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=256)
        km.train(_sample(vectors, 256 * k, rng), init_centroids=init)
        return np.asarray(km.centroids, dtype=np.float32)
    from sklearn.cluster import MiniBatchKMeans

    with warnings.catch_warnings():
        # Fewer distinct points than k (duplicates) is fine: some clusters stay empty.
        warnings.simplefilter("ignore")
        km = MiniBatchKMeans(n_clusters=k, init=init, n_init=1, batch_size=4096, random_state=seed)
        km.fit(vectors)
    return km.cluster_centers_.astype(np.float32)


def _sample(vectors: "np.ndarray", size: int, rng) -> "np.ndarray":
    import numpy as np

    if size >= len(vectors):
        return vectors
    return np.ascontiguousarray(vectors[np.sort(rng.choice(len(vectors), size, replace=False))])


def _kmeans_plusplus(sample: "np.ndarray", k: int, seed: int) -> "np.ndarray":
    import numpy as np
    from sklearn.cluster import kmeans_plusplus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # float64: on float32 input sklearn computes the distances in slow upcast chunks (~12x).
        init, _ = kmeans_plusplus(sample.astype(np.float64), k, random_state=seed)
    return np.ascontiguousarray(init, dtype=np.float32)


def nearest_centroid(vectors: "np.ndarray", centroids: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """(label, Euclidean distance) of each row's nearest centroid, in chunks (bounded memory)."""
    import numpy as np

    n = len(vectors)
    labels = np.empty(n, np.int64)
    dist = np.empty(n, np.float32)
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    for lo in range(0, n, _CHUNK):
        x = vectors[lo:lo + _CHUNK]
        d2 = c_sq[None, :] - 2 * (x @ centroids.T)
        best = d2.argmin(axis=1)
        labels[lo:lo + len(x)] = best
        sq = d2[np.arange(len(x)), best] + np.einsum("ij,ij->i", x, x)
        dist[lo:lo + len(x)] = np.sqrt(np.maximum(sq, 0))
    return labels, dist


@dataclass
class ClusterReport:
    algorithm: str = ""
    groups: dict[str | None, int] = field(default_factory=dict)  # group -> k used
    capped: list[str | None] = field(default_factory=list)  # groups with fewer rows than --k
    clusters: int = 0


def cluster_vectors(vectors: "np.ndarray", groups: list | None, k: int | None, algorithm: str, seed: int,
                    progress: Advance | None = None) -> tuple["np.ndarray", "np.ndarray", "np.ndarray", ClusterReport]:
    """k-means over all rows (`groups` None) or within each group; returns (cluster, distance,
    size, report). Cluster ids are consecutive and unique across groups, in group order."""
    import numpy as np

    vectors = np.ascontiguousarray(unit_rows(vectors), dtype=np.float32)
    n = len(vectors)
    report = ClusterReport(algorithm=algorithm)
    if groups is None:
        members = {MISSING: np.arange(n)}
    else:
        keys = np.array(["" if g is None else str(g) for g in groups], dtype=object)
        is_missing = np.array([g is None for g in groups], dtype=bool)
        members = {}
        for key in sorted(set(keys[~is_missing].tolist())):
            members[key] = np.flatnonzero((keys == key) & ~is_missing)
        if is_missing.any():
            members[MISSING] = np.flatnonzero(is_missing)
    if groups is None and k is not None and k > n:
        raise UsageError(f"--k {k} asks for more clusters than the input has rows ({n})",
                         "pass a smaller --k, or --k auto")
    cluster = np.empty(n, np.int64)
    distance = np.empty(n, np.float32)
    next_id = 0
    for key, rows in members.items():
        k_group = auto_k(len(rows)) if k is None else min(k, len(rows))
        if k is not None and k > len(rows):
            report.capped.append(key)
        sub = vectors if len(rows) == n else vectors[rows]  # all rows: no 1.5 GB copy at 1M x 384
        centroids = kmeans_centroids(sub, k_group, algorithm, seed)
        labels, dist = nearest_centroid(sub, centroids)
        # Renumber to consecutive ids: k-means may leave a centroid without rows.
        used, labels = np.unique(labels, return_inverse=True)
        cluster[rows] = labels + next_id
        distance[rows] = dist
        next_id += len(used)
        report.groups[key] = k_group
        if progress:
            progress(len(rows))
    report.clusters = next_id
    size = np.bincount(cluster, minlength=next_id)[cluster] if n else np.zeros(0, np.int64)
    return cluster, distance, size, report


def add_clusters(table: "pa.Table", cluster: "np.ndarray", distance: "np.ndarray", size: "np.ndarray") -> "pa.Table":
    import numpy as np

    table = put_column(table, "cluster", numpy_to_arrow(cluster.astype(np.int64, copy=False)))
    table = put_column(table, "cluster_distance", numpy_to_arrow(distance.astype(np.float32, copy=False)))
    return put_column(table, "cluster_size", numpy_to_arrow(size.astype(np.int64, copy=False)))


def group_keys(table: "pa.Table", column: str, command: str = "cluster", reporter: Reporter = SILENT) -> list:
    """The `--within` column's values, missing (null/blank) ones as None."""
    require(table, [column], command)
    values = table.column(column).to_pylist()
    missing = missing_labels(values)
    if values and all(missing):
        raise DataError(f"--within {column}: the column {column!r} is empty in every row, so there is "
                        "nothing to group by",
                        "pass --reference REF.parquet to assign categories first, or drop --within")
    if any(missing):
        reporter.warn(f"{sum(missing)} rows have no {column!r}; they are clustered as a group of their own")
    return [None if m else v for v, m in zip(values, missing)]


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


# --------------------------------------------------------------------------------------------
# the stage


@dataclass
class ClusterOptions:
    reference: str | None = None  # the reference table's name (its path), for messages
    reference_col: str | None = None  # its category column [category_coarse, else category]
    reference_text: str | None = None  # what to embed of a reference without usable embeddings
    threshold: float = 0.15
    within: str | None = None
    k: int | None = None  # per group; None: auto_k
    algorithm: str = "sklearn"  # a choice of `choose_algorithm`
    clusters: bool = True  # False: categories only
    model: str | None = None  # embeds the reference [default: the pool's model]
    backend: str | None = None
    batch_size: int = 64
    cache: bool = True
    seed: int = 0


@dataclass
class ClusterResult:
    table: "pa.Table"
    models: dict[str, str] = field(default_factory=dict)
    categories: CategoryReport | None = None
    clusters: ClusterReport | None = None


@dataclass
class _Prepared:
    vectors: "np.ndarray"
    labels: list[str] = field(default_factory=list)  # one per labelled reference row
    label_col: str | None = None
    ref_vectors: "np.ndarray | None" = None
    how: str = ""
    ref_model: str | None = None


def validate(options: ClusterOptions) -> None:
    """The checks of the options alone (before any table is read)."""
    if not -1.0 <= options.threshold <= 1.0:
        raise UsageError(f"--threshold {options.threshold} is not a cosine similarity",
                         "pass a value in [-1, 1], e.g. 0.15")
    if options.algorithm not in ("sklearn", "faiss"):
        raise UsageError(f"unknown --algorithm {options.algorithm!r}",
                         "pass sklearn or faiss (or resolve auto with `choose_algorithm`)")


def _prepare(table: "pa.Table", options: ClusterOptions, reference: "pa.Table | None", *, embed_now: bool,
             reporter: Reporter, load_encoder: Callable[..., Any] | None) -> _Prepared:
    """Every check that needs no model, then the reference's vectors (embedded when `embed_now`)."""
    validate(options)
    vectors = embedding_matrix(table, name="the input", unit=True)
    reporter.debug(f"{len(vectors)} embeddings of {vectors.shape[1]} dims")
    k, within = options.k, options.within
    if options.clusters and within is None and k is not None and k > len(vectors):
        raise UsageError(f"--k {k} asks for more clusters than the input has rows ({len(vectors)})",
                         "pass a smaller --k, or --k auto")
    if within and options.clusters and not (within == "category" and reference is not None):
        require(table, [within], "cluster")  # before any reference is embedded
    prepared = _Prepared(vectors)
    if reference is not None:
        prepared.label_col = reference_column(reference, options.reference_col)
        labelled = labelled_rows(reference, prepared.label_col, reporter)
        prepared.labels = [str(v) for v in labelled.column(prepared.label_col).to_pylist()]
        prepared.ref_vectors, prepared.how, prepared.ref_model = reference_vectors(
            table, labelled, options, vectors.shape[1], embed_now=embed_now, reporter=reporter,
            load_encoder=load_encoder)
    return prepared


def plan(table: "pa.Table", options: ClusterOptions, *, reference: "pa.Table | None" = None,
         reporter: Reporter = SILENT) -> list[str]:
    """What --dry-run prints: the inputs validated, the reference and k-means planned; no model loaded."""
    prepared = _prepare(table, options, reference, embed_now=False, reporter=reporter, load_encoder=None)
    lines = []
    if reference is not None:
        lines.append(f"plan: assign categories from {options.reference or 'the reference'} "
                     f"({len(prepared.labels)} rows, {len(set(prepared.labels))} values of "
                     f"{prepared.label_col!r}; {prepared.how})")
    n, within, k = len(prepared.vectors), options.within, options.k
    if options.clusters:
        if within and reference is None:
            sizes: dict = {}
            for g in group_keys(table, within, reporter=reporter):
                sizes[g] = sizes.get(g, 0) + 1
            ks = [auto_k(s) if k is None else min(k, s) for s in sizes.values()]
            lines.append(f"plan: k-means within {len(sizes)} groups of {within!r} ({sum(ks)} clusters in all) "
                         f"with {options.algorithm}")
        elif within:
            lines.append(f"plan: k-means within each assigned {within!r} with {options.algorithm}")
        else:
            lines.append(f"plan: k-means over {n} rows x {prepared.vectors.shape[1]} dims, k = "
                         f"{auto_k(n) if k is None else k} with {options.algorithm}")
    return lines


def cluster_table(table: "pa.Table", options: ClusterOptions, *, reference: "pa.Table | None" = None,
                  reporter: Reporter = SILENT, load_encoder: Callable[..., Any] | None = None) -> ClusterResult:
    """Categories (kept, or assigned from `reference`) and k-means clusters for `table`.

    `load_encoder(model, backend, batch_size)` embeds a reference that lacks the pool's
    embeddings (default: `safesample.backends.embedding.load_encoder`)."""
    prepared = _prepare(table, options, reference, embed_now=True, reporter=reporter, load_encoder=load_encoder)
    result = ClusterResult(table)
    if prepared.ref_model:
        result.models["reference_embedding"] = prepared.ref_model
    if prepared.ref_vectors is not None:
        ref = build_reference(prepared.ref_vectors, prepared.labels)
        name = f"reference {options.reference}" if options.reference else "the reference"
        reporter.info(f"{name}: {len(prepared.labels)} rows in {len(ref.labels)} categories of "
                      f"{prepared.label_col!r} ({prepared.how})")
        result.table, report = assign_categories(result.table, prepared.vectors, ref, options.threshold)
        result.categories = report
        top = ", ".join(f"{name} {count}" for name, count in sorted(report.counts.items(), key=lambda kv: -kv[1])[:6])
        reporter.info(f"categories: {report.assigned} rows assigned from the reference, {report.kept} "
                      f"kept ({top}{', ...' if len(report.counts) > 6 else ''})")
    elif "category" in table.column_names and options.within != "category":
        reporter.debug("keeping the input's own category column")
    if options.clusters:
        within = options.within
        groups = group_keys(result.table, within, reporter=reporter) if within else None
        with reporter.progress(table.num_rows, f"k-means ({options.algorithm})") as advance:
            labels, distance, size, report = cluster_vectors(prepared.vectors, groups, options.k, options.algorithm,
                                                            options.seed, progress=advance)
        result.table = add_clusters(result.table, labels, distance, size)
        result.clusters = report
        if report.capped:
            reporter.warn(f"{len(report.capped)} groups have fewer rows than --k {options.k}; each got one "
                          "cluster per row")
        where = f"within {len(report.groups)} groups of {within!r}" if within else "over all rows"
        reporter.info(f"clusters: {report.clusters} {where} ({options.algorithm}, seed {options.seed})")
    return result
