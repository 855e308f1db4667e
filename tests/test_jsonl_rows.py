"""A JSON Lines line that is `null` or `{}` is no row (issue 26): it used to become a row of
nulls whose id was null too, and travel on through the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cli
from safesample.errors import DataError
from safesample.tables import read_table


@pytest.mark.parametrize("line", ["null", "{}", "  null  "])
def test_a_line_that_is_no_row_is_a_data_error_naming_it(tmp_path: Path, line: str):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "instruction": "x", "response": "y"}\n\n' + line + "\n"
                    '{"id": "b", "instruction": "z", "response": "w"}\n')
    with pytest.raises(DataError) as err:
        read_table(str(path))
    assert "line 3" in err.value.message and line.strip() in err.value.message and err.value.hint
    out = tmp_path / "out.parquet"
    proc = cli("label", str(path), "--all-harmful", "-o", str(out))
    assert proc.returncode == 1 and "line 3" in proc.stderr and "hint:" in proc.stderr
    assert not out.exists()


def test_rows_with_some_nulls_are_still_rows(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "instruction": "x", "response": null}\n{"id": null, "instruction": "z"}\n')
    assert read_table(str(path)).num_rows == 2
