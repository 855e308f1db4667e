"""Reading shard folders and globs: every shard must say the same thing, and the manifest must be
believable, or the read is an error naming what differs (issue 26: item 3 and the shard rough edges).

- shards whose embeddings were made by different models (or of different texts) are refused,
  naming both, by the local reader (`shards.read_sharded`) and by the Ray executor's reader
  (`executors/ray/io.py`: `open_input` before any work, `read_slices` in a worker);
- shards of different schemas are refused naming the first column that differs;
- a manifest naming a file outside its folder, wrong row counts, or malformed entries are errors
  with a hint, never read and never the "looks like a bug" fallback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli
from safesample.tables import shards
from safesample.errors import DataError
from safesample.tables import read_table
from safesample.vectors import embedding_field, embedding_column


def _embedded(ids: list[str], model: str, text: str = "instruction", dim: int = 4) -> pa.Table:
    rng = np.random.default_rng(len(ids))
    vectors = rng.normal(size=(len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    field = embedding_field(dim, model, "onnx", text)
    return pa.table({"id": ids, "instruction": [f"row {i}" for i in ids]}).append_column(
        field, embedding_column(vectors))


@pytest.fixture
def two_models(tmp_path: Path) -> Path:
    """Two safesample shard folders under one parent, embedded by two models."""
    shards.write_sharded(_embedded(["a", "b"], "model-one"), str(tmp_path / "one") + "/")
    shards.write_sharded(_embedded(["c", "d"], "model-two"), str(tmp_path / "two") + "/")
    return tmp_path


def test_shards_embedded_by_different_models_are_refused_naming_both(two_models: Path):
    glob = str(two_models / "*" / "part-*.parquet")
    with pytest.raises(DataError) as err:
        read_table(glob)
    assert "model-one" in err.value.message and "model-two" in err.value.message and err.value.hint
    # the same model twice reads as one table, labelled with it
    shards.write_sharded(_embedded(["c", "d"], "model-one"), str(two_models / "two") + "/")
    table = read_table(glob)
    assert table.num_rows == 4 and table.schema.field("embedding").metadata[b"safesample.model"] == b"model-one"


def test_shards_embedding_different_texts_are_refused(tmp_path: Path):
    shards.write_sharded(_embedded(["a"], "m", text="instruction"), str(tmp_path / "one") + "/")
    shards.write_sharded(_embedded(["b"], "m", text="template '{instruction} {response}'"),
                         str(tmp_path / "two") + "/")
    with pytest.raises(DataError, match="instruction"):
        read_table(str(tmp_path / "*" / "part-*.parquet"))


def test_the_cli_refuses_mixed_models_with_exit_1(two_models: Path):
    out = two_models / "sel.parquet"
    proc = cli("select", str(two_models / "*" / "part-*.parquet"), "--strategy", "random", "--budget", "2",
               "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "model-one" in proc.stderr and "model-two" in proc.stderr and "hint:" in proc.stderr
    assert "looks like a bug" not in proc.stderr and not out.exists()


def test_the_ray_reader_refuses_mixed_models_before_any_work_and_in_a_worker(two_models: Path):
    from safesample.executors.base import ExecutorOptions  # noqa: F401 - the Ray io module needs no Ray here
    from safesample.executors.ray.io import open_input, read_slices

    files = sorted(str(p) for p in two_models.glob("*/part-*.parquet"))
    with pytest.raises(DataError) as err:
        open_input(str(two_models / "*" / "part-*.parquet"), limit=None, load=lambda s, n: read_table(s))
    assert "model-one" in err.value.message and "model-two" in err.value.message
    with pytest.raises(DataError) as err:
        read_slices([[files[0], 0, 2], [files[1], 0, 2]])
    assert "model-one" in err.value.message and "model-two" in err.value.message


def test_shards_of_different_schemas_name_the_column(tmp_path: Path):
    pq.write_table(pa.table({"id": ["a"], "score": [1.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "score": ["high"]}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"id": ["c"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError) as err:
        read_table(str(tmp_path / "[ab].parquet"))
    assert "'score'" in err.value.message and "double" in err.value.message and "string" in err.value.message
    with pytest.raises(DataError) as err:
        read_table(str(tmp_path / "[ac].parquet"))
    assert "'score'" in err.value.message and "c.parquet" in err.value.message
    from safesample.executors.ray.io import read_slices

    with pytest.raises(DataError, match="'score'"):
        read_slices([[str(tmp_path / "a.parquet"), 0, 1], [str(tmp_path / "b.parquet"), 0, 1]])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shards.write_sharded(pa.table({"id": ["a", "b", "c"], "x": [1, 2, 3]}), str(tmp_path / "sd") + "/",
                         rows_per_shard=2)
    return tmp_path / "sd"


def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "_SUCCESS").read_text())
    change(manifest)
    (folder / "_SUCCESS").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../outside.parquet", "/etc/outside.parquet", "sub/part.parquet", "..", ""])
def test_a_manifest_naming_a_file_outside_its_folder_is_refused(folder: Path, name: str):
    outside = folder.parent / "outside.parquet"
    pq.write_table(pa.table({"id": ["z"], "x": [9]}), outside)

    def point_out(manifest):
        manifest["files"][0]["name"] = name
        manifest["files"][0].pop("sha256")
        manifest["files"][0].pop("bytes")
    _edit_manifest(folder, point_out)
    with pytest.raises(DataError) as err:
        read_table(str(folder))
    assert "outside" in err.value.message or "not a file name" in err.value.message
    assert err.value.hint


def test_wrong_row_counts_in_a_manifest_are_refused(folder: Path):
    _edit_manifest(folder, lambda m: m["files"][0].update(rows=5))
    with pytest.raises(DataError, match="rows"):
        read_table(str(folder))


def test_a_manifest_total_that_disagrees_with_its_shards_is_refused(folder: Path):
    _edit_manifest(folder, lambda m: m.update(rows=99))
    with pytest.raises(DataError, match="rows"):
        read_table(str(folder))


@pytest.mark.parametrize("text", [
    b'{"files": [1, 2]}', b'{"files": [{"nome": "part-00000.parquet"}]}', b'{"files": [{"name": 7}]}',
    b'{"files": [{"name": "part-00000.parquet", "rows": "two"}]}', b'[1, 2]', b'\xff\xfe\x00garbage',
    b'{"files": [{"name": "part-00000.parquet", "bytes": null}]}', b'"just a string"',
])
def test_a_malformed_manifest_is_a_data_error_not_a_bug(folder: Path, text: bytes, tmp_path: Path):
    (folder / "_SUCCESS").write_bytes(text)
    with pytest.raises(DataError) as err:
        read_table(str(folder))
    assert "_SUCCESS" in err.value.message and err.value.hint
    out = tmp_path / "out.parquet"
    proc = cli("select", str(folder), "--strategy", "random", "--budget", "1", "-o", str(out))
    assert proc.returncode == 1 and "hint:" in proc.stderr and "looks like a bug" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_manifest_that_is_a_folder_is_an_error(folder: Path):
    (folder / "_SUCCESS").unlink()
    (folder / "_SUCCESS").mkdir()
    with pytest.raises(DataError, match="_SUCCESS"):
        read_table(str(folder))


def test_an_interrupted_local_write_leaves_no_folder_it_created(tmp_path: Path, monkeypatch):
    table = pa.table({"id": [str(i) for i in range(10)], "x": list(range(10))})
    calls = []

    def write(self, task, part, key=""):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return shards.write_staged(self.staging, task, part, key)
    monkeypatch.setattr(shards.ShardOutput, "write", write)
    with pytest.raises(KeyboardInterrupt):
        shards.write_sharded(table, str(tmp_path / "new") + "/", rows_per_shard=3)
    assert not (tmp_path / "new").exists()
    # a folder that was there before (an earlier output) keeps what it had
    monkeypatch.undo()
    shards.write_sharded(table, str(tmp_path / "old") + "/", rows_per_shard=5)
    before = sorted(p.name for p in (tmp_path / "old").iterdir())
    calls.clear()
    monkeypatch.setattr(shards.ShardOutput, "write", write)
    with pytest.raises(KeyboardInterrupt):
        shards.write_sharded(table, str(tmp_path / "old") + "/", rows_per_shard=3)
    assert read_table(str(tmp_path / "old")).num_rows == 10
    assert set(before) <= {p.name for p in (tmp_path / "old").iterdir()}
