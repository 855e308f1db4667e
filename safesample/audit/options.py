"""The audit stage's options and the checks on them that need neither a table nor a model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from safesample.errors import UsageError
from safesample.prompting import TRAINING_TEMPLATES

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
DTYPES = ("auto", "float32", "bfloat16")
# Column roles a benign row is read through (`--map COLUMN=ROLE` points a role at a column).
ROLES = ("instruction", "input", "output", "response")


@dataclass
class AuditOptions:
    model: str = DEFAULT_MODEL
    anchors: str | None = None  # a labelled table; None: the bundled default set
    layer: int | None = None  # None: chosen by cross-validated AUROC on the anchors
    template: str = "chat"  # as `finetune --template` would train on the rows
    max_tokens: int = 256  # cut like finetune's --max-length (TRL keep_start)
    truncate: bool = True  # False: a longer row is an audit_error instead of being cut
    dtype: str = "auto"  # bfloat16 on CPUs and GPUs that compute it natively, else float32
    batch_size: int = 8
    drop_top: str | None = None  # "K" rows or "P%" of the scored rows
    columns: dict[str, str] = field(default_factory=dict)  # role -> the column that holds it
    seed: int = 0  # which anchors are held out for the layer choice (a hash of seed and instruction)
    cache: bool = True
    whole_table: bool = True  # False: per-row columns only (a batch of an executor; `finish` does the rest)
    flagged: str | None = None  # where the CLI writes the dropped rows (recorded in the provenance)
    # set by `prepare` (a `direction.Direction`; typed Any so this module imports nothing of the
    # stage): every batch scores with the same direction
    direction: Any = None


def check(options: AuditOptions) -> None:
    """Option values that are wrong whatever the input."""
    if options.template not in TRAINING_TEMPLATES:
        raise UsageError(f"unknown --template {options.template!r}",
                         f"use one of: {', '.join(TRAINING_TEMPLATES)} (what `safesample finetune` trains with)")
    if options.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {options.dtype!r}", "use one of: " + ", ".join(DTYPES))
    if options.max_tokens < 8:
        raise UsageError(f"--max-tokens {options.max_tokens} is too small",
                         "pass the fine-tune's --max-length (finetune's default: 256)")
    if options.batch_size < 1:
        raise UsageError("--batch-size must be at least 1", "e.g. --batch-size 8")
    if options.layer is not None and options.layer < 1:
        raise UsageError(f"--layer {options.layer} is out of range", "layers count from 1 (the first "
                         "decoder layer); leave --layer out to choose one on the anchors")
    for role, column in options.columns.items():
        if role not in ROLES:
            raise UsageError(f"--map {column}={role}: {role!r} is not a column audit reads",
                             f"map to one of: {', '.join(ROLES)}")
    if options.drop_top is not None:
        drop_spec(options.drop_top)


def drop_spec(spec: str) -> tuple[float, bool]:
    """`--drop-top 50` -> (50, False); `--drop-top 5%` -> (5.0, True)."""
    text = spec.strip()
    percent = text.endswith("%")
    try:
        value = float(text[:-1]) if percent else int(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or (percent and value >= 100):
        raise UsageError(f"bad --drop-top {spec!r}: expected a row count such as 50 or a share such as 5%",
                         "the share is of the rows that get a score, below 100%")
    return value, percent


def drop_count(spec: str, scored: int) -> int:
    """How many top rows `--drop-top` drops from `scored` rows (a share rounds up: 5% of 10 is 1)."""
    value, percent = drop_spec(spec)
    if percent:
        return min(scored, math.ceil(value * scored / 100 - 1e-9))
    return int(value)
