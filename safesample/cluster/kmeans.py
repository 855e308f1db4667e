"""Semantic clusters: k-means over unit embeddings, over all rows or within groups, with faiss when
installed (it trains on 256 rows per centroid: fast at a million rows) or scikit-learn's
MiniBatchKMeans; deterministic for a seed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from safesample.errors import DataError, UsageError
from safesample.reporter import SILENT, Advance, Reporter
from safesample.schema import require
from safesample.tables import put_column
from safesample.vectors import numpy_to_arrow, unit_rows

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


from safesample.cluster.categories import CHUNK, missing_labels

ALGORITHMS = ("auto", "sklearn", "faiss")
AUTO_K_MAX = 100
MISSING = None  # the group key of rows without a category


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
    for lo in range(0, n, CHUNK):
        x = vectors[lo:lo + CHUNK]
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
