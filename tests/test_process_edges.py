"""The process's edges (issue 26): closed or broken stdout, stderr and stdin, stdin that is a
directory or an Arrow IPC file, a full disk behind `-o -`, and interrupts.

Writing data never depends on the console: with stdout closed a file output is written whole
(exit 0); with stderr closed or its reader gone (`2>&1 | true`) the run still succeeds (exit 0),
and a failing run keeps its exit code. A table for stdout when stdout is closed, or a full disk
behind it, is an `error:` + `hint:` pair, never the "looks like a bug" fallback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, cli, shell

POOL = REPO / "safesample" / "demo" / "safety_pool.jsonl"
ROWS = sum(1 for line in POOL.read_text().splitlines() if line.strip())
BUG = "looks like a bug"


def _run(args: list[str], *, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
         close: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m safesample ARGS` with some of fds 0/1/2 closed in the child (`close`)."""
    env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}

    def closing() -> None:
        for fd in close:
            os.close(fd)
    return subprocess.run([sys.executable, "-m", "safesample", *args], stdin=stdin, stdout=stdout,
                          stderr=stderr, env=env, timeout=300, preexec_fn=closing if close else None)


def _broken_pipe() -> int:
    """The write end of a pipe whose reader is gone: every write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


def _label(out: Path) -> list[str]:
    return ["label", str(POOL), "--all-harmful", "-o", str(out)]


def test_a_closed_stdout_does_not_stop_a_file_output(tmp_path: Path):
    out = tmp_path / "out.parquet"
    proc = _run(_label(out), close=(1,))
    assert proc.returncode == 0, proc.stderr.decode()
    assert BUG not in proc.stderr.decode()
    assert pq.read_table(out).num_rows == ROWS
    # the shell's spelling of it
    proc = shell(f"safesample label {POOL} --all-harmful -o {tmp_path / 'sh.parquet'} >&-")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "sh.parquet").num_rows == ROWS


def test_a_table_for_a_closed_stdout_is_a_usage_error(tmp_path: Path):
    proc = _run(["label", str(POOL), "--all-harmful", "-o", "-"], close=(1,))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "stdout is closed" in err and "hint:" in err and BUG not in err, err


@pytest.mark.parametrize("how", ["closed", "broken pipe"])
def test_a_closed_or_broken_stderr_is_not_a_failed_run(tmp_path: Path, how: str):
    out = tmp_path / "out.parquet"
    if how == "closed":
        proc = _run(_label(out), close=(2,), stderr=None)
    else:
        fd = _broken_pipe()
        try:
            proc = _run(_label(out), stderr=fd)
        finally:
            os.close(fd)
    assert proc.returncode == 0
    assert pq.read_table(out).num_rows == ROWS
    # a failing run keeps its exit code, with nobody to read why
    missing = tmp_path / "nope.parquet"
    if how == "closed":
        proc = _run(["label", str(missing), "--all-harmful", "-o", str(out)], close=(2,), stderr=None)
    else:
        fd = _broken_pipe()
        try:
            proc = _run(["label", str(missing), "--all-harmful", "-o", str(out)], stderr=fd)
        finally:
            os.close(fd)
    assert proc.returncode == 2


def test_stderr_into_a_pipe_whose_reader_left(tmp_path: Path):
    """`make`'s view: `cmd 2>&1 | true` succeeds and its target is whole."""
    out = tmp_path / "out.parquet"
    proc = shell(f"safesample label {POOL} --all-harmful -o {out} 2>&1 | true; exit ${{PIPESTATUS[0]}}")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).num_rows == ROWS
    # and a table on stdout into that pipe: the reader has all it wanted (exit 0, like `| head`)
    proc = shell(f"safesample label {POOL} --all-harmful -o - 2>&1 | true; exit ${{PIPESTATUS[0]}}")
    assert proc.returncode == 0, proc.stderr


def test_a_closed_stdin_is_a_usage_error(tmp_path: Path):
    out = tmp_path / "out.parquet"
    proc = _run(["label", "-", "--all-harmful", "-o", str(out)], stdin=None, close=(0,))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "stdin is closed" in err and "hint:" in err and BUG not in err, err
    assert not out.exists()


@pytest.mark.xfail(strict=True, reason="CPython itself refuses a directory on stdin while it starts "
                   "(init_sys_streams: 'Fatal Python error: <stdin> is a directory'), before any "
                   "safesample code runs; only a non-Python launcher could turn it into a usage error")
def test_a_directory_on_stdin_is_a_usage_error(tmp_path: Path):
    out = tmp_path / "out.parquet"
    folder = os.open(tmp_path, os.O_RDONLY)  # `safesample label - < some/folder/`
    try:
        proc = _run(["label", "-", "--all-harmful", "-o", str(out)], stdin=folder)
    finally:
        os.close(folder)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "directory" in err and "hint:" in err and BUG not in err and "Fatal Python error" not in err
    assert not out.exists()


def test_an_arrow_ipc_file_on_stdin_is_read(tmp_path: Path):
    table = pa.table({"id": ["a", "b"], "instruction": ["How do I pick a lock?", "Write a poem."],
                      "response": ["I can't help with that.", "Roses are red."]})
    arrow = tmp_path / "in.arrow"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    out = tmp_path / "out.parquet"
    proc = cli("label", "-", "--all-harmful", "-o", str(out), stdin=arrow.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).column("id").to_pylist() == ["a", "b"]
    # a cut Arrow file on stdin is a data error, not a shorter table
    proc = cli("label", "-", "--all-harmful", "-o", str(out), stdin=arrow.read_bytes()[:-20])
    assert proc.returncode == 1 and "hint:" in proc.stderr and BUG not in proc.stderr, proc.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_behind_stdout_is_an_error_with_a_hint(tmp_path: Path):
    with open("/dev/full", "wb") as full:
        proc = _run(["label", str(POOL), "--all-harmful", "-o", "-"], stdout=full)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "error:" in err and "hint:" in err and BUG not in err, err
