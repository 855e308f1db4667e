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
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from safesample import console
from safesample.errors import DataError, UsageError
from safesample.schema import require

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

ALGORITHMS = ("auto", "sklearn", "faiss")
AUTO_K_MAX = 100
MISSING = None  # the group key of rows without a category
_CHUNK = 65_536


# --------------------------------------------------------------------------------------------
# embeddings in, validated


def embedding_matrix(table: "pa.Table", column: str = "embedding", name: str = "the input",
                     command: str = "cluster") -> "np.ndarray":
    """The embeddings as a float32 (n, d) array; refuses missing, null, ragged or NaN vectors."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    require(table, [column], command)
    col = table.column(column)
    ids = table.column("id") if "id" in table.column_names else None

    def first_id(mask) -> str:
        if ids is None:
            return "?"
        return str(table.filter(mask).column("id")[0].as_py())

    if col.null_count:
        raise DataError(f"{name} has {col.null_count} rows without an embedding (first: id "
                        f"{first_id(pc.is_null(col))!r})",
                        "re-run `safesample embed` on the whole table")
    n = len(col)
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
    else:
        lengths = pc.list_value_length(col)
        lo, hi = pc.min_max(lengths).values() if n else (pa.scalar(0), pa.scalar(0))
        if lo.as_py() != hi.as_py():
            raise DataError(f"{name} has embeddings of mixed dimensions ({lo.as_py()} to {hi.as_py()})",
                            "embed every row with the same model: re-run `safesample embed` on the "
                            "whole table")
        dim = lo.as_py() or 0
    if n and dim == 0:
        raise DataError(f"{name} has empty embedding vectors", "re-run `safesample embed`")
    if col.num_chunks == 1 and col.type.value_type == pa.float32():
        matrix = col.chunk(0).flatten().to_numpy(zero_copy_only=False).reshape(n, dim)  # zero-copy
    else:  # one copy, chunk by chunk (no combined Arrow array on the way)
        matrix = np.empty((n, dim), np.float32)
        lo = 0
        for chunk in col.chunks:
            values = chunk.flatten().to_numpy(zero_copy_only=False)
            matrix[lo:lo + len(chunk)] = values.reshape(len(chunk), dim)
            lo += len(chunk)
    # A row sum is finite only if every value is (no n x d boolean temporary at 1M rows).
    finite = np.isfinite(matrix.sum(axis=1, dtype=np.float64))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        where = f" (first: id {ids[int(bad[0])].as_py()!r})" if ids is not None else ""
        raise DataError(f"{name} has {len(bad)} embeddings with NaN or infinite values{where}",
                        "re-run `safesample embed` (with --no-cache if they came from the cache)")
    return matrix


def unit_rows(matrix: "np.ndarray") -> "np.ndarray":
    """Rows scaled to length 1 (zero rows stay zero); no copy when they already are."""
    import numpy as np

    if not len(matrix):
        return matrix
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    if np.all(np.abs(norms - 1) < 1e-3):
        return matrix
    return matrix / np.maximum(norms, 1e-12)[:, None]


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


def labelled_rows(table: "pa.Table", column: str) -> "pa.Table":
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
        console.warn(f"ignoring {dropped} reference rows with an empty {column!r}")
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
    table = _put(table, column, category)
    table = _put(table, "category_score", score_arr)
    table = _put(table, "categories", members)
    counts = np.bincount(primary, minlength=len(vocab))
    report = CategoryReport(kept=int((~missing).sum()), assigned=int(missing.sum()),
                            counts={vocab[i]: int(c) for i, c in enumerate(counts) if c})
    return table, report


def _put(table: "pa.Table", name: str, values) -> "pa.Table":
    """Add a column, or replace it in place (a rerun over its own output)."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


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
                    progress: Callable[[int], None] | None = None) -> tuple["np.ndarray", "np.ndarray", "np.ndarray", ClusterReport]:
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

    from safesample.embed import numpy_to_arrow

    table = _put(table, "cluster", numpy_to_arrow(cluster.astype(np.int64, copy=False)))
    table = _put(table, "cluster_distance", numpy_to_arrow(distance.astype(np.float32, copy=False)))
    return _put(table, "cluster_size", numpy_to_arrow(size.astype(np.int64, copy=False)))


def group_keys(table: "pa.Table", column: str, command: str = "cluster") -> list:
    """The `--within` column's values, missing (null/blank) ones as None."""
    require(table, [column], command)
    values = table.column(column).to_pylist()
    missing = missing_labels(values)
    if values and all(missing):
        raise DataError(f"--within {column}: the column {column!r} is empty in every row, so there is "
                        "nothing to group by",
                        "pass --reference REF.parquet to assign categories first, or drop --within")
    if any(missing):
        console.warn(f"{sum(missing)} rows have no {column!r}; they are clustered as a group of their own")
    return [None if m else v for v, m in zip(values, missing)]
