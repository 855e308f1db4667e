"""Benign training sets cut from an audited pool (data preparation only), He et al.'s protocol.

From `safesample audit`'s output (`audit_score`, `response_tokens`, `audit_error`), over the rows
that got a score:
- `top`: the N rows with the highest audit_score (most like compliance to harmful requests);
- `bottom`: the N lowest;
- `random`: N rows drawn at random (the arm's seed);
- `lenmatched`: N rows outside the top N whose response lengths match the top N's one for one
  (for each top row in random order, the unused row of nearest `response_tokens`): the control
  that says whether the score is more than length;
- `mix<P>`: a realistic set rich in rows audit ranks high: P % drawn from the top decile, the rest
  at random from the other rows (issue 25's strong-forgetting regime);
- `droptop<P>` / `droprand<P>`: the `--base` set minus its P % highest-scored rows / minus P %
  drawn at random (audit as a defence; the same count dropped).

Arm names: `<kind>-b0-s<seed>` (the seed draws the rows and is the fine-tune's seed). Writes the
rows as the pool has them (id, instruction, input, output, source) plus the audit columns.

Run: .venv/bin/python experiments/audit_arms.py AUDITED.parquet --arm top-b0-s0 --n 160 -o train.parquet
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

ARM = re.compile(r"^(?P<kind>top|bottom|random|lenmatched|mix\d+|droptop\d+|droprand\d+)-b0-s(?P<seed>\d+)$")


def scored(audited: pd.DataFrame) -> pd.DataFrame:
    ok = audited["audit_error"].isna() & audited["audit_score"].notna()
    return audited[ok].sort_values("audit_score", ascending=False, kind="stable")


def length_matched(rows: pd.DataFrame, top: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """For each top row (random order), the unused other row of nearest response length."""
    rest = rows.drop(top.index)
    lengths = rest["response_tokens"].to_numpy()
    used = np.zeros(len(rest), dtype=bool)
    picks = []
    for target in rng.permutation(top["response_tokens"].to_numpy()):
        gap = np.abs(lengths - target).astype(float)
        gap[used] = np.inf
        best = np.flatnonzero(gap == gap.min())
        choice = int(rng.choice(best))
        used[choice] = True
        picks.append(choice)
    return rest.iloc[picks]


def cut(audited: pd.DataFrame, kind: str, seed: int, n: int, base: pd.DataFrame | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = scored(audited)
    if kind == "top":
        return rows.head(n)
    if kind == "bottom":
        return rows.tail(n)
    if kind == "random":
        return rows.sample(n=n, random_state=seed)
    if kind == "lenmatched":
        return length_matched(rows, rows.head(n), rng)
    if kind.startswith("mix"):
        share = int(kind[3:]) / 100
        decile = rows.head(max(1, len(rows) // 10))
        high = decile.sample(n=round(share * n), random_state=seed)
        rest = rows.drop(high.index).sample(n=n - len(high), random_state=seed)
        return pd.concat([high, rest]).sample(frac=1.0, random_state=seed)
    if kind.startswith(("droptop", "droprand")):
        if base is None:
            raise SystemExit(f"{kind} needs --base (the set to drop rows from)")
        drop = round(int(kind.replace("droptop", "").replace("droprand", "")) / 100 * len(base))
        if kind.startswith("droptop"):
            order = base.sort_values("audit_score", ascending=False, kind="stable")
            return base.drop(order.head(drop).index)
        return base.drop(base.sample(n=drop, random_state=seed).index)
    raise SystemExit(f"unknown arm kind {kind!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("audited", type=Path)
    ap.add_argument("--arm", required=True, help="e.g. top-b0-s0, random-b0-s2, mix50-b0-s0")
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--base", type=Path, help="for droptop/droprand: the training set to drop rows from")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    m = ARM.match(a.arm)
    if not m:
        raise SystemExit(f"bad arm name {a.arm!r}")
    audited = pd.read_parquet(a.audited)
    base = pd.read_parquet(a.base) if a.base else None
    if base is not None and "audit_score" not in base:
        base = base.merge(audited[["id", "audit_score"]], on="id", how="left")
    rows = cut(audited, m["kind"], int(m["seed"]), a.n, base)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    keep = [c for c in ("id", "instruction", "input", "output", "source", "audit_score", "audit_rank",
                        "response_tokens") if c in rows.columns]
    rows[keep].reset_index(drop=True).to_parquet(a.out, index=False)
    print(f"{a.arm}: {len(rows)} rows, mean audit_score {rows['audit_score'].mean():.3f}, "
          f"mean response tokens {rows['response_tokens'].mean():.0f}")


if __name__ == "__main__":
    main()
