"""Reward and harmfulness scores from any sequence-classification model, by hub id or path.

A helpfulness reward model (one logit: higher is better) or a harmfulness predictor (several
classes: the probability of one of them) scores each (prompt, response) pair. The pair is
formatted with the tokenizer's chat template when it has one (how chat reward models are
trained: a user turn and an assistant turn), else encoded as a text pair (prompt, response).

Scores are cached by model, settings and the pair's text, so rescoring a judged file only
computes new rows. A RewardModel is a context manager: `close()` releases its weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from safesample.errors import ModelError, UsageError
from safesample.reporter import SILENT, Advance, Reporter


class RewardModel:
    """A loaded classifier; `score(prompts, responses)` returns one float per pair."""

    def __init__(self, model, tokenizer, name: str, *, batch_size: int = 16, max_length: int = 1024,
                 label: int | None = None, fingerprint: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.label = label  # None: the single logit of a one-output model
        self.fingerprint = fingerprint or name

    def close(self) -> None:
        """Drop the model (this object's reference to it), collect, empty the CUDA cache."""
        if self.model is not None:
            from safesample.backends.models import release_memory

            self.model = None
            release_memory()

    def __enter__(self) -> "RewardModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def label_name(self) -> str | None:
        if self.label is None:
            return None
        return self.model.config.id2label.get(self.label, str(self.label))

    def format(self, prompt: str, response: str) -> str | tuple[str, str]:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False)
        return (prompt, response)

    def score(self, prompts: Sequence[str], responses: Sequence[str], progress: Advance | None = None,
              cache: bool = True) -> list[float]:
        import json

        from safesample.cache import Cache, settings_key, text_key

        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        keys = [text_key(p or "", r or "") for p, r in zip(prompts, responses)]
        scope = settings_key(model=self.fingerprint, label=self.label, max_length=self.max_length)
        with Cache("reward", scope, enabled=cache) as store:
            found = {k: json.loads(v) for k, v in store.get_many(keys).items()}
            todo = [i for i, k in enumerate(keys) if k not in found]
            if progress and len(todo) < len(keys):
                progress(len(keys) - len(todo))
            fresh = self._score([prompts[i] or "" for i in todo], [responses[i] or "" for i in todo], progress)
            store.put_many((keys[i], json.dumps(s).encode()) for i, s in zip(todo, fresh))
        for i, s in zip(todo, fresh):
            found[keys[i]] = s
        return [found[k] for k in keys]

    def _score(self, prompts: list[str], responses: list[str], progress: Advance | None) -> list[float]:
        import torch

        if not prompts:
            return []
        items = [self.format(p, r) for p, r in zip(prompts, responses)]
        # Longest first: batches of similar length pad little, and an out-of-memory shows early.
        order = sorted(range(len(items)), key=lambda i: -_length(items[i]))
        scores: list[float] = [0.0] * len(items)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = [items[i] for i in chunk]
            if isinstance(batch[0], tuple):
                enc = self.tokenizer([b[0] for b in batch], [b[1] for b in batch], padding=True,
                                     truncation="longest_first", max_length=self.max_length,
                                     return_tensors="pt")
            else:  # the chat template already holds the special tokens
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     add_special_tokens=False, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()
            if self.label is None:
                values = logits[:, 0]
            else:
                values = torch.softmax(logits, dim=-1)[:, self.label]
            for i, v in zip(chunk, values.tolist()):
                scores[i] = float(v)
            if progress:
                progress(len(chunk))
        return scores


def _length(item: str | tuple[str, str]) -> int:
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


def _fingerprint(path: str) -> str:
    """Model name plus, for a local folder, its weights' size and time (a retrained folder differs)."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    parts = [str(folder.resolve())]
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "config.json"]:
        if f.exists():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


def _pick_label(config, label: str | None) -> int | None:
    n = int(getattr(config, "num_labels", 1) or 1)
    if label is None:
        return None if n == 1 else n - 1
    names = {str(v).lower(): int(k) for k, v in (config.id2label or {}).items()}
    if label.lower() in names:
        return names[label.lower()]
    if label.isdigit() and int(label) < n:
        return int(label)
    known = ", ".join(str(v) for v in (config.id2label or {}).values()) or "none"
    raise UsageError(f"the reward model has no label {label!r} (labels: {known})",
                     "pass one of its labels or a class index to --reward-label")


def load_reward_model(spec: str, *, batch_size: int = 16, max_length: int = 1024,
                      label: str | None = None, dtype: str = "auto", device: str | None = None,
                      reporter: Reporter = SILENT) -> RewardModel:
    """Load a sequence classifier (a local folder or a hub id) as a RewardModel."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from safesample.backends.models import quiet_libraries

    quiet_libraries(reporter)
    path = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) and not path.exists():
        raise ModelError(f"reward model path {spec!r} does not exist", "check the path")
    if path.is_dir() and (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        raise ModelError(f"{spec!r} is a LoRA adapter, not a reward model",
                         "pass a sequence-classification model folder or hub id to --reward-model")
    where = str(path) if path.exists() else spec
    kwargs = {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE") == "1" else {}
    try:
        config = AutoConfig.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load reward model {spec!r}: {str(exc).splitlines()[0][:200]}",
                         "on a machine without hub access pass a local folder saved with "
                         "save_pretrained()") from exc
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith(("ForSequenceClassification", "RewardModel")) for a in archs):
        raise ModelError(f"{spec!r} is not a sequence-classification model (it is {', '.join(archs)})",
                         "a reward model has a classification head; a causal LM would be scored by a "
                         "random head")
    from safesample.backends.models import device_and_dtype

    device, torch_dtype = device_and_dtype(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(where, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load reward model {spec!r}: {str(exc).splitlines()[0][:200]}",
                         "pass a local folder holding the model and its tokenizer") from exc
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        # Llama-style classifiers pool the last non-pad token and need to know which id pads.
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().to(device)
    return RewardModel(model, tokenizer, spec, batch_size=batch_size, max_length=max_length,
                       label=_pick_label(model.config, label), fingerprint=_fingerprint(where))
