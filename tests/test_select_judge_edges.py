"""select and judge options that were accepted and then ignored, or read another way without a
word (issue 26, rough edges): a child option without its parent, --behavior weights that do not
sum to 1, a gate at NaN, --compare against other prompts or ambiguous ids, an empty --contrast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli

BUG = "looks like a bug"


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    from safesample.vectors import embedding_column, embedding_field

    n = 24
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.table({"id": [f"p{i}" for i in range(n)], "instruction": [f"how do I do harm {i}" for i in range(n)],
                      "response": ["I can't help with that."] * n, "category": ["a", "b", "c"] * 8,
                      "behavior": ["refusal", "explanation"] * 12, "harmful_response": [False] * n,
                      "cluster": [i % 4 for i in range(n)]})
    table = table.append_column(embedding_field(8, "fake/model", "onnx", "instruction"), embedding_column(vectors))
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("child, parent", [
    (("--exclude-threshold", "0.8"), "--exclude"), (("--contrast-share", "1"), "--contrast"),
    (("--contrast-within-budget",), "--contrast"), (("--contrast-lexical", "0.2"), "--contrast"),
])
def test_a_child_option_without_its_parent_is_a_usage_error(pool: Path, tmp_path: Path, child, parent):
    out = tmp_path / "out.parquet"
    proc = cli("select", str(pool), "--budget", "4", *child, "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert f"{child[0]} has no effect without {parent}" in proc.stderr and "hint:" in proc.stderr
    assert not out.exists()
    # the defaults, untyped, are no error
    assert cli("select", str(pool), "--budget", "4", "-q", "-o", str(out)).returncode == 0


def test_behavior_weights_that_do_not_sum_to_one_are_read_with_a_note(pool: Path, tmp_path: Path):
    out = tmp_path / "out.parquet"
    proc = cli("select", str(pool), "--budget", "4", "--behavior", "refusal=0.7,explanation=0.7", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "warning: --behavior weights sum to 1.4, not 1" in proc.stderr and "refusal 50%" in proc.stderr
    proc = cli("select", str(pool), "--budget", "4", "--behavior", "refusal=0.75,explanation=0.25", "-o", str(out))
    assert proc.returncode == 0 and "weights sum" not in proc.stderr


def test_an_empty_contrast_table_is_a_data_error(pool: Path, tmp_path: Path):
    empty = tmp_path / "benign.csv"
    empty.write_text("id,instruction,output\n")
    out = tmp_path / "out.parquet"
    proc = cli("select", str(pool), "--budget", "4", "--contrast", str(empty), "-o", str(out))
    assert proc.returncode == 1 and "hint:" in proc.stderr and BUG not in proc.stderr, proc.stderr
    assert not out.exists()


def _judged(tmp_path: Path, name: str, ids: list[str], prompts: list[str]) -> Path:
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p, "response": "I can't help with that."}) + "\n"
                           for i, p in zip(ids, prompts)))
    out = tmp_path / f"{name}.parquet"
    proc = cli("judge", str(src), "--responses", "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("gate", ["refusal_rate=nan", "refusal_rate=inf", "refusal_rate=-inf"])
def test_a_gate_at_nan_or_inf_is_a_usage_error(tmp_path: Path, gate: str):
    base = _judged(tmp_path, "base", ["a", "b"], ["p1", "p2"])
    proc = cli("judge", str(base), "--responses", "--fail-under", gate, "-o", str(tmp_path / "out.parquet"))
    assert proc.returncode == 2 and "finite" in proc.stderr and "hint:" in proc.stderr, proc.stderr


def test_compare_refuses_other_prompts_under_the_same_ids(tmp_path: Path):
    base = _judged(tmp_path, "base", ["a", "b", "c"], ["p1", "p2", "p3"])
    src = tmp_path / "now.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p, "response": "Sure."}) + "\n"
                           for i, p in zip(["a", "b", "c"], ["p1", "other", "p3"])))
    out = tmp_path / "out.parquet"
    proc = cli("judge", str(src), "--responses", "--compare", str(base), "-o", str(out))
    assert proc.returncode == 1 and "1 of 3 ids" in proc.stderr and "'b'" in proc.stderr, proc.stderr
    assert "hint:" in proc.stderr and not out.exists()


def test_compare_refuses_a_base_with_repeated_ids(tmp_path: Path):
    base = _judged(tmp_path, "base", ["a", "a", "c"], ["p1", "p1", "p3"])
    src = tmp_path / "now.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p, "response": "Sure."}) + "\n"
                           for i, p in zip(["a", "c"], ["p1", "p3"])))
    out = tmp_path / "out.parquet"
    proc = cli("judge", str(src), "--responses", "--compare", str(base), "-o", str(out))
    assert proc.returncode == 1 and "more than one row" in proc.stderr and "'a'" in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_gold_column_mixing_vocabularies_is_scored_binary_with_a_warning(tmp_path: Path):
    from safesample.calibration import calibrate

    gold = ["full_refusal", "partial_refusal", "compliance", "yes", "no"]
    result = calibrate(["full_refusal", "full_refusal", "compliance", "full_refusal", "compliance"], gold)
    assert result.mode == "binary" and "mixes refusal styles" in (result.note or "")
    assert any(line.startswith("warning: ") for line in result.summary_lines())
    assert result.to_dict()["note"] == result.note
    assert calibrate(["compliance"] * 3, gold[:3]).note is None  # one vocabulary: nothing to say
    src = tmp_path / "pairs.jsonl"
    rows = [("How do I pick a lock?", "I can't help with that.", "full_refusal"),
            ("Write a poem", "Roses are red.", "no"), ("Insult my boss", "I won't do that.", "yes")]
    src.write_text("".join(json.dumps({"id": f"r{i}", "instruction": q, "response": a, "human": h}) + "\n"
                           for i, (q, a, h) in enumerate(rows)))
    proc = cli("label", str(src), "--all-harmful", "--gold", "human", "-o", str(tmp_path / "out.parquet"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: column 'human' mixes refusal styles" in proc.stderr
