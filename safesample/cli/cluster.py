"""`safesample cluster`: harm categories (kept, or assigned from a reference) and semantic clusters."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from safesample import console
from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose, load, save,
                                   setup)
from safesample.errors import UsageError

NAME = "cluster"
HELP = """Assign harm categories and semantic clusters from the embeddings.

Needs an `embedding` column (from `safesample embed`).

Categories: a pool's own `category` is kept. With --reference, rows without one (null or blank)
get the category of the most similar category of a labelled reference table: the nearest
category centroid. `category_score` is the row's mean cosine similarity to that category's
reference rows (the paper's similarity score), and `categories` lists the row's category first,
then every other reference category whose score is at least --threshold. A reference without an
`embedding` column (or embedded by another model) is embedded on the fly with the pool's model.

Clusters: k-means over the (L2-normalised) embeddings, over all rows or within each value of
--within (e.g. category), adding `cluster` (an id unique across groups), `cluster_distance`
(Euclidean distance to the centroid) and `cluster_size`. --k auto uses k = round(sqrt(n/2)),
clamped to 1..100, for each group of n rows; a number is used as is, per group (capped at the
group's size). faiss when installed, else scikit-learn MiniBatchKMeans; same seed, same output.

Examples:

\b
  safesample cluster embedded.parquet -o clustered.parquet
  safesample cluster embedded.parquet --reference do_not_answer.parquet \\
      --reference-col category_coarse --within category -o clustered.parquet
  safesample embed pool.parquet -o - | safesample cluster - --reference ref.parquet -o out.parquet
  safesample cluster embedded.parquet --k 50 --algorithm sklearn --seed 1 -o clustered.parquet
"""

Reference = Annotated[Optional[str], typer.Option(
    "--reference", "-r", help="Labelled reference table whose categories are assigned to rows without one.",
    show_default=False)]
ReferenceCol = Annotated[Optional[str], typer.Option(
    "--reference-col", help="The reference's category column [default: category_coarse, else category].",
    show_default=False)]
ReferenceText = Annotated[Optional[str], typer.Option(
    "--reference-text", help="Column of the reference to embed when it has no embeddings [default: the "
    "pool's embedded text, else instruction, else prompt].", show_default=False)]
Threshold = Annotated[float, typer.Option(
    "--threshold", help="Mean cosine similarity to a category's reference rows for membership in `categories` "
    "(with all-MiniLM-L6-v2 a row's best category scores about 0.16 at the median).")]
Within = Annotated[Optional[str], typer.Option(
    "--within", help="Cluster within each value of this column (e.g. category) instead of globally.",
    show_default=False)]
K = Annotated[str, typer.Option("--k", "-k", help="Clusters (per group with --within): a number, or auto.")]
Algorithm = Annotated[str, typer.Option("--algorithm", help="auto (faiss when installed), sklearn or faiss.")]
NoClusters = Annotated[bool, typer.Option("--no-clusters", help="Only assign categories; skip k-means.")]
Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model to embed the reference with [default: the pool's embedding model].",
    show_default=False)]
Backend = Annotated[Optional[str], typer.Option(
    "--backend", help="Backend to embed the reference with [default: the pool's].", show_default=False)]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the embedding cache.")]


def command(input: Input, output: Output = "-", reference: Reference = None, reference_col: ReferenceCol = None,
            reference_text: ReferenceText = None, threshold: Threshold = 0.15, within: Within = None,
            k: K = "auto", algorithm: Algorithm = "auto", no_clusters: NoClusters = False,
            model: Model = None, backend: Backend = None, batch_size: BatchSize = 64, no_cache: NoCache = False,
            seed: Seed = 0, limit: Limit = None, dry_run: DryRun = False, quiet: Quiet = False,
            verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    from safesample import cluster
    from safesample.tables import check_output, read_table

    k_value = cluster.parse_k(k)
    chosen_algorithm = cluster.choose_algorithm(algorithm)
    if not -1.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold {threshold} is not a cosine similarity", "pass a value in [-1, 1], e.g. 0.15")
    if not dry_run:
        check_output(output)
    table = load(input, limit)
    vectors = cluster.embedding_matrix(table, name="the input")
    console.debug(f"{len(vectors)} embeddings of {vectors.shape[1]} dims")
    if not no_clusters and within is None and k_value is not None and k_value > len(vectors):
        raise UsageError(f"--k {k_value} asks for more clusters than the input has rows ({len(vectors)})",
                         "pass a smaller --k, or --k auto")

    if within and not no_clusters and not (within == "category" and reference is not None):
        from safesample.schema import require

        require(table, [within], NAME)  # before any reference is embedded

    models: dict[str, str] = {}
    ref = None
    if reference is not None:
        ref_table = read_table(reference)
        label_col = cluster.reference_column(ref_table, reference_col)
        ref_table = cluster.labelled_rows(ref_table, label_col)
        ref_vectors, how, ref_model = _reference_vectors(table, ref_table, reference_text, model, backend,
                                                         batch_size, no_cache, dry_run, vectors.shape[1])
        labels = [str(v) for v in ref_table.column(label_col).to_pylist()]
        if ref_model:
            models["reference_embedding"] = ref_model
        if ref_vectors is None:  # dry run: nothing embedded
            n_cats = len(set(labels))
            console.info(f"plan: assign categories from {reference} ({ref_table.num_rows} rows, {n_cats} "
                         f"values of {label_col!r}; {how})")
        else:
            ref = cluster.build_reference(ref_vectors, labels)
            console.info(f"reference {reference}: {ref_table.num_rows} rows in {len(ref.labels)} categories of "
                         f"{label_col!r} ({how})")

    groups_col = within
    if dry_run:
        _plan(table, vectors, reference, within, k_value, chosen_algorithm, no_clusters, output)
        return

    if ref is not None:
        table, cat_report = cluster.assign_categories(table, vectors, ref, threshold)
        top = ", ".join(f"{name} {count}" for name, count in
                        sorted(cat_report.counts.items(), key=lambda kv: -kv[1])[:6])
        console.info(f"categories: {cat_report.assigned} rows assigned from the reference, {cat_report.kept} "
                     f"kept ({top}{', ...' if len(cat_report.counts) > 6 else ''})")
    elif "category" in table.column_names and within != "category":
        console.debug("keeping the input's own category column")

    if not no_clusters:
        groups = cluster.group_keys(table, groups_col) if groups_col else None
        with console.progress(table.num_rows, f"k-means ({chosen_algorithm})") as advance:
            labels_, distance, size, report = cluster.cluster_vectors(vectors, groups, k_value, chosen_algorithm,
                                                                      seed, progress=advance)
        table = cluster.add_clusters(table, labels_, distance, size)
        if report.capped:
            console.warn(f"{len(report.capped)} groups have fewer rows than --k {k_value}; each got one "
                         "cluster per row")
        where = f"within {len(report.groups)} groups of {groups_col!r}" if groups_col else "over all rows"
        console.info(f"clusters: {report.clusters} {where} ({chosen_algorithm}, seed {seed})")

    save(table, output, NAME, {"reference": reference, "reference_col": reference_col,
                               "reference_text": reference_text, "threshold": threshold, "within": within,
                               "k": k, "algorithm": chosen_algorithm, "clusters": not no_clusters,
                               "limit": limit},
         seed=seed, models=models, inputs=[input] + ([reference] if reference else []))


def _reference_vectors(pool, ref_table, reference_text, model, backend, batch_size, no_cache, dry_run, dim):
    """The reference's embeddings: its own when made by the pool's model, else embedded now.

    Returns (vectors or None on a dry run, a note saying which, the model used if embedded)."""
    from safesample import cluster, embed
    from safesample.backends.embedding import choose_backend, load_encoder, resolve_model
    from safesample.errors import DataError
    from safesample.tables import get_provenance

    pool_info = embed.field_info(pool)
    pool_model = pool_info.get("model") or _provenance_model(get_provenance(pool))
    ref_info = embed.field_info(ref_table)
    wanted = model or pool_model
    if "embedding" in ref_table.column_names and reference_text is None:
        same_model = not (ref_info.get("model") and wanted and ref_info["model"] != wanted)
        ref_vectors = cluster.embedding_matrix(ref_table, name="the reference table")
        if same_model and ref_vectors.shape[1] == dim:
            return ref_vectors, "its own embeddings", None
        why = f"embedded with {ref_info.get('model')}" if not same_model else f"{ref_vectors.shape[1]}-d embeddings"
        console.info(f"the reference has {why}; embedding it again with the pool's model")
    if not wanted:
        console.warn("the input does not say which model embedded it; embedding the reference with the "
                     "default model (pass --model if the input used another)")
    spec = _reference_spec(ref_table, reference_text, embed.TextSpec.parse(pool_info.get("text")))
    texts = embed.texts_of(ref_table, spec, command="cluster --reference", choose="--reference-text COLUMN")
    ref_model = resolve_model(wanted)
    chosen = choose_backend(backend or pool_info.get("backend") or "auto", ref_model)
    what = f"template {spec.template!r}" if spec.template else f"column {spec.text!r}"
    how = f"embedded on the fly: {what} with {ref_model.name} on {chosen}"
    if dry_run:
        return None, how, ref_model.name
    console.info(f"the reference has no embeddings of the pool's model; {how}")
    with embed.cache_for(ref_model.settings(chosen), enabled=not no_cache) as cache, \
            console.progress(None, f"embedding the reference ({chosen})", unit="texts") as advance:
        vectors = embed.embed_texts(texts, lambda: load_encoder(ref_model, chosen, batch_size), cache=cache,
                                    batch_size=batch_size, progress=advance)
    if vectors.shape[1] != dim:
        raise DataError(f"the reference embeds to {vectors.shape[1]} dims but the input has {dim}-d embeddings",
                        "pass --model with the model that embedded the input")
    return vectors, how, ref_model.name


def _reference_spec(ref_table, reference_text, pool_spec):
    from safesample.embed import TextSpec
    from safesample.errors import DataError

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


def _provenance_model(history) -> str | None:
    for entry in reversed(history):
        if entry.get("command") == "embed":
            return (entry.get("models") or {}).get("embedding")
    return None


def _plan(table, vectors, reference, within, k_value, algorithm, no_clusters, output) -> None:
    from safesample import cluster

    n = len(vectors)
    if not no_clusters:
        if within:
            if reference is None:
                groups = cluster.group_keys(table, within)
                sizes: dict = {}
                for g in groups:
                    sizes[g] = sizes.get(g, 0) + 1
                ks = [cluster.auto_k(s) if k_value is None else min(k_value, s) for s in sizes.values()]
                console.info(f"plan: k-means within {len(sizes)} groups of {within!r} ({sum(ks)} clusters in all) "
                             f"with {algorithm}")
            else:
                console.info(f"plan: k-means within each assigned {within!r} with {algorithm}")
        else:
            console.info(f"plan: k-means over {n} rows x {vectors.shape[1]} dims, k = "
                         f"{cluster.auto_k(n) if k_value is None else k_value} with {algorithm}")
    console.info(f"dry run: no model loaded, nothing written (would write {'stdout' if output == '-' else output})")
