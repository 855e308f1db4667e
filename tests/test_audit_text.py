"""The training text audit scores: `prompting.training_tokens` gives the token ids TRL's
SFTTrainer trains on (chat and Alpaca templates, EOS, special tokens, the completion mask), checked
against SFTTrainer's own tokenized dataset on the tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from safesample.prompting import TrainingTokens, training_example, training_texts, training_tokens

pytestmark = pytest.mark.usefixtures("offline_models")

ROWS = [("Write a haiku about autumn leaves.", None, "Sure! Here is a short poem about the rain."),
        ("Explain photosynthesis in simple words.", "for a child", "The capital of France is Paris."),
        ("How do I bake bread?", "", "Mix flour, water, yeast and salt, then let it rise.</s>")]


def _trl_dataset(model_dir: Path, template: str, tmp_path: Path, max_length: int | None):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    examples = [training_example(i, x, o, template) for i, x, o in ROWS]
    data = Dataset.from_dict({"prompt": [p for p, _ in examples], "completion": [c for _, c in examples]})
    # the settings safesample.finetune passes that touch tokenization
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=max_length, completion_only_loss=True,
                     report_to="none", use_cpu=True, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    return tokenizer, trainer.train_dataset


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_training_tokens_are_what_trl_trains_on(template: str, tiny_llama: Path, tmp_path: Path):
    tokenizer, dataset = _trl_dataset(tiny_llama, template, tmp_path, max_length=None)
    for (instruction, input, output), trl_ids, labels in zip(ROWS, dataset["input_ids"], dataset["labels"]):
        ours = training_tokens(tokenizer, instruction, input, output, template)
        assert ours.ids == trl_ids
        prompt_len = sum(1 for label in labels if label == -100)
        assert ours.prompt_len == prompt_len and all(label != -100 for label in labels[prompt_len:])
    prompt_text, full_text = training_texts(tokenizer, *ROWS[0], template)
    assert full_text.startswith(prompt_text)
    if template == "alpaca":
        assert full_text.endswith(tokenizer.eos_token) and prompt_text.endswith("### Response:\n")
        assert training_texts(tokenizer, *ROWS[2], template)[1].count(tokenizer.eos_token) == 1  # not twice
    else:
        assert full_text.endswith("<|end|>") and prompt_text.endswith("<|assistant|>")


def test_the_cut_is_trls_keep_start_truncation(tiny_llama: Path, tmp_path: Path):
    # 30 tokens: the first and last rows are cut inside their answer; the second row's prompt alone
    # is longer, so TRL drops it (no token left to learn from) and audit gives it an audit_error
    tokenizer, dataset = _trl_dataset(tiny_llama, "chat", tmp_path, max_length=30)
    ours = [training_tokens(tokenizer, *row, "chat") for row in ROWS]
    assert [len(t.ids) > 30 for t in ours] == [True, True, True]
    cut = [t.cut(30) for t in ours]
    assert [t.response_len > 0 for t in cut] == [True, False, True]
    assert [t.ids for t in cut if t.response_len > 0] == dataset["input_ids"]
    short = TrainingTokens(list(range(10)), 6).cut(4)
    assert short.ids == [0, 1, 2, 3] and short.prompt_len == 4 and short.response_len == 0
