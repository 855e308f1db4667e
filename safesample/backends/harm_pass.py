"""The harm judge's forward pass: one pass of a causal LM over (rubric, question, answer), read at
chosen layers and, when asked, at the verdict token; no generation.

Every row is the same chat: a fixed head (the chat template's opening and the rubric, up to the
request: 229 tokens with Qwen2.5's template), then the row's own tokens (the request, "Answer:",
the answer, "Is the answer safe or unsafe?", the end of the turn and the generation prompt). The
head is the same for every row, so its keys and values are computed once per call and handed to
each batch as a cache: the rubric costs nothing per row (a row of a 128-token answer is ~160
tokens instead of ~390). The rows go right-padded after it, so they all share the head's
positions; each row is read at its own last real token.

Why not `backends/hidden_states.py` (the shared pass that `audit` uses): it runs each row from
its first token, with no shared head, and reads no logits. The hook that stops the pass is the
same idea.

What is read, per row:
- `last[layer]`: the hidden state (the residual stream after that decoder layer, HF's
  `hidden_states[layer]`) at the row's last token, the position where the model would say its
  verdict;
- `mean[layer]`: the mean hidden state over the answer's tokens;
- `question[layer]`: the hidden state at the last token before the answer (the end of the request
  and of the template's text before the answer), where the model has read the request but not
  the answer: what the request asks, apart from how it was answered;
- `verdict` (only with `verdict_ids`): log P(unsafe) - log P(safe) at the last position, each a
  logsumexp over the token ids given (e.g. "unsafe", "Unsafe" vs "safe", "Safe").

The pass stops at the deepest layer read unless a verdict is asked for (a hook raises once that
layer has run): on this CPU the first 12 of Qwen2.5-Coder-0.5B's 24 layers cost half the full
pass (shared/ENVIRONMENT.md). Rows are length-sorted into batches (little padding) and put back
in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from safesample.reporter import Advance

if TYPE_CHECKING:
    import numpy as np


@dataclass
class PassOutput:
    last: dict[int, "np.ndarray"]  # layer -> [rows, hidden] float32
    mean: dict[int, "np.ndarray"]  # layer -> [rows, hidden] float32
    question: dict[int, "np.ndarray"]  # layer -> [rows, hidden] float32
    verdict: "np.ndarray | None"  # [rows] float64, or None when not asked for


class _Stop(Exception):
    """Raised by the hook on the deepest layer read: the rest of the pass is not needed."""


def decoder_layers(model):
    """The decoder's stack of layers (Llama / Qwen / Mistral-style `get_decoder().layers`)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        from safesample.errors import ModelError

        raise ModelError(f"cannot find the decoder layers of {type(model).__name__}",
                         "the harm judge needs a decoder-only causal LM (Llama, Qwen, Mistral, ...)")
    return layers


def verdict_logit(logits, bad: Sequence[int], good: Sequence[int]):
    """log P(unsafe) - log P(safe) from next-token logits [..., vocab]: each side a logsumexp over
    its token ids, after a softmax over the whole vocabulary."""
    import torch

    lp = torch.log_softmax(torch.as_tensor(logits).float(), dim=-1)
    return torch.logsumexp(lp[..., list(bad)], dim=-1) - torch.logsumexp(lp[..., list(good)], dim=-1)


def _expand(cache_data, batch: int):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                        for k, v in cache_data])


def run_pass(model, head_ids: Sequence[int], rows: Sequence[Sequence[int]],
             answer_spans: Sequence[tuple[int, int]], *, layers: Sequence[int],
             verdict_ids: tuple[Sequence[int], Sequence[int]] | None = None, batch_size: int = 8,
             pad_id: int = 0, progress: Advance | None = None) -> PassOutput:
    """Read `layers` (1-based: the output of the n-th decoder layer) for every row of token ids
    `rows`, each appended to the shared `head_ids`; `answer_spans[i]` = (start, end) of the
    answer's tokens within `rows[i]`, averaged for `mean`. See the module docstring."""
    import numpy as np
    import torch
    from transformers import DynamicCache

    blocks = decoder_layers(model)
    layers = sorted(set(int(x) for x in layers))
    if not layers and verdict_ids is None:
        raise ValueError("nothing to read: no layers and no verdict")
    if any(x < 1 or x > len(blocks) for x in layers):
        raise ValueError(f"layers must be within 1..{len(blocks)}, got {layers}")
    deepest = layers[-1] if layers else len(blocks)
    stop_early = verdict_ids is None and deepest < len(blocks)
    captured: dict[int, "torch.Tensor"] = {}

    def hook_for(layer: int):
        def hook(_module, _inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if stop_early and layer == deepest:
                raise _Stop
        return hook

    handles = [blocks[x - 1].register_forward_hook(hook_for(x)) for x in layers]
    device = next(model.parameters()).device
    n, hidden = len(rows), model.config.get_text_config().hidden_size
    out_last = {x: np.zeros((n, hidden), np.float32) for x in layers}
    out_mean = {x: np.zeros((n, hidden), np.float32) for x in layers}
    out_question = {x: np.zeros((n, hidden), np.float32) for x in layers}
    verdict = np.zeros(n, np.float64) if verdict_ids is not None else None
    decoder = model.get_decoder()  # the stack without the LM head: the head is applied to last tokens only
    try:
        with torch.inference_mode():
            # The head's keys and values, once; a pass stopped early fills only the layers it ran.
            head_cache = DynamicCache(config=model.config)
            try:
                decoder(input_ids=torch.tensor([list(head_ids)], dtype=torch.long, device=device),
                        past_key_values=head_cache, use_cache=True)
            except _Stop:
                pass
            head_kv = [(layer.keys, layer.values) for layer in head_cache.layers
                       if getattr(layer, "keys", None) is not None and layer.keys.numel()]
            p = len(head_ids)
            order = sorted(range(n), key=lambda i: -len(rows[i]))
            for start in range(0, n, batch_size):
                batch = order[start:start + batch_size]
                b, width = len(batch), max(len(rows[i]) for i in batch)
                ids = torch.full((b, width), pad_id, dtype=torch.long)
                mask = torch.zeros((b, p + width), dtype=torch.long)
                mask[:, :p] = 1
                for r, i in enumerate(batch):
                    ids[r, :len(rows[i])] = torch.tensor(list(rows[i]), dtype=torch.long)
                    mask[r, p:p + len(rows[i])] = 1
                positions = (p + torch.arange(width)).expand(b, width)
                captured.clear()
                try:
                    result = decoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     position_ids=positions.to(device), past_key_values=_expand(head_kv, b),
                                     use_cache=True)
                except _Stop:
                    result = None
                last_pos = torch.tensor([len(rows[i]) - 1 for i in batch])
                arange = torch.arange(b)
                for x in layers:
                    h = captured[x].float()
                    out_last[x][batch] = h[arange, last_pos].cpu().numpy()
                    for r, i in enumerate(batch):
                        lo, hi = answer_spans[i]
                        span = h[r, lo:hi] if hi > lo else h[r, len(rows[i]) - 1:len(rows[i])]
                        out_mean[x][i] = span.mean(0).cpu().numpy()
                        out_question[x][i] = h[r, max(lo - 1, 0)].cpu().numpy()
                if verdict is not None and result is not None:
                    final = result.last_hidden_state[arange, last_pos]  # after the final norm
                    logits = model.get_output_embeddings()(final)  # the LM head on the last tokens only
                    verdict[batch] = verdict_logit(logits, *verdict_ids).double().cpu().numpy()
                del result
                if progress:
                    progress(b)
    finally:
        for handle in handles:
            handle.remove()
    return PassOutput(out_last, out_mean, out_question, verdict)
