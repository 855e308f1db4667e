"""The compliance direction: fit once on the anchors' hidden states, at one layer.

Per candidate layer, the direction is the normalised difference of the mean response-token
states of compliant and refusing anchors (DataShield's compliance vector). A layer is worth
reading when projecting held-out anchors on its direction separates the two kinds:

- the layer is chosen by cross-validation inside the fitting part of the anchors (FOLDS folds
  of whole instruction groups; the out-of-fold projections of all folds pooled into one AUROC),
  among the layers before the last fifth (the last layers turn towards next-token prediction,
  and the deeper the layer, the longer every row's forward pass);
- among layers within LAYER_TOLERANCE of the best cross-validated AUROC the shallowest wins,
  since scoring a row stops its forward pass at that layer (0.01 AUROC is about a third of the
  standard error on ~100 held-out anchors, i.e. noise);
- the held-out part (30 % of the instruction groups) is used only to report the chosen layer's
  AUROC, so that number is not inflated by the choice;
- the direction that scores rows is then refit on all anchors at the chosen layer.

For `audit_similarity` the direction also keeps the mean unit last-token state of each kind, so
the mean cosine of a row to every anchor of a kind is one dot product.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from safesample.audit.anchors import Anchors
from safesample.errors import DataError, UsageError
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import numpy as np

    from safesample.audit.options import AuditOptions
    from safesample.backends.hidden_states import LazyModel, ModelInfo

VERSION = 1  # of the fitting procedure: part of the cache keys
LAYER_TOLERANCE = 0.01


@dataclass
class Direction:
    layer: int
    vector: "np.ndarray"  # unit compliance direction, float32 [hidden]
    similarity: "np.ndarray"  # mean unit last-token state, compliant minus refusing [hidden]
    held_out_auroc: float | None  # of the chosen layer, on anchors the choice never saw
    cv_auroc: dict[int, float | None]  # per candidate layer: what chose it
    forced: bool  # --layer gave it
    model: str
    fingerprint: str
    dtype: str
    template: str
    max_tokens: int
    anchors_name: str
    anchors_digest: str
    anchors: dict[str, int] = field(default_factory=dict)  # counts

    def settings(self) -> dict[str, Any]:
        """Everything a row's scores depend on besides its text (the per-row cache scope)."""
        return {"purpose": "audit", "version": VERSION, "model": self.fingerprint, "dtype": self.dtype,
                "layer": self.layer, "template": self.template, "max_tokens": self.max_tokens,
                "anchors": self.anchors_digest}

    def describe(self) -> str:
        def num(x: float | None) -> str:
            return f"{x:.3f}" if x is not None else "n/a"

        how = "given by --layer" if self.forced else "chosen on the anchors"
        return (f"layer {self.layer} ({how}), held-out AUROC {num(self.held_out_auroc)} "
                f"(cross-validated {num(self.cv_auroc.get(self.layer))})")

    def to_bytes(self) -> bytes:
        import numpy as np

        meta = {k: v for k, v in asdict(self).items() if k not in ("vector", "similarity")}
        meta["cv_auroc"] = {str(k): v for k, v in self.cv_auroc.items()}
        buf = io.BytesIO()
        np.savez(buf, vector=self.vector, similarity=self.similarity, meta=np.array(json.dumps(meta)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Direction":
        import numpy as np

        with np.load(io.BytesIO(data)) as f:
            meta = json.loads(str(f["meta"]))
            meta["cv_auroc"] = {int(k): v for k, v in meta["cv_auroc"].items()}
            return cls(vector=f["vector"], similarity=f["similarity"], **meta)


# --------------------------------------------------------------------------------------------
# pure fitting and scoring (numpy only)


def candidate_layers(num_layers: int) -> list[int]:
    """Layers 1 .. L - ceil(L/5): the last fifth is skipped (24 layers: 1..19)."""
    return list(range(1, max(1, num_layers - math.ceil(num_layers / 5)) + 1))


def unit(x: "np.ndarray") -> "np.ndarray":
    import numpy as np

    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def class_direction(states: "np.ndarray", compliant: "np.ndarray") -> "np.ndarray":
    """Unit (mean of compliant rows - mean of refusing rows) of `states` [rows, hidden]."""
    return unit(states[compliant].mean(0) - states[~compliant].mean(0))


def layer_aurocs(response: "np.ndarray", compliant: "np.ndarray", held_out: "np.ndarray",
                 folds: "np.ndarray") -> tuple[list[float | None], list[float | None]]:
    """Per layer of `response` [rows, layers, hidden]: the pooled out-of-fold AUROC over the
    fitting rows, and the AUROC on the held-out rows of the direction fit on all fitting rows."""
    import numpy as np

    from safesample.backends.refusal_score import roc_auc

    fitting = ~held_out
    cv, held = [], []
    for k in range(response.shape[1]):
        states = response[:, k, :]
        oof = np.full(len(states), np.nan)
        for fold in sorted(set(folds[fitting].tolist())):
            test = folds == fold
            train = fitting & ~test
            if compliant[train].all() or not compliant[train].any():
                continue
            oof[test] = states[test] @ class_direction(states[train], compliant[train])
        have = fitting & ~np.isnan(oof)
        cv.append(roc_auc(oof[have], compliant[have]) if have.any() else None)
        direction = class_direction(states[fitting], compliant[fitting])
        held.append(roc_auc(states[held_out] @ direction, compliant[held_out]))
    return cv, held


def choose_layer(layers: Sequence[int], cv: Sequence[float | None]) -> int:
    """The shallowest layer within LAYER_TOLERANCE of the best cross-validated AUROC."""
    scored = [(layer, auc) for layer, auc in zip(layers, cv) if auc is not None]
    if not scored:
        return layers[len(layers) // 2]
    best = max(auc for _, auc in scored)
    return min(layer for layer, auc in scored if auc >= best - LAYER_TOLERANCE)


def row_scores(response: "np.ndarray", last_prompt: "np.ndarray", last: "np.ndarray",
               direction: Direction) -> tuple["np.ndarray", "np.ndarray"]:
    """audit_score and audit_similarity from a row's states at the direction's layer [rows, hidden]:
    score = mean response-token projection - last prompt token projection (DataShield's
    compliance shift); similarity = mean cosine of the last token to compliant anchors minus to
    refusing ones (He et al.'s representation matching)."""
    v = direction.vector.astype("float64")
    score = response.astype("float64") @ v - last_prompt.astype("float64") @ v
    similarity = unit(last.astype("float64")) @ direction.similarity.astype("float64")
    return score, similarity


# --------------------------------------------------------------------------------------------
# from anchors through the model


def fit_direction(anchors: Anchors, model: "LazyModel", info: "ModelInfo", options: "AuditOptions",
                  dtype: str, *, reporter: Reporter = SILENT) -> Direction:
    """The direction for these anchors, model, dtype, template, cut and layer: from the cache,
    else from one forward pass of the anchors through the candidate layers (or --layer)."""
    from safesample.cache import Cache

    direction = cached_direction(anchors, info, options, dtype)
    if direction is not None:
        reporter.info(f"compliance direction from the cache: {direction.describe()}")
        return direction
    direction = _fit(anchors, model, info, options, dtype, reporter)
    with Cache("audit_directions", _scope(anchors, info, options, dtype), enabled=options.cache) as cache:
        cache.put_many([("direction", direction.to_bytes())])
    return direction


def _scope(anchors: Anchors, info: "ModelInfo", options: "AuditOptions", dtype: str) -> str:
    from safesample.cache import settings_key

    return settings_key(purpose="audit_direction", version=VERSION, model=info.fingerprint, dtype=dtype,
                        template=options.template, max_tokens=options.max_tokens, anchors=anchors.digest(),
                        layer=options.layer, seed=options.seed)


def cached_direction(anchors: Anchors, info: "ModelInfo", options: "AuditOptions", dtype: str) -> Direction | None:
    """The cached direction, if any (for --dry-run: no model, no fitting)."""
    from safesample.cache import Cache

    scope = _scope(anchors, info, options, dtype)
    with Cache("audit_directions", scope, enabled=options.cache) as cache:
        found = cache.get_many(["direction"]).get("direction")
    return Direction.from_bytes(found) if found is not None else None


def _fit(anchors: Anchors, lazy: "LazyModel", info: "ModelInfo", options: "AuditOptions", dtype: str,
         reporter: Reporter) -> Direction:
    import numpy as np

    from safesample.backends.hidden_states import pooled_states
    from safesample.prompting import training_tokens

    if options.layer is not None and options.layer > info.num_layers:
        raise UsageError(f"--layer {options.layer} is out of range: {info.name} has {info.num_layers} layers",
                         f"pass 1..{info.num_layers}, or leave --layer out to choose one on the anchors")
    layers = [options.layer] if options.layer is not None else candidate_layers(info.num_layers)
    fm = lazy.get()
    keep, sequences, spans = [], [], []
    for i in range(len(anchors)):
        tokens = training_tokens(fm.tokenizer, anchors.instructions[i], anchors.inputs[i],
                                 anchors.responses[i], options.template).cut(options.max_tokens)
        if tokens.response_len < 1:
            continue  # the prompt fills the cut: no response token to read
        keep.append(i)
        sequences.append(tokens.ids)
        n, p = len(tokens.ids), tokens.prompt_len
        spans.append({"response": (p, n), "last": (n - 1, n)})
    skipped = len(anchors) - len(keep)
    if skipped:
        reporter.warn(f"{skipped} anchors have no response token within --max-tokens {options.max_tokens}; "
                      "left out of the direction")
    reporter.info(f"fitting the compliance direction on {len(keep)} anchors ({anchors.name}), "
                  f"layers {layers[0]}-{layers[-1]} of {info.num_layers}")
    with reporter.progress(len(keep), "anchors", unit="rows") as advance:
        states = pooled_states(fm, sequences, spans, layers, batch_size=options.batch_size, progress=advance)
    idx = np.asarray(keep, dtype=int)
    compliant = anchors.mask("compliant")[idx]
    held_out = anchors.mask("held_out")[idx]
    folds = np.asarray(anchors.folds)[idx]
    for part, rows in (("held-out", held_out), ("fitting", ~held_out)):
        if compliant[rows].all() or not compliant[rows].any():
            raise DataError(f"the {part} anchors hold only one kind ({int(compliant[rows].sum())} compliant, "
                            f"{int((~compliant[rows]).sum())} refusing)",
                            "anchors are split by instruction: give both kinds several distinct instructions")
    cv, held = layer_aurocs(states["response"], compliant, held_out, folds)
    layer = options.layer if options.layer is not None else choose_layer(layers, cv)
    k = layers.index(layer)
    reporter.debug("cross-validated AUROC by layer: " + ", ".join(
        f"{layer_}: {auc:.3f}" for layer_, auc in zip(layers, cv) if auc is not None))
    direction = Direction(
        layer=layer, vector=class_direction(states["response"][:, k], compliant).astype(np.float32),
        similarity=(unit(states["last"][compliant, k]).mean(0)
                    - unit(states["last"][~compliant, k]).mean(0)).astype(np.float32),
        held_out_auroc=held[k], cv_auroc=dict(zip(layers, cv)), forced=options.layer is not None,
        model=info.name, fingerprint=info.fingerprint, dtype=dtype, template=options.template,
        max_tokens=options.max_tokens, anchors_name=anchors.name, anchors_digest=anchors.digest(),
        anchors={**anchors.counts, "used": len(keep)})
    reporter.info(f"compliance direction: {direction.describe()}")
    if direction.held_out_auroc is not None and direction.held_out_auroc < 0.7:
        reporter.warn(f"the direction separates held-out anchors poorly (AUROC {direction.held_out_auroc:.2f}): "
                      "its scores say little; check the anchors' labels, or try another --layer")
    return direction
