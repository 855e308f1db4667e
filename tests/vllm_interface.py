"""vLLM's offline interface, read from the source files of its wheel with `ast` (nothing imported).

`extract(wheel)` returns what safesample's vLLM adapter relies on, as plain JSON-able data:
signatures of `LLM.__init__` and `LLM.generate`, the fields of `EngineArgs` (where `LLM(**kwargs)`
goes), `SamplingParams` and `LoRARequest` (msgspec Structs: fields are class annotations), the
ranks `max_lora_rank` accepts, the exception vLLM raises for a bad prompt, the attributes and
calls `VLLMEngine` uses to shut vLLM down and to read `max_model_len`, and whether a GGUF loader
is there. `vllm_0_32_interface.json` is this for vLLM 0.32.0; the strict fakes
(`fake_vllm.py`) are built from that snapshot, and tests/test_vllm_contract.py checks the
snapshot against the wheel itself. Reading ~10 files out of the wheel takes well under a second;
installing vLLM (5.8 GB with its CUDA torch) would take minutes and cannot start an engine here.
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("vllm_0_32_interface.json")
VERSION = "0.32.0"

FILES = {
    "llm": "vllm/entrypoints/llm.py",
    "arg_utils": "vllm/engine/arg_utils.py",
    "sampling_params": "vllm/sampling_params.py",
    "lora_request": "vllm/lora/request.py",
    "lora_config": "vllm/config/lora.py",
    "exceptions": "vllm/exceptions.py",
    "input_processor": "vllm/v1/engine/input_processor.py",
    "llm_engine": "vllm/v1/engine/llm_engine.py",
    "core_client": "vllm/v1/engine/core_client.py",
    "outputs": "vllm/outputs.py",
    "parallel_state": "vllm/distributed/parallel_state.py",
}


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise LookupError(f"class {name} not found")


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"{cls.name}.{name} not found")


def signature(fn: ast.FunctionDef) -> list[list]:
    """[name, kind, default source or None] per parameter, `self` left out; kinds as inspect names."""
    a = fn.args
    out: list[list] = []
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        kind = "POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        out.append([arg.arg, kind, None if default is None else ast.unparse(default)])
    if a.vararg:
        out.append([a.vararg.arg, "VAR_POSITIONAL", None])
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append([arg.arg, "KEYWORD_ONLY", None if default is None else ast.unparse(default)])
    if a.kwarg:
        out.append([a.kwarg.arg, "VAR_KEYWORD", None])
    return [p for p in out if p[0] != "self"]


def fields(cls: ast.ClassDef) -> list[list]:
    """[name, default source or None] of each annotated class attribute (dataclass / msgspec
    fields), ClassVars left out."""
    out = []
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if "ClassVar" in ast.unparse(node.annotation):
                continue
            out.append([node.target.id, None if node.value is None else ast.unparse(node.value)])
    return out


def _assigns_self(fn: ast.FunctionDef) -> list[str]:
    return sorted({t.attr for node in ast.walk(fn) if isinstance(node, ast.Assign) for t in node.targets
                   if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"})


def extract(wheel: str | Path) -> dict:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        src = {key: z.read(path).decode("utf-8") for key, path in FILES.items()}
    trees = {key: ast.parse(text) for key, text in src.items()}
    llm = _class(trees["llm"], "LLM")
    ranks_node = next(node for node in trees["lora_config"].body if isinstance(node, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == "MaxLoRARanks" for t in node.targets))
    ranks = [ast.literal_eval(e) for e in ranks_node.value.slice.elts]
    validation = _class(trees["exceptions"], "VLLMValidationError")
    validate_len = _method(_class(trees["input_processor"], "InputProcessor"), "_validate_prompt_len")
    raised = sorted({ast.unparse(node.exc.func) for node in ast.walk(validate_len)
                     if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)})
    engine_init = _method(_class(trees["llm_engine"], "LLMEngine"), "__init__")
    client = _class(trees["core_client"], "EngineCoreClient")
    completion = _class(trees["outputs"], "CompletionOutput")
    request_output = _method(_class(trees["outputs"], "RequestOutput"), "__init__")
    functions = {node.name for node in trees["parallel_state"].body if isinstance(node, ast.FunctionDef)}
    return {
        "version": VERSION,
        "LLM.__init__": signature(_method(llm, "__init__")),
        "LLM.generate": signature(_method(llm, "generate")),
        "LLM.has_shutdown": any(isinstance(n, ast.FunctionDef) and n.name == "shutdown" for n in llm.body),
        "LLM.__init__.sets": [a for a in _assigns_self(_method(llm, "__init__")) if a in ("llm_engine", "model_config")],
        "EngineArgs": [name for name, _ in fields(_class(trees["arg_utils"], "EngineArgs"))],
        "SamplingParams": fields(_class(trees["sampling_params"], "SamplingParams")),
        "LoRARequest": fields(_class(trees["lora_request"], "LoRARequest")),
        "MaxLoRARanks": ranks,
        "VLLMValidationError.bases": [ast.unparse(b) for b in validation.bases],
        "InputProcessor._validate_prompt_len.raises": raised,
        "LLMEngine.__init__.sets": [a for a in _assigns_self(engine_init) if a in ("engine_core", "model_config")],
        "EngineCoreClient.shutdown": signature(_method(client, "shutdown")),
        "CompletionOutput": [name for name, _ in fields(completion)],
        "RequestOutput.__init__": [p[0] for p in signature(request_output)],
        "parallel_state": sorted(functions & {"destroy_model_parallel", "destroy_distributed_environment"}),
        "gguf_loader": any("model_loader/gguf" in n for n in names),
    }


def snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text())


if __name__ == "__main__":  # write the snapshot: python tests/vllm_interface.py WHEEL
    import sys

    SNAPSHOT.write_text(json.dumps(extract(sys.argv[1]), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}")
