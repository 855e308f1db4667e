"""The coverage report: what a selection covers, against random draws of the same budget."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from safesample.select.acceptor import Acceptor
from safesample.select.options import ALL_BEHAVIORS, NO_CATEGORY
from safesample.select.pool import n_distinct
from safesample.select.strategies import random_order

if TYPE_CHECKING:
    from safesample.select.exclusions import Exclusions
    from safesample.select.pool import Plan, Pool


def _random_draw(pool: Pool, budget: int, dedup: float | None, exclusions: Exclusions | None,
                 rng: np.random.Generator) -> np.ndarray:
    """A random draw under the same exclusions as `--strategy random`, with the near-duplicate
    check done a batch of candidates at a time (one Gram matrix, not a product per row)."""
    acc = Acceptor(pool, budget, dedup, exclusions)
    acc.dedup = None  # it checks text and eval prompts row by row; near duplicates are done here
    order = random_order(0, len(pool), rng)
    got: list[int] = []
    near = dedup if pool.emb is not None else None
    kept = np.empty((0, pool.emb.dim if pool.emb is not None else 0), dtype=np.float32)
    while len(got) < budget:
        batch = [pos for pos in itertools.islice(order, 2 * (budget - len(got)) + 16) if acc.ok(pos)]
        if not batch:
            break
        if near is None:
            got.extend(batch[:budget - len(got)])
            continue
        vecs = pool.emb[np.array(batch)]
        against_kept = (vecs @ kept.T).max(axis=1) if len(kept) else np.full(len(batch), -np.inf)
        gram = vecs @ vecs.T
        blocked = against_kept >= near  # too close to a row kept earlier in the draw
        accepted: list[int] = []
        for i, pos in enumerate(batch):
            if len(got) >= budget:
                break
            if blocked[i]:
                continue
            accepted.append(i)
            got.append(pos)
            blocked |= gram[i] >= near
        kept = np.concatenate([kept, vecs[accepted]])
    return np.array(got, dtype=np.int64)


def coverage(pool: Pool, positions: np.ndarray) -> dict[str, Any]:
    """Categories, behaviors and clusters covered by `positions`, and their mean pairwise
    cosine distance (computed on the selection only)."""
    out: dict[str, Any] = {
        "categories": int(len(np.unique(pool.cat[positions]))) if pool.categories != [NO_CATEGORY] else None,
        "behaviors": int(len(np.unique(pool.beh[positions]))) if pool.behaviors != [ALL_BEHAVIORS] else None,
        "clusters": None, "mean_pairwise_distance": None,
    }
    if pool.cluster is not None:
        ids = pool.cluster[positions]
        out["clusters"] = int(len(np.unique(ids[ids >= 0])))
    if pool.emb is not None and len(positions) > 1:
        vecs = pool.emb[positions].astype(np.float64)
        total = vecs.sum(axis=0)
        k = len(positions)
        # mean over pairs i != j of cos = (|sum|^2 - sum |v|^2) / (k (k - 1))
        mean_cos = (total @ total - np.einsum("ij,ij->", vecs, vecs)) / (k * (k - 1))
        out["mean_pairwise_distance"] = round(float(1 - mean_cos), 6)
    return out


def build_report(plan: Plan, strategy: str, budget: int, seed: int, positions: np.ndarray,
            acceptor: Acceptor, draws: int, dedup: float | None,
            exclusions: Exclusions | None) -> dict[str, Any]:
    pool = plan.pool
    available = {
        "categories": n_distinct(pool.cat) if plan.has_category else None,
        "behaviors": n_distinct(pool.beh) if pool.behaviors != [ALL_BEHAVIORS] else None,
        "clusters": n_distinct(pool.cluster) if pool.cluster is not None else None,
    }
    sel = coverage(pool, positions)
    baseline: list[dict[str, Any]] = []
    for k in range(draws):  # random draws from the same candidates under the same exclusions
        got = _random_draw(pool, budget, dedup, exclusions, np.random.default_rng([seed, k + 1]))
        baseline.append(coverage(pool, got))
    random_mean = {key: (round(float(np.mean([b[key] for b in baseline])), 6)
                         if baseline and baseline[0][key] is not None else None)
                   for key in sel}
    counts: dict[str, dict[str, int]] = {}
    for b, c in zip(pool.beh[positions], pool.cat[positions]):
        inner = counts.setdefault(pool.behaviors[b], {})
        inner[pool.categories[c]] = inner.get(pool.categories[c], 0) + 1
    excluded = dict(plan.excluded, **{f"{k}_rejected": v for k, v in acceptor.rejected.items()})
    return {
        "strategy": strategy, "budget": budget, "seed": seed,
        "pool_rows": plan.pool_rows, "candidate_rows": len(pool),
        "pool": {"categories": plan.pool_categories if plan.has_category else None,
                 "behaviors": plan.pool_behaviors, "clusters": plan.pool_clusters},
        "available": available,
        "excluded": excluded,
        "exclude_sources": exclusions.sources if exclusions is not None else [],
        "selection": sel,
        "random": dict(random_mean, draws=draws),
        "counts": counts,
        "notes": plan.notes,
    }


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, selection, random mean, available) rows for a terminal table."""
    sel, rnd, avail = report["selection"], report["random"], report["available"]

    def fmt(value: Any, digits: int = 1) -> str:
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) and not float(value).is_integer() \
            else str(int(value)) if isinstance(value, (int, float)) else str(value)

    rows = []
    for key, label in (("categories", "categories covered"), ("behaviors", "behaviors covered"),
                       ("clusters", "clusters covered")):
        if sel.get(key) is not None:
            rows.append((label, fmt(sel[key]), fmt(rnd.get(key)), fmt(avail.get(key))))
    if sel.get("mean_pairwise_distance") is not None:
        rows.append(("mean pairwise cosine distance", f"{sel['mean_pairwise_distance']:.3f}",
                     f"{rnd['mean_pairwise_distance']:.3f}" if rnd.get("mean_pairwise_distance") is not None else "-",
                     "-"))
    contrast = report.get("contrast")
    if contrast:  # --contrast: the look-alikes, against random rows of the same table
        rows.append(("contrast look-alikes", str(contrast["rows"]), "-", str(contrast["candidate_rows"])))
        rows.append(("mean cosine look-alike to its pick", f"{contrast['mean_cosine']:.3f}",
                     f"{contrast['random_mean_cosine']:.3f}" if contrast.get("random_mean_cosine") is not None
                     else "-", "-"))
    return rows
