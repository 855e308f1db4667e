"""How a row becomes model text: the Alpaca and chat templates, and the template a `finetune`
run recorded.

One module so that what a model is trained on (`finetune`), prompted with (`judge`,
`label --generate`, `refusal_score`) and scored on (`audit`, the harm judge) is written the
same way. Nothing here loads a model; functions that need a tokenizer take it as an argument.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from safesample.backends.models import RUN_CONFIG
from safesample.errors import ModelError, UsageError

# The Alpaca prompt (Taori et al. 2023), as the paper and Bianchi et al. train with it.
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
# What `finetune` trains with, and what a prompt for a model may be written as (`raw`: the
# instruction as it is; `auto`: the template a finetune run recorded, else chat).
TRAINING_TEMPLATES = ("alpaca", "chat")
PROMPT_TEMPLATES = ("auto", "alpaca", "chat", "raw")


def alpaca_prompt(instruction: str, input: str | None = None) -> str:
    if input:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def chat_text(instruction: str, input: str | None = None) -> str:
    """The user turn for the chat template: the instruction, then its input if any."""
    return f"{instruction}\n\n{input}" if input else instruction


def read_run_config(folder: str | Path) -> dict[str, Any] | None:
    """The `safesample_config.json` of a finished `finetune` run (None when the folder has none)."""
    path = Path(folder) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}", "the run folder may be damaged; "
                         "rerun `safesample finetune`") from exc


def resolve_template(model: str | None, template: str) -> str:
    """`auto`: the template a `safesample finetune` run was trained with, else the chat template."""
    if template not in PROMPT_TEMPLATES:
        raise UsageError(f"unknown --template {template!r}", f"use one of: {', '.join(PROMPT_TEMPLATES)}")
    if template != "auto":
        return template
    if model:
        config = read_run_config(model)
        if config and config.get("template") in TRAINING_TEMPLATES:
            return config["template"]
    return "chat"


def special_prefix(tokenizer: Any) -> str:
    """The text of the special tokens the tokenizer puts before a plain text (BOS), if any."""
    if tokenizer is None:
        return ""
    try:
        with_special = tokenizer("x")["input_ids"]
        without = tokenizer("x", add_special_tokens=False)["input_ids"]
    except (TypeError, ValueError, KeyError):
        return ""
    extra = len(with_special) - len(without)
    if extra > 0 and with_special[extra:] == without:
        return tokenizer.decode(with_special[:extra])
    return ""


def model_prompts(engine: Any, prompts: Sequence[str], inputs: Sequence[str | None], template: str,
                  system: str | None = None) -> list[str]:
    """The texts a model is prompted with (generation and refusal_score alike); `engine` has
    `format_chat(user_turns, system)` and `tokenizer`."""
    if template == "chat":
        return engine.format_chat([chat_text(p, x) for p, x in zip(prompts, inputs)], system)
    # Engines tokenize without adding special tokens; the trainer's tokenizer call added them
    # to the Alpaca text (e.g. Llama's BOS), so write them into the prompt here.
    prefix = special_prefix(getattr(engine, "tokenizer", None))
    return [prefix + (alpaca_prompt(p, x) if template == "alpaca" else chat_text(p, x))
            for p, x in zip(prompts, inputs)]


# --------------------------------------------------------------------------------------------
# The training sequence: what TRL's SFTTrainer (1.16) trains on for one row of `finetune`.
#
# `finetune` hands TRL prompt/completion examples (see `training_example`). TRL then, per example
# (trl/trainer/sft_trainer.py, `tokenize_fn` in `_prepare_dataset`; trl/data_utils.py `_tokenize`):
# - chat (conversational): prompt ids = apply_chat_template(prompt, add_generation_prompt=True),
#   full ids = apply_chat_template(prompt + completion), both tokenize=True, the tokenizer's own
#   template (finetune sets no assistant_only_loss, so TRL swaps in no training template), no EOS
#   added (the template's end-of-turn tokens end the answer);
# - alpaca (plain text): the tokenizer's EOS appended to the completion unless it already ends
#   with it, then prompt ids = tokenizer(prompt), full ids = tokenizer(prompt + completion), with
#   the tokenizer's special tokens (e.g. Llama's BOS);
# - the completion starts where the two id lists first differ (`common_prefix_length`), so a
#   template that renders the prompt differently on its own still masks the right tokens;
# - the sequence is cut to `max_length` from the start (truncation_mode keep_start), and an
#   example left with no completion token is dropped from training.
# tests/test_audit_text.py checks these ids against SFTTrainer's own tokenized dataset.


def training_example(instruction: str, input: str | None, output: str, template: str) -> tuple[Any, Any]:
    """The (prompt, completion) example `finetune` gives TRL for one row: strings for alpaca,
    message lists for chat."""
    if template == "alpaca":
        return alpaca_prompt(instruction, input), output
    if template == "chat":
        return ([{"role": "user", "content": chat_text(instruction, input)}],
                [{"role": "assistant", "content": output}])
    raise UsageError(f"unknown template {template!r}", f"use one of: {', '.join(TRAINING_TEMPLATES)}")


def training_texts(tokenizer: Any, instruction: str, input: str | None, output: str,
                   template: str) -> tuple[str, str]:
    """The prompt text and the full text (prompt + response) of a row as TRL tokenizes them: the
    chat template rendered (with the generation prompt for the prompt alone), or the Alpaca
    prompt and prompt + response + EOS, to which the tokenizer adds its special tokens."""
    prompt, completion = training_example(instruction, input, output, template)
    if template == "chat":
        return (tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                tokenizer.apply_chat_template(prompt + completion, tokenize=False))
    eos = tokenizer.eos_token or ""
    if not completion.endswith(eos):
        completion += eos
    return prompt, prompt + completion


@dataclass(frozen=True)
class TrainingTokens:
    """One row's training sequence: `ids`, of which the first `prompt_len` are the prompt (left
    out of the loss) and the rest the response, including the end-of-turn or EOS tokens."""

    ids: list[int]
    prompt_len: int

    @property
    def response_len(self) -> int:
        return len(self.ids) - self.prompt_len

    def cut(self, max_tokens: int) -> "TrainingTokens":
        """Cut to `max_tokens` from the start, as TRL's keep_start truncation does."""
        return TrainingTokens(self.ids[:max_tokens], min(self.prompt_len, max_tokens))


def training_tokens(tokenizer: Any, instruction: str, input: str | None, output: str,
                    template: str) -> TrainingTokens:
    """The token ids TRL trains on for this row, and where its completion starts (uncut: apply
    `TrainingTokens.cut(max_length)` for what a run with that `--max-length` sees)."""
    if template == "chat":
        prompt, completion = training_example(instruction, input, output, template)
        prompt_ids = _ids(tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True,
                                                        add_generation_prompt=True))
        full_ids = _ids(tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True))
    else:
        prompt_text, full_text = training_texts(tokenizer, instruction, input, output, template)
        prompt_ids = _ids(tokenizer(text=prompt_text))
        full_ids = _ids(tokenizer(text=full_text))
    common = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        common += 1
    return TrainingTokens(full_ids, common)


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"]
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(i) for i in ids]
