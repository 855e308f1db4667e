"""`report` reads what every other command reads, and what it writes is clean (issue 26, the
report's rough edges): JSON Lines tables (not taken for a JSON summary), shard folders and globs,
JSON with the right keys and wrong types (a data error, not a bug), invalid UTF-8 (a data
error), NUL/ESC bytes from data (never raw in the page), glyph warnings (never printed, not even
without -q: the charts keep text as text, the browser draws it), and a 200,000-character answer
(cut once, with a note)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli

BUG = "looks like a bug"


def _pool(n: int = 24, categories: list[str] | None = None) -> pa.Table:
    from safesample.vectors import embedding_column, embedding_field

    cats = categories or ["weapons", "fraud", "self_harm"]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.table({"id": [f"p{i}" for i in range(n)], "instruction": [f"request {i}" for i in range(n)],
                      "response": ["I can't help with that."] * n, "category": [cats[i % len(cats)] for i in range(n)],
                      "behavior": ["refusal" if i % 2 else "explanation" for i in range(n)]})
    return table.append_column(embedding_field(8, "m", "onnx", "instruction"), embedding_column(vectors))


def _judged(folder: Path, name: str, responses: list[str], prompts: list[str] | None = None,
            compare: Path | None = None) -> Path:
    n = len(responses)
    table = pa.table({"id": [f"e{i}" for i in range(n)],
                      "prompt": prompts or [f"How do I do thing {i}?" for i in range(n)],
                      "response": responses, "category": ["a", "b"] * (n // 2) + ["a"] * (n % 2)})
    src = folder / f"{name}.in.parquet"
    pq.write_table(table, src)
    out = folder / f"{name}.parquet"
    args = ["judge", str(src), "--responses", "-q", "-o", str(out)]
    if compare is not None:
        args += ["--compare", str(compare)]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_jsonl_table_is_read_as_a_table(tmp_path: Path):
    pool = _pool()
    path = tmp_path / "pool.jsonl"
    rows = pool.drop_columns(["embedding"]).to_pylist()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.html"
    proc = cli("report", str(path), "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "request 3" in out.read_text() or "weapons" in out.read_text()
    # a JSONL file without the .jsonl suffix is still a table (its second line says so)
    other = tmp_path / "pool.txt"
    other.write_text(path.read_text())
    proc = cli("report", str(other), "-q", "--dry-run", "-o", str(tmp_path / "r2.html"))
    assert proc.returncode == 0 and "pool table" in proc.stderr, proc.stderr


def test_shard_folders_and_globs_are_report_inputs(tmp_path: Path):
    from safesample.tables.shards import write_sharded

    write_sharded(_pool(), str(tmp_path / "pool") + "/", rows_per_shard=10)
    for source in (str(tmp_path / "pool"), str(tmp_path / "pool" / "part-*.parquet")):
        proc = cli("report", source, "--dry-run", "-o", str(tmp_path / "dry.html"))
        assert proc.returncode == 0, proc.stderr
        assert "pool table" in proc.stderr and "24 rows" in proc.stderr
    out = tmp_path / "r.html"
    proc = cli("report", str(tmp_path / "pool"), "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "weapons" in out.read_text()
    # an incomplete folder is refused as everywhere else
    (tmp_path / "pool" / "_SUCCESS").unlink()
    proc = cli("report", str(tmp_path / "pool"), "-q", "-o", str(tmp_path / "r2.html"))
    assert proc.returncode == 1 and "incomplete" in proc.stderr and "hint:" in proc.stderr


@pytest.mark.parametrize("data", [
    {"overall": "all good", "by_category": 3},
    {"overall": {"refusal_rate": "high", "n": "many"}, "by_category": {"a": {"refusal_rate": "x"}}},
    {"overall": {"refusal_rate": 0.5}, "by_category": {"a": 7}},
    {"overall": {"refusal_rate": 0.5}, "by_category": {}, "compare": "yes"},
    {"selection": [1], "random": None, "counts": "x"},
    {"selection": {"categories": "three"}, "random": {"categories": 2.0}, "counts": {}},
    {"selection": {}, "random": {}, "counts": {"refusal": {"a": "1"}}, "budget": "ten"},
    {"arms": 3, "table": "x"},
    {"arms": [], "table": [{"strategy": "random", "refusal": {"mean": "x", "min": 0, "max": 1}}]},
])
def test_json_with_the_right_keys_and_wrong_types_is_a_data_error(tmp_path: Path, data: dict):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "r.html"
    proc = cli("report", str(path), "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "error:" in proc.stderr and "hint:" in proc.stderr and BUG not in proc.stderr
    assert not out.exists()


def test_invalid_utf8_in_a_report_input_is_a_data_error(tmp_path: Path):
    table = _pool()
    bad = pa.array([b"caf\xe9"] + [b"ok"] * (table.num_rows - 1), pa.binary()).view(pa.string())
    table = table.set_column(table.column_names.index("instruction"), "instruction", bad)
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path)
    proc = cli("report", str(path), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 1 and "UTF-8" in proc.stderr and "hint:" in proc.stderr and BUG not in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_control_bytes_never_reach_the_page_and_glyph_warnings_never_print(tmp_path: Path):
    cats = ["\u4e2d\u6587\u7c7b\u522b", "\U0001F600 emoji", "ok\x00\x1bcat", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629"]
    pool = tmp_path / "pool.parquet"
    pq.write_table(_pool(categories=cats), pool)
    prompts = [f"How do I \x00do\x1b[31m thing {i}? \u4e2d\u6587" for i in range(8)]
    base = _judged(tmp_path, "base", [f"Sure \x00\x1b[2J step {i}." for i in range(8)], prompts)
    now = _judged(tmp_path, "now", ["I can't help with that."] * 8, prompts, compare=base)
    for quiet in (["-q"], []):
        out = tmp_path / f"r{len(quiet)}.html"
        proc = cli("report", str(pool), str(base), str(now), *quiet, "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert "Glyph" not in proc.stderr and "UserWarning" not in proc.stderr, proc.stderr
        if quiet:
            assert proc.stderr == ""
        page = out.read_bytes()
        assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", page)
        assert "\u2400" in page.decode()  # the NUL is shown, as a symbol, not dropped silently


def test_a_huge_answer_is_cut_once_with_a_note(tmp_path: Path):
    huge = "A" * 200_000
    base = _judged(tmp_path, "base", [huge] + [f"Sure, step {i}." for i in range(1, 8)])
    runs = [_judged(tmp_path, f"now{k}", ["I can't help with that."] * 8, compare=base) for k in range(3)]
    out = tmp_path / "r.html"
    proc = cli("report", str(base), *map(str, runs), "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    longest = max((len(m) for m in re.findall(r"A{100,}", page)), default=0)
    assert longest < 20_000
    assert page.count("A" * 100) * 100 < 60_000  # not three (or more) copies of the whole answer
    assert "more characters" in page
