"""The vLLM adapter against vLLM 0.32.0's real interface, read from the wheel's source.

`make install` fetches the wheel (`pip download vllm==0.32.0 --no-deps`, ~330 MB, seconds) into
.cache/vllm-wheel/; `vllm_interface.extract` parses ~10 of its files with `ast` (< 1 s). vLLM is
not installed (5.8 GB, and its engine cannot start without a GPU). Checked here:

1. the recorded interface (vllm_0_32_interface.json, which the strict fakes are built from) is
   what the wheel's source says: signatures, EngineArgs fields, Struct fields, LoRA ranks, ...;
2. every keyword the adapter passes to `LLM(...)`, `LLM.generate`, `SamplingParams` and
   `LoRARequest`, recorded in a run that uses every option, is accepted by that interface;
3. the fakes in tests/fake_vllm.py have exactly vLLM's signatures.

Without the wheel, 2 and 3 still run against the snapshot, and 1 skips (fails under CI=true).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest

import fake_vllm
import vllm_interface
from safesample.backends import generation
from safesample.backends.generation import load_engine

REPO = Path(__file__).resolve().parents[1]


def _wheel() -> Path | None:
    if env := os.environ.get("SAFESAMPLE_VLLM_WHEEL"):
        return Path(env)
    found = sorted((REPO / ".cache" / "vllm-wheel").glob(f"vllm-{vllm_interface.VERSION}-*.whl"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def real() -> dict:
    wheel = _wheel()
    if wheel is None or not wheel.is_file():
        message = "the vLLM 0.32.0 wheel is not in .cache/vllm-wheel (make install fetches it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return vllm_interface.extract(wheel)


@pytest.fixture(params=["snapshot", "wheel"])
def api(request) -> dict:
    return vllm_interface.snapshot() if request.param == "snapshot" else request.getfixturevalue("real")


def test_the_recorded_interface_is_the_wheels(real):
    assert real == vllm_interface.snapshot()


def test_what_the_adapter_relies_on_holds_in_vllm(api):
    assert tuple(api["MaxLoRARanks"]) == generation.VLLM_LORA_RANKS
    assert api["gguf_loader"] is False  # why GGUF models reach vLLM as their de-quantised copy
    # a bad prompt raises VLLMValidationError, which is no ValueError: matched by name
    assert api["InputProcessor._validate_prompt_len.raises"] == ["VLLMValidationError"]
    assert api["VLLMValidationError.bases"] == ["VLLMClientError"]
    # shutdown: no LLM.shutdown in 0.32, so llm.llm_engine.engine_core.shutdown(); max_model_len
    # from llm.llm_engine.model_config; outputs carry token_ids (vLLM is asked not to detokenize)
    assert api["LLM.has_shutdown"] is False and "llm_engine" in api["LLM.__init__.sets"]
    assert set(api["LLMEngine.__init__.sets"]) == {"engine_core", "model_config"}
    assert api["EngineCoreClient.shutdown"][0][0] == "timeout"
    assert {"token_ids", "text"} <= set(api["CompletionOutput"]) and "outputs" in api["RequestOutput.__init__"]
    assert api["parallel_state"] == ["destroy_distributed_environment", "destroy_model_parallel"]
    # LoRARequest(name, int id, path) positionally, in this order
    assert [name for name, _ in api["LoRARequest"][:3]] == ["lora_name", "lora_int_id", "lora_path"]


def _recorded_calls(tmp_path: Path, tiny_llama: Path) -> dict:
    """Run the adapter with every option and a LoRA adapter; record each call's keywords."""
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(tiny_llama), "peft_type": "LORA", "r": 32, "bias": "none"}))
    made = []
    factories = fake_vllm.factories(made)
    seen: dict = {"params": [], "lora": []}

    def params(*args, **kwargs):
        seen["params"].append((args, kwargs))
        return fake_vllm.SamplingParams(*args, **kwargs)

    def lora(*args, **kwargs):
        seen["lora"].append((args, kwargs))
        return fake_vllm.LoRARequest(*args, **kwargs)

    engine = load_engine(str(adapter), engine="vllm", max_new_tokens=4, max_model_len=128, tensor_parallel_size=1,
                         gpu_memory_utilization=0.8, enforce_eager=True,
                         **{**factories, "params_factory": params, "lora_factory": lora})
    with engine:
        engine.chat(["Hi", "Write a poem."])
        assert engine.context_length() == 128
    seen["llm"] = made[0].given
    seen["generate"] = made[0].calls
    return seen


def test_every_keyword_the_adapter_passes_is_vllms(api, tmp_path, tiny_llama, offline_models):
    seen = _recorded_calls(tmp_path, tiny_llama)
    named = {p[0] for p in api["LLM.__init__"] if p[1] != "VAR_KEYWORD"}
    accepted = named | set(api["EngineArgs"])  # LLM(**kwargs) goes on to EngineArgs
    assert set(seen["llm"]) <= accepted, set(seen["llm"]) - accepted
    assert {"max_model_len", "enable_lora", "max_lora_rank", "max_loras"} <= set(api["EngineArgs"])
    assert {"tensor_parallel_size", "gpu_memory_utilization", "enforce_eager", "dtype", "seed",
            "tokenizer"} <= named
    generate = {p[0] for p in api["LLM.generate"]}
    for call in seen["generate"]:
        assert call["lora_request"] is not None and call["use_tqdm"] is False
        assert set(call) <= generate
    fields = {name for name, _ in api["SamplingParams"]}
    for args, kwargs in seen["params"]:
        assert not args and set(kwargs) <= fields, set(kwargs) - fields
    for args, kwargs in seen["lora"]:
        assert len(args) + len(kwargs) <= len(api["LoRARequest"]) and set(kwargs) <= {n for n, _ in api["LoRARequest"]}
        assert isinstance(args[1], int) and args[1] >= 1


def test_a_renamed_keyword_is_caught(api, tmp_path, tiny_llama, offline_models, monkeypatch):
    """The check above is not vacuous: an adapter passing a name vLLM lacks fails it, and the
    strict fake refuses it outright."""
    real_kwargs = generation.VLLMEngine.llm_kwargs
    monkeypatch.setattr(generation.VLLMEngine, "llm_kwargs",
                        lambda self, n: {**real_kwargs(self, n), "gpu_memory_fraction": 0.5})
    with pytest.raises(generation.ModelError, match="gpu_memory_fraction"):
        _recorded_calls(tmp_path, tiny_llama)
    with pytest.raises(TypeError):
        fake_vllm.SamplingParams(temperature=0.0, max_new_tokens=4)
    with pytest.raises(TypeError):
        fake_vllm.LLM("m").generate([], None, lora=None)


def _params(sig: inspect.Signature, skip_self: bool = True) -> list[list]:
    out = []
    for p in sig.parameters.values():
        if skip_self and p.name == "self":
            continue
        out.append([p.name, p.kind.name])
    return out


def test_the_fakes_have_vllms_signatures(api):
    assert _params(inspect.signature(fake_vllm.LLM)) == [p[:2] for p in api["LLM.__init__"]]
    assert _params(inspect.signature(fake_vllm.LLM.generate)) == [p[:2] for p in api["LLM.generate"]]
    assert [p.name for p in inspect.signature(fake_vllm.SamplingParams).parameters.values()] == \
        [name for name, _ in api["SamplingParams"]]
    assert [p.name for p in inspect.signature(fake_vllm.LoRARequest).parameters.values()] == \
        [name for name, _ in api["LoRARequest"]]
    # defaults that matter to the adapter are vLLM's
    llm_defaults = {p[0]: p[2] for p in api["LLM.__init__"]}
    assert llm_defaults["gpu_memory_utilization"] == "0.92" and llm_defaults["tensor_parallel_size"] == "1"
    sp = dict(api["SamplingParams"])
    assert sp["repetition_penalty"] == "1.0" and sp["detokenize"] == "True" and sp["skip_special_tokens"] == "True"
    # the fakes enforce the signatures when called, not only advertise them
    fake = fake_vllm.LLM("m", max_model_len=64, enable_lora=True)
    with pytest.raises(TypeError):
        fake_vllm.LLM("m", not_an_engine_arg=1)
    with pytest.raises(TypeError):
        fake.generate([], None, True)  # use_tqdm is keyword-only
