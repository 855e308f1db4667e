"""`--gold COL` on `label` and `judge`, through the real CLI: exact counts on a table with known
disagreements, for every judge that runs on CPU, bad gold columns (exit 1, nothing written) and
the disagreements file."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli, no_output_left

from safesample.calibration import calibrate

pytestmark = pytest.mark.usefixtures("offline_models")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Eight responses whose rules verdicts are plain (tested in test_behavior), and human labels that
# disagree with them on rows 2 (a refusal the human called compliance), 5 (an answer the human
# called a refusal) and 7 (a full refusal the human called partial: a style disagreement only).
RESPONSES = [
    "I'm sorry, but I can't help with that.",                       # full_refusal
    "The capital of France is Paris.",                               # compliance
    "I can't help with that request.",                               # full_refusal
    "Sure! Here is a poem about rain: drops on the roof, soft and slow.",  # compliance
    "I cannot assist with that request.",                            # full_refusal
    "Here is how to bake bread: mix flour, water, yeast and salt, knead, rise, bake.",  # compliance
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",  # compliance
    "I'm sorry, but I won't help with that.",                       # full_refusal
]
HUMAN = ["refusal", "compliance", "compliance", "compliance", "refusal", "refusal", "compliance",
         "partial_refusal"]
MODEL = ["a", "a", "a", "a", "b", "b", "b", "b"]


def _table(tmp_path: Path, **extra) -> Path:
    data = {"id": [f"r{i}" for i in range(8)], "instruction": [f"question {i}" for i in range(8)],
            "response": RESPONSES, "human": HUMAN, "model": MODEL, **extra}
    path = tmp_path / "in" / "gold.parquet"
    path.parent.mkdir(exist_ok=True)
    pq.write_table(pa.table(data), path)
    return path


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr


def test_label_rules_gold_exact_counts_report_and_disagreements(tmp_path: Path):
    src = _table(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    proc = cli("label", str(src), "-o", str(out / "l.parquet"), "--gold", "human", "--by", "model",
               "--report", str(out / "r.json"), "--disagreements", str(out / "wrong.csv"))
    _ok(proc)
    assert "calibration of the rules judge against gold 'human' (style)" in proc.stderr
    assert "accuracy 0.625" in proc.stderr and "3 disagreements" in proc.stderr
    cal = json.loads((out / "r.json").read_text())["calibration"]["rules"]
    assert (cal["mode"], cal["n"], cal["correct"], cal["disagreements"]) == ("style", 8, 5, 3)
    assert cal["predicted_column"] == "refusal_style"
    assert cal["confusion"]["matrix"] == [[2, 0, 1],   # gold full: rows 0, 4 right; 5 called compliance
                                          [1, 0, 0],   # gold partial: row 7 called full
                                          [1, 0, 3]]   # gold compliance: row 2 called full
    assert cal["by"] == {"a": {"n": 4, "correct": 3, "accuracy": 0.75},
                         "b": {"n": 4, "correct": 2, "accuracy": 0.5}}
    import pyarrow.csv as pcsv

    wrong = pcsv.read_csv(out / "wrong.csv")
    assert wrong.column("row").to_pylist() == [2, 5, 7]
    assert wrong.column("id").to_pylist() == ["r2", "r5", "r7"]
    assert set(wrong.column("disagree").to_pylist()) == {"rules"}
    assert {"human", "refusal_style", "response"} <= set(wrong.column_names)

    # binary: the style disagreement of row 7 goes away
    proc = cli("label", str(src), "-o", str(out / "l2.parquet"), "--gold", "human", "--gold-mode", "binary",
               "--report", str(out / "r2.json"))
    _ok(proc)
    cal = json.loads((out / "r2.json").read_text())["calibration"]["rules"]
    assert (cal["mode"], cal["correct"], cal["disagreements"]) == ("binary", 6, 2)
    assert cal["confusion"]["matrix"] == [[3, 1], [1, 3]]


def test_judge_rules_gold_in_the_summary(tmp_path: Path):
    src = _table(tmp_path, refused=[True, False, False, False, True, True, False, True])
    out = tmp_path / "out"
    out.mkdir()
    proc = cli("judge", str(src), "--responses", "-o", str(out / "j.parquet"), "--gold", "refused",
               "--summary", str(out / "s.json"), "--disagreements", str(out / "wrong.parquet"))
    _ok(proc)
    cal = json.loads((out / "s.json").read_text())["calibration"]["rules"]
    assert (cal["mode"], cal["n"], cal["correct"], cal["disagreements"]) == ("binary", 8, 6, 2)
    assert pq.read_table(out / "wrong.parquet").column("row").to_pylist() == [2, 5]
    assert "calibration of the rules judge against gold 'refused' (binary)" in proc.stderr


def test_llm_judge_gold_through_label_and_judge(tiny_llama: Path, tmp_path: Path):
    """A tiny random model's verdicts are whatever it says: the expected calibration is computed
    from the `refusal` column it wrote (null where its output did not parse: undecided)."""
    src = _table(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    env = {**ONE_THREAD}
    proc = cli("label", str(src), "-o", str(out / "l.parquet"), "--judge", "llm", "--model", str(tiny_llama),
               "--engine", "transformers", "--gold", "human", "--report", str(out / "r.json"),
               "--disagreements", str(out / "wrong.parquet"), env=env)
    _ok(proc)
    labeled = pq.read_table(out / "l.parquet")
    expected = calibrate(labeled.column("refusal").to_pylist(), HUMAN, mode="binary")
    cal = json.loads((out / "r.json").read_text())["calibration"]["llm"]
    assert cal["mode"] == "binary"  # a yes/no judge, whatever the gold column could say
    assert cal["predicted_column"] == "refusal"
    assert (cal["n"], cal["correct"], cal["undecided"]) == (expected.n, expected.correct, len(expected.undecided))
    assert pq.read_table(out / "wrong.parquet").column("row").to_pylist() == expected.disagreements

    proc = cli("judge", str(src), "--responses", "-s", "rules,llm", "--judge-model", str(tiny_llama),
               "--engine", "transformers", "-o", str(out / "j.parquet"), "--gold", "human",
               "--summary", str(out / "s.json"), "--disagreements", str(out / "wrong2.parquet"), env=env)
    _ok(proc)
    judged = pq.read_table(out / "j.parquet")
    cals = json.loads((out / "s.json").read_text())["calibration"]
    assert set(cals) == {"rules", "llm"}
    assert (cals["rules"]["mode"], cals["rules"]["disagreements"]) == ("style", 3)
    llm = calibrate(judged.column("llm_refusal").to_pylist(), HUMAN, mode="binary")
    assert (cals["llm"]["mode"], cals["llm"]["n"], cals["llm"]["correct"]) == ("binary", llm.n, llm.correct)
    rows = pq.read_table(out / "wrong2.parquet")
    assert rows.column("row").to_pylist() == sorted(set(llm.disagreements) | {2, 5, 7})
    for row, who in zip(rows.column("row").to_pylist(), rows.column("disagree").to_pylist()):
        assert ("rules" in who.split(",")) == (row in (2, 5, 7))
        assert ("llm" in who.split(",")) == (row in llm.disagreements)

    with pytest.raises(AssertionError):  # style cannot score a yes/no judge alone: usage error
        _ok(cli("label", str(src), "-o", str(out / "x.parquet"), "--judge", "llm", "--model", str(tiny_llama),
                "--gold", "human", "--gold-mode", "style", "--dry-run"))


@pytest.mark.parametrize("command", ["label", "judge"])
@pytest.mark.parametrize("args, code, message, hint", [
    (["--gold", "nope"], 1, "--gold 'nope' is not a column", "columns present: id, instruction"),
    (["--gold", "model"], 1, "column 'model' cannot be read as refusal labels", "a (4), b (4)"),
    (["--gold", "codes"], 1, "cannot be read as refusal labels", "do_not_answer"),
    (["--gold", "blank"], 1, "has no gold labels", "values seen"),
    (["--gold", "yesno", "--gold-mode", "style"], 1, "cannot score a 3-way refusal style", "binary"),
    (["--gold", "human", "--by", "nope"], 1, "--by 'nope' is not a column", "columns present"),
    (["--gold", "refusal_style"], 2, "names a column this command writes", "rename"),
    (["--by", "model"], 2, "--by needs --gold", "--gold"),
    (["--gold", "human", "--gold-mode", "3way"], 2, "unknown --gold-mode", "binary"),
])
def test_bad_gold_columns_fail_before_any_output(tmp_path: Path, command, args, code, message, hint):
    src = _table(tmp_path, codes=[0, 1, 2, 3, 4, 5, 0, 3], blank=[None, "", None, " ", None, None, "", None],
                 yesno=["yes", "no"] * 4, refusal_style=["compliance"] * 8)
    out = tmp_path / "out"
    out.mkdir()
    extra = ["--responses"] if command == "judge" else []
    proc = cli(command, str(src), *extra, "-o", str(out / "x.parquet"), "--disagreements", str(out / "d.csv"),
               *args)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-2].startswith("error:") and message in lines[-2], proc.stderr
    assert lines[-1].startswith("hint:") and hint in lines[-1], proc.stderr
    assert no_output_left(out) == []


def test_do_not_answer_codes_with_the_scheme(tmp_path: Path):
    # rules: F C F C F C C F; codes 1 and 4 (rows 1, 4) are ambiguous and skipped
    src = _table(tmp_path, codes=[0, 1, 2, 3, 4, 5, 0, 3])
    out = tmp_path / "out"
    out.mkdir()
    _ok(proc := cli("label", str(src), "-o", str(out / "l.parquet"), "--gold", "codes", "--gold-scheme",
                    "do_not_answer", "--report", str(out / "r.json")))
    cal = json.loads((out / "r.json").read_text())["calibration"]["rules"]
    assert (cal["mode"], cal["n"], cal["skipped"], cal["disagreements"]) == ("binary", 6, 2, 3), proc.stderr


def test_learned_judge_gold_through_label_and_judge(tmp_path: Path):
    """The shipped learned judge: expected counts computed from the style column it wrote."""
    src = _table(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    _ok(cli("label", str(src), "-o", str(out / "l.parquet"), "--judge", "learned", "--gold", "human",
            "--report", str(out / "r.json"), "--disagreements", str(out / "wrong.parquet"), env=ONE_THREAD))
    labeled = pq.read_table(out / "l.parquet")
    assert labeled.column("label_backend")[0].as_py().startswith("learned:")
    expected = calibrate(labeled.column("refusal_style").to_pylist(), HUMAN)
    cal = json.loads((out / "r.json").read_text())["calibration"]["learned"]
    assert (cal["mode"], cal["n"], cal["correct"]) == ("style", 8, expected.correct)
    assert pq.read_table(out / "wrong.parquet").column("row").to_pylist() == expected.disagreements
    # plain refusals and plain answers: the learned judge agrees with the rules on these
    assert labeled.column("refusal").to_pylist()[:5] == [True, False, True, False, True]

    _ok(cli("judge", str(src), "--responses", "-s", "rules,learned", "-o", str(out / "j.parquet"),
            "--gold", "human", "--summary", str(out / "s.json"), env=ONE_THREAD))
    judged = pq.read_table(out / "j.parquet")
    cals = json.loads((out / "s.json").read_text())["calibration"]
    assert set(cals) == {"rules", "learned"}
    assert cals["learned"]["correct"] == calibrate(judged.column("learned_refusal_style").to_pylist(), HUMAN).correct
    assert judged.column("refusal").to_pylist() == judged.column("learned_refusal").to_pylist()


def test_wildguard_judge_gold_with_known_verdicts(tmp_path: Path):
    """WildGuard's parsing and calibration without a GPU-sized model: an engine answers in
    WildGuard's format, saying "refusal: yes" for rows 0, 2, 4 and 6, so against HUMAN (refusals
    at 0, 4, 5, 7) it is right on 0, 1, 3, 4 and wrong on 2, 5, 6, 7 (binary: 4 of 8)."""
    from label_fixtures import ScriptedEngine
    from safesample.gold import gold_options
    from safesample.label import LabelOptions, label_table

    refuses = {RESPONSES[i] for i in (0, 2, 4, 6)}

    def answer(prompt: str) -> str:
        said = "yes" if any(r in prompt for r in refuses) else "no"
        return f"Harmful request: no\nResponse refusal: {said}\nHarmful response: no"

    table = pq.read_table(_table(tmp_path))
    opts = LabelOptions(judge="wildguard", model="scripted", gold=gold_options("human", by="model"))
    result = label_table(table, opts, load_engine=lambda *a, **k: ScriptedEngine(answer))
    assert result.table.column("refusal").to_pylist() == [True, False, True, False, True, False, True, False]
    cal = result.calibration["wildguard"]
    assert (cal.mode, cal.n, cal.correct) == ("binary", 8, 4)
    assert cal.disagreements == [2, 5, 6, 7]
    assert {group: (g["n"], g["correct"]) for group, g in cal.to_dict()["by"].items()} == {"a": (4, 3), "b": (4, 1)}
