"""The fine-tune's data: training rows -> TRL prompt/completion examples, and the validation split.

A row needs `instruction` and `output` (or `response`); `input` is used when present (Alpaca
style) and `source` marks the safety rows `safesample mix` added. The prompts are written by
`safesample.prompting` (the Alpaca template, or chat messages for the tokenizer's template).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safesample.errors import DataError, UsageError
from safesample.finetune.options import COMMAND
from safesample.prompting import TRAINING_TEMPLATES as TEMPLATES
from safesample.prompting import alpaca_prompt, chat_text

if TYPE_CHECKING:
    import pyarrow as pa

SAFETY_SOURCE = "safety"


@dataclass
class Examples:
    """Training rows turned into TRL prompt/completion examples."""

    ids: list[str]
    prompts: list[Any]  # strings (alpaca) or message lists (chat)
    completions: list[Any]
    is_safety: list[bool]

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self) -> str:
        h = hashlib.sha256()
        for row in zip(self.ids, self.prompts, self.completions):
            h.update(json.dumps(row, ensure_ascii=False).encode())
        return h.hexdigest()[:16]


def _column(table: "pa.Table", name: str) -> list:
    return table.column(name).to_pylist()


def build_examples(table: "pa.Table", template: str) -> Examples:
    """Rows with `instruction`, `output` (or `response`) and optional `input`, `source`."""
    from safesample.schema import require

    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}", f"use one of: {', '.join(TEMPLATES)}")
    answer = "output" if "output" in table.column_names or "response" not in table.column_names \
        else "response"
    require(table, ["id", "instruction", answer], COMMAND)
    if "input" in table.column_names:
        require(table, ["input"], COMMAND)
    ids = [str(v) for v in _column(table, "id")]
    instructions = _column(table, "instruction")
    outputs = _column(table, answer)
    inputs = _column(table, "input") if "input" in table.column_names else [None] * len(ids)
    sources = _column(table, "source") if "source" in table.column_names else [None] * len(ids)
    if not ids:
        raise DataError("the training table has no rows", "check the input; `safesample mix` writes it")
    _refuse_blank(ids, instructions, "instruction")
    _refuse_blank(ids, outputs, answer)
    if template == "alpaca":
        prompts: list[Any] = [alpaca_prompt(i, x) for i, x in zip(instructions, inputs)]
        completions: list[Any] = list(outputs)
    else:
        prompts = [[{"role": "user", "content": chat_text(i, x)}] for i, x in zip(instructions, inputs)]
        completions = [[{"role": "assistant", "content": o}] for o in outputs]
    return Examples(ids, prompts, completions, [s == SAFETY_SOURCE for s in sources])


def _refuse_blank(ids: list[str], values: list, name: str) -> None:
    bad = [i for i, v in zip(ids, values) if not isinstance(v, str) or not v.strip()]
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} of {len(ids)} training rows have an empty or missing "
                        f"{name!r} (ids: {shown})",
                        f"drop or fill those rows first; a model trained on empty {name}s learns "
                        "to answer nothing")


def split_validation(examples: Examples, val_size: float, include_safety: bool,
                     seed: int) -> tuple[list[int], list[int]]:
    """Row indices for training and validation.

    Safety rows stay in training unless `include_safety` (the paper's trainer drew its
    validation split from the whole mixture, so about 10 % of its safety rows were never
    trained on).
    """
    import numpy as np

    n = len(examples)
    if val_size < 0:
        raise UsageError("--val-size must be >= 0", "pass a fraction such as 0.1 or a row count")
    if val_size == 0:
        return list(range(n)), []
    pool = [i for i in range(n) if include_safety or not examples.is_safety[i]]
    want = int(round(val_size * n)) if val_size < 1 else int(val_size)
    want = max(1, want)
    if want >= len(pool):
        raise UsageError(f"--val-size {val_size:g} asks for {want} validation rows, but only "
                         f"{len(pool)} rows can be held out",
                         "pass a smaller --val-size" + ("" if include_safety else
                                                        " (safety rows stay in training)"))
    rng = np.random.default_rng(seed)
    val = sorted(rng.choice(pool, size=want, replace=False).tolist())
    held = set(val)
    return [i for i in range(n) if i not in held], val


def dataset(examples: Examples, rows: list[int]):
    """The rows of `examples` as a `datasets.Dataset` of prompt/completion pairs (what TRL trains on)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [examples.prompts[i] for i in rows],
                              "completion": [examples.completions[i] for i in rows]})
