"""`--executor ray`: the same rows and values as the local executor, shard folders, faults.

One local Ray (2 CPUs) serves the whole test session; the CLI runs in subprocesses that join it
with --ray-address (the real command line: options, stdout kept for data, exit codes). Skipped
without Ray, except under CI=true where Ray is installed by `make install` and must run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import IN_CI, cli, shared_dataset

if importlib.util.find_spec("ray") is None:
    if IN_CI:
        raise RuntimeError("CI=true: ray must be installed (make install installs the ray extra)")
    pytest.skip("ray is not installed (pip install 'safesample[ray]')", allow_module_level=True)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROWS = 300


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """One local Ray with 2 CPUs for the session; its address for the CLI subprocesses."""
    import ray

    from safesample.executors import ray as rayx

    os.environ.setdefault("SAFESAMPLE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    # Bound to loopback only (never the machine's routable address): see rayx.loopback.
    address = rayx.start_local(num_cpus=2, log_to_driver=False, logging_level=logging.ERROR)
    assert address.startswith("127.0.0.1:"), address
    yield address
    ray.shutdown()


def run(*args: str, address: str | None = None) -> "object":
    extra = ("--executor", "ray", "--ray-address", address) if address else ()
    proc = cli(*args, *extra, os.environ.get("RAY_TEST_VERBOSITY", "-q"), env={"OMP_NUM_THREADS": "1"})
    return proc


def read(path: Path) -> pa.Table:
    from safesample.tables import read_table

    return read_table(str(path))


@pytest.fixture(scope="module")
def shards_in(tmp_path_factory) -> Path:
    """300 real rows of the safety pool as a folder of 3 shards with a manifest."""
    from safesample.tables.shards import write_sharded

    table = pq.read_table(shared_dataset("safety_tuned_llamas")).slice(0, ROWS)
    table = table.drop_columns([c for c in table.column_names if pa.types.is_null(table.schema.field(c).type)])
    folder = tmp_path_factory.mktemp("in") / "pool"
    write_sharded(table, str(folder) + "/", rows_per_shard=100)
    return folder


def _same(local: pa.Table, remote: pa.Table, skip: tuple[str, ...] = ()) -> None:
    assert remote.column("id").to_pylist() == local.column("id").to_pylist()
    assert remote.column_names == local.column_names
    for name in local.column_names:
        if name not in skip:
            assert remote.column(name).to_pylist() == local.column(name).to_pylist(), name


# --------------------------------------------------------------------------------------------
# shard folders (no Ray needed)


def test_shard_folder_round_trip_and_manifest(shards_in: Path, tmp_path: Path):
    from safesample.tables.shards import MANIFEST

    manifest = json.loads((shards_in / MANIFEST).read_text())
    assert manifest["rows"] == ROWS and len(manifest["files"]) == 3
    proc = cli("label", str(shards_in), "--all-harmful", "-o", str(tmp_path / "out") + "/", "-q")
    assert proc.returncode == 0, proc.stderr
    out = read(tmp_path / "out")
    assert out.num_rows == ROWS
    assert [e["command"] for e in json.loads(out.schema.metadata[b"safesample.provenance"])][-1] == "label"
    # A glob reads the same rows; a folder without its manifest is refused as incomplete.
    glob = cli("embed", str(shards_in / "*.parquet"), "--limit", "5", "-o", str(tmp_path / "e.parquet"), "-q")
    assert glob.returncode == 0, glob.stderr
    (tmp_path / "out" / MANIFEST).unlink()
    proc = cli("label", str(tmp_path / "out"), "--all-harmful", "-o", str(tmp_path / "x.parquet"))
    assert proc.returncode == 1 and "incomplete" in proc.stderr and "hint:" in proc.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_shard_output_refuses_a_foreign_folder(pairs_table: Path, tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    proc = cli("label", str(pairs_table), "-o", str(tmp_path / "mine") + "/")
    assert proc.returncode == 2 and "did not write" in proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------------------------
# same rows, same values


def test_label_rules_same_rows_and_values(ray_address: str, shards_in: Path, tmp_path: Path):
    local = run("label", str(shards_in), "--all-harmful", "-o", str(tmp_path / "local.parquet"))
    remote = run("label", str(shards_in), "--all-harmful", "--batch-size", "1", "-o",
                 str(tmp_path / "ray") + "/", address=ray_address)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == b""
    ray_table = read(tmp_path / "ray")
    _same(read(tmp_path / "local.parquet"), ray_table)
    entry = json.loads(ray_table.schema.metadata[b"safesample.provenance"])[-1]
    assert entry["args"]["executor"] == "ray" and entry["args"]["ray_address"] == ray_address
    # Tasks sized from the data: 300 rows over 2 workers, 3 tasks each.
    assert entry["args"]["concurrency"] is None and entry["args"]["ray_task_rows"] == 50
    manifest = json.loads((tmp_path / "ray" / "_SUCCESS").read_text())
    assert [f["rows"] for f in manifest["files"]] == [50] * 6


def test_embed_onnx_same_rows_and_values(ray_address: str, shards_in: Path, tmp_path: Path):
    import numpy as np

    from safesample.vectors import embedding_matrix

    local = run("embed", str(shards_in), "--no-cache", "-o", str(tmp_path / "local.parquet"))
    remote = run("embed", str(shards_in), "--no-cache", "--batch-size", "2", "--concurrency", "2",
                 "-o", str(tmp_path / "ray.parquet"), address=ray_address)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    a, b = read(tmp_path / "local.parquet"), read(tmp_path / "ray.parquet")
    _same(a, b, skip=("embedding",))
    assert b.schema.field("embedding").metadata == a.schema.field("embedding").metadata
    np.testing.assert_allclose(embedding_matrix(b), embedding_matrix(a), atol=1e-5)


def test_judge_same_rows_values_and_summary(ray_address: str, tiny_llama: Path, tmp_path: Path):
    table = pq.read_table(shared_dataset("xstest")).slice(0, 200)
    src = tmp_path / "eval.parquet"
    pq.write_table(table, src)
    common = ("judge", str(src), "--model", str(tiny_llama), "--max-new-tokens", "4", "--batch-size", "1",
              "--no-cache", "--scorer", "rules")
    local = run(*common, "-o", str(tmp_path / "local.parquet"), "--summary", str(tmp_path / "local.json"))
    remote = run(*common, "-o", str(tmp_path / "ray.parquet"), "--summary", str(tmp_path / "ray.json"),
                 address=ray_address)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    _same(read(tmp_path / "local.parquet"), read(tmp_path / "ray.parquet"))
    summary = {k: v for k, v in json.loads((tmp_path / "ray.json").read_text()).items() if k != "input"}
    assert summary == {k: v for k, v in json.loads((tmp_path / "local.json").read_text()).items()
                       if k != "input"}
    assert summary["overall"]["n"] == 200  # over every row, not one batch


# --------------------------------------------------------------------------------------------
# faults


@dataclass
class Dying:
    """Options of a batch function that kills its worker process once, on the batch holding
    `mark` (a marker file says it already died)."""

    marker: str
    mark: str


def die_once(table: pa.Table, opts: Dying, *, reporter=None):
    from safesample.label import LabelOptions, label_table

    if opts.mark in table.column("id").to_pylist() and not os.path.exists(opts.marker):
        Path(opts.marker).touch()
        os._exit(1)
    return label_table(table, LabelOptions(all_harmful=True))


@pytest.mark.parametrize("stateless", [False, True], ids=["actors", "tasks"])
def test_a_killed_worker_is_retried_and_every_row_comes_once(ray_address: str, shards_in: Path, tmp_path: Path,
                                                             stateless: bool):
    import ray.cloudpickle as cloudpickle

    from safesample.executors import ExecutorOptions
    from safesample.executors import ray as rayx

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    table = read(shards_in)
    ids = table.column("id").to_pylist()
    ex = ExecutorOptions(kind="ray", batch_size=1, quiet=True)  # 50-row tasks: 6 of them
    rayx.connect(ex)
    opts = Dying(str(tmp_path / "died"), ids[150])
    out = rayx.run_table(table, die_once, opts, ex, stateless=stateless)
    assert ex.task_rows == 50
    assert (tmp_path / "died").exists()  # the worker did die
    assert out.column("id").to_pylist() == ids  # every row once, in order
    assert out.column("behavior").null_count < out.num_rows


def test_bad_data_fails_like_local_and_leaves_no_manifest(ray_address: str, shards_in: Path, tmp_path: Path):
    table = read(shards_in)
    bad = table.set_column(table.column_names.index("instruction"), "instruction",
                           pa.array([None if i == 123 else t for i, t in
                                     enumerate(table.column("instruction").to_pylist())], pa.string()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    local = cli("embed", str(tmp_path / "bad.parquet"), "--no-cache", "-o", str(tmp_path / "l.parquet"))
    remote = cli("embed", str(tmp_path / "bad.parquet"), "--no-cache", "--executor", "ray", "--ray-address",
                 ray_address, "--batch-size", "1", "-o", str(tmp_path / "r") + "/")
    assert local.returncode == remote.returncode == 1
    lines = [ln for ln in remote.stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert lines == [ln for ln in local.stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert len(lines) == 2 and "null" in lines[0]
    assert not (tmp_path / "r" / "_SUCCESS").exists()


# --------------------------------------------------------------------------------------------
# vLLM through ray.data.llm, with a stand-in processor at its boundary


def test_vllm_processor_path_matches_local_generation(ray_address: str, tiny_llama: Path):
    import ray.data
    import torch

    from safesample.backends.models import load_causal_lm, load_tokenizer, resolve
    from safesample.executors import ExecutorOptions
    from safesample.executors import ray as rayx
    from safesample.judge import JudgeOptions, judge_table

    table = pq.read_table(shared_dataset("xstest")).slice(0, 24)
    opts = JudgeOptions(model=str(tiny_llama), max_new_tokens=5, batch_size=1, cache=False, engine="vllm")
    ref = resolve(str(tiny_llama))
    model, tok = load_causal_lm(ref, dtype="float32"), load_tokenizer(ref)
    seen: dict = {}

    def config_class(**config):
        seen["config"] = config
        return config

    def build_processor(config, preprocess, postprocess):
        def processor(ds):
            rows = []
            for row in ds.take_all():
                req = preprocess(row)
                seen.setdefault("requests", []).append(req)
                params = req["sampling_params"]
                with torch.inference_mode():
                    out = model.generate(input_ids=torch.tensor([req["tokenized_prompt"]]),
                                         max_new_tokens=params["max_tokens"], do_sample=False,
                                         pad_token_id=tok.pad_token_id or tok.eos_token_id,
                                         eos_token_id=tok.eos_token_id)
                text = tok.decode(out[0, len(req["tokenized_prompt"]):], skip_special_tokens=True)
                rows.append(postprocess({**req, "generated_text": text}))
            return ray.data.from_items(rows)
        return processor

    rayx.connect(ExecutorOptions(kind="ray", quiet=True))
    loader = rayx.vllm_loader(ExecutorOptions(kind="ray"), build_processor=build_processor,
                              config_class=config_class)
    on_ray = judge_table(table, opts, load_engine=loader)
    local = judge_table(table, JudgeOptions(model=str(tiny_llama), max_new_tokens=5, batch_size=1, cache=False,
                                            engine="transformers"))
    assert on_ray.table.column("response").to_pylist() == local.table.column("response").to_pylist()
    assert on_ray.summary["overall"] == local.summary["overall"]
    config = seen["config"]
    assert config["chat_template_stage"] is False and config["tokenize_stage"] is False
    assert config["model_source"] == ref.path
    assert all(r["sampling_params"]["temperature"] == 0.0 and r["sampling_params"]["max_tokens"] == 5
               for r in seen["requests"])
    assert all("model" not in r for r in seen["requests"])  # no LoRA adapter here


# --------------------------------------------------------------------------------------------
# the registry's executor: provenance, resume, interrupts


def test_embed_template_records_the_same_provenance_on_both_executors(ray_address: str, shards_in: Path,
                                                                     tmp_path: Path):
    common = ("embed", str(shards_in), "--template", r"{instruction}\n{response}", "--limit", "40")
    local = run(*common, "-o", str(tmp_path / "local.parquet"))
    remote = run(*common, "-o", str(tmp_path / "ray.parquet"), address=ray_address)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    executor_fields = {"executor", "ray_address", "concurrency", "ray_task_rows"}

    def entry(path: Path) -> dict:
        last = json.loads(read(path).schema.metadata[b"safesample.provenance"])[-1]
        return {**last, "args": {k: v for k, v in last["args"].items() if k not in executor_fields}}

    a, b = entry(tmp_path / "local.parquet"), entry(tmp_path / "ray.parquet")
    assert a["args"]["template"] == "{instruction}\n{response}" and a["args"]["backend"] == "onnx"
    assert a["args"] == b["args"] and a["models"] == b["models"] and a["inputs"] == b["inputs"]


@dataclass
class Counting:
    """Options of a per-row test stage that records each task it runs, and (with `fail_at`)
    raises on the batch holding that id once `wait_for` shards of the run are staged."""

    log: str
    staging: str
    fail_at: str | None = None
    wait_for: int = 0


@dataclass
class CountingResult:
    table: pa.Table


def counting_table(table: pa.Table, opts: Counting, *, reporter=None) -> CountingResult:
    import time

    from safesample.errors import DataError

    if opts.fail_at is not None and opts.fail_at in table.column("id").to_pylist():
        deadline = time.monotonic() + 60
        while len(list(Path(opts.staging).glob("*.json"))) < opts.wait_for and time.monotonic() < deadline:
            time.sleep(0.05)
        raise DataError("a bad row", "a test stage")
    with open(opts.log, "a") as fh:
        fh.write(f"{table.num_rows}\n")
    return CountingResult(table.append_column("seen", pa.array([True] * table.num_rows)))


def counting_provenance(opts: Counting):
    return {"fail_at": None}, {}


def counting_plan(table, opts):
    return []


def test_a_rerun_after_a_failure_skips_the_shards_that_were_finished(ray_address: str, shards_in: Path,
                                                                     tmp_path: Path):
    """A run that dies half-way leaves nothing a reader takes for data; the same command again
    runs only the tasks whose shards are not staged, and the folder holds every row once."""
    import ray.cloudpickle as cloudpickle

    from safesample.errors import DataError
    from safesample.executors import ExecutorOptions, run_stage
    from safesample.stages import Stage

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage = Stage("counting", "a test stage", "Counting", "counting_table", per_row=True,
                  provenance="counting_provenance", library_module=__name__)
    ids = read(shards_in).column("id").to_pylist()
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    ex = ExecutorOptions(kind="ray", address=ray_address, batch_size=1, quiet=True)  # 6 tasks of 50
    failing = Counting(str(log), str(out / ".staging"), fail_at=ids[-1], wait_for=3)
    with pytest.raises(DataError):
        run_stage(stage, failing, source=str(shards_in), output=str(out) + "/", ex=ex)
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob("*.parquet")), "an interrupted run leaves no shard a glob can read"
    staged = len(list((out / ".staging").glob("*.json")))
    assert 3 <= staged < 6
    log.unlink()
    ok = Counting(str(log), str(out / ".staging"))
    done = run_stage(stage, ok, source=str(shards_in), output=str(out) + "/",
                     ex=ExecutorOptions(kind="ray", address=ray_address, batch_size=1, quiet=True))
    ran = [int(n) for n in log.read_text().split()]
    assert len(ran) == 6 - staged and sum(ran) == 50 * (6 - staged)  # only the unfinished tasks ran
    table = read(out)
    assert done.rows == ROWS and table.column("id").to_pylist() == ids
    assert table.column("seen").to_pylist() == [True] * ROWS
    assert not (out / ".staging").exists()


def test_a_dead_ray_address_fails_at_once_naming_it(pairs_table: Path, tmp_path: Path):
    import time

    start = time.monotonic()
    proc = cli("label", str(pairs_table), "--all-harmful", "--executor", "ray", "-o", str(tmp_path / "x.parquet"),
               env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert time.monotonic() - start < 60
    assert proc.returncode == 2 and "127.0.0.1:1" in proc.stderr and "hint:" in proc.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_audit_same_rows_and_values_on_ray(ray_address: str, tiny_llama: Path, tmp_path: Path):
    """audit through the registry on Ray: the direction fit once on the driver, the rows scored in
    the workers, ranks and --drop-top over every row: the local run's table, value for value."""
    from test_audit import _anchors, _benign

    pq.write_table(_anchors(12), tmp_path / "anchors.parquet")
    pq.write_table(pa.concat_tables([_benign(6)] * 2).set_column(0, "id", pa.array([f"b{i}" for i in range(12)])),
                   tmp_path / "benign.parquet")
    common = ("audit", str(tmp_path / "benign.parquet"), "--model", str(tiny_llama), "--anchors",
              str(tmp_path / "anchors.parquet"), "--dtype", "float32", "--max-tokens", "64", "--batch-size", "2",
              "--no-cache", "--drop-top", "2")
    local = run(*common, "-o", str(tmp_path / "local.parquet"))
    remote = run(*common, "-o", str(tmp_path / "ray.parquet"), address=ray_address)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    a, b = read(tmp_path / "local.parquet"), read(tmp_path / "ray.parquet")
    assert a.num_rows == b.num_rows == 10  # 12 rows, the top 2 dropped
    _same(a, b, skip=("audit_score", "audit_similarity", "audit_z"))
    for name in ("audit_score", "audit_similarity", "audit_z"):
        x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
        assert all((u is None and v is None) or abs(u - v) < 1e-5 for u, v in zip(x, y)), name
    entry = json.loads(b.schema.metadata[b"safesample.provenance"])[-1]
    assert entry["args"]["executor"] == "ray" and entry["args"]["layer_read"] is not None
