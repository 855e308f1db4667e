"""`safesample mix`: not built yet; exits 2 rather than pretend to work."""

from __future__ import annotations

from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose,
                                   not_implemented, setup)

NAME = "mix"
HELP = """Mix the selected safety rows into the benign fine-tuning set.

Examples:

  safesample mix benign.parquet picked.parquet -o train.parquet
"""


def command(input: Input, output: Output = "-", seed: Seed = 0, limit: Limit = None,
            batch_size: BatchSize = 32, dry_run: DryRun = False, quiet: Quiet = False,
            verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    not_implemented(NAME)
