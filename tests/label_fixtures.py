"""Helpers for the label / guard / generation tests: a tiny model that says varied nonsense.

`tiny_models.build_tiny_llama` ties its embeddings, so at random init it echoes the prompt's last
token forever (a chat prompt's `<|assistant|>`, which decodes to nothing). Untied embeddings with
a wide initialisation give varied output that depends on the whole prompt: what batching,
padding and ordering tests need to tell right from wrong.
"""

from __future__ import annotations

from pathlib import Path

# Tiny models gain nothing from a second thread, and on a shared 2-core machine torch's thread
# pool spinning against other processes makes each generate step ~6x slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def build_chatty_llama(folder: Path, seed: int = 0, chat_template: bool = True,
                       max_positions: int = 512) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder, chat_template=chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False, initializer_range=0.5)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


class CountingEngine:
    """Wraps an engine and counts the prompts it is asked to generate for."""

    def __init__(self, engine):
        self.engine = engine
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, max_new_tokens=None, progress=None):
        self.calls.append(len(prompts))
        return self.engine.generate(prompts, max_new_tokens=max_new_tokens, progress=progress)


class ScriptedEngine:
    """An engine that answers from a function of the prompt: parsing tests without a model."""

    name = "scripted"
    model_name = "scripted-judge"
    fingerprint = "scripted-judge"
    max_new_tokens = 32
    truncated_prompts = 0

    def __init__(self, answer):
        self.answer = answer
        self.prompts: list[str] = []

    def format_chat(self, instructions, system=None):
        return [f"<chat>{system or ''}|{text}</chat>" for text in instructions]

    def generate(self, prompts, max_new_tokens=None, progress=None):
        self.prompts.extend(prompts)
        if progress:
            progress(len(prompts))
        return [self.answer(p) for p in prompts]

    def chat(self, instructions, system=None, max_new_tokens=None, progress=None):
        return self.generate(self.format_chat(instructions, system), max_new_tokens, progress)

    def close(self):
        self.closed = True
