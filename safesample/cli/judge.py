"""`safesample judge`: generate a model's responses to evaluation prompts and score their safety."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from safesample import console
from safesample.cli.common import (BatchSize, DryRun, Input, Limit, Output, Quiet, Seed, Verbose, load,
                                   save, setup)
from safesample.errors import CheckFailed, DataError, UsageError

NAME = "judge"
HELP = """Generate a model's responses to evaluation prompts and score their safety.

Generation: vLLM batched on a GPU when installed, else transformers batched (greedy). A
fine-tuned run folder is prompted with the template it was trained with (--template auto).
Scorers (--scorer, repeatable): rules (refusal classifier, always available), wildguard / llm
(guard judge LLM given by --judge-model), reward (any sequence-classification model given by
--reward-model: a helpfulness reward model or a harmfulness predictor).

Summary (stderr, and --summary s.json): refusal rate among prompts not flagged benign,
over-refusal on benign look-alikes (a `label` column "safe" as in XSTest, `expected_behavior`
"comply", or --benign-col), harmful-response rate, mean reward, parse failures; overall and per
--category-col. --compare BASE.parquet adds the per-category change with bootstrap 95 % CIs and
the paired refused/complied transitions (McNemar p). Gates: --fail-under METRIC=VALUE and
--fail-over METRIC=VALUE exit 3 when missed (the output is still written); metrics:
refusal_rate, full_refusal_rate, over_refusal_rate, harmful_response_rate, mean_reward,
parse_failures, empty_responses, and delta_<metric> with --compare.

Examples:

\b
  safesample judge eval.parquet --model runs/lora-0 -o judged.parquet --summary s.json
  safesample judge eval.parquet --model smollm2 --limit 8 --max-new-tokens 32 -o base.parquet
  safesample judge eval.parquet --model runs/lora-0 -o j.parquet --compare base.parquet \\
      --fail-under delta_refusal_rate=-0.05
  safesample judge judged.parquet --responses --scorer rules --scorer reward \\
      --reward-model ./harm-classifier -o rescored.parquet
  safesample judge xstest.parquet --model runs/lora-0 --scorer wildguard \\
      --judge-model allenai/wildguard -o xs.parquet --fail-over over_refusal_rate=0.2
  safesample judge alpaca_eval.parquet --model runs/lora-0 --prompt-col instruction \\
      --scorer reward --reward-model ./reward-model -o helpful.parquet
"""


def command(
    input: Input,
    output: Output = "-",
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model to generate with: "
                                                 "'smollm2', a `finetune` output folder, a local "
                                                 "folder or a hub id.", show_default=False)] = None,
    responses: Annotated[bool, typer.Option("--responses", help="Score the input's existing `response` "
                                            "column instead of generating.")] = False,
    prompt_col: Annotated[Optional[str], typer.Option("--prompt-col", help="Column of prompts "
                                                      "[default: prompt, else instruction].",
                                                      show_default=False)] = None,
    category_col: Annotated[str, typer.Option("--category-col", help="Column to break the summary "
                                              "down by (skipped when absent).")] = "category",
    benign_col: Annotated[Optional[str], typer.Option("--benign-col", help="Column flagging benign "
                                                      "look-alike prompts (true/'safe'/'benign'/"
                                                      "'comply').", show_default=False)] = None,
    scorer: Annotated[Optional[list[str]], typer.Option("--scorer", "-s", help="rules, wildguard, llm, "
                                                        "reward; repeat or comma-separate "
                                                        "[default: rules].",
                                                        show_default=False)] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="Guard model for the "
                                                       "wildguard / llm scorers.",
                                                       show_default=False)] = None,
    judge_template: Annotated[Optional[Path], typer.Option("--judge-template", help="Prompt file for "
                                                           "the llm scorer (default: the bundled one).",
                                                           show_default=False)] = None,
    reward_model: Annotated[Optional[str], typer.Option("--reward-model", help="Sequence-classification "
                                                        "model for the reward scorer.",
                                                        show_default=False)] = None,
    reward_label: Annotated[Optional[str], typer.Option("--reward-label", help="Class whose probability "
                                                        "is the score of a multi-class model "
                                                        "[default: the last].", show_default=False)] = None,
    engine: Annotated[str, typer.Option("--engine", help="auto (vLLM on a GPU when installed, else "
                                        "transformers), transformers or vllm.")] = "auto",
    template: Annotated[str, typer.Option("--template", help="auto (what the run was trained with, "
                                          "else chat), alpaca, chat or raw.")] = "auto",
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt for chat "
                                                  "generation.", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate "
                                                "per response.")] = 256,
    batch_size: BatchSize = 16,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, "
                                       "bfloat16 or float16.")] = "auto",
    summary: Annotated[Optional[Path], typer.Option("--summary", help="Write the summary as JSON "
                                                    "here.", show_default=False)] = None,
    compare: Annotated[Optional[str], typer.Option("--compare", help="Another judged file of the same "
                                                   "prompts to compare against (paired on id).",
                                                   show_default=False)] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the "
                                           "comparison's CIs.")] = 1000,
    fail_under: Annotated[Optional[list[str]], typer.Option("--fail-under", help="METRIC=VALUE: exit 3 "
                                                            "if the metric is below VALUE.",
                                                            show_default=False)] = None,
    fail_over: Annotated[Optional[list[str]], typer.Option("--fail-over", help="METRIC=VALUE: exit 3 "
                                                           "if the metric is above VALUE.",
                                                           show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute generations and scores "
                                           "instead of reusing cached ones.")] = False,
    seed: Seed = 0,
    limit: Limit = None,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup(quiet, verbose)
    from safesample import judge as stage
    from safesample.tables import check_output

    check_output(output)
    scorers = _scorers(scorer)
    guards = [s for s in scorers if s in stage.GUARDS]
    if guards and not judge_model:
        raise UsageError(f"the {guards[0]} scorer needs --judge-model",
                         "pass a guard model, e.g. --judge-model allenai/wildguard or a local folder")
    if "reward" in scorers and not reward_model:
        raise UsageError("the reward scorer needs --reward-model",
                         "pass a sequence-classification model folder or hub id")
    if responses and model:
        raise UsageError("--responses scores existing responses; --model generates new ones",
                         "pass one of them")
    if not responses and not model:
        raise UsageError("nothing to judge: pass --model MODEL to generate responses, or --responses "
                         "to score the input's `response` column", "see `safesample judge --help`")
    if judge_template is not None and not judge_template.is_file():
        raise UsageError(f"--judge-template {str(judge_template)!r} does not exist", "check the path")
    gates = stage.parse_gates(fail_under or [], fail_over or [], scorers, comparing=compare is not None)
    if summary is not None:
        _check_summary_path(summary)
    template = stage.resolve_template(model, template) if model else None

    table = load(input, limit)
    prompt_column = stage.prompt_column(table, prompt_col)
    prompts, inputs = stage.prompt_texts(table, prompt_column)
    groups, group_source = stage.eval_groups(table, benign_col)
    category = category_col if category_col in table.column_names else None
    existing = None
    if responses:
        from safesample.schema import require

        if "response" not in table.column_names:
            raise DataError(f"--responses scores the input's 'response' column, which it lacks "
                            f"(found: {', '.join(table.column_names)})",
                            "drop --responses and pass --model MODEL to generate the responses")
        require(table, ["response"], NAME)  # the type check
        existing = table.column("response").to_pylist()
    base = load(compare) if compare else None
    if base is not None and "refusal" not in base.column_names:
        raise DataError(f"--compare {compare!r} has no 'refusal' column",
                        "pass a file written by `safesample judge`")
    if model or guards:
        from safesample.backends.models import resolve

        from safesample.backends.models import check_offline

        for spec in filter(None, [model, judge_model if guards else None]):
            check_offline(resolve(spec))  # a bad path, adapter or offline id fails before loading

    n = table.num_rows
    counts = {g: groups.count(g) for g in stage.GROUPS if groups.count(g)}
    plan = (f"judge {n} prompts from {prompt_column!r} "
            f"({', '.join(f'{v} {k}' for k, v in counts.items())}"
            + (f", flagged by {group_source!r}" if group_source else "") + ")"
            + (f"; generate with {model} ({template} template, {max_new_tokens} new tokens, engine "
               f"{engine})" if model else "; score the existing responses")
            + f"; scorers: {', '.join(scorers)}"
            + (f"; compare with {compare}" if compare else ""))
    if dry_run:
        console.console.print(plan, markup=False, highlight=False, soft_wrap=True)
        console.console.print("dry run: no model loaded, nothing written", markup=False)
        return
    console.info(plan)
    if model and "response" in table.column_names:
        console.warn("the input already has a 'response' column; it is replaced by the new generations "
                     "(pass --responses to score it instead)")
    if model or guards or "reward" in scorers:
        _quiet_libraries()

    if model:
        from safesample.backends.generation import load_engine

        gen = load_engine(model, engine=engine, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          dtype=dtype)
        with console.progress(n, "generating") as advance:
            existing = stage.generate(gen, prompts, inputs, template, system=system,
                                      max_new_tokens=max_new_tokens, cache=not no_cache, progress=advance)
        _free(gen)
    assert existing is not None
    columns: dict[str, list] = {}
    if model:
        columns["response"] = existing
    columns["eval_group"] = groups
    for name in scorers:
        if name == "rules":
            columns.update(stage.score_rules(existing))
        elif name in stage.GUARDS:
            from safesample.backends.generation import load_engine

            guard = load_engine(judge_model, engine=engine, batch_size=batch_size, max_new_tokens=64,
                                dtype=dtype)
            with console.progress(n, f"judging ({name})") as advance:
                columns.update(stage.score_guard(guard, name, prompts, existing,
                                                 template=judge_template.read_text() if judge_template else None,
                                                 cache=not no_cache, progress=advance))
            _free(guard)
        elif name == "reward":
            from safesample.backends.reward import load_reward_model

            rm = load_reward_model(reward_model, batch_size=batch_size, label=reward_label, dtype=dtype)
            with console.progress(n, "reward") as advance:
                columns.update(stage.score_reward(rm, prompts, existing, cache=not no_cache, progress=advance))
            _free(rm)
    columns.update(stage.combine(columns, guards, n))
    judged = stage.assemble(table, columns)

    result = stage.summarize(judged, category, guards)
    result = {"input": input, "model": model, "template": template, "scorers": scorers,
              "benign_flag": group_source, "category_col": category, **result}
    if base is not None:
        result["compare"] = {"base": compare, **stage.compare(judged, base, category, n_boot=bootstrap,
                                                               seed=seed)}
    result["gates"] = stage.check_gates(result, gates)

    args = {"input": input, "output": output, "model": model, "responses": responses, "scorers": scorers,
            "judge_model": judge_model, "reward_model": reward_model, "reward_label": reward_label,
            "template": template, "system": system, "max_new_tokens": max_new_tokens, "engine": engine,
            "prompt_col": prompt_column, "benign_col": benign_col, "category_col": category,
            "compare": compare, "limit": limit, "fail_under": fail_under, "fail_over": fail_over}
    models = {k: v for k, v in (("model", model), ("judge", judge_model), ("reward", reward_model)) if v}
    save(judged, output, NAME, args, seed=seed, models=models,
         inputs=[input] + ([compare] if compare else []))
    if summary is not None:
        _write_json(summary, result)
    _render(result)
    failed = [g for g in result["gates"] if not g["passed"]]
    if failed:
        text = "; ".join(f"{g['metric']} = {g['value']:.4g} is {'below' if g['op'] == 'under' else 'above'} "
                         f"{g['threshold']:g}" for g in failed)
        raise CheckFailed(f"judge gate failed: {text}", "the judged table and summary were written; "
                          "inspect them to see which prompts moved")


def _scorers(values: list[str] | None) -> list[str]:
    from safesample.judge import SCORERS

    names: list[str] = []
    for value in values or ["rules"]:
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in SCORERS:
                raise UsageError(f"unknown scorer {name!r}", f"scorers: {', '.join(SCORERS)}")
            if name not in names:
                names.append(name)
    if not names:
        raise UsageError("no scorer given", f"scorers: {', '.join(SCORERS)}")
    return names


def _check_summary_path(path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"--summary {str(path)!r} is a directory", "pass a file path such as summary.json")
    if not path.parent.is_dir():
        raise UsageError(f"--summary folder {str(path.parent)!r} does not exist",
                         f"create it first: mkdir -p {path.parent}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    from safesample.tables import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")


def _quiet_libraries() -> None:
    if console.verbosity() >= console.VERBOSE:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _free(obj) -> None:
    """Drop a model before loading the next one (GPU memory holds one at a time comfortably)."""
    del obj
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _render(result: dict[str, Any]) -> None:
    if console.verbosity() < console.NORMAL:
        return
    from rich.table import Table

    overall = result["overall"]
    # Only the columns this run measured; a log file gets a wide table rather than cut names.
    columns = [("n", lambda m: str(m["n"]))]
    if overall["refusal_rate"] is not None:
        columns.append(("refused", lambda m: _pct(m["refusal_rate"])))
    if overall["full_refusal_rate"] is not None:
        columns.append(("full refusal", lambda m: _pct(m["full_refusal_rate"])))
    if overall["over_refusal_rate"] is not None:
        columns.append(("over-refusal", lambda m: _pct(m["over_refusal_rate"])))
    if overall["harmful_response_rate"] is not None:
        columns.append(("harmful resp.", lambda m: _pct(m["harmful_response_rate"])))
    if overall["mean_reward"] is not None:
        columns.append(("reward", lambda m: _num(m["mean_reward"])))
    if any(s in result["scorers"] for s in ("wildguard", "llm")):
        columns.append(("parse fail", lambda m: str(m["parse_failures"])))
    columns.append(("empty", lambda m: str(m["empty_responses"])))
    width = None if console.console.is_terminal else 160
    table = Table(title="judge summary (refused: among prompts not flagged benign)", title_justify="left")
    table.add_column("category", no_wrap=True)
    for name, _ in columns:
        table.add_column(name, justify="right")
    for name, metrics in result["by_category"].items():
        table.add_row(name, *(f(metrics) for _, f in columns))
    if result["by_category"]:
        table.add_section()
    table.add_row("overall", *(f(overall) for _, f in columns), style="bold")
    console.console.print(table, width=width)
    cmp = result.get("compare")
    if cmp:
        ctable = Table(title=f"change against {cmp['base']} ({cmp['paired']} paired prompts)",
                       title_justify="left")
        for col in ("metric", "category", "n", "base", "now", "change", "95% CI"):
            ctable.add_column(col, justify="left" if col in ("metric", "category") else "right",
                              no_wrap=col in ("metric", "category"))
        for metric, scopes in cmp["metrics"].items():
            fmt = _num if metric == "mean_reward" else _pct
            for scope, s in scopes.items():
                ci = "-" if s["ci_low"] is None else f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"
                ctable.add_row(metric, scope, str(s["n"]), fmt(s["base"]), fmt(s["now"]), fmt(s["delta"]), ci,
                               style="bold" if scope == "overall" else None)
        console.console.print(ctable, width=width)
        for name, t in cmp["transitions"].items():
            p = t.get("mcnemar_p")
            console.info(f"{name} prompts, base -> now: refused->refused {t['refused->refused']}, "
                         f"refused->complied {t['refused->complied']}, complied->refused "
                         f"{t['complied->refused']}, complied->complied {t['complied->complied']}"
                         + (f" (McNemar p = {p:.3g})" if p is not None else ""))
    for g in result["gates"]:
        mark = "ok" if g["passed"] else "FAILED"
        console.info(f"gate --fail-{g['op']} {g['metric']}={g['threshold']:g}: {g['value']:.4g} {mark}")
