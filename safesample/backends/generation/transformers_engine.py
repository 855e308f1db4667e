"""The transformers engine: greedy batched `model.generate` on the CPU or a GPU.

Left padding; prompts sorted by length (longest first), so a batch wastes little padding and a
batch that does not fit in memory fails at the start; results put back in input order. The
weights load on first use, so a rerun served from the cache never loads them.
"""

from __future__ import annotations

from safesample.backends.generation.base import EngineBase
from safesample.backends.models import (ModelRef, context_length, load_causal_lm, load_tokenizer, release_memory,
                                        resolve_dtype)
from safesample.reporter import SILENT, Advance, Reporter


class TransformersEngine(EngineBase):
    """Greedy batched generation with transformers (CPU or GPU)."""

    name = "transformers"

    def __init__(self, ref: ModelRef, batch_size: int = 16, max_new_tokens: int = 256, dtype: str = "auto",
                 device: str | None = None, model=None, tokenizer=None, max_model_len: int | None = None,
                 reporter: Reporter = SILENT):
        tokenizer = tokenizer or load_tokenizer(ref, padding_side="left")
        resolved = resolve_dtype(dtype, device)
        super().__init__(ref, tokenizer, batch_size, max_new_tokens, resolved, max_model_len)
        self._model = model
        self._load = lambda: load_causal_lm(ref, dtype=resolved, device=device, reporter=reporter)

    def close(self) -> None:
        """Drop the model (the only reference this engine holds), collect, empty the CUDA cache."""
        if self._model is not None:
            self._model = None
            release_memory()

    @property
    def model(self):
        """Loaded on first use: a rerun served from the cache never loads the weights."""
        if self._model is None:
            self._model = self._load()
            self._model.eval()
        return self._model

    def context_length(self) -> int | None:
        if self.max_model_len:
            return self.max_model_len
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None) or context_length(self.ref)

    def _generate(self, ids: list[list[int]], todo: list[int], new_tokens: int, results: list[str | None],
                  progress: Advance | None) -> None:
        import torch

        # Longest first: similar lengths share a batch (little padding), and a batch that does not
        # fit in memory fails at the start rather than after an hour.
        order = sorted(todo, key=lambda i: -len(ids[i]))
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends at the same column
                input_ids[row, width - len(ids[i]):] = torch.tensor(ids[i], dtype=torch.long)
                mask[row, width - len(ids[i]):] = 1
            with torch.inference_mode():
                # repetition_penalty=1.0 overrides a generation_config value, as vLLM ignores it.
                out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                          max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                          repetition_penalty=1.0, pad_token_id=pad_id,
                                          eos_token_id=self.eos_ids or None)
            for row, i in enumerate(batch):
                results[i] = self._decode(out[row, width:].tolist())
            if progress:
                progress(len(batch))
