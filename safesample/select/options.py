"""What to select: the strategies, the budget (rows or a share of the benign set), the behavior mix."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from safesample.behavior import BEHAVIORS
from safesample.errors import UsageError

STRATEGIES = ("random", "stratified", "prototype", "similarity", "diverse", "targeted")
# What `diverse` picks when no --behavior is given: the behaviors of a good safety example.
SAFE_BEHAVIORS = ("refusal", "explanation")
EMBEDDING_STRATEGIES = ("prototype", "similarity", "diverse", "targeted")
RANDOM_DRAWS = 10
NO_CATEGORY = "(none)"
ALL_BEHAVIORS = "(all)"


def parse_budget(spec: str, of_rows: int | None = None) -> int:
    """`100` -> 100 rows; `0.5%` -> 0.5 % of `of_rows` (the benign set), rounded half up."""
    text = str(spec).strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            share = math.nan
        if not math.isfinite(share) or share <= 0:
            raise UsageError(f"bad --budget {spec!r}: a percentage must be a positive number",
                             "write e.g. --budget 0.5% --of benign.parquet, or a row count: --budget 100")
        if of_rows is None:
            raise UsageError(f"--budget {spec} is a share of the benign set, but no --of was given",
                             "add --of benign.parquet (the paper: 0.5% of 20,000 benign rows = 100)")
        rows = math.floor(share / 100 * of_rows + 0.5)
        if rows < 1:
            raise UsageError(f"--budget {spec} of {of_rows} benign rows is less than one row",
                             "use a larger share or a row count")
        return rows
    if of_rows is not None:
        raise UsageError("--of only applies to a percentage budget",
                         f"write --budget {text}% to take a share of the --of table, or drop --of")
    if not re.fullmatch(r"\+?\d+", text) or int(text) < 1:
        raise UsageError(f"bad --budget {spec!r}: expected a positive row count or a percentage",
                         "e.g. --budget 100, or --budget 0.5% --of benign.parquet")
    return int(text)


def parse_behavior(spec: str | None) -> dict[str, float] | None:
    """`refusal` or `refusal,explanation` (equal shares) or `refusal=0.7,explanation=0.3`."""
    if spec is None or not spec.strip():
        return None
    hint = ("e.g. --behavior refusal, or --behavior refusal=0.7,explanation=0.3; behaviors: "
            + ", ".join(BEHAVIORS))
    weights: dict[str, float] = {}
    parts = [p.strip() for p in spec.split(",")]
    with_weights = ["=" in p for p in parts]
    if any(with_weights) and not all(with_weights):
        raise UsageError(f"bad --behavior {spec!r}: give a weight to every behavior or to none", hint)
    for part in parts:
        name, _, raw = part.partition("=")
        name = name.strip()
        if name not in BEHAVIORS:
            raise UsageError(f"bad --behavior {spec!r}: unknown behavior {name!r}", hint)
        if name in weights:
            raise UsageError(f"bad --behavior {spec!r}: {name!r} is listed twice", hint)
        try:
            weight = float(raw) if raw else 1.0
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight <= 0:
            raise UsageError(f"bad --behavior {spec!r}: the weight of {name!r} must be a positive number",
                             hint)
        weights[name] = weight
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


@dataclass
class SelectOptions:
    """A selection: `budget` rows with `strategy`; see `safesample.select`."""

    budget: int
    strategy: str = "diverse"
    behavior: dict[str, float] | None = None  # behavior -> share (`parse_behavior`); None: the default
    category_col: str = "category"
    dedup: float | None = 0.95  # cosine at which a pick is a near duplicate; None: keep duplicates
    keep_harmful: bool = False
    exclude_threshold: float = 0.9  # cosine at which a row matches an evaluation prompt
    seed: int = 0
    random_draws: int = RANDOM_DRAWS  # random baselines in the coverage report
    batch_size: int = 64  # for embedding evaluation prompts that come without embeddings
    # --contrast: benign look-alikes per safety pick, on top of the budget or within it, and the
    # weight of the lexical signal (0: cosine alone); see `safesample.select.contrast`.
    contrast_share: float = 0.5
    contrast_within_budget: bool = False
    contrast_lexical: float = 0.0
    # --strategy targeted: how many of the --against table's riskiest rows are targets (N or P%).
    against_top: str = "10%"
