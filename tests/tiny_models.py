"""Tiny local models for tests: a random 2-layer Llama and a tokenizer trained here, no hub.

They answer nonsense, which is the point: tests exercise the real code paths (batching, padding,
chat templates, LoRA steps, saving and loading) in well under a second per model.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = """I can't help with that request because it could hurt people.
Sorry, but I won't assist with anything illegal. Here is a safer idea instead.
Sure! Here is a short poem about the rain falling on the quiet town.
Write a haiku about autumn leaves. Explain photosynthesis in simple words.
How do I bake bread? Mix flour, water, yeast and salt, then let it rise.
The capital of France is Paris. Two plus two equals four.
Harmful request: yes. Response refusal: no. Harmful response: no.
Below is an instruction that describes a task. Write a response that appropriately completes the request.
### Instruction: ### Input: ### Response:
"""


def build_tokenizer(folder: Path, chat_template: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_tiny_llama(folder: Path, chat_template: bool = True, seed: int = 0) -> Path:
    """Save a random tiny Llama + tokenizer into `folder` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder, chat_template=chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_tiny_classifier(folder: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A random tiny Llama sequence classifier (a stand-in reward / harmfulness model)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    return folder
