"""Model lifetimes: engines and reward models are context managers whose close() really releases
the weights, so a judge or label run holds one model at a time; and library noise stays quiet."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

import fake_vllm
from tiny_models import build_tiny_classifier, build_tiny_llama

from safesample.backends.generation import VLLMEngine, load_engine
from safesample.backends.models import resolve
from safesample.errors import ModelError

pytestmark = pytest.mark.usefixtures("offline_models")


def _one_at_a_time(loader, refs: list):
    """Wrap a model loader: every load first checks that no model loaded before is still alive,
    then loads the weights at once and keeps only a weak reference to them."""

    def load(*args, **kwargs):
        alive = [i for i, r in enumerate(refs) if r() is not None]
        assert not alive, f"model(s) {alive} still resident when the next one loads"
        made = loader(*args, **kwargs)
        refs.append(weakref.ref(made.model))  # an engine loads its weights on first use
        return made

    return load


def test_close_releases_the_model_that_the_caller_still_holds(tiny_llama: Path):
    engine = load_engine(str(tiny_llama), engine="transformers", max_new_tokens=2)
    ref = weakref.ref(engine.model)
    gc.collect()
    assert ref() is not None  # holding the engine holds the weights: `del` in a helper frees nothing
    with engine:
        engine.chat(["Hi"])
    assert ref() is None  # closed: gone, though `engine` is still referenced here
    assert engine.chat(["Hi"]) and engine._model is not None  # used again: loads again
    engine.close()


def test_judge_holds_one_model_at_a_time(tiny_llama: Path, tmp_path: Path):
    from safesample import judge
    from safesample.backends.reward import load_reward_model

    classifier = build_tiny_classifier(tmp_path / "cls")
    refs: list = []
    table = pa.table({"id": ["a", "b"], "prompt": ["How do I pick a lock?", "Write a poem."]})
    opts = judge.JudgeOptions(model=str(tiny_llama), scorers=["rules", "llm", "reward"],
                              judge_model=str(tiny_llama), reward_model=str(classifier), engine="transformers",
                              max_new_tokens=3, batch_size=2, cache=False)
    result = judge.judge_table(table, opts, load_engine=_one_at_a_time(load_engine, refs),
                               load_reward_model=_one_at_a_time(load_reward_model, refs))
    assert len(refs) == 3 and all(r() is None for r in refs)  # generator, guard, reward: all released
    assert result.table.num_rows == 2 and "reward" in result.table.column_names
    assert result.models == {"model": str(tiny_llama), "judge": str(tiny_llama), "reward": str(classifier)}


def test_label_closes_the_generator_before_the_judge_loads(tiny_llama: Path, tmp_path: Path):
    from safesample.label import LabelOptions, label_table

    judge_model = build_tiny_llama(tmp_path / "judge", seed=1)
    refs: list = []
    opts = LabelOptions(generate=str(tiny_llama), judge="llm", model=str(judge_model), engine="transformers",
                        max_new_tokens=3, batch_size=2, cache=False)
    result = label_table(pa.table({"instruction": ["Hi", "Write a poem."]}), opts,
                         load_engine=_one_at_a_time(load_engine, refs))
    assert len(refs) == 2 and all(r() is None for r in refs)
    assert result.models == {"generate": str(tiny_llama), "judge": str(judge_model)}


class ShutdownLLM(fake_vllm.LLM):
    """A strict fake vllm.LLM with a public `shutdown()` (later releases; 0.32 has none)."""

    def shutdown(self):
        self.stopped += 1


@pytest.mark.parametrize("fake", [fake_vllm.LLM, ShutdownLLM])
def test_vllm_close_shuts_the_engine_down_and_drops_it(tiny_llama: Path, fake):
    made = []

    def factory(**kwargs):
        made.append(fake(**kwargs))
        return made[-1]

    with load_engine(str(tiny_llama), engine="vllm", max_new_tokens=2,
                     **{**fake_vllm.factories(), "llm_factory": factory}) as engine:
        assert engine.chat(["Hi"]) == [engine._decode([5, 6])]
        ref = weakref.ref(made[0])
    assert made[0].stopped == 1 and engine._llm is None  # 0.32: through llm_engine.engine_core.shutdown
    made.clear()  # the test's own list held it; the fake also holds itself in a cycle
    gc.collect()
    assert ref() is None
    engine.close()  # closing twice is harmless


def _adapter(folder: Path, base: Path, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(base), "peft_type": "LORA", "r": 8, "lora_alpha": 16,
         "target_modules": ["q_proj", "v_proj"], "bias": "none", **config}))
    return folder


@pytest.mark.parametrize("r,pattern,expected", [(8, {}, 8), (32, {}, 32), (17, {}, 32), (8, {"v_proj": 48}, 64),
                                                (300, {}, 320)])
def test_max_lora_rank_comes_from_the_adapter_rounded_up_to_what_vllm_accepts(tiny_llama, tmp_path, r, pattern,
                                                                               expected):
    adapter = _adapter(tmp_path / "lora", tiny_llama, r=r, rank_pattern=pattern)
    made = []
    engine = load_engine(str(adapter), engine="vllm", max_new_tokens=2, **fake_vllm.factories(made))
    assert engine.chat(["Hi"])  # the strict fake refuses a rank above max_lora_rank, as vLLM does
    kwargs, call = made[0].given, made[0].calls[0]
    assert kwargs["enable_lora"] is True and kwargs["max_lora_rank"] == expected and kwargs["max_loras"] == 1
    assert kwargs["model"] == str(tiny_llama)
    lora = call["lora_request"]
    assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == ("adapter", 1, str(adapter))


def test_without_max_lora_rank_a_rank_32_adapter_fails_as_a_model_error(tiny_llama, tmp_path, monkeypatch):
    adapter = _adapter(tmp_path / "lora", tiny_llama, r=32)
    monkeypatch.setattr(VLLMEngine, "llm_kwargs", lambda self, n: {"model": self.ref.path, "enable_lora": True})
    engine = load_engine(str(adapter), engine="vllm", max_new_tokens=2, **fake_vllm.factories())
    with pytest.raises(ModelError, match="max_lora_rank") as info:
        engine.chat(["Hi"])
    assert "adapter" in info.value.hint


def test_auto_never_picks_vllm_for_an_adapter_it_cannot_load(tiny_llama, tmp_path):
    dora = _adapter(tmp_path / "dora", tiny_llama, use_dora=True)
    huge = _adapter(tmp_path / "huge", tiny_llama, r=1024)
    said = []
    reporter = SimpleNamespace(verbose=True, info=said.append, warn=said.append, debug=lambda m: None)
    for adapter, reason in ((dora, "DoRA"), (huge, "above vLLM's largest")):
        engine = load_engine(str(adapter), engine="auto", **fake_vllm.factories(), reporter=reporter)
        assert engine.name == "transformers" and reason in said[-1]
        with pytest.raises(ModelError, match=reason):
            load_engine(str(adapter), engine="vllm", **fake_vllm.factories())


def test_gguf_reaches_vllm_as_its_dequantised_copy(tiny_llama, tmp_path, monkeypatch):
    """vLLM 0.32 has no GGUF loader: it gets the save_pretrained copy, written first when missing."""
    import shutil

    from safesample.backends import models

    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "gguf"
    shutil.copytree(tiny_llama, folder)
    (folder / "config.json").unlink()
    (folder / "model.gguf").write_bytes(b"GGUF")
    ref = resolve(str(folder / "model.gguf"))
    assert ref.gguf_file == "model.gguf"
    written = []

    def dequantise(r, dtype, device, reporter):  # stands in for the GGUF load that writes the copy
        written.append((r.gguf_file, dtype, device))
        shutil.copytree(tiny_llama, models.gguf_copy_dir(r))
        return SimpleNamespace()

    monkeypatch.setattr(models, "load_causal_lm", dequantise)
    made = []
    engine = VLLMEngine(ref, max_new_tokens=2, tokenizer=models.load_tokenizer(resolve(str(tiny_llama))),
                        **fake_vllm.factories(made))
    assert engine.chat(["Hi"]) and written == [("model.gguf", "float32", "cpu")]
    copy = str(models.gguf_copy_dir(ref))
    assert made[0].given["model"] == copy and made[0].given["tokenizer"] == copy
    engine.close()
    engine.chat(["Hi"])
    assert len(written) == 1  # the copy is reused


def test_library_noise_is_silenced_unless_verbose():
    import warnings

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from safesample.backends import models
    from safesample.reporter import SILENT

    with models._gguf_bar(enabled=False):
        assert gguf_utils.tqdm([1], file=None).disable  # the de-quantisation bar draws nothing
    assert not getattr(gguf_utils.tqdm, "keywords", None)  # restored afterwards
    models.quiet_libraries(SILENT)
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("Could not find a config file in /x - will assume that the vocabulary was not modified.")
    assert seen == []
