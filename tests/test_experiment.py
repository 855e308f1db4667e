"""The experiment's two Python steps: the data cuts (prepare.py) and the summary (summarize.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import REPO, need_shared_data

PREPARE = REPO / "experiments" / "prepare.py"
SUMMARIZE = REPO / "experiments" / "summarize.py"


def _prepare_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare", PREPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_prepare_cuts_disjoint_tables_with_lookalikes_first(tmp_path: Path):
    run(str(PREPARE), "--shared", str(need_shared_data("the experiment's datasets")), "--out", str(tmp_path), "--pool-n", "200",
        "--align-from", "200", "--align-n", "40", "--benign-n", "60", "--harmful-n", "30",
        "--safe-n", "10", "--helpful-n", "5")
    t = {p.stem: pd.read_parquet(p) for p in tmp_path.glob("*.parquet")}
    assert set(t) == {"pool", "align_safety", "align_benign", "benign", "refs", "eval"}
    assert len(t["pool"]) == 200 and len(t["align_safety"]) == 40 and len(t["benign"]) == 60
    # stage 1 never sees the rows the strategies select from, nor the arms' benign rows
    assert not set(t["pool"]["id"]) & set(t["align_safety"]["id"])
    assert not set(t["benign"]["id"]) & set(t["align_benign"]["id"])
    # twice as many benign rows as safety rows, the harmful-sounding ones first
    benign = t["align_benign"]["instruction"]
    assert len(benign) == 80
    looks = benign.str.contains(_prepare_module().LOOKALIKE, case=False, regex=True).tolist()
    assert looks[0] and looks == sorted(looks, reverse=True)
    ev = t["eval"]
    assert ev.groupby("label").size().to_dict() == {"harmful": 30, "safe": 15}
    assert set(ev["category"]) >= {"xstest_safe", "alpaca_eval"}


def _judged(folder: Path, name: str, refused: list[bool]) -> None:
    """A judged table: 4 harmful prompts, 2 XSTest-safe, 2 AlpacaEval."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "id": [f"p{i}" for i in range(8)],
        "category": ["a", "a", "b", "b", "xstest_safe", "xstest_safe", "alpaca_eval", "alpaca_eval"],
        "label": ["harmful"] * 4 + ["safe"] * 4,
        "refusal": refused,
    }).to_parquet(folder / f"{name}.parquet")


def test_summarize_reports_means_spread_coverage_and_paired_tests(tmp_path: Path):
    judged, out = tmp_path / "judged", tmp_path / "out"
    T, F = True, False
    _judged(judged, "aligned", [T, T, T, T, T, F, F, F])
    _judged(judged, "none", [T, F, F, F, F, F, F, F])
    _judged(judged, "random-b10-s0", [T, T, F, F, F, F, F, F])
    _judged(judged, "random-b10-s1", [T, F, F, F, T, F, F, F])
    _judged(judged, "diverse-b10-s0", [T, T, T, T, F, F, F, F])
    (out / "selection").mkdir(parents=True)
    (out / "selection" / "diverse-b10-s0.json").write_text(json.dumps({"selection": {"categories": 9, "clusters": 10}}))
    run(str(SUMMARIZE), str(judged), "--out", str(out), "--command", "make experiment RUN=t")

    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["strategy"], r["budget"]): r for r in summary["table"]}
    assert rows[("random", 10)]["seeds"] == 2
    assert rows[("random", 10)]["harmful refused"] == {"mean": 0.375, "min": 0.25, "max": 0.5}
    assert rows[("random", 10)]["safe refused (XSTest)"]["max"] == 0.5
    assert rows[("diverse", 10)]["harmful refused"]["mean"] == 1.0
    assert rows[("diverse", 10)]["categories"] == 9 and "categories" not in rows[("random", 10)]
    assert rows[("aligned", 0)]["safe refused (XSTest)"]["mean"] == 0.5
    # paired with the random arm of the same seed only: p2, p3 refused only by diverse
    assert summary["mcnemar_vs_random"] == [{"arm": "diverse-b10-s0", "vs": "random-b10-s0",
                                             "refused_only_by_arm": 2, "refused_only_by_random": 0,
                                             "p": 0.5, "difference_points": 50.0, "same_response": None}]
    md = (out / "summary.md").read_text()
    assert "make experiment RUN=t" in md and "| diverse | 10 | 1 | 100.0 % |" in md
    assert "37.5 % (25.0–50.0)" in md
    for png in ("refusal_vs_budget.png", "per_category.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
