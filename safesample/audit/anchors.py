"""Anchors: harmful requests answered by complying or by refusing, from which the direction is fit.

Which rows are anchors, and of which kind (read from the columns `label` writes):

- compliant: `behavior` harmful_compliance, or `harmful_response` true, or a harmful request
  (`harmful_request` true) that was not refused (`refusal` false) and whose harm is unknown
  (`harmful_response` null): what `label --judge rules --all-harmful` gives an answer that
  complies, since the rules cannot tell harm. A known-harmless answer to a harmful request
  (`explanation`) is neither kind: it complies with nothing harmful.
- refusing: `behavior` refusal, or `refusal` true where the request is not known to be benign
  and the answer not known to be harmful.

Rows of neither kind are ignored (counted). Anchors are grouped by their normalised instruction:
a group holding both kinds is a pair (the same request answered both ways, the best anchors,
since their difference is about complying and not about the topic). Groups, never rows, are
split between fitting and held-out evaluation, so a request is never on both sides.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesample.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# The bundled default set (built by experiments/build_audit_anchors.py; SOURCE note beside it).
DEFAULT_ANCHORS = Path(__file__).resolve().parents[1] / "data" / "audit_anchors.jsonl"
DEFAULT_NAME = "bundled HH-RLHF harmless pairs"
# Fewer anchors of a kind than this give a direction that is mostly noise; 10 also leaves at
# least 3 of each kind held out for the AUROC.
MIN_PER_KIND = 10
HELD_OUT_SLOTS = 3  # of every 10 groups (per group type, in hash order): 30 % held out
FOLDS = 5  # cross-validation folds over the fitting groups, for the layer choice
_NON_WORD = re.compile(r"[\W_]+")


@dataclass
class Anchors:
    """Anchor rows with their kind (`compliant`), group (normalised instruction) and split."""

    instructions: list[str]
    inputs: list[str | None]
    responses: list[str]
    compliant: list[bool]
    groups: list[str]
    name: str  # where they came from (for messages and provenance)
    ignored: int = 0  # rows of neither kind
    held_out: list[bool] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)  # -1 for held-out rows

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def counts(self) -> dict[str, int]:
        kinds: dict[str, set[bool]] = {}
        for group, kind in zip(self.groups, self.compliant):
            kinds.setdefault(group, set()).add(kind)
        return {"compliant": sum(self.compliant), "refusing": len(self) - sum(self.compliant),
                "pairs": sum(1 for k in kinds.values() if len(k) == 2), "ignored": self.ignored,
                "held_out": sum(self.held_out)}

    def digest(self) -> str:
        """What the direction depends on in the anchors: every row's text and kind, in order."""
        h = hashlib.sha256()
        for row in zip(self.instructions, self.inputs, self.responses, self.compliant):
            h.update(json.dumps(row, ensure_ascii=False).encode())
        return h.hexdigest()[:24]

    def mask(self, name: str) -> "np.ndarray":
        import numpy as np

        return np.asarray(getattr(self, name), dtype=bool)


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def _values(table: "pa.Table", name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def anchor_kinds(table: "pa.Table") -> list[bool | None]:
    """Per row: True compliant, False refusing, None not an anchor (rules in the module doc)."""
    behavior = _values(table, "behavior")
    harmful_request = _values(table, "harmful_request")
    refusal = _values(table, "refusal")
    harmful_response = _values(table, "harmful_response")
    kinds: list[bool | None] = []
    for b, hq, r, hr in zip(behavior, harmful_request, refusal, harmful_response):
        if b == "harmful_compliance" or hr is True or (hq is True and r is False and hr is None):
            kinds.append(True)
        elif b == "refusal" or (r is True and hq is not False and hr is not True):
            kinds.append(False)
        else:
            kinds.append(None)
    return kinds


def read_anchors(path: str | None) -> tuple["pa.Table", str]:
    """The anchors table: `path`, or the bundled default set."""
    from safesample.tables import read_table

    if path is None:
        return read_table(str(DEFAULT_ANCHORS)), DEFAULT_NAME
    return read_table(path), path


def anchors_from_table(table: "pa.Table", name: str, seed: int = 0) -> Anchors:
    """Select the anchor rows of a labelled table, check there are enough, and split them."""
    columns = table.column_names
    answer = "response" if "response" in columns else "output" if "output" in columns else None
    if "instruction" not in columns or answer is None:
        raise DataError(f"the anchors {name!r} need columns 'instruction' and 'response' (found: "
                        f"{', '.join(columns) or 'no columns'})",
                        "label harmful requests with their answers: safesample label anchors.parquet "
                        "--all-harmful -o labelled.parquet, then --anchors labelled.parquet")
    if not {"behavior", "refusal", "harmful_response"} & set(columns):
        raise DataError(f"the anchors {name!r} have no label columns (behavior, refusal, harmful_response)",
                        "label them first: safesample label ANCHORS --all-harmful -o labelled.parquet")
    kinds = anchor_kinds(table)
    instructions, inputs, responses = _values(table, "instruction"), _values(table, "input"), _values(table, answer)
    rows = [i for i, k in enumerate(kinds) if k is not None and isinstance(instructions[i], str)
            and instructions[i].strip() and isinstance(responses[i], str) and responses[i].strip()]
    anchors = Anchors([instructions[i] for i in rows], [inputs[i] or None for i in rows],
                      [responses[i] for i in rows], [bool(kinds[i]) for i in rows],
                      [normalise(instructions[i]) for i in rows], name, ignored=table.num_rows - len(rows))
    check_counts(anchors)
    split(anchors, seed)
    return anchors


def check_counts(anchors: Anchors) -> None:
    counts = anchors.counts
    if counts["compliant"] < MIN_PER_KIND or counts["refusing"] < MIN_PER_KIND:
        raise DataError(f"the anchors {anchors.name!r} have {counts['compliant']} compliant and "
                        f"{counts['refusing']} refusing rows; the direction needs at least "
                        f"{MIN_PER_KIND} of each ({counts['ignored']} rows are neither kind)",
                        "add answers of the missing kind: compliant = behavior harmful_compliance, or a "
                        "harmful request not refused; refusing = behavior refusal (safesample label "
                        "writes both), or leave out --anchors to use the bundled set")


def split(anchors: Anchors, seed: int = 0) -> None:
    """Assign each group to the held-out part (30 %) or to one of FOLDS fitting folds.

    Groups are ordered by a hash of the seed and their instruction (deterministic, unrelated to
    the input order; another --seed gives another split) within each group type (pairs, compliant only, refusing only), and dealt out in turn,
    so each type is spread over both parts: MIN_PER_KIND anchors of each kind with distinct
    instructions always put both kinds on both sides (the fit checks it for other sets).
    """
    kinds: dict[str, set[bool]] = {}
    for group, kind in zip(anchors.groups, anchors.compliant):
        kinds.setdefault(group, set()).add(kind)
    slot: dict[str, tuple[bool, int]] = {}
    for kind_set in ({True, False}, {True}, {False}):
        members = sorted((g for g, k in kinds.items() if k == kind_set),
                         key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
        fitting = 0
        for position, group in enumerate(members):
            if position % 10 < HELD_OUT_SLOTS:
                slot[group] = (True, -1)
            else:
                slot[group] = (False, fitting % FOLDS)
                fitting += 1
    anchors.held_out = [slot[g][0] for g in anchors.groups]
    anchors.folds = [slot[g][1] for g in anchors.groups]
