"""Text that is not valid UTF-8 (issue 26): a Parquet or Arrow string column carrying invalid
bytes, a CSV or JSON Lines file in another encoding, a stream on stdin. Every command reads its
tables through one reader, which refuses them as a data error naming the column and the row,
instead of a crash ("looks like a bug") wherever the text is first used, or output changed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli
from safesample.errors import DataError
from safesample.tables import read_table

BAD = pa.array([b"fine", b"caf\xe9 au lait"], pa.binary()).view(pa.string())


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    table = pa.table({"id": ["a", "b"], "instruction": BAD, "response": ["ok", "ok"]})
    out = {"parquet": tmp_path / "t.parquet", "arrow": tmp_path / "t.arrow", "csv": tmp_path / "t.csv",
           "jsonl": tmp_path / "t.jsonl"}
    pq.write_table(table, out["parquet"])
    with pa.OSFile(str(out["arrow"]), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    out["csv"].write_bytes(b"id,instruction,response\na,fine,ok\nb,caf\xe9 au lait,ok\n")
    out["jsonl"].write_bytes(b'{"id": "a", "instruction": "fine", "response": "ok"}\n'
                             b'{"id": "b", "instruction": "caf\xe9 au lait", "response": "ok"}\n')
    return out


@pytest.mark.parametrize("kind", ["parquet", "arrow", "csv", "jsonl"])
def test_the_reader_names_the_column_and_the_row(files: dict[str, Path], kind: str):
    with pytest.raises(DataError) as err:
        read_table(str(files[kind]))
    assert "'instruction'" in err.value.message and "row 2" in err.value.message and "UTF-8" in err.value.message
    assert "iconv" in err.value.hint


@pytest.mark.parametrize("args", [
    ("label", "--all-harmful"), ("embed", "--dry-run"), ("mix",), ("select", "--budget", "1"),
    ("judge", "--responses", "--prompt-col", "instruction"), ("report",),
])
def test_every_command_refuses_it_as_a_data_error(files: dict[str, Path], tmp_path: Path, args: tuple[str, ...]):
    command, *rest = args
    out = tmp_path / ("out.html" if command == "report" else "out.parquet")
    inputs = [str(files["parquet"])] * (2 if command == "mix" else 1)
    proc = cli(command, *inputs, *rest, "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "not valid UTF-8" in proc.stderr and "hint:" in proc.stderr and "looks like a bug" not in proc.stderr
    assert not out.exists()


def test_a_stream_on_stdin_too(files: dict[str, Path], tmp_path: Path):
    table = pq.read_table(files["parquet"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    out = tmp_path / "out.parquet"
    proc = cli("label", "-", "--all-harmful", "-o", str(out), stdin=sink.getvalue().to_pybytes())
    assert proc.returncode == 1 and "not valid UTF-8" in proc.stderr, proc.stderr
    assert not out.exists()
