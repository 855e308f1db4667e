"""An experiment's small, committed results: numbers by id, never text (data preparation only).

- `--scored S --judged J -o ARM.parquet`: one arm's per-prompt figures: `refusal_score` on every
  eval prompt (from the score-only judge run), and for the prompts answered greedily the
  verdicts of the judged run (`refusal`, `harmful_response`, `harm_score`, the answer's length).
  The prompts, the answers and the eval labels stay out: the labels come back from eval.parquet,
  which prepare.py rebuilds from the shared data.
- `--audit RUN -o SCORES.parquet`: the audit's per-row numbers (`audit_score`, `audit_similarity`,
  `audit_rank`, `response_tokens`, ...) by id, and beside it SCORES.json with the run's chosen
  layer, its held-out AUROC and the model (from the output's provenance).
- `--join POOL SCORES -o AUDITED.parquet`: the pool's rows with those numbers again (what the arms
  are cut from), so a fresh machine does not audit again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

VERDICTS = ("refusal", "refusal_style", "harmful_response", "harm_score", "generation_error")
AUDIT = ("audit_score", "audit_similarity", "audit_z", "audit_rank", "response_tokens", "audit_truncated",
         "audit_error")


def arm(scored: Path, judged: Path | None) -> pd.DataFrame:
    out = pd.read_parquet(scored, columns=["id", "refusal_score"])
    if judged is not None and judged.exists():
        names = pq.read_schema(judged).names
        got = pd.read_parquet(judged, columns=["id"] + [c for c in (*VERDICTS, "response") if c in names])
        if "response" in got:
            got["response_chars"] = got.pop("response").fillna("").str.len()
        got["generated"] = True
        out = out.merge(got, on="id", how="left")
        out["generated"] = out["generated"].fillna(False).astype(bool)
    return out


def audit_scores(run: Path) -> tuple[pd.DataFrame, dict]:
    names = pq.read_schema(run).names
    scores = pd.read_parquet(run, columns=["id"] + [c for c in AUDIT if c in names])
    meta = pq.read_schema(run).metadata or {}
    history = json.loads(meta.get(b"safesample.provenance", b"[]"))
    entry = next((e for e in reversed(history) if e.get("command") == "audit"), {})
    return scores, {"args": entry.get("args", {}), "models": entry.get("models", {}), "rows": len(scores)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scored", type=Path)
    ap.add_argument("--judged", type=Path)
    ap.add_argument("--audit", type=Path)
    ap.add_argument("--join", type=Path, nargs=2, metavar=("POOL", "SCORES"))
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.scored:
        table = arm(a.scored, a.judged)
    elif a.audit:
        table, info = audit_scores(a.audit)
        a.out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    elif a.join:
        pool, scores = pd.read_parquet(a.join[0]), pd.read_parquet(a.join[1])
        table = pool.merge(scores, on="id", how="left", validate="one_to_one")
    else:
        raise SystemExit("pass --scored, --audit or --join")
    tmp = a.out.with_name(f".{a.out.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(a.out)
    print(f"wrote {a.out}: {len(table)} rows, columns {', '.join(table.columns)}")


if __name__ == "__main__":
    main()
