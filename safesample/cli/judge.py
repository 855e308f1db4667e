"""`safesample judge`: not built yet; exits 2 rather than pretend to work."""

from __future__ import annotations

from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose,
                                   not_implemented, setup)

NAME = "judge"
HELP = """Generate a model's responses to evaluation prompts and score their safety.

Examples:

  safesample judge eval.parquet --model runs/lora-0 -o judged.parquet
"""


def command(input: Input, output: Output = "-", seed: Seed = 0, limit: Limit = None,
            batch_size: BatchSize = 32, dry_run: DryRun = False, quiet: Quiet = False,
            verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    not_implemented(NAME)
