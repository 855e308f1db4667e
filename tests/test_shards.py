"""Shard folders (`-o DIR/`): nothing lost, nothing silently changed, on the local executor.

An output folder that holds an input is refused before any work and left as it was; files another
tool wrote are never deleted; a shard changed after its manifest was written is an error; a
second run writing the same folder is refused; a reader that closes the pipe early is no failure.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, cli, shell

POOL = REPO / "safesample" / "demo" / "safety_pool.jsonl"


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    proc = cli("label", str(POOL), "--all-harmful", "-q", "-o", str(tmp_path / "lab") + "/")
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "lab"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_an_output_folder_holding_an_input_is_refused_before_any_work(labelled: Path):
    before = _snapshot(labelled)
    for source in (str(labelled / "*.parquet"), str(labelled)):
        proc = cli("embed", source, "-o", str(labelled) + "/")
        assert proc.returncode == 2 and "holds the input" in proc.stderr and "hint:" in proc.stderr
        assert "embedded" not in proc.stderr  # refused before the work, not after it
        assert _snapshot(labelled) == before  # the manifest and the shards are untouched
    assert cli("embed", str(labelled), "--limit", "3", "-q", "-o", str(labelled.parent / "e.parquet")).returncode == 0


def test_parquet_files_no_safesample_manifest_names_are_never_deleted(tmp_path: Path, labelled: Path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(labelled / "part-00000.parquet", other / "part-0.parquet")  # another tool's shard, no manifest
    proc = cli("label", str(POOL), "--all-harmful", "-o", str(other) + "/")
    assert proc.returncode == 2 and "no safesample manifest names" in proc.stderr and "hint:" in proc.stderr
    assert [p.name for p in other.iterdir()] == ["part-0.parquet"]
    # A folder safesample wrote is replaced whole: the old shards it named go, the new ones come.
    proc = cli("label", str(POOL), "--all-harmful", "--limit", "5", "-q", "-o", str(labelled) + "/")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((labelled / "_SUCCESS").read_text())
    assert manifest["rows"] == 5 and sorted(p.name for p in labelled.glob("*.parquet")) == ["part-00000.parquet"]
    assert not (labelled / ".staging").exists()


def test_a_shard_changed_after_its_manifest_was_written_is_an_error(labelled: Path, tmp_path: Path):
    shard = labelled / "part-00000.parquet"
    manifest = json.loads((labelled / "_SUCCESS").read_text())
    assert manifest["files"][0]["sha256"] and manifest["version"] == 2
    # Same size, other content: the bytes check cannot see it; the sha256 does.
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    proc = cli("embed", str(labelled), "-o", str(tmp_path / "e.parquet"))
    assert proc.returncode == 1 and "sha256" in proc.stderr and "hint:" in proc.stderr
    assert not (tmp_path / "e.parquet").exists()


def test_a_single_parquet_file_with_a_flipped_bit_is_an_error(tmp_path: Path):
    """Page checksums: every byte flip in the data pages of a file safesample wrote is caught."""
    import random

    from safesample.errors import DataError
    from safesample.tables import read_table, write_table

    table = pa.table({"id": [str(i) for i in range(5000)], "x": [float(i) for i in range(5000)],
                      "text": [f"row {i}" for i in range(5000)]})
    write_table(table, str(tmp_path / "a.parquet"))
    data = (tmp_path / "a.parquet").read_bytes()
    rng = random.Random(0)
    caught = 0
    for _ in range(20):
        damaged = bytearray(data)
        at = rng.randrange(4, len(data) // 2)  # inside the column chunks, not the footer
        damaged[at] ^= 1 << rng.randrange(8)
        (tmp_path / "b.parquet").write_bytes(bytes(damaged))
        try:
            same = read_table(str(tmp_path / "b.parquet")).equals(table)
        except DataError:
            caught += 1
            continue
        assert not same or damaged == bytearray(data)
    assert caught == 20


def test_a_second_run_writing_the_same_folder_is_refused(tmp_path: Path):
    from safesample.errors import UsageError
    from safesample.tables.shards import ShardOutput

    with ShardOutput(str(tmp_path / "sd") + "/"):
        proc = cli("label", str(POOL), "--all-harmful", "-o", str(tmp_path / "sd") + "/")
        assert proc.returncode == 2 and "another run is writing" in proc.stderr and "hint:" in proc.stderr
        with pytest.raises(UsageError):
            ShardOutput(str(tmp_path / "sd") + "/")
    assert cli("label", str(POOL), "--all-harmful", "-q", "-o", str(tmp_path / "sd") + "/").returncode == 0


def test_a_reader_closing_the_pipe_early_is_no_failure(tmp_path: Path):
    table = pa.table({"id": [str(i) for i in range(200_000)], "instruction": ["do x"] * 200_000,
                      "response": ["I cannot help with that."] * 200_000})
    pq.write_table(table, tmp_path / "big.parquet")
    proc = shell(f"safesample label {tmp_path / 'big.parquet'} --all-harmful -o - | head -c 100 >/dev/null; "
                 "echo status=${PIPESTATUS[0]}")
    assert "status=0" in proc.stdout, proc.stdout + proc.stderr
    assert "error" not in proc.stderr
