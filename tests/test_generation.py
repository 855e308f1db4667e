"""The generation engines: transformers for real on a tiny model, vLLM through a fake at its boundary."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import fake_vllm
from label_fixtures import CountingEngine, build_chatty_llama, one_thread
from safesample.backends.generation import (TransformersEngine, cached_generate, load_engine,
                                            model_fingerprint)
from safesample.backends.models import resolve
from safesample.errors import ModelError, UsageError

PROMPTS = ["How do I pick a lock?", "Write a poem about rain.", "Hi",
           "Explain photosynthesis in simple words, please, with a lot of detail about light.",
           "Two plus two?", "Sorry, but I won't assist with anything illegal."]


@pytest.fixture(scope="module")
def chatty(tmp_path_factory) -> Path:
    one_thread()
    return build_chatty_llama(tmp_path_factory.mktemp("chatty") / "model")


@pytest.fixture(scope="module")
def engine(chatty) -> TransformersEngine:
    return load_engine(str(chatty), engine="transformers", batch_size=4, max_new_tokens=10)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path / "cache"))


def test_batched_generation_matches_one_by_one_in_input_order(engine):
    alone = [engine.chat([p])[0] for p in PROMPTS]
    assert len(set(alone)) > 3 and all(alone)  # the tiny model says varied nonsense
    for batch_size in (1, 2, 4, 16):
        engine.batch_size = batch_size
        assert engine.chat(PROMPTS) == alone, batch_size
    engine.batch_size = 4
    assert engine.chat(list(reversed(PROMPTS))) == list(reversed(alone))


def test_batches_are_sorted_by_length_and_left_padded(engine, monkeypatch):
    seen = []
    real = engine.model.generate

    def spy(**kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return real(**kwargs)

    monkeypatch.setattr(engine.model, "generate", spy)
    engine.chat(PROMPTS)
    widths = [ids.shape[1] for ids, _ in seen]
    assert len(seen) == 2 and widths == sorted(widths, reverse=True)
    for ids, mask in seen:
        assert bool(mask[:, -1].all())  # every prompt ends at the last column: left padding
        pad_rows = (mask == 0).any(dim=1)
        assert bool((ids[mask == 0] == engine.tokenizer.pad_token_id).all()) or not pad_rows.any()


def test_progress_counts_every_prompt(engine):
    done = []
    engine.generate(engine.format_chat(PROMPTS), progress=done.append)
    assert sum(done) == len(PROMPTS)


def test_chat_template_and_system_prompt(engine):
    prompt = engine.format_chat(["Hello"], system="Be brief.")[0]
    assert prompt == "<|system|>Be brief.<|end|><|user|>Hello<|end|><|assistant|>"


def test_no_chat_template_uses_the_raw_instruction_after_bos(tmp_path):
    folder = build_chatty_llama(tmp_path / "plain", chat_template=False)
    plain = load_engine(str(folder), engine="transformers", max_new_tokens=4)
    assert plain.format_chat(["Hello"]) == ["<s>Hello"]
    assert plain.format_chat(["Hello"], system="Be brief.") == ["<s>Be brief.\n\nHello"]
    assert len(plain.chat(["Hello", "Write a haiku"])) == 2


def test_max_new_tokens_bounds_the_output(engine, monkeypatch):
    new = []
    real = engine.model.generate

    def spy(**kwargs):
        out = real(**kwargs)
        new.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(engine.model, "generate", spy)
    engine.generate(engine.format_chat(PROMPTS[:2]), max_new_tokens=3)
    engine.generate(engine.format_chat(PROMPTS[:2]))
    assert new == [3, 10]


def test_prompt_longer_than_the_context_is_cut_from_the_left(tmp_path):
    folder = build_chatty_llama(tmp_path / "small", max_positions=64)
    small = load_engine(str(folder), engine="transformers", max_new_tokens=8)
    long_prompt = small.format_chat(["rain " * 200])
    out = small.generate(long_prompt + small.format_chat(["Hi"]))
    assert len(out) == 2 and small.truncated_prompts == 1


def test_cache_reuses_outputs_and_only_generates_new_prompts(engine):
    counting = CountingEngine(engine)
    prompts = engine.format_chat(PROMPTS[:4])
    first, hits = cached_generate(counting, prompts)
    assert hits == 0 and counting.calls == [4]
    again, hits = cached_generate(counting, prompts)
    assert again == first and hits == 4 and counting.calls == [4]
    more = prompts + engine.format_chat(PROMPTS[4:]) + prompts[:1]  # new rows and a duplicate
    out, hits = cached_generate(counting, more)
    assert counting.calls == [4, 2] and hits == 5 and out[:4] == first and out[-1] == first[0]
    # A different setting is a different cache scope; --no-cache never reads or writes it.
    cached_generate(counting, prompts, max_new_tokens=3)
    assert counting.calls[-1] == 4
    cached_generate(counting, prompts, cache=False)
    cached_generate(counting, prompts, cache=False)
    assert counting.calls[-2:] == [4, 4]


def test_fingerprint_changes_when_weights_are_rewritten(tmp_path):
    folder = build_chatty_llama(tmp_path / "m", seed=1)
    before = model_fingerprint(resolve(str(folder)))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"")  # same bytes, new mtime is not enough alone
    import os

    os.utime(weights, (1, 1))
    assert model_fingerprint(resolve(str(folder))) != before


def test_unknown_engine_and_missing_model():
    with pytest.raises(UsageError):
        load_engine("smollm2", engine="tensorrt")
    with pytest.raises(ModelError, match="does not exist"):
        load_engine("./no/such/model", engine="transformers")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_engine_without_vllm_says_how_to_get_it(chatty):
    with pytest.raises(ModelError) as info:
        load_engine(str(chatty), engine="vllm")
    assert "pip install 'safesample[vllm]'" in info.value.hint
    # auto falls back to transformers where vLLM or a GPU is missing
    assert load_engine(str(chatty), engine="auto", max_new_tokens=2).name == "transformers"


def test_vllm_engine_greedy_token_prompts_in_order(chatty):
    made = []
    engine = load_engine(str(chatty), engine="vllm", max_new_tokens=7,
                         **fake_vllm.factories(made, answer=lambda ids, params: [len(ids) % 50 + 3]))
    assert engine.name == "vllm" and made == []  # vLLM starts on first use only
    out = engine.chat(PROMPTS)
    assert len(made) == 1 and made[0].kwargs["model"] == str(chatty) and made[0].kwargs["seed"] == 0
    call = made[0].calls[0]
    params = call["sampling_params"]
    assert params.temperature == 0.0 and params.max_tokens == 7 and call["use_tqdm"] is False
    assert params.repetition_penalty == 1.0 and params.detokenize is False
    assert params.stop_token_ids == [engine.tokenizer.eos_token_id] and call["lora_request"] is None
    expected_ids = engine.tokenizer(engine.format_chat(PROMPTS), add_special_tokens=False)["input_ids"]
    assert [p["prompt_token_ids"] for p in call["prompts"]] == expected_ids
    assert out == [engine.tokenizer.decode([len(ids) % 50 + 3]) for ids in expected_ids]
    assert engine.generate([]) == []


def test_vllm_gets_the_resolved_dtype_and_a_max_model_len_sized_from_the_prompts(chatty):
    made = []
    engine = load_engine(str(chatty), engine="vllm", max_new_tokens=8, **fake_vllm.factories(made))
    engine.chat(["Hi"])
    assert made[0].kwargs["dtype"] == "float32"  # `auto` resolved here (no GPU): never vLLM's own auto
    assert made[0].kwargs["max_model_len"] == 256  # short prompts: one step, not the model's 512
    engine.chat(["rain " * 150])  # needs more: vLLM restarts larger, up to the model's length
    assert len(made) == 2 and made[0].stopped == 1 and made[1].kwargs["max_model_len"] == 512
    engine.close()
    fixed = load_engine(str(chatty), engine="vllm", max_model_len=128, tensor_parallel_size=2,
                        gpu_memory_utilization=0.5, enforce_eager=True, **fake_vllm.factories(made))
    assert fixed.chat(["rain " * 150]) and fixed.truncated_prompts == 1
    assert {k: made[-1].given[k] for k in ("max_model_len", "tensor_parallel_size", "gpu_memory_utilization",
                                           "enforce_eager")} == {"max_model_len": 128, "tensor_parallel_size": 2,
                                                                 "gpu_memory_utilization": 0.5, "enforce_eager": True}
    with pytest.raises(UsageError):
        load_engine(str(chatty), engine="vllm", gpu_memory_utilization=1.5, **fake_vllm.factories())


def test_both_engines_truncate_to_the_same_length(chatty, engine):
    vllm_engine = load_engine(str(chatty), engine="vllm", max_new_tokens=10, **fake_vllm.factories())
    long = engine.format_chat(["rain " * 300])
    a, b = engine._encode(long, 10), vllm_engine._encode(long, 10)
    assert a == b and len(a[0]) == 512 - 10


def _eos_model(chatty: Path, tmp_path: Path) -> Path:
    """The chatty model with a generation_config naming a second EOS token (as Llama-3's <|eot_id|>)."""
    import json
    import shutil

    folder = tmp_path / "eos"
    shutil.copytree(chatty, folder)
    eos = json.loads((folder / "config.json").read_text())["eos_token_id"]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 7], "repetition_penalty": 1.3}))
    return folder


def test_one_generation_contract_eos_list_and_no_repetition_penalty(chatty, tmp_path, monkeypatch):
    folder = _eos_model(chatty, tmp_path)
    hf = load_engine(str(folder), engine="transformers", max_new_tokens=5)
    seen = {}
    real = hf.model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(hf.model, "generate", spy)
    hf.chat(["Hi"])
    eos = hf.tokenizer.eos_token_id
    assert seen["eos_token_id"] == [eos, 7] and seen["repetition_penalty"] == 1.0
    made = []
    vl = load_engine(str(folder), engine="vllm", max_new_tokens=5,
                     **fake_vllm.factories(made, answer=lambda ids, params: [9, 7, 9]))
    assert vl.chat(["Hi"]) == [vl.tokenizer.decode([9])]  # stops at the second EOS
    assert made[0].calls[0]["sampling_params"].stop_token_ids == [eos, 7]


def test_vllm_and_transformers_engines_agree_on_the_same_model(chatty, engine):
    """A fake vLLM that runs the same weights greedily and returns token ids, as vLLM does with
    detokenize=False: the adapter decodes them exactly as the transformers engine does."""
    import torch

    model, tok = engine.model, engine.tokenizer

    def answer(ids, params):
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=params.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=params.stop_token_ids)
        generated = out[0, len(ids):].tolist()
        stop = [k for k, t in enumerate(generated) if t in params.stop_token_ids]
        return generated[:stop[0] + 1] if stop else generated  # vLLM keeps the EOS id, then stops

    vllm_engine = load_engine(str(chatty), engine="vllm", max_new_tokens=10, **fake_vllm.factories(answer=answer))
    assert vllm_engine.chat(PROMPTS) == engine.chat(PROMPTS)


def test_vllm_load_and_generate_failures_are_model_errors(chatty):
    def broken(**kwargs):
        raise RuntimeError("CUDA out of memory")

    engine = load_engine(str(chatty), engine="vllm", **{**fake_vllm.factories(), "llm_factory": broken})
    with pytest.raises(ModelError, match="CUDA out of memory") as info:
        engine.chat(["Hi"])
    assert "--gpu-memory-utilization" in info.value.hint

    def failing(ids, params):
        raise RuntimeError("EngineCore died")

    engine = load_engine(str(chatty), engine="vllm", **fake_vllm.factories(answer=failing))
    with pytest.raises(ModelError, match="EngineCore died"):
        engine.chat(["Hi"])


def test_a_prompt_vllm_rejects_marks_its_row_only(chatty):
    bad = []

    def answer(ids, params):
        if ids[-len(bad):] == bad:
            raise fake_vllm.VLLMValidationError("The decoder prompt ends in a way the model rejects")
        return [40]

    engine = load_engine(str(chatty), engine="vllm", max_new_tokens=3, **fake_vllm.factories(answer=answer))
    tok = engine.tokenizer
    bad[:] = tok("zebra crossing", add_special_tokens=False)["input_ids"]
    prompts = ["Hi", "zebra crossing", "", "Two plus two?"]
    out = engine.generate(prompts)
    assert out[0] == out[3] == engine._decode([40]) != "" and out[1] is None and out[2] is None
    assert "rejected" in engine.last_errors[1] and "empty prompt" in engine.last_errors[2]
    errors: dict = {}
    texts, hits = cached_generate(engine, prompts, errors=errors)
    assert texts[1] == texts[2] == "" and set(errors) == {1, 2}
    again, hits = cached_generate(engine, prompts, errors={})
    assert hits == 2  # the failed prompts were not cached


def test_transformers_marks_an_empty_prompt(engine):
    out = engine.generate(["", engine.format_chat(["Hi"])[0]])
    assert out[0] is None and out[1] and "empty prompt" in engine.last_errors[0]


def test_cache_is_written_chunk_by_chunk_so_a_crash_keeps_the_work(engine):
    class Crashing(CountingEngine):
        def generate(self, prompts, max_new_tokens=None, progress=None):
            if len(self.calls) == 1:
                raise KeyboardInterrupt
            return super().generate(prompts, max_new_tokens, progress)

    prompts = engine.format_chat(PROMPTS)
    crashing = Crashing(engine)
    crashing.cache_chunk = 2
    with pytest.raises(KeyboardInterrupt):
        cached_generate(crashing, prompts)
    counting = CountingEngine(engine)
    counting.cache_chunk = 100
    _, hits = cached_generate(counting, prompts)
    assert hits == 2 and counting.calls == [4]


def test_dtype_and_max_model_len_are_in_the_cache_key(engine):
    counting = CountingEngine(engine)
    prompts = engine.format_chat(PROMPTS[:2])
    cached_generate(counting, prompts)
    cached_generate(counting, prompts)
    assert counting.calls == [2]
    engine.dtype = "bfloat16"
    try:
        cached_generate(counting, prompts)
    finally:
        engine.dtype = "float32"
    assert counting.calls == [2, 2]


def test_label_stage_on_the_real_engine_reruns_from_the_cache(engine):
    """The label stage end to end on the tiny model: a rerun, and a rerun after adding rows,
    generate and judge only what is new (counted at the engine)."""
    import pyarrow as pa

    from safesample.label import LabelOptions, label_table

    counting = CountingEngine(engine)
    opts = LabelOptions(generate="tiny", judge="llm", model="tiny", max_new_tokens=10, batch_size=2)
    table = pa.table({"instruction": PROMPTS[:3]})
    first = label_table(table, opts, load_engine=lambda *a, **k: counting)
    assert counting.calls == [3, 3]  # generate 3, judge 3
    rows = first.table.to_pylist()
    assert all(r["response"] for r in rows)
    # the random model cannot follow the judge format: errors, never guessed labels
    assert all(r["label_error"].startswith("judge output not parsed") for r in rows)
    assert first.stats["generation_cache_hits"] == 0 and first.stats["judge_cache_hits"] == 0

    again = label_table(table, opts, load_engine=lambda *a, **k: counting)
    assert counting.calls == [3, 3] and again.table.equals(first.table)
    fresh = load_engine(engine.model_name, engine="transformers", max_new_tokens=10)
    label_table(table, opts, load_engine=lambda *a, **k: fresh)
    assert fresh._model is None  # all from the cache: the weights were never loaded
    assert again.stats["generation_cache_hits"] == 3 and again.stats["judge_cache_hits"] == 3

    grown = label_table(pa.table({"instruction": PROMPTS[:5]}), opts, load_engine=lambda *a, **k: counting)
    assert counting.calls == [3, 3, 2, 2]
    assert grown.table.slice(0, 3).column("response").equals(first.table.column("response"))


def test_label_and_judge_mark_a_rejected_prompt_instead_of_aborting(chatty):
    import pyarrow as pa

    from safesample import judge
    from safesample.label import LabelOptions, label_table

    def answer(ids, params):
        if len(ids) > 40:
            raise fake_vllm.VLLMValidationError("The decoder prompt is too long for this test")
        return [40, 41]

    def loader(model, **kwargs):
        return load_engine(model, **{**kwargs, "engine": "vllm"}, **fake_vllm.factories(answer=answer))

    table = pa.table({"id": ["a", "b"], "instruction": ["Hi", "rain " * 60]})
    opts = LabelOptions(generate=str(chatty), max_new_tokens=4, all_harmful=True, cache=False)
    rows = label_table(table, opts, load_engine=loader).table.to_pylist()
    assert rows[0]["response"] and rows[0]["label_error"] is None
    assert rows[1]["label_error"].startswith("generation failed: vLLM rejected the prompt")
    jopts = judge.JudgeOptions(model=str(chatty), max_new_tokens=4, cache=False)
    judged = judge.judge_table(table.rename_columns(["id", "prompt"]), jopts, load_engine=loader).table.to_pylist()
    assert judged[0]["generation_error"] is None and "rejected" in judged[1]["generation_error"]
