"""The strategies: each returns [(position, reason)] in pick order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from safesample.select.options import ALL_BEHAVIORS, NO_CATEGORY
from safesample.select.quotas import Pick, allocate, fill_quotas, group_caps

if TYPE_CHECKING:
    from safesample.select.acceptor import Acceptor
    from safesample.select.pool import Pool


def describe(pool: Pool, b: int, c: int | None) -> str:
    parts = []
    if c is not None and pool.categories != [NO_CATEGORY]:
        parts.append(f"category={pool.categories[c]}")
    if pool.behaviors != [ALL_BEHAVIORS]:
        parts.append(f"behavior={pool.behaviors[b]}")
    return ", ".join(parts)


def join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def random_order(lo: int, hi: int, rng: np.random.Generator) -> Iterator[int]:
    """Positions lo..hi-1 in a seeded random order, lazily: a big range is sampled (repeats
    skipped) rather than permuted, since a draw of 200 from 1,000,000 needs a few hundred."""
    n = hi - lo
    if n <= 1 << 16:
        yield from (lo + rng.permutation(n)).tolist()
        return
    seen: set[int] = set()
    for _ in range(16):
        for pos in rng.integers(lo, hi, 4096).tolist():
            if pos not in seen:
                seen.add(pos)
                yield pos
    # Only after 65,536 draws (a heavily excluded pool): the rest in a full random order.
    for pos in (lo + rng.permutation(n)).tolist():
        if pos not in seen:
            yield pos


def _pick_random(pool: Pool, budget: int, weights: list[float], acceptor: Acceptor,
                 rng: np.random.Generator) -> list[Pick]:
    def make(b: int, c: int | None) -> Iterator[Pick]:
        lo, hi = pool.slice(b)
        where = describe(pool, b, None)
        reason = join(where, f"random draw ({'within the behavior quota' if where else 'uniform over the pool'})")
        for pos in random_order(lo, hi, rng):
            if acceptor.ok(int(pos)):
                yield int(pos), reason

    return fill_quotas(pool, budget, weights, acceptor, make, by_category=False)


def _pick_stratified(pool: Pool, budget: int, weights: list[float], acceptor: Acceptor,
                     rng: np.random.Generator) -> list[Pick]:
    """The paper's stratified sampling: k = n // #categories per category, smallest category
    first, random within; the remainder a random fill from the candidates left."""
    caps = group_caps(pool)
    shares = allocate(budget, caps.sum(axis=1), weights)
    picks: list[Pick] = []

    def draw(lo: int, hi: int, count: int, reason: Callable[[int], str]) -> int:
        got = 0
        for pos in random_order(lo, hi, rng):
            if got >= count or len(picks) >= budget:
                break
            if acceptor.ok(int(pos)):
                acceptor.take(int(pos))
                picks.append((int(pos), reason(int(pos))))
                got += 1
        return got

    def fill_reason(pos: int) -> str:
        return join(describe(pool, int(pool.beh[pos]), int(pool.cat[pos])), "stratified: random fill")

    for b, share in enumerate(shares):
        present = [c for c in range(len(pool.categories)) if caps[b, c]]  # smallest first
        if not present or not share:
            continue
        k = int(share) // len(present)
        got = 0
        for c in present:
            lo, hi = pool.slice(b, c)
            text = join(describe(pool, b, c), f"stratified: {k} per category of {len(present)}, random within")
            got += draw(lo, hi, k, lambda pos, text=text: text)
        lo, hi = pool.slice(b)
        draw(lo, hi, int(share) - got, fill_reason)  # the behavior's remainder
    if len(picks) < budget:  # shortfalls of one behavior go to any candidate left
        draw(0, len(pool), budget - len(picks), fill_reason)
    return picks


def _ranked(pool: Pool, budget: int, weights: list[float], acceptor: Acceptor,
            score: Callable[[int, int, int, int], np.ndarray], what: str) -> list[Pick]:
    def make(b: int, c: int | None) -> Iterator[Pick]:
        lo, hi = pool.slice(b, c)
        scores = score(lo, hi, b, c)
        order = np.argsort(-scores, kind="stable")
        where = describe(pool, b, c)
        for n, i in enumerate(order, 1):
            pos = lo + int(i)
            if acceptor.ok(pos):
                yield pos, join(where, f"{_ordinal(n)} {what} ({scores[i]:.3f})")

    return fill_quotas(pool, budget, weights, acceptor, make)


def _pick_prototype(pool: Pool, budget: int, weights: list[float], acceptor: Acceptor,
                    rng: np.random.Generator) -> list[Pick]:
    pool.emb.materialize()  # every candidate is scored

    def score(lo: int, hi: int, b: int, c: int) -> np.ndarray:
        vecs = pool.emb[lo:hi]
        centroid = vecs.mean(axis=0)
        norm = float(np.linalg.norm(centroid))
        return vecs @ (centroid / norm if norm > 0 else centroid)

    return _ranked(pool, budget, weights, acceptor, score, "closest to the category centroid, cosine")


def _pick_similarity(pool: Pool, budget: int, weights: list[float], acceptor: Acceptor,
                     rng: np.random.Generator) -> list[Pick]:
    given = pool.cat_score is not None and not np.isnan(pool.cat_score).all()
    if not given:
        pool.emb.materialize()  # every candidate is scored
    means: dict[int, np.ndarray] = {}

    def score(lo: int, hi: int, b: int, c: int) -> np.ndarray:
        if given:
            return np.nan_to_num(pool.cat_score[lo:hi], nan=-np.inf)
        if c not in means:  # the category's own rows, across behaviors: its reference set
            rows = np.flatnonzero(pool.cat == c)
            means[c] = pool.emb[rows].mean(axis=0)
        return pool.emb[lo:hi] @ means[c]

    what = ("most similar to the category reference, category_score" if given
            else "most similar to the category's rows, mean cosine")
    return _ranked(pool, budget, weights, acceptor, score, what)


FARTHEST_SAMPLE = 20_000  # farthest-first scans at most this many rows of one cluster
CENTRAL_CORE = 64  # a cluster's first pick: among this many of its most central rows


def _pick_diverse(pool: Pool, budget: int, weights: list[float], acceptor: Acceptor,
                  rng: np.random.Generator) -> list[Pick]:
    """Quotas over category x behavior; inside each quota a round-robin over its semantic
    clusters (the cluster least covered by the whole selection first, then the larger), and
    inside a cluster farthest-first: the row farthest from the picks already in that cluster
    (from any quota). A cluster's first pick is, of its CENTRAL_CORE rows nearest the
    centroid, the one farthest from every pick so far (the very first pick: the most central).

    Comparing a row with the picks of its own cluster only keeps the cost at about
    rows x picks-per-cluster (not rows x budget): the clusters already keep the picks apart.
    Distances are brought up to date lazily, when a cluster's turn comes, as one matrix product
    with the cluster's picks made since its last turn. A cluster (or a quota without clusters)
    larger than FARTHEST_SAMPLE rows scans a seeded sample of that many rows.
    """
    cluster_picks: dict[Any, list[np.ndarray]] = {}  # vectors picked per cluster, over all quotas
    minor = pool.cluster if pool.cluster is not None else np.zeros(len(pool), dtype=np.int64)
    cells = 1 + np.count_nonzero((np.diff(pool.key) != 0) | (np.diff(minor) != 0)) if len(pool) else 0
    if 2 * budget > cells:  # most clusters get scanned, some revisited: gather all vectors once
        pool.emb.materialize()

    def make(b: int, c: int | None) -> Iterator[Pick]:
        lo, hi = pool.slice(b, c)
        where = describe(pool, b, c)
        ids = pool.cluster[lo:hi] if pool.cluster is not None else np.full(hi - lo, -1, dtype=np.int64)
        cuts = np.flatnonzero(np.diff(ids)) + 1  # positions are sorted by cluster within a group
        state = []
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, hi - lo]):
            u = int(ids[s])
            state.append({"id": u, "key": u if u >= 0 else ("quota", b, c), "s": int(s), "e": int(e),
                          "hits": 0, "open": True, "cand": None})
        while True:
            open_ = [st for st in state if st["open"]]
            if not open_:
                return
            st = min(open_, key=lambda t: (t["hits"], len(cluster_picks.get(t["key"], ())), t["s"] - t["e"],
                                           t["id"]))
            s, e = st["s"], st["e"]
            if st["cand"] is None:
                n = e - s
                st["cand"] = lo + (np.arange(s, e) if n <= FARTHEST_SAMPLE else
                                   np.sort(s + rng.choice(n, FARTHEST_SAMPLE, replace=False)))
                st["mind"] = np.full(len(st["cand"]), np.inf, dtype=np.float32)
                st["live"] = np.ones(len(st["cand"]), dtype=bool)
                st["seen"] = 0
            chosen, how = None, ""
            earlier = cluster_picks.setdefault(st["key"], [])
            if not earlier:
                dist = pool.cluster_dist[st["cand"]] if pool.cluster_dist is not None and st["id"] >= 0 else None
                if dist is None or np.isnan(dist).all():
                    members = pool.emb[st["cand"]]
                    dist = -(members @ members.mean(axis=0))
                order = np.argsort(np.nan_to_num(dist, nan=np.inf), kind="stable")
                picked = len(acceptor.picked)
                if picked:
                    # Among the cluster's most central rows, the one farthest from every pick
                    # so far: representative of its cluster, and away from the rest.
                    core = order[:CENTRAL_CORE]
                    far = (1 - pool.emb[st["cand"][core]] @ acceptor.vecs[:picked].T).min(axis=1)
                    order = np.r_[core[np.argsort(-far, kind="stable")], order[CENTRAL_CORE:]]
                for j in order:
                    if not st["live"][j]:
                        continue
                    st["live"][j] = False
                    if acceptor.ok(int(st["cand"][j])):
                        chosen = int(st["cand"][j])
                        how = ("nearest to centroid" if not picked else
                               f"of the {min(CENTRAL_CORE, len(order))} most central, farthest from earlier picks")
                        break
            else:
                if st["seen"] < len(earlier):
                    new = np.stack(earlier[st["seen"]:])
                    np.minimum(st["mind"], (1 - pool.emb[st["cand"]] @ new.T).min(axis=1), out=st["mind"])
                    st["seen"] = len(earlier)
                while st["live"].any():
                    j = int(np.argmax(np.where(st["live"], st["mind"], -np.inf)))
                    st["live"][j] = False
                    if acceptor.ok(int(st["cand"][j])):
                        chosen = int(st["cand"][j])
                        scope = "in the cluster" if st["id"] >= 0 else "in the quota"
                        how = f"farthest from earlier picks {scope} (cosine distance {float(st['mind'][j]):.3f})"
                        break
            if chosen is None:
                st["open"] = False
                continue
            st["hits"] += 1
            earlier.append(pool.emb[chosen])
            label = f"cluster {st['id']} of {pool.n_clusters}" if st["id"] >= 0 and pool.n_clusters else ""
            yield chosen, join(where, label, how)

    return fill_quotas(pool, budget, weights, acceptor, make)


STRATEGY_FUNCTIONS = {"random": _pick_random, "stratified": _pick_stratified, "prototype": _pick_prototype,
             "similarity": _pick_similarity, "diverse": _pick_diverse}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
