"""The experiment's Python steps: the data cuts (prepare.py), the summary (summarize.py), the picks diagnostic."""

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


def _judged(folder: Path, name: str, refused: list[bool], score: list[float] | None = None) -> None:
    """A judged table: 4 harmful prompts, 2 XSTest-safe, 2 AlpacaEval (with a refusal_score when
    `score` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = {
        "id": [f"p{i}" for i in range(8)],
        "category": ["a", "a", "b", "b", "xstest_safe", "xstest_safe", "alpaca_eval", "alpaca_eval"],
        "label": ["harmful"] * 4 + ["safe"] * 4,
        "refusal": refused,
    }
    if score is not None:
        columns["refusal_score"] = score
    pd.DataFrame(columns).to_parquet(folder / f"{name}.parquet")


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


# --------------------------------------------------------------------------------------------
# paired statistics over seeds


def _summarize_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("summarize", SUMMARIZE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_test_known_answer():
    import pytest

    s = _summarize_module()
    # differences 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5); t = 3 / (sqrt(2.5) / sqrt(5)) = sqrt(18)
    r = s.paired_test([11, 12, 13, 14, 15], [10, 10, 10, 10, 10])
    assert r["n_seeds"] == 5 and r["diff_mean"] == 3.0 and r["diff_sd"] == pytest.approx(2.5 ** 0.5)
    assert r["t"] == pytest.approx(18 ** 0.5)
    assert r["p_t"] == pytest.approx(0.013236, abs=1e-5)  # two-sided t(4) at 4.2426
    # all five differences positive: exact sign and Wilcoxon p = 2 / 2^5
    assert r["p_sign"] == pytest.approx(0.0625) and r["p_wilcoxon"] == pytest.approx(0.0625)
    assert r["mean_arm"] == 13.0 and r["mean_vs"] == 10.0 and r["sd_vs"] == 0.0
    # no difference at all: nothing to detect, nothing detectable from zero spread
    r0 = s.paired_test([1.0, 2.0], [1.0, 2.0])
    assert r0["diff_mean"] == 0.0 and r0["p_sign"] is None and r0["p_t"] == 1.0 and r0["mdd_80"] is None
    one = s.paired_test([0.5], [0.25])
    assert one["diff_mean"] == 0.25 and one["p_t"] is None and one["mdd_80"] is None and one["p_sign"] == 1.0


def test_min_detectable_difference():
    import pytest
    from scipy.stats import nct, t

    s = _summarize_module()
    # many pairs: the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n) = 2.8016 * sd / sqrt(n)
    assert s.min_detectable_difference(1.0, 2000) == pytest.approx(2.8016 / 2000 ** 0.5, rel=2e-3)
    # few pairs: exactly 80 % power at the returned difference (noncentral t), and it scales with sd
    mdd = s.min_detectable_difference(0.04, 5)
    crit = t.ppf(0.975, 4)
    nc = mdd * 5 ** 0.5 / 0.04
    assert nct.sf(crit, 4, nc) + nct.cdf(-crit, 4, nc) == pytest.approx(0.8, abs=1e-6)
    assert 0.04 * 2.776 / 5 ** 0.5 < mdd < 0.04 * 4.5 / 5 ** 0.5  # above the t quantile alone
    assert s.min_detectable_difference(0.08, 5) == pytest.approx(2 * mdd)
    assert s.min_detectable_difference(0.0, 5) is None and s.min_detectable_difference(1.0, 1) is None


def test_summarize_pairs_arms_by_seed_on_score_and_refusal(tmp_path: Path):
    """Three seeds; diverse beats random on the harmful score by exactly +0.5, +1.0, +1.5 and on
    harmful refusal by +1, +1, +2 prompts (of 4); contrast vs diverse only on seed 0."""
    judged, out = tmp_path / "judged", tmp_path / "out"
    F = False
    base = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 0.0, 0.0]
    for seed, (gain, extra) in enumerate([(0.5, 1), (1.0, 1), (1.5, 2)]):
        r_ref = [True, False, False, False, False, F, F, F]
        d_ref = [True] * (1 + extra) + [False] * (3 - extra) + [F, F, F, F]
        _judged(judged, f"random-b4-s{seed}", r_ref, [b + seed for b in base])
        _judged(judged, f"diverse-b4-s{seed}", d_ref,
                [b + seed + (gain if i < 4 else 0.0) for i, b in enumerate(base)])
    _judged(judged, "diverse_contrast-b4-s0", [True] * 4 + [F] * 4, [0.0] * 8)
    run(str(SUMMARIZE), str(judged), "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    paired = {(p["arm"], p["vs"], p["metric"]): p for p in summary["paired_over_seeds"]}

    score = paired[("diverse", "random", "harmful refusal score")]
    assert score["seeds"] == [0, 1, 2] and score["budget"] == 4
    assert score["diff_mean"] == 1.0 and abs(score["diff_sd"] - 0.5) < 1e-12
    assert abs(score["t"] - 1.0 / (0.5 / 3 ** 0.5)) < 1e-9  # t = 3.4641, df 2
    assert abs(score["p_t"] - 0.07418) < 1e-4
    assert score["p_sign"] == 0.25 and score["p_wilcoxon"] == 0.25  # 3 of 3 positive: 2 / 8
    assert score["mdd_80"] > 0.5  # three seeds cannot detect much below the sd
    xs = paired[("diverse", "random", "XSTest refusal score")]
    assert xs["diff_mean"] == 0.0 and xs["p_sign"] is None

    refusal = paired[("diverse", "random", "harmful refused")]
    assert abs(refusal["diff_mean"] - (0.25 + 0.25 + 0.5) / 3) < 1e-12
    assert [m["refused_only_by_arm"] for m in refusal["mcnemar"]] == [1, 1, 2]
    assert [m["refused_only_by_vs"] for m in refusal["mcnemar"]] == [0, 0, 0]
    assert refusal["mcnemar"][2]["p"] == 0.5

    contrast = paired[("diverse_contrast", "diverse", "harmful refused")]
    assert contrast["seeds"] == [0] and contrast["n_seeds"] == 1 and contrast["mdd_80"] is None
    rows = {(r["strategy"], r["budget"]): r for r in summary["table"]}
    assert rows[("diverse", 4)]["harmful refusal score"]["mean"] == -2.5 + 1 + 1.0
    assert abs(rows[("random", 4)]["sd"]["harmful refusal score"] - 1.0) < 1e-12
    md = (out / "summary.md").read_text()
    assert "Paired over seeds" in md and "| diverse | random | 4 | harmful refusal score | 3 |" in md


def test_prepare_generation_subset_and_advbench(tmp_path: Path):
    run(str(PREPARE), "--shared", str(need_shared_data("the experiment's datasets")), "--out", str(tmp_path),
        "--pool-n", "50", "--align-from", "50", "--align-n", "10", "--benign-n", "20", "--harmful-n", "600",
        "--safe-n", "10", "--helpful-n", "4", "--advbench", "--gen-share", "0.25")
    ev, gen = pd.read_parquet(tmp_path / "eval.parquet"), pd.read_parquet(tmp_path / "eval_gen.parquet")
    assert "advbench" in set(ev["category"]) and (ev["label"] == "harmful").sum() == 600
    assert set(gen["id"]) <= set(ev["id"])
    assert gen.groupby("category").size().get("xstest_safe") == round(0.25 * 10)
    assert (gen["label"] == "harmful").sum() == 150 and (gen["category"] == "alpaca_eval").sum() == 1


def test_summarize_scored_only_arms_and_sampling_refusal_probability(tmp_path: Path):
    """Generation kept to seed 0 (GEN_SEEDS): seed 1 has only a scored table, and still counts in
    the score metrics and their pairing, never in the generated-refusal ones. P(refusal) is the
    mean sigmoid of the score: scores 0 and log 3 on the harmful rows give (1/2 + 3/4) / 2."""
    import math

    judged, scored, out = tmp_path / "judged", tmp_path / "scored", tmp_path / "out"
    F = False
    harmful = [0.0, math.log(3), 0.0, math.log(3)]
    safe = [-math.log(3)] * 4  # P = 1/4
    _judged(judged, "random-b8-s0", [True, F, F, F] + [F] * 4)
    _judged(judged, "diverse-b8-s0", [True, True, F, F] + [F] * 4)
    for seed, shift in ((0, 0.0), (1, 1.0)):
        _judged(scored, f"random-b8-s{seed}", [F] * 8, [h + shift for h in harmful] + safe)
        _judged(scored, f"diverse-b8-s{seed}", [F] * 8, [h + shift + 0.5 for h in harmful] + safe)
    run(str(SUMMARIZE), str(judged), "--out", str(out), "--scored", str(scored))
    summary = json.loads((out / "summary.json").read_text())
    arms = summary["arms"]
    assert set(arms) == {"random-b8-s0", "diverse-b8-s0", "random-b8-s1", "diverse-b8-s1"}
    assert abs(arms["random-b8-s0"]["harmful P(refusal)"] - (0.5 + 0.75) / 2) < 1e-12
    assert abs(arms["random-b8-s0"]["XSTest P(refusal)"] - 0.25) < 1e-12
    assert "harmful refused" in arms["random-b8-s0"] and "harmful refused" not in arms["random-b8-s1"]
    # the score against seed 0's generated verdicts: the one refusal (score 0) beats 4 of the 7 others
    # (the -log 3 ones) and ties one (p2, score 0): AUC (4 + 0.5) / 7
    assert abs(arms["random-b8-s0"]["score AUC vs generated"] - 4.5 / 7) < 1e-12
    assert "score AUC vs generated" not in arms["random-b8-s1"]
    paired = {(p["arm"], p["vs"], p["metric"]): p for p in summary["paired_over_seeds"]}
    assert paired[("diverse", "random", "harmful refusal score")]["seeds"] == [0, 1]
    assert abs(paired[("diverse", "random", "harmful refusal score")]["diff_mean"] - 0.5) < 1e-12
    assert paired[("diverse", "random", "harmful P(refusal)")]["diff_mean"] > 0
    assert ("diverse", "random", "harmful refused") not in paired  # seed 1 was not generated
    # each seed paired by prompt: every harmful prompt +0.5, a one-sided shift Wilcoxon cannot call
    # significant on 4 prompts (exact two-sided p = 2 / 2^4)
    seeds = paired[("diverse", "random", "harmful refusal score")]["by_prompt"]
    assert [(b["seed"], b["n_prompts"]) for b in seeds] == [(0, 4), (1, 4)]
    assert all(abs(b["mean_diff"] - 0.5) < 1e-12 and abs(b["p_wilcoxon"] - 0.125) < 1e-12 for b in seeds)
    md = (out / "summary.md").read_text()
    # P(refusal) is a rate in points; the generated rate covers one of the two seeds, and says so
    assert "| random | 8 | 2 | 25.0 % [1 of 2 seeds] |" in md and "71.8 % (62.5–81.1)" in md
    assert (out / "refusal_vs_budget.png").exists() and (out / "per_category.png").exists()
    assert (out / "paired_by_seed.png").exists()  # two seeds paired on the harmful score


def test_picks_vs_eval_known_answer(tmp_path: Path):
    # Harmful eval prompts along x and y; a safe one along z (ignored). Pool rows: on x (cosine 1),
    # between x and y (0.707), on z (0), and -x (y is nearest: 0). Pool median: (0 + 0.707) / 2.
    import numpy as np

    def vec(*v):
        return list(np.asarray(v, dtype=np.float32))

    pd.DataFrame({"label": ["harmful", "harmful", "safe"],
                  "embedding": [vec(1, 0, 0), vec(0, 1, 0), vec(0, 0, 1)]}).to_parquet(tmp_path / "eval.parquet")
    pd.DataFrame({"id": ["a", "b", "c", "d"],
                  "embedding": [vec(2, 0, 0), vec(1, 1, 0), vec(0, 0, 3), vec(-1, 0, 0)]}).to_parquet(tmp_path / "pool.parquet")
    pd.DataFrame({"id": ["a", "b"]}).to_parquet(tmp_path / "near-b2-s0.parquet")
    pd.DataFrame({"id": ["c", "d"]}).to_parquet(tmp_path / "far-b2-s0.parquet")
    out = tmp_path / "picks.json"
    run(str(REPO / "experiments" / "picks_vs_eval.py"), str(tmp_path / "pool.parquet"), str(tmp_path / "eval.parquet"),
        str(tmp_path / "near-b2-s0.parquet"), str(tmp_path / "far-b2-s0.parquet"), "-o", str(out))
    got = json.loads(out.read_text())
    assert got["harmful_eval_prompts"] == 2
    assert abs(got["pool_median_nearest_cosine"] - 0.7071 / 2) < 1e-3
    assert abs(got["arms"]["near-b2-s0"]["mean_nearest_cosine"] - (1 + 0.7071) / 2) < 1e-3
    assert got["arms"]["near-b2-s0"]["below_pool_median"] == 0
    assert got["arms"]["far-b2-s0"] == {"rows": 2, "mean_nearest_cosine": 0.0, "below_pool_median": 2}
