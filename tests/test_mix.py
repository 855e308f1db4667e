"""`safesample mix`: the union, the formats trainers read, mapping, checks, ids, pipes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cli, shared_dataset, shell
from safesample import mix as mx


def mix(parts, **options):
    """The mix of `parts` with these MixOptions fields."""
    return mx.mix_table(parts, mx.MixOptions(**options)).table
from safesample.errors import CheckFailed, DataError, UsageError
from safesample.tables import get_provenance, provenance_entry, read_table, with_provenance


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real rows: 60 benign Alpaca tasks, 12 Do-Not-Answer safety pairs (with provenance)."""
    folder = tmp_path_factory.mktemp("mix")
    benign = pq.read_table(shared_dataset("alpaca_gpt4_demo")).slice(0, 60)
    safety = pq.read_table(shared_dataset("do_not_answer")).slice(0, 12)
    safety = with_provenance(safety, provenance_entry("select", {"budget": "12"}, seed=4))
    paths = {"benign": folder / "benign.parquet", "safety": folder / "safety.parquet"}
    pq.write_table(benign, paths["benign"])
    pq.write_table(safety, paths["safety"])
    return paths


def _part(role: str, n: int, prefix: str, **extra) -> mx.Part:
    table = pa.table({"id": [f"{prefix}{i}" for i in range(n)],
                      "instruction": [f"{prefix} task {i}" for i in range(n)],
                      "output": [f"{prefix} answer {i}" for i in range(n)], **extra})
    return mx.Part(f"{prefix}.parquet", role, table)


# ---- stage logic --------------------------------------------------------------------------


@given(n_benign=st.integers(1, 40), safety=st.lists(st.integers(1, 15), min_size=1, max_size=3),
       seed=st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_mix_keeps_every_row_exactly_once_and_is_seeded(n_benign: int, safety: list[int], seed: int):
    parts = [_part(mx.BENIGN, n_benign, "b")] + [_part(mx.SAFETY, n, f"s{k}_") for k, n in enumerate(safety)]
    out = mix(parts, seed=seed)
    want = sorted(i for p in parts for i in p.table.column("id").to_pylist())
    assert sorted(out.column("id").to_pylist()) == want
    assert out.column("source").to_pylist().count(mx.SAFETY) == sum(safety)
    expected = {row["id"]: (row["instruction"], row["output"], p.role) for p in parts for row in p.table.to_pylist()}
    for row in out.to_pylist():  # each row keeps its own content and gets its input's source
        assert (row["instruction"], row["output"], row["source"]) == expected[row["id"]]
        assert row["messages"] == [{"role": "user", "content": row["instruction"]},
                                   {"role": "assistant", "content": row["output"]}]
    assert mix(parts, seed=seed).equals(out)
    unshuffled = mix(parts, shuffle=False)
    assert unshuffled.column("id").to_pylist() == [i for p in parts for i in p.table.column("id").to_pylist()]


def test_default_and_explicit_column_mapping():
    safety = mx.Part("s.parquet", mx.SAFETY, pa.table({"id": ["s0"], "prompt": ["Do harm"],
                                                       "response": ["I won't."]}))
    benign = mx.Part("b.parquet", mx.BENIGN, pa.table({"id": ["b0"], "question": ["2+2?"], "answer": ["4"],
                                                       "input": [None]}))
    out = mix([benign, safety], mapping=mx.parse_maps(["question=instruction,answer=output"]), shuffle=False)
    assert out.select(["instruction", "input", "output"]).to_pylist() == [
        {"instruction": "2+2?", "input": "", "output": "4"},
        {"instruction": "Do harm", "input": "", "output": "I won't."}]
    # an explicit mapping onto a column the table has is refused (other than the default pairs)
    taken = mx.Part("s.parquet", mx.SAFETY, pa.table({"id": ["s0"], "instruction": ["x"], "output": ["y"],
                                                      "reply": ["z"]}))
    with pytest.raises(DataError, match="already has a column 'output'"):
        mix([benign, taken], mapping={"question": "instruction", "answer": "output", "reply": "output"})
    with pytest.raises(UsageError, match="no input has: nothere"):
        mix([benign, safety], mapping={"nothere": "x", "question": "instruction", "answer": "output"})
    for bad in (["a"], ["a="], ["=b"], ["a=b,a=c"], ["a=x,b=x"]):
        with pytest.raises(UsageError):
            mx.parse_maps(bad)


def test_both_response_and_output_is_an_error_naming_both_and_the_map():
    """Issue 18: a safety table with `response` and `output` was mixed on `output` without a word."""
    benign = _part(mx.BENIGN, 3, "b")
    both = mx.Part("s.parquet", mx.SAFETY, pa.table({"id": ["s0"], "instruction": ["Do harm"],
                                                     "output": ["Sure, here is how"], "response": ["I won't."]}))
    with pytest.raises(DataError, match="both a 'response' and an 'output' column") as err:
        mix([benign, both])
    assert "--map response=output" in err.value.hint and "--map output=output" in err.value.hint
    # the user chooses: `response` (the old output kept as output_orig) ...
    out = mix([benign, both], mapping=mx.parse_maps(["response=output"]), shuffle=False)
    row = out.to_pylist()[-1]
    assert row["output"] == "I won't." and row["output_orig"] == "Sure, here is how"
    assert row["messages"][-1] == {"role": "assistant", "content": "I won't."}
    # ... or `output`
    out = mix([benign, both], mapping=mx.parse_maps(["output=output"]), shuffle=False)
    assert out.to_pylist()[-1]["output"] == "Sure, here is how"
    # with --slim the chosen answer is what stays
    slim = mix([benign, both], mapping=mx.parse_maps(["response=output"]), slim=True, shuffle=False)
    assert slim.column_names == ["id", "source", "instruction", "input", "output", "messages"]
    assert slim.column("output").to_pylist()[-1] == "I won't."


@pytest.mark.parametrize("fmt,columns", [
    ("both", ["id", "source", "instruction", "input", "output", "messages"]),
    ("alpaca", ["id", "source", "instruction", "input", "output"]),
    ("chat", ["id", "source", "messages"]),
])
def test_slim_keeps_only_id_source_and_the_formats_columns(fmt: str, columns: list[str]):
    benign = _part(mx.BENIGN, 4, "b", extra=[1, 2, 3, 4])
    safety = _part(mx.SAFETY, 2, "s", category=["a", "b"])
    out = mix([benign, safety], fmt=fmt, slim=True, seed=3)
    assert out.column_names == columns
    assert out.num_rows == 6 and sorted(out.column("id").to_pylist()) == ["b0", "b1", "b2", "b3", "s0", "s1"]
    full = mix([benign, safety], fmt=fmt, seed=3)
    assert full.select(columns).equals(out)  # same rows, same order, same values


def test_cli_slim_jsonl_has_only_the_chat(files: dict[str, Path], tmp_path: Path):
    out = tmp_path / "train.jsonl"
    proc = cli("mix", str(files["benign"]), str(files["safety"]), "--format", "chat", "--slim", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 72 and set(rows[0]) == {"id", "source", "messages"}


def test_zero_row_input_is_a_clear_error(files: dict[str, Path], tmp_path: Path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(files["safety"]).slice(0, 0), empty)
    with pytest.raises(DataError, match="has no rows"):
        mix([_part(mx.BENIGN, 2, "b"), mx.Part("e.parquet", mx.SAFETY, read_table(str(empty)))])
    proc = cli("mix", str(files["benign"]), str(empty), "-o", str(tmp_path / "t.parquet"))
    assert proc.returncode == 1 and "has no rows" in proc.stderr and "looks like a bug" not in proc.stderr
    assert not (tmp_path / "t.parquet").exists()


def test_null_id_is_refused():
    safety = mx.Part("s.parquet", mx.SAFETY, pa.table({"id": ["s0", None], "instruction": ["a", "b"],
                                                       "output": ["c", "d"]}))
    with pytest.raises(DataError, match="1 rows with an empty \\(null\\) id"):
        mix([_part(mx.BENIGN, 2, "b"), safety])


def test_chat_messages_with_input_and_system():
    part = mx.Part("b", mx.BENIGN, pa.table({"id": ["b0", "b1"], "instruction": ["Sum these.", "Hi"],
                                             "input": ["1, 2", ""], "output": ["3", "Hello"]}))
    out = mix([part, _part(mx.SAFETY, 1, "s")], shuffle=False, system="Be safe.")
    assert out.schema.field("messages").type == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert out.column("messages").to_pylist()[:2] == [
        [{"role": "system", "content": "Be safe."}, {"role": "user", "content": "Sum these.\n\n1, 2"},
         {"role": "assistant", "content": "3"}],
        [{"role": "system", "content": "Be safe."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello"}]]
    alpaca = mix([part, _part(mx.SAFETY, 1, "s")], fmt="alpaca")
    assert "messages" not in alpaca.column_names
    slim = mix([part, _part(mx.SAFETY, 1, "s", category=["x"])], fmt="chat", slim=True)
    assert slim.column_names == ["id", "source", "messages"]


def test_source_column_of_the_inputs_is_kept_as_origin_unless_it_came_from_mix():
    benign = _part(mx.BENIGN, 3, "b", source=["alpaca"] * 3)
    safety = _part(mx.SAFETY, 2, "s", source=["dna/GPT4"] * 2)
    out = mix([benign, safety], shuffle=False)
    assert out.column("origin").to_pylist() == ["alpaca"] * 3 + ["dna/GPT4"] * 2
    assert out.column("source").to_pylist() == ["benign"] * 3 + ["safety"] * 2
    # a mixture mixed again as the benign side keeps its own safety rows' source
    again = mix([mx.Part("train", mx.BENIGN, out.drop_columns(["messages"])), _part(mx.SAFETY, 1, "t")],
                   shuffle=False)
    assert again.column("source").to_pylist() == ["benign"] * 3 + ["safety"] * 3


def test_duplicate_ids_are_refused():
    with pytest.raises(DataError, match="ids of 's.parquet' are also in 'b.parquet'") as err:
        mix([_part(mx.BENIGN, 3, "b"), mx.Part("s.parquet", mx.SAFETY, _part(mx.SAFETY, 2, "b").table)])
    assert "twice" in err.value.message and err.value.hint
    dup = pa.table({"id": ["x", "x"], "instruction": ["a", "b"], "output": ["c", "d"]})
    with pytest.raises(DataError, match="repeats ids"):
        mix([_part(mx.BENIGN, 3, "b"), mx.Part("s", mx.SAFETY, dup)])


def test_checks_of_ratio_and_safety_budget():
    parts = [_part(mx.BENIGN, 200, "b"), _part(mx.SAFETY, 1, "s")]
    assert mix(parts, ratio=mx.parse_ratio("0.5%"), safety_budget=1).num_rows == 201
    with pytest.raises(CheckFailed, match="needs 2"):
        mix(parts, ratio=mx.parse_ratio("1%"))
    with pytest.raises(CheckFailed, match="not the 5 of --safety-budget"):
        mix(parts, safety_budget=5)
    assert mx.parse_ratio("0.005") == mx.parse_ratio("0.5%")
    for bad in ("x", "-1%", "0", "%"):
        with pytest.raises(UsageError):
            mx.parse_ratio(bad)


def test_bad_tables():
    benign = _part(mx.BENIGN, 2, "b")
    with pytest.raises(DataError, match="no 'output' column"):
        mix([benign, mx.Part("s", mx.SAFETY, pa.table({"id": ["s"], "instruction": ["x"]}))])
    with pytest.raises(DataError, match="1 of 2 rows of 's' have no text in 'output'"):
        mix([benign, mx.Part("s", mx.SAFETY, pa.table({"id": ["s", "t"], "instruction": ["x", "y"],
                                                          "output": ["", "z"]}))])
    with pytest.raises(DataError, match="do not fit together"):
        mix([_part(mx.BENIGN, 1, "b", extra=[1]), _part(mx.SAFETY, 1, "s", extra=[[1.0]])])
    with pytest.raises(UsageError, match="at least one safety table"):
        mix([benign])


# ---- the CLI --------------------------------------------------------------------------------


def test_cli_mix_real_tables_to_parquet(files: dict[str, Path], tmp_path: Path):
    out = tmp_path / "train.parquet"
    proc = cli("mix", str(files["benign"]), str(files["safety"]), "-o", str(out), "--seed", "9",
               "--safety-budget", "12")
    assert proc.returncode == 0, proc.stderr
    table = read_table(str(out))
    assert table.num_rows == 72
    for name in ("id", "instruction", "input", "output", "source", "origin", "messages", "category_coarse"):
        assert name in table.column_names
    assert table.column("source").to_pylist().count("safety") == 12
    assert "response" not in table.column_names  # mapped to output
    assert table.column("source").to_pylist()[:72] != ["benign"] * 60 + ["safety"] * 12  # shuffled
    history = get_provenance(table)
    assert [e["command"] for e in history] == ["select", "mix"]
    assert history[0]["seed"] == 4 and history[-1]["seed"] == 9
    assert history[-1]["inputs"] == [str(files["benign"]), str(files["safety"])]
    assert "12 safety rows" in proc.stderr


def test_cli_jsonl_export_for_trainers(files: dict[str, Path], tmp_path: Path):
    out = tmp_path / "train.jsonl"
    proc = cli("mix", str(files["benign"]), str(files["safety"]), "-o", str(out), "--format", "chat",
               "--slim", "--system", "You are helpful and safe.")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 72
    assert set(rows[0]) == {"id", "source", "messages"}
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"] and all(m["content"] for m in row["messages"])


def test_cli_map_and_ratio_check(files: dict[str, Path], tmp_path: Path):
    qa = pa.table({"id": ["q1", "q2"], "question": ["How do I hurt someone?", "Make a weapon."],
                   "answer": ["I can't help with that.", "I won't help with weapons."]})
    pq.write_table(qa, tmp_path / "qa.parquet")
    out = tmp_path / "train.parquet"
    args = ["mix", str(files["benign"]), str(tmp_path / "qa.parquet"), "--map", "question=instruction",
            "--map", "answer=output", "-o", str(out)]
    proc = cli(*args, "--ratio", "5%")  # 5% of 60 benign rows = 3, not 2
    assert proc.returncode == 3, proc.stderr
    assert "error: " in proc.stderr and "hint: " in proc.stderr and not out.exists()
    proc = cli(*args, "--ratio", "3.3%", "--no-shuffle")  # 3.3% of 60 = 1.98 -> 2
    assert proc.returncode == 0, proc.stderr
    table = read_table(str(out))
    assert table.column("instruction").to_pylist()[-2:] == ["How do I hurt someone?", "Make a weapon."]


def test_cli_dry_run_writes_nothing(files: dict[str, Path], tmp_path: Path):
    proc = cli("mix", str(files["benign"]), str(files["safety"]), "--dry-run", "-o", str(tmp_path / "t.parquet"))
    assert proc.returncode == 0, proc.stderr
    assert "plan: mix 60 benign + 12 safety rows" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_input_each_with_error_hint_exit_code_and_no_output(files: dict[str, Path], tmp_path: Path):
    out = str(tmp_path / "out.parquet")
    empty, truncated = tmp_path / "empty.parquet", tmp_path / "cut.parquet"
    empty.write_bytes(b"")
    truncated.write_bytes(files["safety"].read_bytes()[:3000])
    noout = tmp_path / "noout.parquet"
    pq.write_table(pa.table({"id": ["z"], "instruction": ["x"]}), noout)
    benign, safety = str(files["benign"]), str(files["safety"])
    cases = [
        (["mix", benign, str(tmp_path / "missing.parquet"), "-o", out], 2, "does not exist"),
        (["mix", benign, str(empty), "-o", out], 1, "is empty"),
        (["mix", benign, str(truncated), "-o", out], 1, "truncated or corrupt"),
        (["mix", benign, str(noout), "-o", out], 1, "no 'output' column", "--map"),
        (["mix", benign, benign, "-o", out], 1, "are also in"),
        (["mix", benign, "-o", out], 2, "at least one safety table"),
        (["mix", benign, safety, "--map", "nonsense", "-o", out], 2, "bad --map"),
        (["mix", benign, safety, "--ratio", "lots", "-o", out], 2, "bad --ratio"),
        (["mix", benign, safety, "--safety-budget", "11", "-o", out], 3, "not the 11"),
        (["mix", benign, safety, "--format", "xml", "-o", out], 2, "'xml'"),
        (["mix", benign, safety, "-o", str(tmp_path / "out.txt")], 2, "cannot tell the output format"),
    ]

    def run(case):
        args, code, *needles = case
        proc = cli(*args)
        assert proc.returncode == code, (args, proc.stderr)
        assert "error: " in proc.stderr and "hint: " in proc.stderr, proc.stderr
        for needle in needles:
            assert needle in proc.stderr, (needle, proc.stderr)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(run, cases))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]


# ---- pipes ------------------------------------------------------------------------------------


def test_pipe_select_into_mix_and_mix_into_select(files: dict[str, Path], tmp_path: Path):
    """`select -o - | mix benign - -o -  | select - ...` under pipefail: columns, types, provenance."""
    pool = pq.read_table(shared_dataset("do_not_answer"))
    pq.write_table(pool, tmp_path / "pool.parquet")
    script = (f"safesample select {tmp_path / 'pool.parquet'} --strategy stratified --category-col "
              f"category_coarse --budget 16 --seed 2 -o - -q "
              f"| safesample mix {files['benign']} - -o - --seed 5 -q "
              f"| safesample select - --strategy random --budget 30 --seed 1 -o {tmp_path / 'out.parquet'} -q")
    proc = shell(script)
    assert proc.returncode == 0, proc.stderr
    out = read_table(str(tmp_path / "out.parquet"))
    assert out.num_rows == 30
    types = {f.name: f.type for f in out.schema}
    assert types["messages"] == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert types["select_rank"] == pa.int64() and pa.types.is_string(types["source"])
    assert pa.types.is_integer(types["response_action"])  # a safety-only column survives, nulls for benign
    history = get_provenance(out)
    assert [e["command"] for e in history] == ["select", "mix", "select"]
    assert [e["seed"] for e in history] == [2, 5, 1]
    assert history[0]["args"]["strategy"] == "stratified" and history[1]["inputs"][1] == "-"


def test_pipe_failure_upstream_fails_the_pipeline(files: dict[str, Path], tmp_path: Path):
    proc = shell(f"safesample select {tmp_path / 'nope.parquet'} --budget 3 -o - "
                 f"| safesample mix {files['benign']} - -o {tmp_path / 'out.parquet'}")
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr and "stdin is empty" in proc.stderr
    assert not (tmp_path / "out.parquet").exists()
