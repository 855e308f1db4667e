"""Nothing lost, nothing silently wrong (issue 18): cut streams, batch-invariant embeddings under a
shared cache, kill -9 during a write, corrupt caches, outputs that would replace an input, modes."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, cli, shared_dataset
from safesample.cache import Cache
from safesample.errors import DataError
from safesample.reporter import RecordingReporter
from safesample.tables import read_table, read_stream, remove_stale_temps, write_table

ENV = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """200 real benign instructions (Alpaca-GPT4) plus 100 real harmful ones."""
    folder = tmp_path_factory.mktemp("pool")
    benign = pq.read_table(shared_dataset("alpaca_gpt4_demo"), columns=["id", "instruction"]).slice(0, 200)
    harmful = pq.read_table(shared_dataset("safety_tuned_llamas"), columns=["id", "instruction"]).slice(0, 100)
    path = folder / "pool.parquet"
    pq.write_table(pa.concat_tables([benign, harmful]), path)
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    """Real benign tasks (Alpaca-GPT4, 50) and safety pairs (safety_tuned_llamas, 20) for `mix`."""
    folder = tmp_path_factory.mktemp("pairs")
    benign = pq.read_table(shared_dataset("alpaca_gpt4_demo"), columns=["id", "instruction", "output"]).slice(0, 50)
    safety = pq.read_table(shared_dataset("safety_tuned_llamas"), columns=["id", "instruction", "response"]).slice(0, 20)
    pq.write_table(benign, folder / "benign.parquet")
    pq.write_table(safety, folder / "safety.parquet")
    return folder / "benign.parquet", folder / "safety.parquet"


def _stream_bytes(table: pa.Table, batch_rows: int) -> tuple[bytes, list[int]]:
    """The Arrow stream of `table` and the byte offsets where each batch message ends."""
    sink = pa.BufferOutputStream()
    ends = []
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(batch_rows):
            writer.write_batch(batch)
            ends.append(sink.tell())
    empty = pa.BufferOutputStream()
    with pa.ipc.new_stream(empty, table.schema):
        pass
    schema_end = len(empty.getvalue()) - 8  # the schema message, without the end marker
    return sink.getvalue().to_pybytes(), [schema_end, *ends]


# ---- 1. cut streams --------------------------------------------------------------------------


def test_stream_cut_at_batch_boundary_is_an_error_not_a_shorter_table(pairs: tuple[Path, Path],
                                                                      tmp_path: Path):
    benign, safety = pairs
    data, ends = _stream_bytes(read_table(str(safety)), 8)
    assert data.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    cut = data[:ends[2]]  # schema + two whole batches, no end marker: what a killed upstream leaves
    out = tmp_path / "out.parquet"
    proc = cli("mix", str(benign), "-", "-o", str(out), stdin=cut, env=ENV)
    assert proc.returncode == 1, proc.stderr
    assert "error: the input stream ended early (16 rows read)" in proc.stderr
    assert "hint:" in proc.stderr and "looks like a bug" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
    ok = cli("mix", str(benign), "-", "-o", str(out), stdin=data, env=ENV)  # the whole stream is fine
    assert ok.returncode == 0, ok.stderr
    assert read_table(str(out)).num_rows == 70


@pytest.mark.parametrize("where", ["schema only", "mid batch", "inside end marker"])
def test_stream_cut_elsewhere_says_so_too(pool: Path, tmp_path: Path, where: str):
    table = read_table(str(pool))
    data, ends = _stream_bytes(table, 100)
    cut = {"schema only": data[:ends[0]], "mid batch": data[:ends[1] + 500],
           "inside end marker": data[:-4]}[where]
    rows = {"schema only": 0, "mid batch": 100, "inside end marker": 300}[where]
    with pytest.raises(DataError, match=rf"the input stream ended early \({rows} rows read"):
        read_stream(pa.BufferReader(cut), "stdin")
    path = tmp_path / "cut.arrows"
    path.write_bytes(cut)
    proc = cli("embed", str(path), "-o", str(tmp_path / "e.parquet"), "--dry-run", env=ENV)
    assert proc.returncode == 1 and f"ended early ({rows} rows read" in proc.stderr, proc.stderr


def test_complete_empty_stream_is_fine():
    table = pa.table({"id": pa.array([], pa.string())})
    data, _ = _stream_bytes(table, 10)
    assert read_stream(pa.BufferReader(data), "stdin").num_rows == 0


# ---- 2. embeddings: same text, same vector -----------------------------------------------------


def test_concurrent_embeds_on_one_cache_match_a_serial_run(pool: Path, tmp_path: Path):
    shared_cache, serial_cache = tmp_path / "shared", tmp_path / "serial"
    # the ONNX export is made once, before the race (it is cached per model)
    warm = cli("embed", str(pool), "--limit", "2", "-o", str(tmp_path / "warm.parquet"),
               env={**ENV, "SAFESAMPLE_CACHE_DIR": str(shared_cache)})
    assert warm.returncode == 0, warm.stderr
    serial = tmp_path / "serial.parquet"
    proc = cli("embed", str(pool), "-o", str(serial), "--batch-size", "64",
               env={**ENV, "SAFESAMPLE_CACHE_DIR": str(serial_cache)})
    assert proc.returncode == 0, proc.stderr

    def run(args: tuple[str, str]):
        out, batch = args
        return cli("embed", str(pool), "-o", str(tmp_path / out), "--batch-size", batch,
                   env={**ENV, "SAFESAMPLE_CACHE_DIR": str(shared_cache)})

    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(run, [("a.parquet", "8"), ("b.parquet", "1")]))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    want = np.array(pq.read_table(serial).column("embedding").to_pylist(), np.float32)
    for name in ("a.parquet", "b.parquet"):
        got = np.array(pq.read_table(tmp_path / name).column("embedding").to_pylist(), np.float32)
        cos = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert float(np.max(1 - cos)) <= 1e-5


def test_embedding_cache_scope_names_everything_that_changes_a_vector():
    from safesample.backends.embedding import resolve_model

    model = resolve_model(None)
    scope = model.settings("onnx")
    for key in ("weights", "precision", "layout", "runtime", "backend"):
        assert scope[key]
    assert "max_length=" in scope["layout"] and "mean_tokens" in scope["layout"]
    # int8 by default since the install-time export (d6522ea), fp32 on request: the key names it
    assert scope["precision"] in ("int8", "fp32") and model.settings("torch") != scope


def test_embedding_backend_does_not_import_the_console():
    code = ("import sys; import safesample.backends.embedding, safesample.tables, safesample.cache, "
            "safesample.mix; print('safesample.console' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


# ---- 4. outputs never replace an input; modes ---------------------------------------------------


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(pool: Path, tmp_path: Path, how: str):
    src = tmp_path / "pool.parquet"
    src.write_bytes(pool.read_bytes())
    before = src.read_bytes()
    target = src
    if how == "symlink":
        target = tmp_path / "link.parquet"
        target.symlink_to(src)
    elif how == "hard link":
        target = tmp_path / "hard.parquet"
        os.link(src, target)
    proc = cli("select", str(src), "--budget", "20", "--limit", "10", "-o", str(target), env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert "is the input" in " ".join(proc.stderr.split()) and "hint:" in proc.stderr
    assert src.read_bytes() == before


def test_side_file_equal_to_the_output_is_refused_before_any_work(pool: Path, tmp_path: Path):
    out = tmp_path / "s.parquet"
    proc = cli("select", str(pool), "--budget", "5", "--report", str(out), "-o", str(out), env=ENV)
    assert proc.returncode == 2, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "--report" in said and "same file" in said
    assert not out.exists()


def test_outputs_get_the_umask_mode_and_keep_an_overwritten_files_mode(tmp_path: Path):
    table = pa.table({"id": ["a"], "x": [1]})
    old = os.umask(0o002)
    try:
        write_table(table, str(tmp_path / "new.parquet"))
        assert stat.S_IMODE(os.stat(tmp_path / "new.parquet").st_mode) == 0o664
        os.umask(0o022)
        write_table(table, str(tmp_path / "new2.jsonl"))
        assert stat.S_IMODE(os.stat(tmp_path / "new2.jsonl").st_mode) == 0o644
        keep = tmp_path / "shared.parquet"
        keep.write_bytes(b"x")
        os.chmod(keep, 0o660)
        write_table(table, str(keep))
        assert stat.S_IMODE(os.stat(keep).st_mode) == 0o660
    finally:
        os.umask(old)


def _read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    if os.geteuid() != 0:
        return folder
    # root writes into a mode-555 folder; a read-only file system stops even root
    for candidate in (Path("/sys"), Path("/proc")):
        try:
            fd = os.open(candidate / ".probe", os.O_CREAT | os.O_WRONLY, 0o600)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(candidate / ".probe")
    pytest.skip("running as root with no read-only folder to write into")


def test_read_only_output_folder_is_found_before_the_work(pool: Path, tmp_path: Path):
    folder = _read_only_folder(tmp_path)
    proc = cli("embed", str(pool), "-o", str(folder / "e.parquet"),
               env={**ENV, "SAFESAMPLE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    assert "not writable" in " ".join(proc.stderr.split()) and "embedded" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # stopped before loading or caching anything


# ---- 5. crash paths: caches ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_is_moved_aside_and_the_run_goes_on(pool: Path, tmp_path: Path, damage: str):
    cache = tmp_path / "cache"
    env = {**ENV, "SAFESAMPLE_CACHE_DIR": str(cache)}
    first = cli("embed", str(pool), "-o", str(tmp_path / "a.parquet"), env=env)
    assert first.returncode == 0, first.stderr
    db = cache / "embeddings.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in ("embeddings.sqlite-wal", "embeddings.sqlite-shm"):
        (cache / extra).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(os.urandom(4096) if damage == "garbage" else data[: len(data) // 3])
    dry = cli("embed", str(pool), "-o", str(tmp_path / "b.parquet"), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    said = " ".join(dry.stderr.split())  # the console wraps long lines
    assert "is corrupt" in said and "moved it aside" in said
    run = cli("embed", str(pool), "-o", str(tmp_path / "b.parquet"), env=env)
    assert run.returncode == 0, run.stderr
    assert np.allclose(np.array(pq.read_table(tmp_path / "a.parquet").column("embedding").to_pylist()),
                       np.array(pq.read_table(tmp_path / "b.parquet").column("embedding").to_pylist()), atol=1e-6)
    assert list(cache.glob("embeddings.sqlite.bad-*"))


def test_full_cache_disk_degrades_to_no_cache(tmp_path: Path):
    reporter = RecordingReporter()
    cache = Cache("t", "scope", folder=tmp_path, reporter=reporter)
    cache._db.execute("PRAGMA max_page_count = 8")  # a database that cannot grow: SQLITE_FULL
    cache.put_many((f"k{i}", os.urandom(2000)) for i in range(200))
    assert not cache.enabled and cache.get_many(["k1"]) == {}
    assert any("disk is full" in w for w in reporter.warnings())
    cache.put_many([("k", b"v")])  # later writes are no-ops, not errors
    cache.close()


def test_unwritable_cache_folder_degrades_to_no_cache(tmp_path: Path):
    reporter = RecordingReporter()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = Cache("t", "scope", folder=blocker / "sub", reporter=reporter)
    assert not cache.enabled and cache.get_many(["a"]) == {}
    assert reporter.warnings()


# ---- 6. loose ends: kill -9 during a write, signals ----------------------------------------


# The writer stalls after its first row group, so the kill lands mid-write however busy the
# machine is (a plain large write can finish, and rename, before the kill).
_WRITER = """
import sys, time, pyarrow as pa, pyarrow.parquet as pq
from safesample import tables
tables.formats.ROW_GROUP = 1000
write = pq.ParquetWriter.write_table
def stall(self, *a, **k):
    write(self, *a, **k)
    print("writing", flush=True)
    time.sleep(600)
pq.ParquetWriter.write_table = stall
table = pa.table({"id": pa.array([str(i) for i in range(5000)]), "text": pa.array(["x" * 40] * 5000)})
tables.write_table(table, sys.argv[1])
"""


def test_kill_9_during_the_final_write_then_rerun(pairs: tuple[Path, Path], tmp_path: Path):
    out = tmp_path / "out.parquet"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], cwd=REPO, stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = list(tmp_path.glob(".out.parquet.*.tmp"))
    assert left, "the writer was not caught mid-write"
    proc = cli("mix", str(pairs[0]), str(pairs[1]), "-o", str(out), env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.glob(".*.tmp"))
    assert "interrupted run left" in " ".join(proc.stderr.split())
    assert read_table(str(out)).num_rows == 70


def test_stale_temp_of_a_live_process_is_kept(tmp_path: Path):
    out = tmp_path / "x.parquet"
    live = tmp_path / f".x.parquet.{os.getpid()}-abcd1234.tmp"
    live.write_bytes(b"")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.parquet.{int(dead.stdout)}-abcd1234.tmp"
    stale.write_bytes(b"")
    other = tmp_path / f".y.parquet.{int(dead.stdout)}-abcd1234.tmp"
    other.write_bytes(b"")
    removed = remove_stale_temps(out)
    assert removed == [stale] and live.exists() and other.exists()


def _interrupt_embed(pool: Path, tmp_path: Path, sig: int, name: str, wait: float) -> tuple[int, bytes, Path]:
    """Start `embed` (SIGINT ignored, as in a background job), send `sig` after `wait` seconds."""
    out = tmp_path / f"{name}.parquet"
    proc = subprocess.Popen([sys.executable, "-m", "safesample", "embed", str(pool), "--no-cache",
                             "--backend", "torch", "-o", str(out)],
                            stderr=subprocess.PIPE, env={**os.environ, **ENV, "NO_COLOR": "1",
                                                         "SAFESAMPLE_CACHE_DIR": str(tmp_path / f"cache-{name}")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(wait)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_130_with_an_interrupted_line(pool: Path, tmp_path: Path, sig: int):
    code, err, out = _interrupt_embed(pool, tmp_path, sig, "e", 4)
    assert code == 130, err
    assert "interrupted" in err.decode() and "hint:" in err.decode()
    assert not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_inside_exec_still_exits_130(sig: int):
    """The cause of the old flake (SIGTERM exit 130 about one run in 13; found with a loop of 40
    runs and the interpreter's own flag read at exit): a KeyboardInterrupt that leaves code run by
    a string `exec()` (dataclasses builds its methods that way, so imports of torch, numpy and
    huggingface_hub do it) sets CPython's `_Py_UnhandledKeyboardInterrupt`, even when main()
    catches it later; at exit the interpreter then kills itself with SIGINT (exit -2) after we
    printed "interrupted". The handler raises a subclass of KeyboardInterrupt, which that exact
    type check does not match: here the signal lands inside an exec every time."""
    script = (
        "import os, signal\n"
        "from safesample import cli\n"
        "cli._install_signal_handlers()\n"
        "try:\n"
        f"    exec('import os, signal\\nos.kill(os.getpid(), {int(sig)})\\nfor _ in range(10**8): pass')\n"
        "except KeyboardInterrupt:\n"
        "    print('caught')\n")  # and end normally, as main() returning 130 does
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == b"caught\n", (proc.returncode, proc.stderr.decode())


def test_an_interrupt_while_the_commands_are_built_exits_130(monkeypatch, capsys):
    """The loop of 50 runs also found a signal landing in main() before its try (while typer
    builds the commands): an uncaught interrupt with a traceback, exit 1."""
    import typer

    from safesample import cli

    def interrupted(app):  # noqa: ARG001
        raise cli.Interrupted
    monkeypatch.setattr(typer.main, "get_command", interrupted)
    assert cli.main(["label", "--help"]) == 130
    assert "interrupted" in capsys.readouterr().err
