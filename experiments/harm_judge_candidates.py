"""Candidates for the harm judge, measured on human harm labels (issue 24; results in
experiments/HARM_JUDGE.md).

Data: shared/data/refusal_labels (`harmful_response`: Do-Not-Answer's human `harmful` flag for
ChatGPT and Claude, XSTest's "complies with an unsafe prompt" for gpt4 and mistralinstruct).
Split: bench_rules_accuracy.held_out (sha256(instruction) % 10 < 3 held out; one question never
on both sides). Everything trainable is fitted on the dev rows only; the figures are on the
held-out rows.

Steps (each caches its per-row output under build/harm_judge/, so a rerun is free):

    extract --model qwen2.5-coder-0.5b   one forward pass per row (rubric prompt, bf16, full depth):
                                         the verdict logit and hidden states at several layers
    extract --model qwen2.5-coder-1.5b --subset   the same on the held-out rows and a dev sample
    embed                                MiniLM embeddings of the response and of question + answer
    extract --plain                      the plain chat (no rubric) through backends/hidden_states
    extract --stop 16 --dtype float32    the shipped kind of pass: stopped at layer 16, float32,
                                         reading the request's end too
    evaluate                             fit the probes on dev, score everything on held-out,
                                         print the tables, write build/harm_judge/results.json
    table                                results.json as the markdown table of HARM_JUDGE.md

Run with `nice -n 5 .venv/bin/python experiments/harm_judge_candidates.py STEP`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_rules_accuracy import DATA, held_out  # noqa: E402

OUT = REPO / "build" / "harm_judge"
LAYERS = {"qwen2.5-coder-0.5b": (4, 8, 10, 12, 14, 16, 20, 24), "qwen2.5-coder-1.5b": (7, 10, 14, 18, 21, 28)}
# a pass stopped at a middle layer (no verdict), which also reads the request's end ("question")
STOP_LAYERS = {16: (6, 8, 10, 12, 14, 16)}
CHUNK = 32
C_GRID = (0.003, 0.03, 0.3)  # inverse L2 strength of the probes, chosen per candidate by dev CV


def load_labels():
    import pandas as pd

    df = pd.read_parquet(DATA / "refusal_labels" / "refusal_labels.parquet").reset_index(drop=True)
    df["held_out"] = [held_out(s) for s in df["instruction"]]
    return df


def subset_order(df, subset: bool, seed: int = 0) -> list[int]:
    """Rows to extract, in order: all of them, or (subset) every held-out row, then every dev
    positive and a sixth of the dev negatives (enough for a dev threshold), each part shortest
    first."""
    import numpy as np

    lengths = df["instruction"].str.len() + df["response"].str.len()
    if not subset:
        return list(np.argsort(lengths.to_numpy(), kind="stable"))
    rng = np.random.default_rng(seed)
    ho = df.index[df["held_out"]].to_numpy()
    dev = df.index[~df["held_out"]].to_numpy()
    dev_pos = dev[df.loc[dev, "harmful_response"].to_numpy()]
    dev_neg = dev[~df.loc[dev, "harmful_response"].to_numpy()]
    dev_neg = rng.choice(dev_neg, size=len(dev_neg) // 6, replace=False)
    parts = [ho, np.concatenate([dev_pos, dev_neg])]
    return [int(i) for part in parts for i in part[np.argsort(lengths.to_numpy()[part], kind="stable")]]


def extract(args) -> None:
    import numpy as np
    import torch

    from safesample.backends.harm_judge import encode_pairs, layout, read_template, verdict_token_ids
    from safesample.backends.harm_pass import run_pass
    from safesample.backends.models import load_causal_lm, load_tokenizer, resolve

    df = load_labels()
    folder = OUT / (f"{args.model}-{args.dtype}" if not args.stop else f"stop{args.stop}-{args.model}-{args.dtype}")
    layers = LAYERS[args.model] if not args.stop else STOP_LAYERS[args.stop]
    folder.mkdir(parents=True, exist_ok=True)
    order = subset_order(df, args.subset)
    chunks = [order[i:i + CHUNK] for i in range(0, len(order), CHUNK)]
    todo = [(k, c) for k, c in enumerate(chunks) if not (folder / f"chunk-{k:04d}.npz").exists()]
    print(f"{args.model} {args.dtype}: {len(order)} rows, {len(chunks)} chunks, {len(todo)} to do", flush=True)
    if not todo:
        return
    torch.set_num_threads(args.threads)
    ref = resolve(args.model)
    tok = load_tokenizer(ref)
    model = load_causal_lm(ref, dtype=args.dtype, device="cpu").eval()
    lay = layout(tok, read_template())
    vid = verdict_token_ids(tok)
    for k, rows in todo:
        part = df.loc[rows]
        ids, spans, cut = encode_pairs(tok, lay, part["instruction"].tolist(), part["response"].tolist(),
                                       max_answer_tokens=args.max_answer_tokens)
        start = time.perf_counter()
        out = run_pass(model, lay.head_ids, ids, spans, layers=layers, verdict_ids=None if args.stop else vid,
                       batch_size=args.batch_size, pad_id=tok.pad_token_id)
        seconds = time.perf_counter() - start
        arrays = {f"last{x}": v.astype(np.float32) for x, v in out.last.items()}
        arrays |= {f"mean{x}": v.astype(np.float32) for x, v in out.mean.items()}
        arrays |= {f"question{x}": v.astype(np.float32) for x, v in out.question.items()}
        if out.verdict is not None:
            arrays["verdict"] = out.verdict
        np.savez(folder / f"chunk-{k:04d}.npz", rows=np.array(rows),
                 tokens=np.array([len(r) for r in ids]), cut=np.array(cut), seconds=np.array(seconds),
                 load=np.array(os.getloadavg()[0]), **arrays)
        print(f"chunk {k}: {len(rows)} rows, {sum(len(r) for r in ids)} tokens (+{len(lay.head_ids)} head), "
              f"{seconds:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)


PLAIN_LAYERS = (6, 9, 12, 14, 16)


def plain_pairs(tokenizer, instructions, responses, max_answer_tokens: int = 256):
    """The pair as a plain chat (user: question, assistant: answer; no rubric), token ids, and the
    spans read: the answer's tokens ("response") and the end-of-turn token after it ("end")."""
    marker = "\u2063ANSWER\u2063"
    rows, spans = [], []
    for q, a in zip(instructions, responses):
        text = tokenizer.apply_chat_template([{"role": "user", "content": q},
                                              {"role": "assistant", "content": marker}], tokenize=False)
        head, tail = text.split(marker)
        h = tokenizer(head, add_special_tokens=False)["input_ids"]
        ans = tokenizer(a, add_special_tokens=False)["input_ids"][:max_answer_tokens]
        t = tokenizer(tail, add_special_tokens=False)["input_ids"]
        rows.append(h + ans + t)
        spans.append({"response": (len(h), len(h) + len(ans)), "end": (len(h) + len(ans), len(h) + len(ans) + 1)})
    return rows, spans


def extract_plain(args) -> None:
    """Candidate (c) without the rubric: hidden states of the plain chat (question, answer), the
    pass stopped at the deepest layer read, through the shared backends/hidden_states module."""
    import numpy as np
    import torch

    from safesample.backends.hidden_states import load, pooled_states

    df = load_labels()
    folder = OUT / f"plain-{args.model}-{args.dtype}"
    folder.mkdir(parents=True, exist_ok=True)
    order = subset_order(df, args.subset)
    chunks = [order[i:i + CHUNK] for i in range(0, len(order), CHUNK)]
    todo = [(k, c) for k, c in enumerate(chunks) if not (folder / f"chunk-{k:04d}.npz").exists()]
    print(f"plain {args.model} {args.dtype}: {len(order)} rows, {len(todo)} of {len(chunks)} chunks to do", flush=True)
    if not todo:
        return
    torch.set_num_threads(args.threads)
    fm = load(args.model, args.dtype)
    for k, rows in todo:
        part = df.loc[rows]
        ids, spans = plain_pairs(fm.tokenizer, part["instruction"].tolist(), part["response"].tolist(),
                                 args.max_answer_tokens)
        start = time.perf_counter()
        out = pooled_states(fm, ids, spans, PLAIN_LAYERS, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        arrays = {f"{pool}{x}": out[name][:, j] for pool, name in (("last", "end"), ("mean", "response"))
                  for j, x in enumerate(PLAIN_LAYERS)}
        np.savez(folder / f"chunk-{k:04d}.npz", rows=np.array(rows), tokens=np.array([len(r) for r in ids]),
                 seconds=np.array(seconds), load=np.array(os.getloadavg()[0]), **arrays)
        print(f"chunk {k}: {len(rows)} rows, {sum(len(r) for r in ids)} tokens, {seconds:.1f} s, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)


def load_features(folder: str):
    """{name: [n_rows, ...] array with NaN rows where not extracted}, from the chunk files."""
    import numpy as np

    files = sorted((OUT / folder).glob("chunk-*.npz"))
    if not files:
        return None
    n = len(load_labels())
    feats: dict[str, np.ndarray] = {}
    for f in files:
        with np.load(f) as data:
            rows = data["rows"]
            for key in data.files:
                if key in ("rows", "seconds", "load", "cut"):
                    continue
                v = data[key]
                if key not in feats:
                    feats[key] = np.full((n,) + v.shape[1:], np.nan, np.float32 if v.ndim > 1 else np.float64)
                feats[key][rows] = v
    return feats


def embed(args) -> None:  # noqa: ARG001
    import numpy as np

    from safesample.backends.embedding_cache import CachedEncoder

    df = load_labels()
    encoder = CachedEncoder()
    start = time.perf_counter()
    resp = encoder.encode(df["response"].tolist())
    pair = encoder.encode((df["instruction"] + "\n" + df["response"]).tolist())
    print(f"embedded {len(df)} x 2 texts in {time.perf_counter() - start:.0f} s "
          f"({encoder.stats.embedded} new)")
    np.savez(OUT / "minilm.npz", response=resp, pair=pair)


# --------------------------------------------------------------------------------------------
# evaluation


def metrics(score, y, threshold=None) -> dict:
    """AUROC of `score` for labels `y`; with a threshold (score >= t: harmful), balanced accuracy,
    TPR, FPR."""
    import numpy as np

    from safesample.backends.refusal_score import roc_auc

    out = {"n": int(len(y)), "pos": int(np.sum(y)), "auroc": roc_auc(score, y)}
    if threshold is not None:
        pred = np.asarray(score) >= threshold
        tpr = float(pred[y].mean()) if y.any() else float("nan")
        fpr = float(pred[~y].mean()) if (~y).any() else float("nan")
        out.update(tpr=tpr, fpr=fpr, bal_acc=(tpr + 1 - fpr) / 2, pred_rate=float(pred.mean()))
    return out


def grouped_oof(x, y, groups, make, folds: int = 5):
    """Out-of-fold scores on the dev rows: folds by instruction (GroupKFold), so the threshold
    and the model choices are made on scores of rows the model did not see."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    oof = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        model = make().fit(x[train], y[train])
        oof[test] = model.decision_function(x[test])
    return oof


def probe(C: float = 0.1):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return lambda: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))


def operating_points(score, y, models) -> dict:
    """Thresholds chosen on dev scores by three rules: the best balanced accuracy; a 2 %
    false-positive rate; the threshold whose per-model harmful rates are nearest the human ones
    (the largest gap over the models, smallest)."""
    import numpy as np

    from safesample.backends.harm_judge import threshold_by_balanced_accuracy, threshold_for_fpr

    out = {"balanced": threshold_by_balanced_accuracy(score, y), "fpr2": threshold_for_fpr(score, y, 0.02)}
    cuts = np.unique(score)
    best, best_gap = None, np.inf
    for c in cuts[:: max(1, len(cuts) // 2000)]:
        pred = score >= c
        gap = max(abs(pred[models == m].mean() - y[models == m].mean()) for m in np.unique(models))
        if gap < best_gap:
            best, best_gap = float(c), gap
    out["rates"] = best
    return out


FEATURE_SETS = (  # (tag, folder under build/harm_judge, layers read)
    ("q0.5b rubric", "qwen2.5-coder-0.5b-bfloat16", LAYERS["qwen2.5-coder-0.5b"]),
    ("q0.5b plain", "plain-qwen2.5-coder-0.5b-bfloat16", PLAIN_LAYERS),
    ("q0.5b fp32", "stop16-qwen2.5-coder-0.5b-float32", STOP_LAYERS[16]),
    ("q1.5b rubric", "qwen2.5-coder-1.5b-bfloat16", LAYERS["qwen2.5-coder-1.5b"]),
)


class Evaluation:
    """Every candidate scored the same way: dev scores (out of fold, by instruction, when
    trained), operating points chosen on them, figures on the held-out rows."""

    def __init__(self):
        import numpy as np

        from safesample.behavior import classify_responses, is_refusal

        df = self.df = load_labels()
        self.y = df["harmful_response"].to_numpy(bool)
        self.ho = df["held_out"].to_numpy()
        self.dev = ~self.ho
        self.models = df["model"].to_numpy()
        self.groups = df["instruction"].to_numpy()
        self.refused = np.array([bool(is_refusal(s)) for s in classify_responses(df["response"].tolist())])
        self.unsafe_prompt = (df["prompt_label"] == "unsafe").to_numpy()
        self.results: dict[str, dict] = {}

    def fit(self, x, rows, key: str | None = None):
        """Out-of-fold dev scores at the C chosen on dev, and held-out scores of the model refitted
        on all dev rows (`rows`: the rows that have features). Cached under build/harm_judge/fits/
        by `key` (a rerun that adds candidates refits only the new ones)."""
        import numpy as np

        from safesample.backends.refusal_score import roc_auc

        cached = OUT / "fits" / f"{key.replace(' ', '_').replace('+', '_')}.npz" if key else None
        if cached is not None and cached.exists():
            with np.load(cached) as data:
                if data["shape"].tolist() == list(x.shape) and data["grid"].tolist() == list(C_GRID):
                    return data["score"], float(data["C"])

        d, h = self.dev & rows, self.ho & rows
        tried = {c: grouped_oof(x[d], self.y[d], self.groups[d], probe(c)) for c in C_GRID}
        chosen = max(C_GRID, key=lambda c: roc_auc(tried[c], self.y[d]))  # chosen on dev only
        score = np.full(len(self.y), np.nan)
        score[d] = tried[chosen]
        score[h] = probe(chosen)().fit(x[d], self.y[d]).decision_function(x[h])
        if cached is not None:
            cached.parent.mkdir(exist_ok=True)
            np.savez(cached, score=score, C=chosen, shape=np.array(x.shape), grid=np.array(C_GRID))
        return score, chosen

    def report(self, name: str, score, *, note: str = "", C=None, rates_rule: bool = True) -> None:
        import numpy as np

        score = np.asarray(score, float)
        rows = ~np.isnan(score)
        d, h = self.dev & rows, self.ho & rows
        y, m = self.y, self.models
        ops = operating_points(score[d], y[d], m[d])
        if not rates_rule:  # dev negatives were subsampled: per-model rates on them mean nothing
            ops.pop("rates")
        entry = {"note": note, "C": C, "dev_auroc": metrics(score[d], y[d])["auroc"],
                 "held_out": metrics(score[h], y[h]), "thresholds": ops, "at": {}}
        for rule, t in ops.items():
            entry["at"][rule] = {"all": metrics(score[h], y[h], t), "models": {
                model: {"human": float(y[h & (m == model)].mean()), "pos": int(y[h & (m == model)].sum()),
                        "n": int((h & (m == model)).sum()), "judge": float((score[h & (m == model)] >= t).mean())}
                for model in np.unique(m[h])}}
        dev_at = {rule: metrics(score[d], y[d], t) for rule, t in ops.items()}
        entry["dev_at"] = dev_at
        self.results[name] = entry
        line = f"{name:<34} dev {entry['dev_auroc'] or float('nan'):.3f} | held-out {entry['held_out']['auroc'] or float('nan'):.3f}"
        for rule in ("balanced", "fpr2"):
            e = entry["at"][rule]
            gap = max(abs(v["judge"] - v["human"]) for v in e["models"].values())
            line += (f" | {rule}: dev bal {dev_at[rule]['bal_acc']:.3f}, held-out bal {e['all']['bal_acc']:.3f} "
                     f"(TPR {e['all']['tpr']:.2f} FPR {e['all']['fpr']:.3f}) gap {100 * gap:4.1f}p")
        print(line + f" [{entry['held_out']['pos']}/{entry['held_out']['n']}]", flush=True)


def leave_one_model_out(ev: "Evaluation", x, rows, name: str) -> dict:
    """Models the probe was not tuned on: train on the dev rows of three models (C by dev CV,
    threshold at a 2 % false-positive rate on their out-of-fold scores), score the held-out rows
    of the fourth. (ChatGPT and Claude answer the same Do-Not-Answer questions, gpt4 and
    mistralinstruct the same XSTest ones; held-out questions are never in dev.)"""
    import numpy as np

    from safesample.backends.harm_judge import threshold_for_fpr
    from safesample.backends.refusal_score import roc_auc

    out = {}
    for left in np.unique(ev.models):
        train = ev.dev & rows & (ev.models != left)
        test = ev.ho & rows & (ev.models == left)
        tried = {c: grouped_oof(x[train], ev.y[train], ev.groups[train], probe(c)) for c in C_GRID}
        c = max(C_GRID, key=lambda k: roc_auc(tried[k], ev.y[train]))
        t = threshold_for_fpr(tried[c], ev.y[train], 0.02)
        score = probe(c)().fit(x[train], ev.y[train]).decision_function(x[test])
        y = ev.y[test]
        out[left] = {"auroc": roc_auc(score, y), "pos": int(y.sum()), "n": int(len(y)),
                     "human": float(y.mean()), "judge": float((score >= t).mean()),
                     "tpr": float((score[y] >= t).mean()) if y.any() else None,
                     "fpr": float((score[~y] >= t).mean())}
        o = out[left]
        print(f"  {name} without {left:<16} AUROC {o['auroc'] if o['auroc'] is not None else float('nan'):.3f} "
              f"rate {100 * o['judge']:5.1f}% vs human {100 * o['human']:5.1f}% ({o['pos']}/{o['n']}) "
              f"FPR {o['fpr']:.3f}", flush=True)
    return out


FINALISTS = {  # leave-one-model-out for these (folder tag, feature list)
    "q0.5b fp32 mean+last12": ("q0.5b fp32", ["mean12", "last12"]),
    "q0.5b fp32 mean+last+question12": ("q0.5b fp32", ["mean12", "last12", "question12"]),
    "q0.5b plain mean12": ("q0.5b plain", ["mean12"]),
}


def evaluate(args) -> None:  # noqa: ARG001
    import numpy as np

    ev = Evaluation()
    ev.report("rules: not refused", (~ev.refused).astype(float))
    ev.report("rules: not refused, prompt unsafe", (~ev.refused & ev.unsafe_prompt).astype(float),
              note="knows the prompt label")
    ev.report("response length (log chars)", np.log1p(ev.df["response"].str.len().to_numpy()),
              note="a confound check")
    kept: dict[str, np.ndarray] = {}  # scores reused by the combinations
    for tag, folder, layers in FEATURE_SETS:
        feats = load_features(folder)
        if feats is None:
            continue
        rows = ~np.isnan(feats["tokens"])
        full = bool(rows.all())
        if not full and int(rows.sum()) != len(subset_order(ev.df, True)):
            print(f"{tag}: extraction incomplete ({int(rows.sum())} rows), skipped")
            continue
        if "verdict" in feats:
            kept[f"{tag} verdict"] = feats["verdict"]
            ev.report(f"(a) {tag} verdict logit", feats["verdict"], note=f"zero-shot, {int(rows.sum())} rows",
                      rates_rule=full)
        for layer in layers:
            pools = [p for p in ("last", "mean", "question") if f"{p}{layer}" in feats]
            combos = [[p] for p in pools] + [["mean", "last"]] + ([["mean", "last", "question"]]
                                                                   if "question" in pools else [])
            for combo in combos:
                name = "+".join(combo) + str(layer)
                x = np.nan_to_num(np.hstack([feats[f"{p}{layer}"] for p in combo]))
                score, c = ev.fit(x, rows, f"{tag} {name}")
                kept[f"{tag} {name}"] = score
                ev.report(f"({'c' if len(combo) == 1 else 'd'}) {tag} probe {name}", score, C=c, rates_rule=full)
        if "verdict" in feats:  # the verdict logit as one more feature of the best middle layer
            mid = layers[len(layers) // 2]
            x = np.nan_to_num(np.hstack([feats[f"mean{mid}"], feats[f"last{mid}"], feats["verdict"][:, None]]))
            score, c = ev.fit(x, rows, f"{tag} mean+last{mid}+verdict")
            ev.report(f"(d) {tag} mean+last{mid}+verdict", score, C=c, rates_rule=full)
    emb = OUT / "minilm.npz"
    if emb.exists():
        with np.load(emb) as data:
            for key in ("response", "pair"):
                score, c = ev.fit(data[key], np.ones(len(ev.y), bool), f"minilm {key}")
                kept[f"minilm {key}"] = score
                ev.report(f"(b) MiniLM {key} embedding LR", score, C=c)
    print("\nleave one model out (trained on the other three models' dev rows, scored on its held-out rows):")
    folders = {tag: folder for tag, folder, _ in FEATURE_SETS}
    for name, (tag, parts) in FINALISTS.items():
        feats = load_features(folders[tag])
        if feats is None or not all(p in feats for p in parts) or np.isnan(feats["tokens"]).any():
            continue
        x = np.hstack([feats[p] for p in parts])
        ev.results.setdefault(f"leave one model out: {name}", {})["per_model"] = leave_one_model_out(
            ev, x, np.ones(len(ev.y), bool), name)
    (OUT / "results.json").write_text(json.dumps(ev.results, indent=1))
    np.savez(OUT / "scores.npz", **{k.replace(" ", "_"): v for k, v in kept.items()})
    print(f"wrote {OUT / 'results.json'} and scores.npz")


def table(args) -> None:  # noqa: ARG001
    """results.json as the markdown table of experiments/HARM_JUDGE.md: per candidate, dev and
    held-out AUROC, then at each operating point (chosen on dev) the held-out balanced accuracy,
    TPR / FPR and each model's harmful rate against the human one."""
    results = json.loads((OUT / "results.json").read_text())
    models = ["ChatGPT", "Claude", "gpt4", "mistralinstruct"]
    print("| candidate | dev AUROC (oof) | held-out AUROC | rule | held-out bal. acc | TPR / FPR | "
          + " | ".join(f"{m} judge vs human" for m in models) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(models))
    for name, e in results.items():
        if "at" not in e:
            continue
        for rule in ("balanced", "fpr2"):
            a = e["at"][rule]
            cells = [f"{100 * a['models'][m]['judge']:.1f} vs {100 * a['models'][m]['human']:.1f}"
                     if m in a["models"] else "-" for m in models]
            print(f"| {name if rule == 'balanced' else ''} | {e['dev_auroc'] or float('nan'):.3f} | "
                  f"{e['held_out']['auroc'] or float('nan'):.3f} | {rule} | {a['all']['bal_acc']:.3f} | "
                  f"{a['all']['tpr']:.2f} / {a['all']['fpr']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("extract")
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--subset", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-answer-tokens", type=int, default=256)
    p.add_argument("--plain", action="store_true", help="plain chat, no rubric (shared hidden_states module)")
    p.add_argument("--stop", type=int, choices=sorted(STOP_LAYERS), default=None,
                   help="no verdict: stop the pass at this layer, and read the request's end too")
    sub.add_parser("embed")
    sub.add_parser("evaluate")
    sub.add_parser("table")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.step == "extract" and args.plain:
        extract_plain(args)
    else:
        {"extract": extract, "embed": embed, "evaluate": evaluate, "table": table}[args.step](args)
