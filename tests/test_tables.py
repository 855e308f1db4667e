"""Table I/O: formats, sniffing, atomic writes, ids and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safesample.errors import DataError, UsageError
from safesample.tables import (PROVENANCE_KEY, atomic_path, ensure_id, get_provenance, provenance_entry,
                               read_table, with_provenance, write_table)


def sample() -> pa.Table:
    return pa.table({"id": ["x", "y"], "text": ["hello", "world"], "score": [0.5, 1.5],
                     "flag": [True, None],
                     "embedding": pa.array([[0.1, 0.2], [0.3, 0.4]], pa.list_(pa.float32(), 2))})


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_binary_formats_round_trip_with_types_and_provenance(tmp_path: Path, suffix: str):
    path = tmp_path / f"t{suffix}"
    write_table(sample(), str(path), provenance=provenance_entry("embed", {"k": 1}, seed=3))
    back = read_table(str(path))
    assert back.column_names == sample().column_names
    assert back.schema.field("embedding").type == pa.list_(pa.float32(), 2)
    assert back.column("flag").to_pylist() == [True, None]
    assert [e["command"] for e in get_provenance(back)] == ["embed"]
    assert get_provenance(back)[0]["seed"] == 3


def test_jsonl_and_csv_are_read(tmp_path: Path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"instruction": "a", "n": 1}\n{"instruction": "b", "n": 2}\n')
    assert read_table(str(jsonl)).column("instruction").to_pylist() == ["a", "b"]
    csv = tmp_path / "t.csv"
    csv.write_text("instruction,n\na,1\nb,2\n")
    assert read_table(str(csv)).column("n").to_pylist() == [1, 2]


def test_jsonl_written_one_object_per_row(tmp_path: Path):
    out = tmp_path / "t.jsonl"
    write_table(sample(), str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["text"] == "hello" and len(rows) == 2


def test_provenance_accumulates_stage_by_stage(tmp_path: Path):
    t = with_provenance(sample(), provenance_entry("label", {}))
    t = with_provenance(t, provenance_entry("embed", {"model": "m"}, models={"embed": "m"}))
    assert [e["command"] for e in get_provenance(t)] == ["label", "embed"]
    assert get_provenance(t)[1]["models"] == {"embed": "m"}
    assert PROVENANCE_KEY in t.schema.metadata


def test_ensure_id_is_stable_and_unique():
    t = pa.table({"instruction": ["a", "b", "a"]})
    ids = ensure_id(t).column("id").to_pylist()
    assert ids == ensure_id(t).column("id").to_pylist()
    assert len(set(ids)) == 3 and ids[2] == f"{ids[0]}-2"
    kept = pa.table({"id": ["k"], "instruction": ["a"]})
    assert ensure_id(kept).column("id").to_pylist() == ["k"]


@pytest.mark.parametrize("make,error", [
    (lambda p: p / "missing.parquet", UsageError),
    (lambda p: p, UsageError),
])
def test_unusable_input_paths(tmp_path: Path, make, error):
    with pytest.raises(error):
        read_table(str(make(tmp_path)))


def test_empty_truncated_and_text_inputs_are_data_errors(tmp_path: Path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    full = tmp_path / "full.parquet"
    pq.write_table(sample(), full)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(full.read_bytes()[:-40])
    text = tmp_path / "notes.txt"
    text.write_text("just some notes, not a table\n")
    for path, words in [(empty, "empty"), (truncated, "truncated"), (text, "not a table")]:
        with pytest.raises(DataError) as info:
            read_table(str(path))
        assert words in (info.value.message + (info.value.hint or ""))


def test_output_checks(tmp_path: Path):
    with pytest.raises(UsageError, match="does not exist"):
        write_table(sample(), str(tmp_path / "no" / "such" / "out.parquet"))
    with pytest.raises(UsageError, match="format"):
        write_table(sample(), str(tmp_path / "out.xlsx"))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_removes_temp_file_on_error(tmp_path: Path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_old_file_only_when_complete(tmp_path: Path):
    target = tmp_path / "out.parquet"
    write_table(sample(), str(target))
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert read_table(str(target)).num_rows == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_csv_ids_stay_strings(tmp_path: Path):
    """Issue 18: `001` and `1e3` became 1.0 and 1000.0."""
    csv = tmp_path / "t.csv"
    csv.write_text("id,instruction,prompt_id\n001,a,7\n1e3,b,08\n")
    table = read_table(str(csv))
    assert table.column("id").to_pylist() == ["001", "1e3"]
    assert table.column("prompt_id").to_pylist() == ["7", "08"]


def test_header_only_csv_gives_text_columns(tmp_path: Path):
    """Issue 18: a header-only CSV had null-typed columns, and `label` crashed with a TypeError."""
    csv = tmp_path / "t.csv"
    csv.write_text("instruction,response\n")
    table = read_table(str(csv))
    assert table.num_rows == 0
    assert [f.type for f in table.schema] == [pa.string(), pa.string()]


def test_arrow_stream_file_without_end_marker_is_refused(tmp_path: Path):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, sample().schema) as writer:
        writer.write_table(sample())
    data = sink.getvalue().to_pybytes()
    full = tmp_path / "full.arrows"
    full.write_bytes(data)
    assert read_table(str(full)).num_rows == 2
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(data[:-8])
    with pytest.raises(DataError, match=r"ended early \(2 rows read"):
        read_table(str(cut))


def test_atomic_temp_names_carry_the_pid(tmp_path: Path):
    import os

    with atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.name.startswith(f".x.json.{os.getpid()}-") and tmp.name.endswith(".tmp")
        tmp.write_text("{}")
    assert (tmp_path / "x.json").read_text() == "{}"
