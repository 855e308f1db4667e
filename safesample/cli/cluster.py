"""`safesample cluster`: not built yet; exits 2 rather than pretend to work."""

from __future__ import annotations

from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose,
                                   not_implemented, setup)

NAME = "cluster"
HELP = """Assign harm categories and semantic clusters from the embeddings.

Examples:

  safesample cluster embedded.parquet -o clustered.parquet
"""


def command(input: Input, output: Output = "-", seed: Seed = 0, limit: Limit = None,
            batch_size: BatchSize = 32, dry_run: DryRun = False, quiet: Quiet = False,
            verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    not_implemented(NAME)
