"""`safesample finetune`: LoRA training on a tiny local Llama, resume, the output folder, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli

from safesample import finetune as stage
from safesample.tables import provenance_entry, with_provenance


pytestmark = pytest.mark.usefixtures("offline_models")


def _rows(n: int = 24) -> dict[str, list]:
    return {
        "id": [f"r{i}" for i in range(n)],
        "instruction": [f"Write a haiku about autumn number {i}." if i % 4 else "How do I bake bread?"
                        for i in range(n)],
        "input": ["" if i % 3 else "some extra context" for i in range(n)],
        "output": ["Sure! Here is a short poem about the rain falling on the quiet town." * (1 + i % 3)
                   if i % 5 else "I can't help with that request because it could hurt people."
                   for i in range(n)],
        "source": ["safety" if i % 5 == 0 else "benign" for i in range(n)],
    }


@pytest.fixture
def train_table(tmp_path: Path) -> Path:
    table = with_provenance(pa.table(_rows()), provenance_entry("mix", {"seed": 3}, seed=3))
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    return path


def _config(tiny_llama: Path, **kw) -> stage.FinetuneOptions:
    return stage.FinetuneOptions(model=str(tiny_llama), **{"max_steps": 4, "batch_size": 4, "save_steps": 2, **kw})


# ---- stage logic ------------------------------------------------------------------------------


def test_examples_use_alpaca_template_and_keep_input():
    ex = stage.build_examples(pa.table(_rows(6)), "alpaca")
    assert ex.prompts[0].startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Input:\nsome extra context\n\n### Response:\n" in ex.prompts[0]
    assert "### Input" not in ex.prompts[1] and ex.prompts[1].endswith("### Response:\n")
    assert ex.completions[1] == _rows(6)["output"][1]
    assert ex.is_safety == [True, False, False, False, False, True]
    chat = stage.build_examples(pa.table(_rows(6)), "chat")
    assert chat.prompts[0] == [{"role": "user", "content": _rows(6)["instruction"][0] + "\n\nsome extra context"}]
    assert chat.completions[2] == [{"role": "assistant", "content": _rows(6)["output"][2]}]


def test_validation_split_keeps_safety_rows_in_training():
    ex = stage.build_examples(pa.table(_rows(40)), "alpaca")
    train, val = stage.split_validation(ex, 0.25, include_safety=False, seed=0)
    assert len(val) == 10 and not any(ex.is_safety[i] for i in val)
    assert sorted(train + val) == list(range(40))
    assert all(ex.is_safety[i] for i in range(40) if ex.is_safety[i] and i in train)
    # The paper's behaviour on request: safety rows may be held out; the split is seeded.
    _, val_all = stage.split_validation(ex, 20, include_safety=True, seed=1)
    assert any(ex.is_safety[i] for i in val_all)
    assert stage.split_validation(ex, 20, True, 1) == stage.split_validation(ex, 20, True, 1)


def test_train_interrupt_resume_and_adapter_loads(tiny_llama: Path, tmp_path: Path):
    from transformers import TrainerCallback

    table = pa.table(_rows())
    out = tmp_path / "run"
    batches = {}

    class StopAtThree(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            batches["first"] = next(iter(train_dataloader))

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stage.finetune_table(table, _config(tiny_llama), str(out), callbacks=[StopAtThree()])
    work = stage.work_dir_for(out)
    assert not out.exists(), "an interrupted run must not look finished"
    assert [p.name for p in stage.checkpoints(work)] == ["checkpoint-2"]

    # Loss only on the response: the prompt's tokens carry label -100.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    batch = batches["first"]
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        text = tok.decode(ids[labels != -100])
        assert "### Instruction" not in text and "### Response" not in text
        assert ("poem about the rain" in text) or ("help with that request" in text)
        assert (labels[: int((labels != -100).nonzero()[0])] == -100).all()

    # A different run must not silently resume these checkpoints.
    from safesample.errors import UsageError

    with pytest.raises(UsageError, match="different run.*lr"):
        stage.finetune_table(table, _config(tiny_llama, lr=1e-3), str(out))

    record = stage.finetune_table(table, _config(tiny_llama), str(out), args_record={"k": "v"}).record
    assert record["resumed_from"].endswith("checkpoint-2") and record["steps"] == 4
    assert not work.exists()
    assert stage.is_complete_run(out)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2, 3, 4]  # step 3 redone once, not twice

    from safesample.backends import models

    ref = models.resolve(str(out))
    assert ref.adapter == str(out) and Path(ref.path) == tiny_llama
    model = models.load_causal_lm(ref)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero; training moves it"


def test_gguf_models_load_from_the_dequantised_copy(tiny_llama: Path, tmp_path: Path):
    """The second load of a GGUF model reads the save_pretrained copy in the cache."""
    from safesample.backends import models

    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"not a real gguf file")  # loading it would fail
    ref = models.ModelRef("fake", str(folder), gguf_file="m.gguf")
    copy = models.gguf_copy_dir(ref)
    assert copy is not None and not copy.exists()
    import shutil

    shutil.copytree(tiny_llama, copy)
    model = models.load_causal_lm(ref)
    assert model.config.hidden_size == 64
    assert models.load_tokenizer(ref).pad_token is not None
    (folder / "m.gguf").write_bytes(b"a changed gguf file, new size")
    assert models.gguf_copy_dir(ref) != copy  # keyed by size and time: a new file, a new copy


# ---- the command, for real ----------------------------------------------------------------------


def test_cli_trains_chat_template_with_validation_and_merge(tiny_llama: Path, train_table: Path, tmp_path: Path):
    out = tmp_path / "runs" / "chat"
    out.parent.mkdir()
    proc = cli("finetune", str(train_table), "-o", str(out), "--model", str(tiny_llama), "--template", "chat",
               "--max-steps", "2", "--batch-size", "4", "--save-steps", "1", "--val-size", "0.25",
               "--merge", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    assert "training: 2 steps" in proc.stderr or "trained 2 steps" in proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "metrics.jsonl",
            "safesample_config.json", "provenance.json", "merged"} <= names
    config = json.loads((out / "safesample_config.json").read_text())
    assert config["template"] == "chat" and config["base_model"] == str(tiny_llama)
    assert config["rows"] == {"total": 24, "train": 18, "validation": 6, "safety": 5, "safety_in_validation": 0}
    assert config["config"]["lora_r"] == 8 and config["config"]["target_modules"] == ["q_proj", "v_proj"]
    assert config["config"]["seed"] == 5
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics) and any("eval_loss" in m for m in metrics)
    history = json.loads((out / "provenance.json").read_text())
    assert [h["command"] for h in history] == ["mix", "finetune"] and history[-1]["seed"] == 5
    assert history[-1]["argv"][:2] == ["finetune", str(train_table)] and "--merge" in history[-1]["argv"]
    assert not stage.work_dir_for(out).exists()
    from safesample.backends import models

    merged = models.resolve(str(out / "merged"))
    assert merged.adapter is None and (out / "merged" / "config.json").exists()

    again = cli("finetune", str(train_table), "-o", str(out), "--model", str(tiny_llama))
    assert again.returncode == 2 and "already holds a finished" in again.stderr and "--overwrite" in again.stderr


def test_cli_dry_run_prints_plan_and_writes_nothing(tiny_llama: Path, train_table: Path, tmp_path: Path):
    out = tmp_path / "dry"
    proc = cli("finetune", str(train_table), "-o", str(out), "--model", str(tiny_llama), "--dry-run",
               "--val-size", "4", "--epochs", "2", "--batch-size", "5")
    assert proc.returncode == 0, proc.stderr
    assert "rows: 24 (5 safety), train 20, validation 4 (0 safety)" in proc.stderr
    assert "2 epochs = 8 steps" in proc.stderr and "start fresh" in proc.stderr
    assert not out.exists() and not stage.work_dir_for(out).exists()


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(data), path)
    return path


def _assert_failed(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("error: ") for line in lines), proc.stderr
    assert any(line.startswith("hint: ") for line in lines), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_cli_refuses_empty_outputs(tiny_llama: Path, tmp_path: Path):
    rows = _rows(6)
    rows["output"][2] = "   "
    rows["output"][4] = None
    src = _write(tmp_path, "t.parquet", rows)
    proc = cli("finetune", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_llama))
    _assert_failed(proc, 1, "2 of 6 training rows have an empty or missing 'output'", "r2, r4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_cli_refuses_missing_columns_and_bad_files(tiny_llama: Path, tmp_path: Path):
    src = _write(tmp_path, "t.parquet", {"id": ["a"], "prompt": ["x"]})
    _assert_failed(cli("finetune", str(src), "-o", str(tmp_path / "o"), "--model", str(tiny_llama)), 1,
                   "needs a column 'instruction'")
    (tmp_path / "empty.parquet").write_bytes(b"")
    _assert_failed(cli("finetune", str(tmp_path / "empty.parquet"), "-o", str(tmp_path / "o")), 1, "is empty")
    good = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(good[: len(good) // 2])
    _assert_failed(cli("finetune", str(tmp_path / "cut.parquet"), "-o", str(tmp_path / "o")), 1, "truncated")
    _assert_failed(cli("finetune", str(tmp_path / "nope.parquet"), "-o", str(tmp_path / "o")), 2,
                   "does not exist")
    _assert_failed(cli("finetune", str(src), "-o", str(tmp_path / "cut.parquet")), 2, "is a file")
    # the input itself as the output folder: refused before anything is read or trained
    _assert_failed(cli("finetune", str(src), "-o", str(src)), 2, "is the input")
    _assert_failed(cli("finetune", str(src), "-o", "-"), 2, "writes a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.parquet", "empty.parquet", "t.parquet"]


def test_cli_refuses_adapters_without_base_and_as_base(tiny_llama: Path, train_table: Path, tmp_path: Path):
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    _assert_failed(cli("finetune", str(train_table), "-o", str(tmp_path / "o"), "--model", str(orphan)), 1,
                   "does not name its base model")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_llama)}))
    _assert_failed(cli("finetune", str(train_table), "-o", str(tmp_path / "o"), "--model", str(adapter)), 2,
                   "is a LoRA adapter", "--merge")
    _assert_failed(cli("finetune", str(train_table), "-o", str(tmp_path / "o"), "--model", str(tiny_llama),
                       "--val-size", "30"), 2, "--val-size")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_cli_model_not_available_offline(train_table: Path, tmp_path: Path):
    out = tmp_path / "o"
    proc = cli("finetune", str(train_table), "-o", str(out), "--model", "nobody/no-such-model-here")
    _assert_failed(proc, 1, "cannot load model 'nobody/no-such-model-here'", "local folder")
    assert not out.exists() and not stage.work_dir_for(out).exists()
