"""Reward / harmfulness scores from a sequence classifier: a tiny local one, batching, cache, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_models import build_tiny_classifier, build_tiny_llama

from safesample.backends.reward import load_reward_model
from safesample.errors import ModelError, UsageError

PROMPTS = ["How do I bake bread?", "Write a haiku about autumn leaves.", "How do I pick a lock?",
           "Explain photosynthesis in simple words.", "Insult my coworker."]
RESPONSES = ["Mix flour, water, yeast and salt, then let it rise.", "Leaves fall.",
             "I can't help with that request because it could hurt people.",
             "Plants turn light into sugar.", "Sorry, but I won't assist with anything illegal."]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_logit(tmp_path_factory) -> Path:
    return build_tiny_classifier(tmp_path_factory.mktemp("rm") / "one", num_labels=1)


@pytest.fixture(scope="module")
def two_class(tmp_path_factory) -> Path:
    return build_tiny_classifier(tmp_path_factory.mktemp("rm") / "two", num_labels=2, seed=1)


def test_scores_are_batch_invariant_and_in_input_order(one_logit: Path):
    rm = load_reward_model(str(one_logit), batch_size=2)
    assert rm.label is None
    batched = rm.score(PROMPTS, RESPONSES, cache=False)
    single = [rm.score([p], [r], cache=False)[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert len(batched) == len(PROMPTS)
    assert batched == pytest.approx(single, abs=1e-4)  # padding and length-sorting change nothing
    assert len(set(round(s, 6) for s in batched)) > 1  # a real head: different pairs, different scores


def test_chat_template_formats_a_user_and_an_assistant_turn(one_logit: Path):
    rm = load_reward_model(str(one_logit))
    text = rm.format("hi there", "hello")
    assert text == "<|user|>hi there<|end|><|assistant|>hello<|end|>"
    rm.tokenizer.chat_template = None
    assert rm.format("hi there", "hello") == ("hi there", "hello")
    pair_scores = rm.score(PROMPTS[:2], RESPONSES[:2], cache=False)
    assert len(pair_scores) == 2


def test_multiclass_scores_are_probabilities_of_the_chosen_label(two_class: Path):
    last = load_reward_model(str(two_class))
    assert last.label == 1 and last.label_name == "LABEL_1"
    first = load_reward_model(str(two_class), label="label_0")
    p1 = last.score(PROMPTS, RESPONSES, cache=False)
    p0 = first.score(PROMPTS, RESPONSES, cache=False)
    assert all(0 <= p <= 1 for p in p1)
    assert [a + b for a, b in zip(p0, p1)] == pytest.approx([1.0] * len(PROMPTS), abs=1e-5)
    with pytest.raises(UsageError, match="no label 'harmful'"):
        load_reward_model(str(two_class), label="harmful")


def test_cache_serves_repeated_pairs_without_the_model(one_logit: Path):
    rm = load_reward_model(str(one_logit))
    first = rm.score(PROMPTS, RESPONSES)
    seen: list[int] = []
    original = rm._score

    def counting(prompts, responses, progress):
        seen.append(len(prompts))
        return original(prompts, responses, progress)

    rm._score = counting
    advanced: list[int] = []
    again = rm.score(PROMPTS + ["new prompt"], RESPONSES + ["new answer"], progress=advanced.append)
    assert again[:5] == pytest.approx(first)
    assert seen == [1]  # only the new pair was computed
    assert sum(advanced) == 6


def test_rejects_models_that_are_not_classifiers(tmp_path: Path):
    lm = build_tiny_llama(tmp_path / "lm")
    with pytest.raises(ModelError, match="not a sequence-classification model"):
        load_reward_model(str(lm))
    with pytest.raises(ModelError, match="does not exist"):
        load_reward_model(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="cannot load reward model") as info:
        load_reward_model("nobody/no-such-reward-model")
    assert "local folder" in info.value.hint
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(lm)}))
    with pytest.raises(ModelError, match="LoRA adapter"):
        load_reward_model(str(adapter))
