"""The report's provenance section: where each input came from.

For a table, the history its provenance holds (every command that wrote it); for a JSON report,
the facts it records (strategy and budget of a selection, model and scorers of a judge summary,
the command of an experiment); for every input its size and the start of its sha256.
"""

from __future__ import annotations

import shlex
from typing import Any

from safesample.report.experiment import facts as experiment_facts
from safesample.report.inputs import KINDS, ReportInput


def provenance(inp: ReportInput) -> dict[str, Any]:
    """An input's row of the provenance section: its file, size and hash, every command that
    wrote it (with its argv, seed and models), and the facts its JSON records."""
    steps = []
    for e in inp.provenance:
        argv = e.get("argv")
        steps.append({"command": e.get("command"), "argv": "safesample " + shlex.join(argv) if argv else None,
                      "seed": e.get("seed"), "models": e.get("models") or {}, "version": e.get("version"),
                      "time": e.get("time"), "inputs": e.get("inputs") or []})
    facts: list[tuple[str, str]] = []
    d = inp.data or {}
    if inp.kind == "selection_report":
        facts = [(k, str(d.get(k))) for k in ("strategy", "budget", "seed", "pool_rows", "candidate_rows")
                 if d.get(k) is not None]
        if d.get("exclude_sources"):
            facts.append(("excluded prompts from", ", ".join(map(str, d["exclude_sources"]))))
    elif inp.kind == "judge_summary":
        facts = [(k, str(d.get(k))) for k in ("input", "model", "template", "scorers", "benign_flag",
                                             "category_col") if d.get(k) is not None]
        if d.get("compare"):
            facts.append(("compared with", str(d["compare"].get("base"))))
    elif inp.kind == "experiment":
        facts = experiment_facts(d)
    return {"path": inp.path, "name": inp.name, "kind": KINDS[inp.kind], "rows": inp.rows,
            "size_kb": None if inp.size is None else round(inp.size / 1024, 1), "sha256": inp.sha256,
            "steps": steps, "facts": facts}
