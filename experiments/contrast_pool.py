"""The benign pool `select --contrast` draws look-alikes from, for the qwen evidence run.

The pilot drew them from align_benign.parquet (300 rows): the closest benign task to a picked
harmful request sat at a mean cosine of 0.34, hardly closer than a random row (0.13). A contrast
arm tests "benign look-alikes teach the model where refusal stops" only if look-alikes exist in the
pool, so this writes every short, input-free GPTeacher and Alpaca-GPT4 task the stage-2 benign set
does not already hold (2,519 with --benign-n 160): the same candidates prepare.py draws stage-1 rows from.
`select --exclude eval.parquet` then keeps the eval prompts out, as for the safety pool.

    python experiments/contrast_pool.py --shared ../shared/data --benign-n 160 --out contrast.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prepare import benign_candidates  # experiments/ is this script's folder, first on sys.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, required=True, help="the shared/data folder")
    ap.add_argument("--benign-n", type=int, required=True, help="the first N Alpaca-GPT4 rows are the "
                    "stage-2 benign set (prepare.py --benign-n): never a contrast row")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    pool = benign_candidates(a.shared, a.benign_n).drop_duplicates("instruction")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    pool.to_parquet(a.out, index=False)
    print(f"contrast pool {a.out}: {len(pool)} benign tasks")


if __name__ == "__main__":
    main()
