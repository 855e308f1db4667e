"""`safesample cluster`: harm categories (kept, or assigned from a reference) and semantic clusters."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose,
                                   check_output, load, print_plan, read, save, setup)

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
    from safesample.console import CONSOLE

    options = cluster.ClusterOptions(
        reference=reference, reference_col=reference_col, reference_text=reference_text, threshold=threshold,
        within=within, k=cluster.parse_k(k), algorithm=cluster.choose_algorithm(algorithm),
        clusters=not no_clusters, model=model, backend=backend, batch_size=batch_size, cache=not no_cache,
        seed=seed)
    cluster.validate(options)
    if not dry_run:
        check_output(output)
    table = load(input, limit)
    ref_table = read(reference) if reference is not None else None
    if dry_run:
        print_plan(cluster.plan(table, options, reference=ref_table, reporter=CONSOLE)
                   + [f"would write {'stdout' if output == '-' else output}"])
        return
    result = cluster.cluster_table(table, options, reference=ref_table, reporter=CONSOLE)
    save(result.table, output, NAME, {"reference": reference, "reference_col": reference_col,
                                      "reference_text": reference_text, "threshold": threshold, "within": within,
                                      "k": k, "algorithm": options.algorithm, "clusters": not no_clusters,
                                      "limit": limit},
         seed=seed, models=result.models, inputs=[input] + ([reference] if reference else []))
