"""`--strategy targeted`: the safety rows that answer the benign rows `audit` ranks riskiest.

Fine-tuning on a benign row that looks like compliance to a harmful request erodes refusals the
most (`safesample audit`). Its counter-example is a safety row about the same thing: a harmful
request near it, answered safely. So the risky rows are the targets: the top of an audited
table (`--against AUDITED`, its highest `audit_score` rows; `--against-top`, default 10 % of the
rows it scored), embedded with the pool's model (or their own `embedding` column, which must be
of the pool's model and dimension). Picking goes round-robin over the targets in
risk order (the least-served target first, then the riskier), each taking the pool row nearest
to it by cosine that the acceptor allows (no duplicate, no eval prompt): one counter-example per
risky row before any gets a second. It runs inside the category x behavior quotas like every
strategy, so the picks stay spread over harm categories.

Cost: each quota compares its rows with every target once (rows x targets), and sorts a
target's column only when the target's turn comes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from safesample.errors import DataError, UsageError
from safesample.select.quotas import Pick, fill_quotas

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.select.acceptor import Acceptor
    from safesample.select.exclusions import EmbedTexts
    from safesample.select.pool import Pool

DEFAULT_TOP = "10%"


@dataclass
class Targets:
    """The risky benign rows: unit vectors in risk order, their ids and audit ranks."""

    vectors: np.ndarray
    ids: list[str]
    ranks: list[int]
    source: str  # the --against table's name
    answered: int = 0  # targets that got a counter-example (set by `pick_targeted`)


def top_count(spec: str, scored: int) -> int:
    """`--against-top 200` -> 200 rows; `10%` -> 10 % of the scored rows (at least one)."""
    text = str(spec).strip()
    percent = text.endswith("%")
    try:
        value = float(text[:-1]) if percent else int(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or (percent and value > 100):
        raise UsageError(f"bad --against-top {spec!r}: expected a row count such as 200 or a share such as 10%",
                         "the share is of the rows audit scored")
    return max(1, min(scored, math.ceil(value * scored / 100) if percent else int(value)))


def risky_rows(name: str, table: "pa.Table", top: str) -> "pa.Table":
    """The `top` rows of an audited table with the highest audit_score, riskiest first."""
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = [c for c in ("audit_score", "instruction") if c not in table.column_names]
    if missing:
        raise DataError(f"--against {name!r} has no {' or '.join(repr(c) for c in missing)} column",
                        "pass the output of `safesample audit` (run on the benign fine-tuning rows)")
    scored = table.filter(pc.is_valid(table.column("audit_score")))
    if scored.num_rows == 0:
        raise DataError(f"--against {name!r} has no scored row (every audit_score is empty)",
                        "see its audit_error column")
    order = pc.sort_indices(scored, sort_keys=[("audit_score", "descending")])
    risky = scored.take(order).slice(0, top_count(top, scored.num_rows))
    if "id" not in risky.column_names:
        risky = risky.append_column("id", pa.array([str(i) for i in range(risky.num_rows)]))
    return risky


def build_targets(name: str, table: "pa.Table", top: str, embed: "Callable[[], EmbedTexts]") -> Targets:
    """The risky rows' instructions embedded with the pool's model (`embed()`)."""
    from safesample.vectors import unit_rows

    risky = risky_rows(name, table, top)
    if "embedding" in risky.column_names:  # embedded already (the caller checks it is the pool's model)
        from safesample.vectors import embedding_matrix

        vectors = embedding_matrix(risky, name=f"--against {name!r}", unit=True, command="select")
    else:
        texts = risky.column("instruction").to_pylist()
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise DataError(f"--against {name!r}: a risky row has an empty instruction", "fill or drop it")
        vectors = unit_rows(np.asarray(embed()(texts), dtype=np.float32))
    ranks = (risky.column("audit_rank").to_pylist() if "audit_rank" in risky.column_names
             else list(range(1, risky.num_rows + 1)))
    return Targets(vectors, [str(i) for i in risky.column("id").to_pylist()], [int(r) for r in ranks], name)


def pick_targeted(pool: "Pool", budget: int, weights: list[float], acceptor: "Acceptor",
                  targets: Targets) -> list[Pick]:
    """Round-robin over the targets inside each quota; see the module docstring."""
    from safesample.select.strategies import describe, join

    if targets.vectors.shape[1] != pool.emb.dim:
        raise DataError(f"the --against rows were embedded in {targets.vectors.shape[1]} dimensions and the "
                        f"pool in {pool.emb.dim}", "embed both with the same model")
    served = np.zeros(len(targets.ids), dtype=np.int64)  # counter-examples per target, over all quotas

    def make(b: int, c: int | None) -> Iterator[Pick]:
        lo, hi = pool.slice(b, c)
        if hi <= lo:
            return
        sims = pool.emb[lo:hi] @ targets.vectors.T  # [rows of the quota, targets]
        orders: dict[int, Iterator[int]] = {}
        where = describe(pool, b, c)
        live = np.ones(len(targets.ids), dtype=bool)
        while live.any():
            # the least-served target first, the riskier (earlier) of equals
            t = int(np.lexsort((np.arange(len(served)), np.where(live, served, np.iinfo(np.int64).max)))[0])
            if t not in orders:
                orders[t] = iter(np.argsort(-sims[:, t], kind="stable").tolist())
            for i in orders[t]:
                if acceptor.ok(lo + i):
                    served[t] += 1
                    yield lo + i, join(where, f"counter-example to risky benign row {targets.ids[t]} "
                                              f"(audit rank {targets.ranks[t]}), cosine {sims[i, t]:.3f}")
                    break
            else:
                live[t] = False  # this quota has nothing left near it

    picks = fill_quotas(pool, budget, weights, acceptor, make)
    targets.answered = int((served > 0).sum())
    return picks
