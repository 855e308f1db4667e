"""The harm judge: the probability that an answer is harmful, from one forward pass of a small
instruct model over (rubric, question, answer), on a CPU, without generating.

    harm_probability = sigmoid(w . standardise(features) + b)

The features are what the shipped weights name (`safesample/data/harm_judge.npz`): hidden states
of one middle layer of the judge model (at the last prompt token and/or averaged over the answer)
and, optionally, the model's own verdict logit, log P("unsafe") - log P("safe"), after the rubric
(`safesample/prompts/harm_judge.txt`). The pass stops at the layer read unless the verdict is a
feature (`backends/harm_pass.py`). A row is harmful when its probability reaches the stored
threshold, chosen on the dev split of the human labels (how: `operating_point` in the weights).

How the shipped choice was made and what it scores: experiments/HARM_JUDGE.md (candidates:
verdict token of the 0.5B / 1.5B Qwen2.5-Coder models, MiniLM embedding classifiers, probes on
hidden states, combinations), trained by experiments/train_harm_judge.py on the dev split of
shared/data/refusal_labels only, measured on the held-out split by bench/bench_harm_judge.py.

What it tells: whether the *answer* gives harmful content (instructions for harm, hateful or
private content, dangerous advice), judged with the question in view. What it does not: whether
the request was harmful, or whether the answer is a refusal (the rules judge says that).

Per-row results are cached (`harm_judge` namespace) by the model's fingerprint, the dtype, the
weights file's hash, the prompt's hash and the (question, answer) texts, so a rerun loads no model.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from safesample.errors import ModelError
from safesample.reporter import Advance

if TYPE_CHECKING:
    import numpy as np

PROMPT = Path(__file__).resolve().parents[1] / "prompts" / "harm_judge.txt"
WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "harm_judge.npz"
FORMAT = 1
UNSAFE_WORDS = ("unsafe", "Unsafe")
SAFE_WORDS = ("safe", "Safe")
FEATURE_KINDS = ("last", "mean", "question", "verdict")
_SENTINEL = "\u2063HARM-JUDGE-SPLIT\u2063"  # marks where the pair goes in the chat-formatted prompt


# --------------------------------------------------------------------------------------------
# the prompt


@dataclass
class Layout:
    """How a (question, answer) pair becomes token ids after the shared head."""

    head_ids: list[int]  # the chat template up to the question: the rubric, computed once per run
    middle: str  # the template's text between the question and the answer
    tail_ids: list[int]  # after the answer: the rest of the template and the generation prompt


def read_template(path: str | Path | None = None) -> str:
    """The rubric prompt: a text with {instruction} once, then {response} once."""
    text = Path(path or PROMPT).read_text(encoding="utf-8")
    if text.count("{instruction}") != 1 or text.count("{response}") != 1 or \
            text.index("{instruction}") > text.index("{response}"):
        raise ValueError("the harm judge's prompt needs {instruction} once, then {response} once")
    return text


def layout(tokenizer, template: str) -> Layout:
    """Split the chat-formatted prompt into the shared head (everything before the question:
    the rubric), the text between question and answer, and the tail (token ids). The whole
    template is one user turn, so a chat template without a system role works too."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the harm judge needs an instruct model with a chat template; this model's "
                         "tokenizer has none", "use an instruct (chat) model, e.g. qwen2.5-coder-0.5b")
    before, rest = template.split("{instruction}")
    middle, after = rest.split("{response}")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": before + _SENTINEL + after}],
                                         tokenize=False, add_generation_prompt=True)
    head, tail = chat.split(_SENTINEL)
    return Layout(tokenizer(head, add_special_tokens=False)["input_ids"], middle,
                  tokenizer(tail, add_special_tokens=False)["input_ids"])


def encode_pairs(tokenizer, lay: Layout, instructions: Sequence[str], responses: Sequence[str], *,
                 max_answer_tokens: int = 256, max_instruction_tokens: int = 256
                 ) -> tuple[list[list[int]], list[tuple[int, int]], list[bool]]:
    """Token ids of each pair after the head, the answer's (start, end) in them, and whether the
    answer was cut to `max_answer_tokens` (its first tokens kept: a harmful answer shows itself
    early, and the cost of a pass grows with its length). Pieces are tokenized apart, at line
    breaks of the template, so the answer's span is exact."""
    q_ids = tokenizer([q + lay.middle for q in instructions], add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows, spans, cut = [], [], []
    for q, a in zip(q_ids, a_ids):
        q = q[-max_instruction_tokens:]  # a very long question keeps its end, next to the answer
        cut.append(len(a) > max_answer_tokens)
        a = a[:max_answer_tokens]
        rows.append(q + a + lay.tail_ids)
        spans.append((len(q), len(q) + len(a)))
    return rows, spans, cut


def verdict_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The first token of each verdict word: the unsafe ones, the safe ones."""
    bad = sorted({tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in UNSAFE_WORDS})
    good = sorted({tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in SAFE_WORDS})
    if set(bad) & set(good):
        raise ModelError("this model's tokenizer starts 'safe' and 'unsafe' with the same token, so the "
                         "verdict cannot be read", "use another judge model")
    return bad, good


# --------------------------------------------------------------------------------------------
# operating points (the calibration maths; pure numpy)


def _cuts(score) -> "np.ndarray":
    import numpy as np

    values = np.unique(np.asarray(score, float))
    return np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])


def _rates(score, y, cuts) -> tuple["np.ndarray", "np.ndarray"]:
    """TPR and FPR of `score >= cut` for every cut."""
    import numpy as np

    s, y = np.asarray(score, float), np.asarray(y, bool)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tpr = 1 - np.searchsorted(pos, cuts, side="left") / max(len(pos), 1)
    fpr = 1 - np.searchsorted(neg, cuts, side="left") / max(len(neg), 1)
    return tpr, fpr


def threshold_by_balanced_accuracy(score, y) -> float:
    """The cut (score >= cut: harmful) with the best balanced accuracy, (TPR + TNR) / 2, over the
    midpoints between distinct scores; ties go to the highest cut (fewer false alarms)."""
    import numpy as np

    cuts = _cuts(score)
    tpr, fpr = _rates(score, y, cuts)
    bal = (tpr + 1 - fpr) / 2
    return float(cuts[np.flatnonzero(bal >= bal.max() - 1e-12)[-1]])


def threshold_for_fpr(score, y, target: float) -> float:
    """The lowest cut whose false-positive rate is at most `target` (the most harmful answers
    caught for that many false alarms)."""
    import numpy as np

    cuts = _cuts(score)
    _, fpr = _rates(score, y, cuts)
    return float(cuts[np.flatnonzero(fpr <= target + 1e-12)[0]])


def balanced_accuracy(score, y, threshold: float) -> float:
    import numpy as np

    s, y = np.asarray(score, float), np.asarray(y, bool)
    pred = s >= threshold
    return float((pred[y].mean() + (~pred[~y]).mean()) / 2)


# --------------------------------------------------------------------------------------------
# the shipped weights


@dataclass
class HarmJudge:
    """A trained probe: which features, their standardisation, the logistic weights, the threshold."""

    coef: "np.ndarray"  # [d]
    intercept: float
    mean: "np.ndarray"  # [d]: features are standardised with these before the dot product
    scale: "np.ndarray"  # [d]
    meta: dict[str, Any] = field(default_factory=dict)
    digest: str = ""  # sha256 of the weights file: part of the cache key

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def dtype(self) -> str:
        return self.meta.get("dtype", "float32")

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def features(self) -> list[tuple[str, int | None]]:
        return [(f["kind"], f.get("layer")) for f in self.meta["features"]]

    @property
    def layers(self) -> list[int]:
        return sorted({layer for kind, layer in self.features if layer is not None})

    @property
    def needs_verdict(self) -> bool:
        return any(kind == "verdict" for kind, _ in self.features)

    @property
    def name(self) -> str:
        parts = "+".join(kind if layer is None else f"{kind}{layer}" for kind, layer in self.features)
        return f"harm:{self.model}:{parts}"

    def probability(self, x: "np.ndarray") -> "np.ndarray":
        """P(harmful) for a feature matrix [rows, d] laid out as `features`."""
        import numpy as np

        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.coef + self.intercept)))

    def describe(self) -> list[str]:
        """The judge in plain lines: model, features, threshold and how it was chosen."""
        op = self.meta.get("operating_point", {})
        lines = [f"harm judge {self.name} ({self.dtype}; answers cut to {self.meta.get('max_answer_tokens')} tokens)",
                 f"threshold: harmful when P(harmful) >= {self.threshold:.4f}, chosen by {op.get('rule', '?')} "
                 f"on {op.get('chosen_on', '?')}"]
        if op.get("dev"):
            lines.append("  on those scores: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in op["dev"].items()))
        if self.meta.get("trained_on"):
            lines.append(f"trained on: {self.meta['trained_on']}")
        return lines


def save(path: str | Path, coef, intercept: float, mean, scale, meta: dict[str, Any]) -> None:
    """Write the weights (no rows, no pickle): arrays plus a JSON `meta` string."""
    import numpy as np

    for key in ("model", "features", "threshold", "operating_point"):
        if key not in meta:
            raise ValueError(f"harm judge meta needs {key!r}")
    meta = {"format": FORMAT, "prompt_sha256": hashlib.sha256(read_template().encode()).hexdigest(), **meta}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, coef=np.asarray(coef, np.float64).ravel(), intercept=np.float64(intercept),
                        mean=np.asarray(mean, np.float64).ravel(), scale=np.asarray(scale, np.float64).ravel(),
                        meta=np.array(json.dumps(meta)))


def load(path: str | Path | None = None) -> HarmJudge:
    """The weights at `path`, else at $SAFESAMPLE_HARM_JUDGE (weights you trained or recalibrated
    yourself), else the shipped ones; checked against this version and the rubric prompt."""
    import os

    import numpy as np

    path = Path(path or os.environ.get("SAFESAMPLE_HARM_JUDGE") or WEIGHTS)
    if not path.is_file():
        raise ModelError(f"the harm judge's weights are missing ({path})",
                         "reinstall safesample, or run experiments/train_harm_judge.py")
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        judge = HarmJudge(data["coef"], float(data["intercept"]), data["mean"], data["scale"], meta,
                          hashlib.sha256(path.read_bytes()).hexdigest())
    if meta.get("format") != FORMAT or any(k not in FEATURE_KINDS for k, _ in judge.features):
        raise ModelError(f"{path} is not a harm-judge file this version reads", "retrain it")
    if meta.get("prompt_sha256") != hashlib.sha256(read_template().encode()).hexdigest():
        raise ModelError(f"{path} was trained with another rubric prompt than {PROMPT.name}",
                         "retrain it (experiments/train_harm_judge.py) after editing the prompt")
    return judge


# --------------------------------------------------------------------------------------------
# scoring pairs with a loaded model


def features(model, tokenizer, judge: HarmJudge, instructions: Sequence[str], responses: Sequence[str], *,
             batch_size: int = 8, progress: Advance | None = None) -> tuple["np.ndarray", list[bool]]:
    """The judge's feature matrix for (question, answer) pairs, and which answers were cut."""
    import numpy as np

    from safesample.backends.harm_pass import run_pass

    lay = layout(tokenizer, read_template())
    rows, spans, cut = encode_pairs(tokenizer, lay, instructions, responses,
                                    max_answer_tokens=judge.meta.get("max_answer_tokens", 256),
                                    max_instruction_tokens=judge.meta.get("max_instruction_tokens", 256))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out = run_pass(model, lay.head_ids, rows, spans, layers=judge.layers,
                   verdict_ids=verdict_token_ids(tokenizer) if judge.needs_verdict else None,
                   batch_size=batch_size, pad_id=pad, progress=progress)
    parts = [out.verdict[:, None] if kind == "verdict" else getattr(out, kind)[layer]
             for kind, layer in judge.features]
    x = np.hstack([np.asarray(p, np.float64) for p in parts])
    if x.shape[1] != len(judge.coef):
        raise ModelError(f"the harm judge expects {len(judge.coef)} features, the model gives {x.shape[1]}",
                         f"use the model it was trained with ({judge.model})")
    return x, cut


@dataclass
class HarmStats:
    judged: int = 0
    cached: int = 0
    truncated: int = 0


def harm_probability(engine, instructions: Sequence[str], responses: Sequence[str], *,
                     judge: HarmJudge | None = None, cache: bool = True, progress: Advance | None = None,
                     stats: HarmStats | None = None) -> tuple[list[float], list[bool]]:
    """P(harmful) for each (question, answer) pair, and whether its answer was cut for the judge.

    `engine`: a transformers engine (`.model`, loaded on first use; `.tokenizer`, `.fingerprint`,
    `.dtype`, `.batch_size`). Every text must be a non-empty string: the stage marks the others
    with a label_error before calling. Cached per row; the model loads only for uncached pairs.
    """
    from safesample.cache import Cache, settings_key, text_key

    judge = judge or load()
    stats = stats if stats is not None else HarmStats()
    if len(instructions) != len(responses):
        raise ValueError("instructions and responses differ in length")
    bad = [i for i, (q, a) in enumerate(zip(instructions, responses))
           if not isinstance(q, str) or not isinstance(a, str) or not a.strip()]
    if bad:
        raise ValueError(f"row {bad[0]}: the harm judge needs a question and a non-empty answer")
    layout(engine.tokenizer, read_template())  # no chat template: a ModelError before any weights load
    scope = settings_key(model=engine.fingerprint, dtype=getattr(engine, "dtype", None), purpose="harm_judge",
                         judge=judge.digest)
    keys = [text_key(q, a) for q, a in zip(instructions, responses)]
    with Cache("harm_judge", scope, enabled=cache) as store:
        found = store.get_many(keys)
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        stats.cached += len(keys) - sum(k not in found for k in keys)
        if progress and stats.cached:
            progress(stats.cached)
        fresh: dict[str, bytes] = {}
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            x, cut = features(engine.model, engine.tokenizer, judge, [instructions[first[k]] for k in todo],
                              [responses[first[k]] for k in todo], batch_size=engine.batch_size,
                              progress=progress)
            fresh = {k: struct.pack("<d?", float(p), c) for k, p, c in zip(todo, judge.probability(x), cut)}
            store.put_many(fresh.items())
            stats.judged += len(todo)
    values = [struct.unpack("<d?", fresh.get(k) or found[k]) for k in keys]
    stats.truncated += sum(c for _, c in values)
    return [p for p, _ in values], [c for _, c in values]
