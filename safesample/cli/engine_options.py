"""The model-serving options `label` and `judge` share (vLLM's, and the context bound both engines use)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

MaxModelLen = Annotated[Optional[int], typer.Option(
    "--max-model-len", min=16, help="Longest prompt + answer in tokens; longer prompts are cut from the left "
    "on both engines [default: vLLM sizes it from the prompts' real lengths + --max-new-tokens; the "
    "model's own context bounds truncation].", show_default=False)]
TensorParallel = Annotated[int, typer.Option("--tensor-parallel-size", min=1,
                                             help="vLLM: shard each model over this many GPUs.")]
GpuMemory = Annotated[Optional[float], typer.Option(
    "--gpu-memory-utilization", min=0.01, max=1.0, help="vLLM: share of GPU memory for weights and KV "
    "cache [default: vLLM's 0.92].", show_default=False)]
EnforceEager = Annotated[bool, typer.Option("--enforce-eager", help="vLLM: no CUDA graphs (less memory "
                                            "and start-up time, slower decoding).")]


def options(max_model_len: int | None, tensor_parallel_size: int, gpu_memory_utilization: float | None,
            enforce_eager: bool) -> dict[str, Any]:
    """The stage options (LabelOptions / JudgeOptions fields) and provenance entries, by name."""
    return {"max_model_len": max_model_len, "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization, "enforce_eager": enforce_eager}
