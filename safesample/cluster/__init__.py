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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from safesample.errors import UsageError
from safesample.reporter import SILENT, Reporter
from safesample.schema import require
from safesample.vectors import embedding_matrix

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

from safesample.cluster.categories import (CategoryReport, Reference, assign_categories, build_reference,
                                           labelled_rows, missing_labels, reference_column, reference_spec,
                                           reference_vectors)
from safesample.cluster.kmeans import (ALGORITHMS, AUTO_K_MAX, MISSING, ClusterReport, add_clusters, auto_k,
                                       choose_algorithm, cluster_vectors, group_keys, kmeans_centroids,
                                       nearest_centroid, parse_k)
from safesample.cluster.options import ClusterOptions

__all__ = ["ALGORITHMS", "AUTO_K_MAX", "MISSING", "CategoryReport", "ClusterOptions", "ClusterReport",
           "ClusterResult", "Reference", "add_clusters", "assign_categories", "auto_k", "build_reference",
           "choose_algorithm", "cluster_table", "cluster_vectors", "group_keys", "kmeans_centroids",
           "labelled_rows", "missing_labels", "nearest_centroid", "parse_k", "plan", "reference_column",
           "reference_spec", "reference_vectors", "validate"]


# --------------------------------------------------------------------------------------------
# the stage


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
