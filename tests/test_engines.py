"""Model lifetimes: engines and reward models are context managers whose close() really releases
the weights, so a judge or label run holds one model at a time; and library noise stays quiet."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from tiny_models import build_tiny_classifier, build_tiny_llama

from safesample.backends.generation import VLLMEngine, load_engine
from safesample.backends.models import resolve

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


class ShutdownLLM:
    """A fake vllm.LLM with the newer public `shutdown()`."""

    def __init__(self, **kwargs):
        self.kwargs, self.stopped = kwargs, 0

    def shutdown(self):
        self.stopped += 1

    def generate(self, prompts, params, use_tqdm=True):
        return [SimpleNamespace(outputs=[SimpleNamespace(text="ok")]) for _ in prompts]


class CoreLLM(ShutdownLLM):
    """A fake vllm.LLM of the V1 engine: only its engine core can be shut down."""

    shutdown = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=self._core_shutdown))

    def _core_shutdown(self):
        self.stopped += 1


@pytest.mark.parametrize("fake", [ShutdownLLM, CoreLLM])
def test_vllm_close_shuts_the_engine_down_and_drops_it(tiny_llama: Path, fake):
    made = []

    def factory(**kwargs):
        made.append(fake(**kwargs))
        return made[-1]

    with VLLMEngine(resolve(str(tiny_llama)), max_new_tokens=2, llm_factory=factory,
                    params_factory=lambda **kw: SimpleNamespace(**kw)) as engine:
        assert engine.chat(["Hi"]) == ["ok"]
        ref = weakref.ref(made[0])
    assert made[0].stopped == 1 and engine._llm is None
    made.clear()  # the test's own list held it; the V1 fake also holds itself in a cycle
    gc.collect()
    assert ref() is None
    engine.close()  # closing twice is harmless


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
