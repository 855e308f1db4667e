"""The options of the `cluster` stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClusterOptions:
    reference: str | None = None  # the reference table's name (its path), for messages
    reference_col: str | None = None  # its category column [category_coarse, else category]
    reference_text: str | None = None  # what to embed of a reference without usable embeddings
    threshold: float = 0.15
    within: str | None = None
    k: int | None = None  # per group; None: auto_k
    algorithm: str = "sklearn"  # a choice of `choose_algorithm`
    clusters: bool = True  # False: categories only
    model: str | None = None  # embeds the reference [default: the pool's model]
    backend: str | None = None
    batch_size: int = 64
    cache: bool = True
    seed: int = 0
