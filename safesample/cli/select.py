"""`safesample select`: not built yet; exits 2 rather than pretend to work."""

from __future__ import annotations

from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose,
                                   not_implemented, setup)

NAME = "select"
HELP = """Select a budget of safety examples: behavior-aware and diverse across harm categories.

Examples:

  safesample select clustered.parquet --budget 100 -o picked.parquet
"""


def command(input: Input, output: Output = "-", seed: Seed = 0, limit: Limit = None,
            batch_size: BatchSize = 32, dry_run: DryRun = False, quiet: Quiet = False,
            verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    not_implemented(NAME)
