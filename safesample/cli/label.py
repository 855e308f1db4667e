"""`safesample label`: not built yet; exits 2 rather than pretend to work."""

from __future__ import annotations

from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose,
                                   not_implemented, setup)

NAME = "label"
HELP = """Label the behavior of each (instruction, response) pair: harmful request, refusal, harmful response.

Examples:

  safesample label pool.parquet -o labeled.parquet
"""


def command(input: Input, output: Output = "-", seed: Seed = 0, limit: Limit = None,
            batch_size: BatchSize = 32, dry_run: DryRun = False, quiet: Quiet = False,
            verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    not_implemented(NAME)
