"""Rows with no text (empty, whitespace, or only invisible characters such as zero-width spaces)
are refused alike by every stage that reads text (issue 26): they used to share one vector in
`embed`, be picked by `select` and mixed into training by `mix`, while `judge` refused them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli
from safesample.texts import blank_rows, is_blank

BLANKS = ["", "   ", "\u200b", "\u200b\u200c\ufeff", "\u00a0\u3000", "\t\n"]


def test_blank_is_the_same_in_python_and_in_arrow():
    values = ["ok", *BLANKS, None, "a\u200b", "\u200bx"]
    assert [i for i, v in enumerate(values) if is_blank(v)] == blank_rows(pa.chunked_array([values]))
    assert blank_rows(pa.chunked_array([values])) == [1, 2, 3, 4, 5, 6, 7]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    from safesample.vectors import embedding_column, embedding_field

    n = 8
    instructions = [f"how do I do harm {i}" for i in range(n)]
    instructions[3] = "\u200b \u200b"
    rows = [{"id": f"r{i}", "instruction": t, "response": "I can't help with that."} for i, t in enumerate(instructions)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.Table.from_pylist(rows).append_column(embedding_field(8, "fake/model", "onnx", "instruction"),
                                                      embedding_column(vectors))
    table = table.append_column("behavior", pa.array(["refusal"] * n)).append_column("category", pa.array(["a"] * n))
    embedded = tmp_path / "embedded.parquet"
    pq.write_table(table, embedded)
    benign = tmp_path / "benign.jsonl"
    benign.write_text("".join(json.dumps({"id": f"b{i}", "instruction": f"task {i}", "output": "done"}) + "\n"
                              for i in range(4)))
    return {"pool": pool, "embedded": embedded, "benign": benign}


@pytest.mark.parametrize("args", [
    ("embed", "{pool}", "--dry-run"), ("select", "{embedded}", "--budget", "2", "--strategy", "random"),
    ("mix", "{benign}", "{pool}"), ("judge", "{pool}", "--responses"),
])
def test_every_stage_refuses_rows_without_text_alike(files: dict[str, Path], tmp_path: Path, args):
    out = tmp_path / "out.parquet"
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    if argv[0] == "embed":
        argv.remove("--dry-run")  # the texts are read in the real run (no model loads before them)
    proc = cli(*argv, "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "1 of 8" in proc.stderr and "r3" in proc.stderr and "invisible" in proc.stderr and "hint:" in proc.stderr
    assert not out.exists()
