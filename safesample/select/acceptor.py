"""The acceptor: whether a candidate may join the selection, decided pick by pick against the
picks so far (duplicates) and the evaluation prompts (decontamination)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from safesample.select.exclusions import Exclusions, normalise

if TYPE_CHECKING:
    from safesample.select.pool import Pool


class Acceptor:
    """Decides, pick by pick, whether a candidate may join: not taken, not an exact duplicate
    (normalised text) or near duplicate (cosine) of an earlier pick, not matching an evaluation
    prompt by text or by cosine. Rejected candidates are never considered again."""

    def __init__(self, pool: Pool, budget: int, dedup: float | None, exclusions: Exclusions | None):
        self.pool = pool
        self.taken = np.zeros(len(pool), dtype=bool)
        self.picked: list[int] = []
        self.dedup = dedup if pool.emb is not None else None
        self.exact = dedup is not None and pool.texts is not None
        self.eval_keys = exclusions.keys() if exclusions is not None and pool.texts is not None else set()
        self.eval = exclusions.embeddings if exclusions is not None and pool.emb is not None else None
        self.eval_threshold = exclusions.threshold if exclusions is not None else 1.0
        self.seen: set[str] = set()
        self._key: tuple[int, str | None] = (-1, None)
        dim = pool.emb.dim if pool.emb is not None else 0
        self.vecs = np.empty((budget, dim), dtype=np.float32)
        self.rejected = {"exact_duplicate": 0, "eval_exact": 0, "near_duplicate": 0, "eval_similar": 0}

    def _reject(self, pos: int, why: str) -> bool:
        self.taken[pos] = True
        self.rejected[why] += 1
        return False

    def ok(self, pos: int) -> bool:
        if self.taken[pos]:
            return False
        if self.exact or self.eval_keys:
            text = self.pool.texts[pos]
            key = normalise(text) if text else None
            self._key = (pos, key)
            if key is not None and key in self.eval_keys:
                return self._reject(pos, "eval_exact")
            if key is not None and self.exact and key in self.seen:
                return self._reject(pos, "exact_duplicate")
        if self.pool.emb is None or (self.eval is None and self.dedup is None):
            return True
        vec = self.pool.emb[pos]
        self._vec = (pos, vec)
        if self.eval is not None and len(self.eval) and float((self.eval @ vec).max()) >= self.eval_threshold:
            return self._reject(pos, "eval_similar")
        n = len(self.picked)
        if self.dedup is not None and n and float((self.vecs[:n] @ vec).max()) >= self.dedup:
            return self._reject(pos, "near_duplicate")
        return True

    def take(self, pos: int) -> None:
        self.taken[pos] = True
        if self.pool.emb is not None:
            cached = getattr(self, "_vec", (-1, None))
            self.vecs[len(self.picked)] = cached[1] if cached[0] == pos else self.pool.emb[pos]
        if self.exact:
            key = self._key[1] if self._key[0] == pos else normalise(self.pool.texts[pos] or "")
            if key:
                self.seen.add(key)
        self.picked.append(pos)
