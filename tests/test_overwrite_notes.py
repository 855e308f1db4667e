"""An input that already has columns a stage writes (labelling a labelled table, selecting from a
selection) gets them replaced with a note, never silently (issue 26); the registry names the
columns each stage writes (`Stage.writes`)."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO, cli
from safesample.stages import STAGES

POOL = REPO / "safesample" / "demo" / "safety_pool.jsonl"


def test_every_stage_that_writes_columns_names_them():
    writes = {s.name: s.writes for s in STAGES}
    assert "behavior" in writes["label"] and writes["embed"] == ("embedding",)
    assert "select_reason" in writes["select"] and "cluster" in writes["cluster"]
    assert STAGES[0].overwrite_note(["id", "instruction"]) is None


def test_relabelling_and_reselecting_say_what_they_replace(tmp_path: Path):
    labelled = tmp_path / "labelled.parquet"
    proc = cli("label", str(POOL), "--all-harmful", "-o", str(labelled))
    assert proc.returncode == 0 and "already has" not in proc.stderr, proc.stderr
    again = tmp_path / "again.parquet"
    proc = cli("label", str(labelled), "--all-harmful", "-o", str(again))
    assert proc.returncode == 0, proc.stderr
    assert "the input already has harmful_request, refusal" in proc.stderr and "`label` writes them anew" in proc.stderr
    assert "already has" not in cli("label", str(labelled), "--all-harmful", "-q", "-o", str(again)).stderr  # -q
    picked = tmp_path / "picked.parquet"
    assert cli("select", str(labelled), "--strategy", "random", "--budget", "10", "-q", "-o", str(picked)).returncode == 0
    proc = cli("select", str(picked), "--strategy", "random", "--budget", "5", "-o", str(tmp_path / "p2.parquet"))
    assert proc.returncode == 0, proc.stderr
    assert "already has select_reason, select_rank" in proc.stderr
