"""A bounded, seeded fuzz of the command line (issue 26): every registered command
(`safesample.stages.STAGES`) with hostile option values (negative, zero, NaN, inf, huge, malformed
specs, undecodable bytes) and hostile inputs (wrong column types, invalid UTF-8, truncated files,
empty files, folders, JSON that is no table), run in this process through `safesample.cli.main`.

Every run must end with exit code 0, 1, 2 or 3; a failure must print an `error:` line and a
`hint:` line and leave no output file (nor a temporary one); and the "looks like a bug" fallback
is never the answer: that text is for real bugs only.

Bounded: CASES cases from SEED (the same cases every run), each under a time limit, the whole
test under a minute on a busy 2-core machine (160 cases in ~42 s at load 10 on 2 cores). No big
model loads: embed runs with --dry-run (it validates everything and loads nothing), audit and
finetune plan with a tiny local Llama, the pool's embeddings name a model no one has (so a table
that would be embedded with it fails at once); label (rules), cluster, select, mix, judge (rules
on given responses) and report run for real on tiny tables. To explore further:
`python tests/test_fuzz_cli.py SEED CASES` prints every failing case (seeds 1-12 x 250 cases
were run while writing it).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import time
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SEED = 26
CASES = 160
BUDGET_S = 45  # stop early (having run fewer cases) rather than pass a minute on a busy machine
CASE_LIMIT_S = 20  # one case running longer is a failure (a hang)
BUG = "looks like a bug"
REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "safesample" / "demo"

# Hostile values, by the kind of option they go to.
INTS = ["-1", "0", "1", "-2147483649", "4294967296", str(2 ** 63), str(10 ** 30), "1e3", "nan", "x", ""]
FLOATS = ["nan", "-nan", "inf", "-inf", "-1", "0", "1", "1e308", "1e-320", "-0.0", "2", "x", ""]
STRINGS = ["", " ", "-", "nan", "inf", "-1", "0", "=", "a=", "=1", "a=b=c", ",", "refusal=nan",
           "refusal=0.7,explanation=0.7", "refusal=-1", "refusal=inf", "1e999", "%", "-5%", "150%", "nan%",
           "0.5%", "{", "}", "{id:d}", "{instruction:999999999}", "{instruction!r:>99999999}", "{0}",
           "{instruction}{response}", "\udcff\udcfe", "\u200b", "a" * 5000, "../../etc/passwd", "x,y,,z",
           "refusal_rate=nan", "refusal_rate=", "nope=0.5", "delta_refusal_rate=inf"]


@dataclass
class Inputs:
    folder: Path
    pool: Path  # labelled demo pool with fake embeddings, categories and clusters (no model)
    benign: Path
    evals: Path
    judged: Path  # a judge output
    summary: Path  # a judge --summary JSON
    hostile: dict[str, Path]
    model: Path  # a tiny local causal LM


def build_inputs(folder: Path) -> Inputs:
    """The tiny tables every command can run on without a model, and the hostile files."""
    from safesample.vectors import embedding_column, embedding_field

    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (DEMO / "safety_pool.jsonl").read_text().splitlines()[:40]]
    table = pa.Table.from_pylist(rows)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(table.num_rows, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = table.num_rows
    styles = ["refusal", "explanation"]
    # A model no one has: a command that would embed another table with the pool's model (select
    # --exclude/--contrast, cluster --reference) fails at once instead of loading one.
    table = (table.append_column(embedding_field(8, "fuzz/no-such-model", "onnx", "instruction"),
                                 embedding_column(vectors))
             .append_column("harmful_request", pa.array([True] * n))
             .append_column("refusal", pa.array([i % 2 == 0 for i in range(n)]))
             .append_column("harmful_response", pa.array([False] * n))
             .append_column("behavior", pa.array([styles[i % 2] for i in range(n)]))
             .append_column("cluster", pa.array([i % 4 for i in range(n)], pa.int32())))
    pool = folder / "pool.parquet"
    pq.write_table(table, pool)
    benign = folder / "benign.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in
                                         (DEMO / "benign.jsonl").read_text().splitlines()[:60]]), benign)
    evals = folder / "evals.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in
                                         (DEMO / "eval_prompts.jsonl").read_text().splitlines()[:20]]), evals)
    judged = folder / "judged.parquet"
    judge_in = folder / "answers.parquet"
    pq.write_table(pa.table({"id": [f"e{i}" for i in range(12)],
                             "prompt": [f"How do I do thing {i}?" for i in range(12)],
                             "response": ["I can't help with that." if i % 2 else f"Sure: step {i}." for i in range(12)],
                             "category": ["a", "b", "c"] * 4}), judge_in)
    from safesample.cli import main

    summary = folder / "summary.json"
    with redirect_stderr(io.StringIO()):
        code = main(["judge", str(judge_in), "--responses", "-q", "--summary", str(summary), "-o", str(judged)])
    assert code == 0, "the judge fixture did not build"

    hostile: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        hostile[name] = folder / name
        hostile[name].write_bytes(data)

    put("empty.parquet", b"")
    put("empty.jsonl", b"")
    put("truncated.parquet", pool.read_bytes()[: pool.stat().st_size // 2])
    put("tail-cut.parquet", pool.read_bytes()[:-9])
    put("garbage.parquet", b"PAR1" + bytes(range(256)) * 4)
    put("bad-utf8.jsonl", b'{"id": "a", "instruction": "caf\xe9 \xff", "response": "ok"}\n'
                          b'{"id": "b", "instruction": "fine", "response": "\xc3\x28"}\n')
    put("bad-utf8.csv", b"id,instruction,response\na,caf\xe9 \xff,ok\nb,fine,\xc3\x28\n")
    put("null-line.jsonl", b'{"id": "a", "instruction": "x", "response": "y"}\nnull\n')
    put("array.json", b"[1, 2, 3]\n")
    put("scalar.jsonl", b"42\n")
    put("summary-like.json", b'{"refusal_rate": "high", "n": "many", "per_category": 3}\n')
    put("binary.bin", bytes(range(256)))
    put("header-only.csv", b"id,instruction,response\n")
    put("nul-esc.jsonl", b'{"id": "a", "instruction": "a\\u0000b\\u001b[31m", "response": "c\\u0000"}\n')
    wrong = pa.table({"id": [1, 2, 3], "instruction": [1, 2, 3], "response": [True, False, None],
                      "category": [1.5, None, 2.5], "embedding": [1.0, 2.0, 3.0], "behavior": [1, 2, 3]})
    hostile["wrong-types.parquet"] = folder / "wrong-types.parquet"
    pq.write_table(wrong, hostile["wrong-types.parquet"])
    nulls = pa.table({"id": pa.array([None, None], pa.string()), "instruction": pa.array([None, None], pa.string()),
                      "response": pa.array([None, None], pa.string())})
    hostile["nulls.parquet"] = folder / "nulls.parquet"
    pq.write_table(nulls, hostile["nulls.parquet"])
    (folder / "a-folder").mkdir(exist_ok=True)
    hostile["a-folder"] = folder / "a-folder"
    hostile["missing.parquet"] = folder / "missing.parquet"
    from tiny_models import build_tiny_llama

    model = build_tiny_llama(folder / "tiny-llama")  # audit and finetune plan with it: no big model hashed
    return Inputs(folder, pool, benign, evals, judged, summary, hostile, model)


def base_args(command: str, inp: Inputs, out: Path) -> list[str]:
    """A run of `command` that succeeds cheaply (no model loaded), the input first."""
    o = ["-o", str(out)]
    return {
        "label": [str(inp.pool), "--all-harmful", *o],
        "embed": [str(inp.pool), "--dry-run", *o],
        "cluster": [str(inp.pool), "--algorithm", "sklearn", "--k", "2", *o],
        "select": [str(inp.pool), "--budget", "6", "--strategy", "diverse", *o],
        "mix": [str(inp.benign), str(inp.pool), *o],
        "finetune": [str(inp.benign), "--model", str(inp.model), "--dry-run", "-o", str(out.with_suffix(""))],
        "audit": [str(inp.pool), "--model", str(inp.model), "--dry-run", *o],
        "judge": [str(inp.judged), "--responses", *o],
        "report": [str(inp.pool), str(inp.judged), str(inp.summary), "-o", str(out.with_suffix(".html"))],
    }.get(command, [str(inp.pool), "--dry-run", *o])


def options_of(command: str) -> list[tuple[str, Any, bool]]:
    """(flag, default, is_flag) of every option of `command`, from the CLI itself."""
    import typer

    from safesample.cli import app

    click_command = typer.main.get_command(app).commands[command]
    found = []
    for param in click_command.params:
        opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if not opts or opts[0] in ("--help", "--output", "--quiet", "--verbose", "--executor", "--ray-address"):
            continue
        found.append((opts[0], param.default, bool(getattr(param, "is_flag", False))))
    return found


FILE_OPTIONS = {"--reference", "--of", "--exclude", "--contrast", "--compare", "--prompt-file", "--judge-template",
                "--base"}


def hostile_value(rng: random.Random, flag: str, default: Any, inp: Inputs) -> str:
    if flag in FILE_OPTIONS:  # a hostile file, or a good table in the wrong place
        return str(rng.choice([*inp.hostile.values(), inp.evals, inp.benign, inp.judged, inp.summary]))
    if isinstance(default, bool):
        return rng.choice(STRINGS)
    if isinstance(default, int):
        return rng.choice(INTS + FLOATS[:4])
    if isinstance(default, float):
        return rng.choice(FLOATS + INTS[:6])
    return rng.choice(STRINGS + INTS[:4] + FLOATS[:3])


@dataclass
class Case:
    command: str
    args: list[str]
    out: Path
    what: str


def make_cases(seed: int, count: int, inp: Inputs, commands: list[str]) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for k in range(count):
        command = commands[k % len(commands)]
        out = inp.folder / "out" / f"case-{k}.parquet"
        args = base_args(command, inp, out)
        what = []
        if rng.random() < 0.35:  # a hostile input in place of the first table
            name = rng.choice(sorted(inp.hostile))
            args[0] = str(inp.hostile[name])
            what.append(f"input={name}")
        options = [o for o in options_of(command) if not o[2]]
        for _ in range(rng.choice([1, 1, 2])):
            if not options:
                break
            flag, default, _ = rng.choice(options)
            value = hostile_value(rng, flag, default, inp)
            args += [flag, value]
            what.append(f"{flag}={value[:40]!r}")
        cases.append(Case(command, args, out, ", ".join(what)))
    return cases


class _Hang(BaseException):
    pass


def run_case(case: Case) -> tuple[int, str]:
    from safesample.cli import main

    def alarm(signum, frame):  # noqa: ARG001
        raise _Hang(f"{case.command} ran over {CASE_LIMIT_S} s")

    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_LIMIT_S)
    try:
        with redirect_stderr(err):
            code = main([case.command, *case.args])
    except _Hang as exc:
        return -1, f"{err.getvalue()}\nhang: {exc}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


def problems(case: Case, code: int, err: str) -> list[str]:
    found = []
    if code == -1:
        found.append(f"no answer within {CASE_LIMIT_S} s")
    elif code not in (0, 1, 2, 3):
        found.append(f"exit code {code}")
    if BUG in err:
        found.append("the 'looks like a bug' fallback")
    if code != 0:
        lines = err.splitlines()
        if not any(line.startswith("error:") for line in lines):
            found.append("no error: line")
        if not any(line.startswith("hint:") for line in lines):
            found.append("no hint: line")
        left = [p.name for p in case.out.parent.iterdir()
                if p.name.startswith((case.out.stem, f".{case.out.stem}"))]
        if left:
            found.append(f"left {left} behind")
    return found


def fuzz(seed: int, count: int, folder: Path, budget_s: float | None = None,
         report: Callable[[str], None] | None = None) -> tuple[list[str], int]:
    from safesample.stages import STAGES

    inp = build_inputs(folder)
    (folder / "out").mkdir(exist_ok=True)
    os.environ.setdefault("SAFESAMPLE_CACHE_DIR", str(folder / "cache"))
    failures, ran = [], 0
    start = time.monotonic()
    for case in make_cases(seed, count, inp, [s.name for s in STAGES]):
        if budget_s is not None and time.monotonic() - start > budget_s:
            break
        code, err = run_case(case)
        ran += 1
        bad = problems(case, code, err)
        if bad:
            tail = " | ".join(err.strip().splitlines()[-2:])[:300]
            failures.append(f"{case.command} [{case.what}]: {', '.join(bad)} (exit {code}: {tail})")
            if report:
                report(failures[-1])
    return failures, ran


def test_the_cli_survives_hostile_options_and_inputs(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an option value taken for a relative path lands here
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    started = time.monotonic()
    failures, ran = fuzz(SEED, CASES, tmp_path, budget_s=BUDGET_S)
    print(f"fuzz: {ran} of {CASES} cases (seed {SEED}) in {time.monotonic() - started:.1f} s")
    assert ran >= 40, f"only {ran} cases ran in {BUDGET_S} s"
    assert not failures, f"{len(failures)} of {ran} cases failed:\n" + "\n".join(failures)


if __name__ == "__main__":
    import tempfile

    seed = int(sys.argv[1]) if len(sys.argv) > 1 else SEED
    count = int(sys.argv[2]) if len(sys.argv) > 2 else CASES
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_COLOR", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        t0 = time.monotonic()
        failures, ran = fuzz(seed, count, Path(tmp), report=lambda line: print(line, flush=True))
        print(f"{len(failures)} failures in {ran} cases, {time.monotonic() - t0:.1f} s")
