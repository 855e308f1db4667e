"""Quotas: how many picks each behavior x category group gets, and filling them pick by pick."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from safesample.select.acceptor import Acceptor
    from safesample.select.pool import Pool

Pick = tuple[int, str]  # (position, reason)


def allocate(total: int, caps: Sequence[int] | np.ndarray, weights: Sequence[float] | None = None,
             taken_elsewhere: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Split `total` units over groups in proportion to `weights`, none above its cap.

    Water-filling: a group that cannot take its share gives all it has and the rest is shared
    among the others; integer shares by largest remainder, ties to the group that has had fewer
    units elsewhere (`taken_elsewhere`: the same category under another behavior), then to the one
    with more room, then the earlier group. Returns at most sum(caps) units in all.
    """
    caps = np.asarray(caps, dtype=np.int64)
    elsewhere = np.zeros(len(caps)) if taken_elsewhere is None else np.asarray(taken_elsewhere, dtype=float)
    w = np.ones(len(caps)) if weights is None else np.asarray(weights, dtype=float)
    alloc = np.zeros(len(caps), dtype=np.int64)
    active = (caps > 0) & (w > 0)
    remaining = int(min(total, caps[active].sum()))
    while remaining > 0 and active.any():
        ids = np.flatnonzero(active)
        share = remaining * w[ids] / w[ids].sum()
        room = caps[ids] - alloc[ids]
        full = room <= share + 1e-9
        if full.any():
            alloc[ids[full]] = caps[ids[full]]
            remaining -= int(room[full].sum())
            active[ids[full]] = False
            continue
        base = np.floor(share + 1e-9).astype(np.int64)
        alloc[ids] += base
        left = remaining - int(base.sum())
        frac = np.round(share - base, 9)
        order = sorted(range(len(ids)), key=lambda i: (-frac[i], elsewhere[ids[i]], -room[i], ids[i]))
        for i in order[:left]:
            alloc[ids[i]] += 1
        remaining = 0
    return alloc


def allocate_nested(total: int, caps: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Quotas over behavior x category: behaviors by weight, then categories equally. When a
    behavior's share is smaller than its categories, its odd units go first to categories the
    earlier behaviors left out, so a small budget covers as many categories as it can (8 rows over
    2 behaviors x 13 categories: 8 categories, not the 4 largest twice)."""
    if not len(caps):
        return np.zeros_like(caps)
    per_behavior = allocate(total, caps.sum(axis=1), weights)
    rows, covered = [], np.zeros(caps.shape[1], dtype=np.int64)
    for b, n in enumerate(per_behavior):
        rows.append(allocate(int(n), caps[b], taken_elsewhere=covered))
        covered += rows[-1]
    return np.stack(rows)


def group_caps(pool: Pool) -> np.ndarray:
    caps = np.zeros((len(pool.behaviors), len(pool.categories)), dtype=np.int64)
    np.add.at(caps, (pool.beh, pool.cat), 1)
    return caps


def fill_quotas(pool: Pool, budget: int, weights: list[float], acceptor: Acceptor,
                 make: Callable[[int, int], Iterator[Pick]], by_category: bool = True) -> list[Pick]:
    """Fill quotas over behavior (x category) groups, pick by pick, re-sharing any shortfall.

    Groups are served round-robin, one pick each per turn, so `select_rank` interleaves them
    and the first k ranks of a selection are themselves balanced.
    """
    caps = group_caps(pool) if by_category else group_caps(pool).sum(axis=1, keepdims=True)
    shape = caps.shape
    flat_caps = caps.ravel()
    taken = np.zeros_like(flat_caps)
    exhausted = np.zeros(len(flat_caps), dtype=bool)
    pickers: dict[int, Iterator[Pick]] = {}
    picks: list[Pick] = []
    while len(picks) < budget:
        limit = np.where(exhausted, taken, flat_caps).reshape(shape)
        want = np.maximum(allocate_nested(budget, limit, weights).ravel() - taken, 0)
        if not want.any():
            break
        while want.any() and len(picks) < budget:
            for g in np.flatnonzero(want):
                if len(picks) >= budget:
                    break
                if g not in pickers:
                    b, c = divmod(int(g), shape[1])
                    pickers[g] = make(b, c if by_category else None)
                pick = next(pickers[g], None)
                if pick is None:
                    exhausted[g] = True
                    want[g] = 0
                    continue
                acceptor.take(pick[0])
                picks.append(pick)
                taken[g] += 1
                want[g] -= 1
    return picks
