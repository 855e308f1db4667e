"""The shipped harm judge against human harm labels, on the held-out split, through the shipped
code (`safesample.backends.harm_judge.harm_probability`), beside the strings-and-rules baselines.

Data: shared/data/refusal_labels (see its SOURCE.md), column `harmful_response`: Do-Not-Answer's
human `harmful` flag (ChatGPT, Claude) and, for XSTest (gpt4, mistralinstruct), "complies with an
unsafe prompt". Split as bench_rules_accuracy.held_out (sha256(instruction) % 10 < 3 held out;
a question never on both sides); the judge was trained and its threshold chosen on the rest.

Printed:
1. AUROC and balanced accuracy at the shipped threshold, TPR and FPR, for the judge and for the
   baselines on the same rows: "not refused" (the rules judge's refusal flag, negated: what a
   refusal judge says about harm), and "not refused and the prompt is unsafe" (the same, knowing
   the prompt label, which XSTest's harm label is defined by), with the judge's ratio to each;
2. per model: the judge's harmful rate against the human rate (and how many positives the human
   rate rests on), the gap in points (goal: within 2), and the baselines' rates;
3. speed: answers per second on answers of at most 128 tokens (cache off, the model loaded
   first; batched, length-sorted, the pass stopped at the layer read), with the load average;
4. the published Do-Not-Answer anchors (Wang et al., 2023) for the harmless rate per model.

    .venv/bin/python bench/bench_harm_judge.py [--speed-rows 64] [--no-speed] [--weights PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_rules_accuracy import read_labels  # noqa: E402

# Do-Not-Answer (Wang, Li, Han, Nakov, Baldwin 2023, "Do-Not-Answer: A Dataset for Evaluating
# Safeguards in LLMs", arXiv:2308.13387; the table of the project's README, github.com/Libr-AI/do-not-answer):
# the share of *harmless* responses per model (939 prompts each) by human annotators, a GPT-4
# evaluator and their fine-tuned 600M Longformer evaluator. Quoted, not measured here.
DNA_HARMLESS = {"LLaMA-2": (99.7, 99.4, 99.3), "ChatGPT": (98.5, 97.7, 97.9), "Claude": (98.3, 98.3, 97.6),
                "GPT-4": (97.6, 96.5, 97.2), "vicuna": (94.5, 94.9, 95.0), "ChatGLM2": (90.9, 92.9, 92.9)}


def rates(pred, y, models):
    out = {}
    for m in sorted(set(models)):
        sel = models == m
        out[m] = (float(pred[sel].mean()), float(y[sel].mean()), int(y[sel].sum()), int(sel.sum()))
    return out


def main() -> int:
    import numpy as np

    from safesample.backends import harm_judge as hj
    from safesample.backends.generation import load_engine
    from safesample.backends.refusal_score import roc_auc
    from safesample.behavior import classify_responses, is_refusal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="harm-judge weights [default: the shipped ones]")
    parser.add_argument("--speed-rows", type=int, default=64)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    df = read_labels()
    if df is None:
        return 1
    df = df[df["held_out"]].reset_index(drop=True)
    y = df["harmful_response"].to_numpy(bool)
    models = df["model"].to_numpy()
    judge = hj.load(args.weights)
    print("\n".join(judge.describe()))

    engine = load_engine(judge.model, engine="transformers", batch_size=args.batch_size, dtype=judge.dtype)
    stats = hj.HarmStats()
    start = time.perf_counter()
    prob, _ = hj.harm_probability(engine, df["instruction"].tolist(), df["response"].tolist(), judge=judge,
                                  stats=stats)
    seconds = time.perf_counter() - start
    prob = np.asarray(prob)
    print(f"\nheld-out split: {len(df)} rows, {int(y.sum())} harmful by the human labels; judged {stats.judged} "
          f"({stats.cached} from the cache) in {seconds:.0f} s; {stats.truncated} answers cut to "
          f"{judge.meta.get('max_answer_tokens')} tokens")

    refused = np.array([bool(is_refusal(s)) for s in classify_responses(df["response"].tolist())])
    unsafe = (df["prompt_label"] == "unsafe").to_numpy()
    candidates = {"harm judge": (prob, prob >= judge.threshold),
                  "rules: not refused": ((~refused).astype(float), ~refused),
                  "rules: not refused, prompt unsafe": ((~refused & unsafe).astype(float), ~refused & unsafe)}
    print(f"\n{'judge':<36}{'AUROC':>8}{'bal.acc':>9}{'TPR':>7}{'FPR':>7}")
    figures = {}
    for name, (score, pred) in candidates.items():
        tpr, fpr = float(pred[y].mean()), float(pred[~y].mean())
        figures[name] = (roc_auc(score, y), (tpr + 1 - fpr) / 2)
        print(f"{name:<36}{figures[name][0]:>8.3f}{figures[name][1]:>9.3f}{tpr:>7.3f}{fpr:>7.3f}")
    for name in list(candidates)[1:]:
        print(f"  judge / {name}: AUROC x{figures['harm judge'][0] / figures[name][0]:.2f}, "
              f"balanced accuracy x{figures['harm judge'][1] / figures[name][1]:.2f}")

    print("\nharmful rate per model, held-out (goal: the judge within 2 points of the human rate)")
    print(f"{'model':<17}{'n':>5}{'human':>8}{'(pos)':>7}{'judge':>8}{'gap':>8}{'not refused':>13}{'+prompt':>9}")
    per = {name: rates(pred, y, models) for name, (_, pred) in candidates.items()}
    for m, (judge_rate, human, pos, n) in per["harm judge"].items():
        gap = 100 * (judge_rate - human)
        print(f"{m:<17}{n:>5}{100 * human:>7.1f}%{pos:>7}{100 * judge_rate:>7.1f}%{gap:>+7.1f}p"
              f"{100 * per['rules: not refused'][m][0]:>12.1f}%{100 * per['rules: not refused, prompt unsafe'][m][0]:>8.1f}%")

    if not args.no_speed:
        tok = engine.tokenizer
        lengths = np.array([len(ids) for ids in tok(df["response"].tolist(), add_special_tokens=False)["input_ids"]])
        short = np.flatnonzero(lengths <= 128)
        pick = np.random.default_rng(0).choice(short, size=min(args.speed_rows, len(short)), replace=False)
        _ = engine.model  # load before timing
        hj.harm_probability(engine, df["instruction"].iloc[pick[:8]].tolist(), df["response"].iloc[pick[:8]].tolist(),
                            judge=judge, cache=False)  # warm-up
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        hj.harm_probability(engine, df["instruction"].iloc[pick].tolist(), df["response"].iloc[pick].tolist(),
                            judge=judge, cache=False)
        took = time.perf_counter() - start
        print(f"\nspeed: {len(pick)} answers of <= 128 tokens (mean {lengths[pick].mean():.0f}) in {took:.1f} s = "
              f"{len(pick) / took:.2f} answers/s (goal >= 2), batch {args.batch_size}, {judge.dtype}, "
              f"torch threads {__import__('torch').get_num_threads()}, load average {load_before:.2f} -> "
              f"{os.getloadavg()[0]:.2f} (2 cores, shared)")

    print("\nanchor, quoted: Do-Not-Answer's harmless rate per model (human / GPT-4 evaluator / Longformer 600M)")
    for m, (h, g, lf) in DNA_HARMLESS.items():
        print(f"  {m:<9} {h:5.1f} / {g:5.1f} / {lf:5.1f}   Longformer gap {lf - h:+.1f} points, GPT-4 gap {g - h:+.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
