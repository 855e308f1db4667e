"""The report's audit section: which benign fine-tuning rows `safesample audit` ranks as the ones
that erode safety first.

From an `audit` output table (`audit_score`, `audit_rank`, ...): how many rows were scored, the
layer read and how well it separated held-out anchors (from the provenance), the score's
Spearman correlation with response length (length confounds such scores: He et al. 2024), the
distribution with the flagged rows marked, and the top rows, folded: they are training data,
unreviewed, and may be unpleasant to read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safesample.report.formatting import num

if TYPE_CHECKING:
    from safesample.report.inputs import ReportInput
    from safesample.report.options import ReportOptions

TOP = 20  # rows shown (folded)
FLAG_SHARE = 0.05  # without a --drop-top in the provenance, the top 5 % are drawn as flagged
TEXT_CHARS = 2000  # a row's text is cut here once, with a note


def _audit_args(inp: "ReportInput") -> dict[str, Any]:
    for entry in reversed(inp.provenance):
        if entry.get("command") == "audit":
            return entry.get("args") or {}
    return {}


def _cut(text: Any) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + f" … [{len(text) - TEXT_CHARS} more characters]"


def audit_section(inputs: list["ReportInput"], options: "ReportOptions", chart, findings) -> list[dict[str, Any]]:
    import numpy as np
    import pyarrow.compute as pc
    from scipy.stats import spearmanr

    out = []
    for inp in (i for i in inputs if i.kind == "audit"):
        t = inp.table
        scored = t.filter(pc.is_valid(t.column("audit_score")))
        scores = np.asarray(scored.column("audit_score").to_numpy(zero_copy_only=False), dtype=float)
        lengths = (np.asarray(scored.column("response_tokens").to_numpy(zero_copy_only=False), dtype=float)
                   if "response_tokens" in scored.column_names else np.full(len(scores), np.nan))
        args = _audit_args(inp)
        ranks = np.asarray(scored.column("audit_rank").to_numpy(zero_copy_only=False), dtype=float)
        flag_n = max(1, int(round(FLAG_SHARE * len(scores)))) if len(scores) else 0
        flagged = ranks <= flag_n
        rho = float(spearmanr(scores, lengths).statistic) if len(scores) > 2 and np.isfinite(lengths).all() else None
        item = {"name": inp.name, "rows": t.num_rows, "scored": scored.num_rows,
                "errors": t.num_rows - scored.num_rows, "layer": args.get("layer_read"),
                "auroc": args.get("held_out_auroc"), "model": args.get("model"), "spearman": rho,
                "flag_share": FLAG_SHARE, "chart": None, "top": []}
        if len(scores):
            item["chart"] = chart("audit", f"Audit scores ({inp.name})",
                                  _svg(scores, lengths, flagged),
                                  f"Left: audit_score over the {len(scores)} scored rows, the top "
                                  f"{100 * FLAG_SHARE:g} % marked. Right: the score against the response "
                                  "length the fine-tune would see.")
        order = np.argsort(ranks, kind="stable")[:TOP]
        cols = scored.column_names
        for i in order.tolist():
            row = {c: scored.column(c)[i].as_py() for c in ("id", "audit_score", "audit_rank", "response_tokens")
                   if c in cols}
            for c in ("audit_rank", "response_tokens"):  # whole numbers, even when stored as floats
                if isinstance(row.get(c), float) and np.isfinite(row[c]):
                    row[c] = int(row[c])
            row["instruction"] = _cut(scored.column("instruction")[i].as_py()) if "instruction" in cols else None
            answer = next((c for c in ("output", "response") if c in cols), None)
            row["answer"] = _cut(scored.column(answer)[i].as_py()) if answer else None
            item["top"].append(row)
        if rho is not None and abs(rho) > 0.5:
            findings.append(f"Audit {inp.name}: the score follows response length (Spearman {rho:+.2f}); compare "
                            "its top rows with length-matched random rows before trusting the ranking.")
        if item["auroc"] is not None:
            findings.append(f"Audit {inp.name}: layer {item['layer']} separates held-out anchors at AUROC "
                            f"{num(item['auroc'])}.")
        out.append(item)
    return out


def _svg(scores, lengths, flagged) -> str:
    from safesample.report.charts import score_panels

    return score_panels(scores, lengths, flagged, score_name="audit_score")
