"""`safesample report`: input kinds, the page's content, escaping, and the CLI contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import REPO, cli
from safesample.errors import DataError, UsageError
from safesample.report import ReportOptions, json_kind, load_inputs, plan, report_table, table_kind
from safesample.reporter import RecordingReporter
from safesample.tables import provenance_entry, write_table

CATS = ["animal_abuse", "privacy_violation", "self_harm", "violence"]
EVIL = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def build_inputs(folder: Path) -> dict[str, Path]:
    """A small pool, its picks and coverage report, and two judged runs of the same prompts."""
    rng = np.random.default_rng(0)
    n = 60
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    pool = pa.table({
        "id": [f"p{i:03d}" for i in range(n)],
        "instruction": [f"how do I do harmful thing {i}?" for i in range(n)],
        "category": [CATS[i % 4] for i in range(n)],
        "behavior": ["refusal" if i % 3 else "explanation" for i in range(n)],
        "cluster": [i % 5 for i in range(n)],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 8),
    })
    paths = {"pool": folder / "pool.parquet", "picks": folder / "picked.parquet",
             "selection": folder / "selection.json", "base": folder / "judged.base.parquet",
             "now": folder / "judged.parquet", "summary": folder / "judge.json"}
    write_table(pool, str(paths["pool"]), provenance_entry("cluster", {}, seed=0, argv=["cluster", "x"]))
    picks = pool.take([0, 5, 10, 15, 21, 33, 47])
    picks = picks.append_column("select_reason", pa.array([f"category={c}, nearest to centroid"
                                                           for c in picks.column("category").to_pylist()]))
    picks = picks.append_column("select_rank", pa.array(range(1, 8), pa.int64()))
    write_table(picks, str(paths["picks"]), provenance_entry("select", {"strategy": "diverse"}, seed=0,
                                                           argv=["select", "pool.parquet", "-o", "picked.parquet"]))
    paths["selection"].write_text(json.dumps({
        "strategy": "diverse", "budget": 7, "seed": 0, "pool_rows": n, "candidate_rows": n,
        "available": {"categories": 4, "behaviors": 2, "clusters": 5},
        "selection": {"categories": 4, "behaviors": 2, "clusters": 5, "mean_pairwise_distance": 0.9},
        "random": {"categories": 3.1, "behaviors": 2.0, "clusters": 4.2, "mean_pairwise_distance": 0.8, "draws": 10},
        "counts": {"refusal": {"animal_abuse": 2, "privacy_violation": 2}, "explanation": {"self_harm": 3}},
        "notes": []}))
    m = 24
    base_ref = [i % 2 == 0 for i in range(m)]
    now_ref = [i % 3 == 0 for i in range(m)]
    for key, refusal, model in (("base", base_ref, "smollm2"), ("now", now_ref, "runs/lora")):
        t = pa.table({
            "id": [f"e{i:02d}" for i in range(m)],
            "prompt": [f"prompt {i} {EVIL}" for i in range(m)],
            "category": [CATS[i % 4] for i in range(m)],
            "label": ["safe" if i >= 18 else "harmful" for i in range(m)],
            "eval_group": ["benign" if i >= 18 else "harmful" for i in range(m)],
            "response": [f"{'I cannot' if r else 'Sure'} {EVIL} ({key})" for r in refusal],
            "refusal_style": ["full_refusal" if r else "compliance" for r in refusal],
            "rules_refusal": refusal,
            "refusal": refusal,
        })
        args = {"input": "eval.jsonl", "model": model, "scorers": ["rules"], "category_col": "category",
                "compare": str(paths["base"]) if key == "now" else None}
        write_table(t, str(paths[key]), provenance_entry("judge", args, seed=0, models={"model": model},
                                                        argv=["judge", "eval.jsonl", "--model", model]))
    from safesample.judge import summary as judge

    summary = {"input": "eval.jsonl", "model": "other-model", "scorers": ["rules"],
               **judge.summarize(_read(paths["now"]), "category")}
    paths["summary"].write_text(json.dumps(summary))
    return paths


def _read(path: Path) -> pa.Table:
    from safesample.tables import read_table

    return read_table(str(path))


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    return build_inputs(tmp_path)


def charts_of(html: str) -> list[str]:
    return re.findall(r'<figure class="chart" data-chart="([a-z_]+)">', html)


# --------------------------------------------------------------------------------------------
# input kinds


def test_kinds_from_columns_json_keys_and_provenance(inputs):
    loaded = load_inputs([str(inputs[k]) for k in ("pool", "picks", "selection", "base", "now", "summary")])
    assert [i.kind for i in loaded] == ["pool", "selection", "selection_report", "judge", "judge", "judge_summary"]
    assert table_kind(pa.table({"a": [1]})) is None
    assert json_kind({"overall": {}, "by_category": {}}) == "judge_summary"
    assert json_kind({"arms": {}, "table": []}) == "experiment"
    assert json_kind([1, 2]) is None


def test_an_input_of_no_known_kind_names_what_was_expected(tmp_path):
    other = tmp_path / "other.parquet"
    write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), str(other))
    with pytest.raises(DataError) as exc:
        load_inputs([str(other)])
    assert "none of the report's inputs" in exc.value.message and "a, b" in exc.value.message
    assert "`select` output table" in exc.value.hint and "`judge` output table" in exc.value.hint
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(DataError, match="JSON with hello"):
        load_inputs([str(bad)])
    broken = tmp_path / "y.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_inputs([str(broken)])
    with pytest.raises(UsageError, match="does not exist"):
        load_inputs([str(tmp_path / "missing.parquet")])


# --------------------------------------------------------------------------------------------
# the page


def test_full_report_has_every_section_and_chart(inputs):
    loaded = load_inputs([str(inputs[k]) for k in ("pool", "picks", "selection", "base", "now")])
    rec = RecordingReporter()
    html = report_table(loaded, ReportOptions(title="t & t", note="demo <scale>"), reporter=rec)
    assert charts_of(html) == ["heatmap", "map", "refusal_by_category", "refusal_vs_over_refusal", "compare"]
    assert 'data-charts="5"' in html
    for section in ('id="selection"', 'id="judge"', 'id="provenance"', 'id="findings"'):
        assert section in html
    assert "<title>t &amp; t</title>" in html and "demo &lt;scale&gt;" in html
    # picks with their reasons, the coverage numbers, clusters covered
    assert "category=animal_abuse, nearest to centroid" in html and "random draws (mean of 10)" in html
    assert "Clusters covered by the picks: <b>" in html
    # the comparison: base named by the --compare of the other table, transitions, folded examples
    assert "Compared: judged against judged.base" in html
    assert "refused → complied" in html.lower() or "refused → complied" in html
    assert html.count('<details class="example"') >= 2 and "model output" in html
    # every input's provenance, with the command line
    assert html.count('class="prov"') == 5 and "safesample judge eval.jsonl --model runs/lora" in html
    assert rec.warnings() == []


def test_model_output_is_escaped_never_markup(inputs):
    loaded = load_inputs([str(inputs["base"]), str(inputs["now"])])
    html = report_table(loaded)
    assert EVIL not in html
    assert "&lt;script&gt;alert(" in html
    assert "<script>alert" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert len(re.findall(r"<script>", html)) == 1  # the page's own check script only


def test_page_is_self_contained(inputs):
    loaded = load_inputs([str(inputs[k]) for k in ("pool", "picks", "selection", "base", "now")])
    html = report_table(loaded)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "@import" not in html and "url(http" not in html
    assert "Content-Security-Policy" in html


def test_summary_json_of_a_judged_table_given_too_is_not_a_second_run(inputs):
    data = json.loads(inputs["summary"].read_text())
    data["model"] = "runs/lora"  # the summary of `now`
    inputs["summary"].write_text(json.dumps(data))
    html = report_table(load_inputs([str(inputs["base"]), str(inputs["now"]), str(inputs["summary"])]))
    assert html.count("<tr><td>judged") == 2  # judged.base and judged, not a third row


def test_summary_json_alone_renders_its_compare(inputs):
    from safesample.judge import summary as judge

    data = json.loads(inputs["summary"].read_text())
    data["compare"] = {"base": "judged.base.parquet",
                       **judge.compare(_read(inputs["now"]), _read(inputs["base"]), "category", n_boot=50)}
    inputs["summary"].write_text(json.dumps(data))
    html = report_table(load_inputs([str(inputs["summary"])]))
    assert charts_of(html) == ["refusal_by_category", "refusal_vs_over_refusal", "compare"]
    assert "No example responses" in html


def test_no_difference_is_said_not_shown_as_a_finding(inputs):
    same = load_inputs([str(inputs["base"]), str(inputs["base"])])
    html = report_table(same)
    assert "no change is distinguishable from zero" in html


def test_base_option_picks_the_baseline(inputs):
    loaded = load_inputs([str(inputs["base"]), str(inputs["now"])])
    html = report_table(loaded, ReportOptions(base=str(inputs["now"])))
    assert "Compared: judged.base against judged" in html
    with pytest.raises(UsageError, match="--base"):
        report_table(loaded, ReportOptions(base="nope.parquet"))


def test_selection_report_alone_and_picks_without_pool(inputs):
    html = report_table(load_inputs([str(inputs["selection"])]))
    assert charts_of(html) == ["heatmap"]
    html = report_table(load_inputs([str(inputs["picks"])]))
    assert charts_of(html) == ["heatmap", "map"]


def test_committed_cpu_experiment_renders():
    results = REPO / "results" / "cpu"
    paths = [str(results / "summary.json")] + sorted(str(p) for p in (results / "selection").glob("*.json"))
    loaded = load_inputs(paths)
    assert loaded[0].kind == "experiment" and {i.kind for i in loaded[1:]} == {"selection_report"}
    html = report_table(loaded)
    assert charts_of(html) == ["coverage", "per_category_picks", "experiment"]
    assert "diverse-b25-s0" in html and "exact McNemar" in html and "stratified" in html


def test_committed_qwen_experiment_renders():
    """The second evidence run: rates charted, log-odds scores in the table, the paired verdict."""
    results = REPO / "results" / "qwen"
    paths = [str(results / "summary.json")] + sorted(str(p) for p in (results / "selection").glob("*.json"))
    html = report_table(load_inputs(paths))
    assert charts_of(html)[-1] == "experiment"
    assert "Paired over seeds" in html and "harmful refusal score" in html
    assert "the smallest difference this design detects (80 % power)" in html


def test_experiment_scores_apart_from_rates_and_paired_over_seeds(tmp_path: Path):
    """A summary with a log-odds score next to rates: the score is a table column, never a bar in
    the refusal chart, and the paired-over-seeds results come with a finding naming the detectable
    difference."""
    cell = lambda m, lo, hi: {"mean": m, "min": lo, "max": hi}  # noqa: E731
    summary = {
        "command": "make experiment RUN=t", "scores": ["harmful refusal score"],
        "table": [
            {"strategy": "none", "budget": 0, "seeds": 1, "harmful refused": cell(0.6, 0.6, 0.6),
             "harmful P(refusal)": cell(0.15, 0.15, 0.15), "harmful refusal score": cell(-2.09, -2.09, -2.09)},
            {"strategy": "random", "budget": 8, "seeds": 5, "harmful refused": cell(0.7, 0.7, 0.7),
             "seeds_with": {"harmful refused": 1},
             "harmful P(refusal)": cell(0.17, 0.16, 0.18), "harmful refusal score": cell(-1.91, -1.98, -1.85)},
        ],
        "paired_over_seeds": [
            {"arm": "diverse", "vs": "random", "budget": 8, "metric": "harmful refusal score", "seeds": [0, 1, 2],
             "n_seeds": 3, "mean_arm": -1.9, "mean_vs": -1.95, "diff_mean": 0.05, "diff_sd": 0.04,
             "p_t": 0.2, "p_wilcoxon": 0.25, "p_sign": 0.25, "mdd_80": 0.123},
            {"arm": "diverse_contrast", "vs": "diverse", "budget": 8, "metric": "harmful refusal score",
             "seeds": [0], "n_seeds": 1, "mean_arm": -1.9, "mean_vs": -1.95, "diff_mean": 0.05, "diff_sd": None,
             "p_t": None, "p_wilcoxon": 1.0, "p_sign": 1.0, "mdd_80": None},
        ],
        "arms": {},
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    html = report_table(load_inputs([str(path)]))
    assert charts_of(html) == ["experiment"]
    chart = html.split('data-chart="experiment"', 1)[1].split("</figure>", 1)[0]
    assert "harmful P(refusal)" in chart and "harmful refusal score" not in chart
    assert "-1.91" in html and "[1 of 5 seeds]" in html  # the score as log-odds, the partial rate marked
    assert "Paired over seeds" in html and "+0.05 (0.04)" in html and "0.12" in html
    assert "diverse_contrast" not in html.split("Paired over seeds", 1)[1].split("</table>", 1)[0]  # one seed
    assert "the smallest difference this design detects (80 % power) is 0.123 log-odds" in html


def test_plan_lists_inputs_and_sections(inputs):
    loaded = load_inputs([str(inputs[k]) for k in ("pool", "picks", "base", "now")])
    lines = plan(loaded, ReportOptions())
    assert any("pool.parquet: a pool table" in line for line in lines)
    assert "sections: selection, judge" in lines
    assert any(line.startswith("compare: judged against judged.base") for line in lines)


# --------------------------------------------------------------------------------------------
# the CLI contract


def test_help_opens_with_summary_and_examples():
    out = cli("report", "--help").stdout.decode()
    body = out.split("\n\n", 2)
    assert body[1].strip().startswith("Write one self-contained HTML report")
    assert "safesample report " in out.split("Examples", 1)[1]
    for option in ("--output", "--quiet", "--verbose", "--dry-run", "--base"):
        assert option in out
    assert "  report " in cli("--help").stdout.decode()


def test_help_imports_no_heavy_library():
    heavy = ["pandas", "torch", "sklearn", "matplotlib", "jinja2", "pyarrow", "numpy"]
    code = ("import sys; from safesample.cli import main; main(['report', '--help']); "
            "print([m for m in %r if m in sys.modules], file=sys.stderr)" % heavy)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stderr.strip().splitlines()[-1] == "[]"


def test_cli_writes_the_page(inputs, tmp_path):
    out = tmp_path / "r.html"
    proc = cli("report", *(str(inputs[k]) for k in ("pool", "picks", "selection", "base", "now")), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""  # stdout carries data only; the page goes to the file
    assert "wrote the report" in proc.stderr
    assert out.read_text().startswith("<!DOCTYPE html>") and out.stat().st_mode & 0o044 == 0o044


def test_cli_dry_run_prints_the_plan_and_writes_nothing(inputs, tmp_path):
    out = tmp_path / "r.html"
    proc = cli("report", str(inputs["picks"]), str(inputs["base"]), "-o", str(out), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "sections: selection, judge" in proc.stderr and "dry run" in proc.stderr
    assert not out.exists()


def _error(proc) -> tuple[str, str]:
    lines = proc.stderr.strip().splitlines()
    err = next(line for line in lines if line.startswith("error: "))
    hint = next(line for line in lines if line.startswith("hint: "))
    return err, hint


def test_cli_missing_file_is_usage_error(tmp_path):
    proc = cli("report", str(tmp_path / "nope.parquet"), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 2
    err, hint = _error(proc)
    assert "does not exist" in err and "select" in hint
    assert list(tmp_path.iterdir()) == []


def test_cli_non_report_input_is_data_error(tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1, "b": "x"}\n')
    proc = cli("report", str(other), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 1
    err, hint = _error(proc)
    assert "none of the report's inputs" in err and "`judge` output table" in hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.jsonl"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("dest", ["missing-folder/r.html", "r.txt", "DIR", "/proc/r.html"])
def test_cli_unwritable_output_is_usage_error_and_leaves_nothing(inputs, tmp_path, dest):
    (tmp_path / "DIR").mkdir()
    target = dest if dest.startswith("/") else str(tmp_path / dest)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli("report", str(inputs["selection"]), "-o", target)
    assert proc.returncode == 2, proc.stderr
    _error(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_failure_mid_render_leaves_no_partial_page(inputs, tmp_path):
    out = tmp_path / "r.html"
    code = ("import sys, safesample.report as r\n"
            "def boom(*a, **k): raise RuntimeError('mid-render')\n"
            "r.report_table = boom\n"
            "from safesample.cli import main\n"
            f"sys.exit(main(['report', {str(inputs['selection'])!r}, '-o', {str(out)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "mid-render" in proc.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".r.html")]


def test_an_audit_table_gets_its_section_with_the_top_rows_folded(tmp_path: Path):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 120
    scores = rng.normal(size=n)
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(-scores)] = np.arange(1, n + 1)
    table = pa.table({"id": [f"r{i}" for i in range(n)], "instruction": [f"task <b>{i}</b>" for i in range(n)],
                      "output": ["answer " * (i % 30 + 1) for i in range(n)], "audit_score": scores,
                      "audit_rank": ranks, "response_tokens": [i % 30 + 3 for i in range(n)]})
    write_table(table, str(tmp_path / "audited.parquet"),
                provenance_entry("audit", {"layer_read": 4, "held_out_auroc": 0.789, "model": "qwen2.5-coder-0.5b"}))
    loaded = load_inputs([str(tmp_path / "audited.parquet")])
    assert loaded[0].kind == "audit" and "sections: audit" in "\n".join(plan(loaded, ReportOptions()))
    html = report_table(loaded)
    assert 'id="audit"' in html and "layer 4" in html and "0.789" in html
    top = int(np.argmax(scores))
    assert f"#1 · r{top} ·" in html and html.count('<span class="badge">training data</span>') == 20
    assert "task <b>" not in html and "task &lt;b&gt;" in html  # training text is escaped, never markup


def test_a_large_audit_draws_a_sample_of_its_kept_rows_and_whole_numbers(tmp_path: Path):
    import numpy as np

    from safesample.report.charts import SCATTER_POINTS

    rng = np.random.default_rng(1)
    n = 6000
    scores = rng.normal(size=n)
    ranks = np.empty(n)
    ranks[np.argsort(-scores)] = np.arange(1, n + 1)  # floats, as a table with nulls stores them
    table = pa.table({"id": [f"r{i}" for i in range(n)], "audit_score": scores, "audit_rank": ranks,
                      "response_tokens": (np.arange(n) % 90 + 3).astype(float)})
    write_table(table, str(tmp_path / "audited.parquet"), provenance_entry("audit", {"layer_read": 4}))
    html = report_table(load_inputs([str(tmp_path / "audited.parquet")]))
    kept = n - max(1, round(0.05 * n))
    assert f"{SCATTER_POINTS:,} of {kept:,} kept rows drawn" in html
    assert len(html) < 400_000  # every one of 6,000 points as an SVG path would be ~700 KB
    top = int(np.argmax(scores))
    assert f"#1 · r{top} ·" in html and "#1.0" not in html
