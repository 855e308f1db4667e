"""`safesample judge`: generate a model's responses to evaluation prompts and score their safety."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from safesample.cli import engine_options as engine_cli
from safesample.cli import gold as gold_cli
from safesample.cli.common import (BatchSize, Concurrency, DryRun, Executor, Input, Limit, Output, Quiet,
                                   RayAddress, Seed, Verbose, check_side_output, executor_options, load,
                                   run_stage, setup, write_json)
from safesample.errors import UsageError

NAME = "judge"
HELP = """Generate a model's responses to evaluation prompts and score their safety.

Generation: vLLM batched on a GPU when installed, else transformers batched (greedy). A
fine-tuned run folder is prompted with the template it was trained with (--template auto).
Scorers (--scorer, repeatable): rules (refusal classifier, always available), wildguard / llm
(guard judge LLM given by --judge-model), reward (any sequence-classification model given by
--reward-model: a helpfulness reward model or a harmfulness predictor), refusal_score (the
model's odds of opening its answer with a refusal: forward passes only; alone, no generation),
harm (the offline harm judge: P(harmful) of each answer, harm_score, and harmful_response at
its calibrated threshold; CPU, no guard model).

Summary (stderr, and --summary s.json): refusal rate among prompts not flagged benign,
over-refusal on benign look-alikes (a `label` column "safe" as in XSTest, `expected_behavior`
"comply", or --benign-col), harmful-response rate, mean reward, parse failures; overall and per
--category-col. --compare BASE.parquet adds the per-category change with bootstrap 95 % CIs and
the paired refused/complied transitions (McNemar p). Gates: --fail-under METRIC=VALUE and
--fail-over METRIC=VALUE exit 3 when missed (the output is still written); metrics:
refusal_rate, full_refusal_rate, over_refusal_rate, harmful_response_rate, mean_reward,
parse_failures, empty_responses, and delta_<metric> with --compare. --gold COL calibrates
each refusal scorer against human labels (in the summary; --disagreements FILE gets the rows).

Examples:

\b
  safesample judge eval.parquet --model runs/lora-0 -o judged.parquet --summary s.json
  safesample judge eval.parquet --model smollm2 --limit 8 --max-new-tokens 32 -o base.parquet
  safesample judge eval.parquet --model runs/lora-0 -o j.parquet --compare base.parquet \\
      --fail-under delta_refusal_rate=-0.05
  safesample judge eval.parquet --model runs/lora-0 --scorer rules,harm -o judged.parquet
  safesample judge judged.parquet --responses --scorer rules --scorer reward \\
      --reward-model ./harm-classifier -o rescored.parquet
  safesample judge xstest.parquet --model runs/lora-0 --scorer wildguard \\
      --judge-model allenai/wildguard -o xs.parquet --fail-over over_refusal_rate=0.2
  safesample judge alpaca_eval.parquet --model runs/lora-0 --prompt-col instruction \\
      --scorer reward --reward-model ./reward-model -o helpful.parquet
  safesample judge mine.parquet --responses --scorer rules,wildguard --judge-model \\
      allenai/wildguard --gold human --by category --disagreements wrong.csv -o j.parquet
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
    scorer: Annotated[Optional[list[str]], typer.Option("--scorer", "-s", help="rules, learned, wildguard, "
                                                        "llm, reward, refusal_score, harm; repeat or comma-separate "
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
    max_model_len: engine_cli.MaxModelLen = None, tensor_parallel_size: engine_cli.TensorParallel = 1,
    gpu_memory_utilization: engine_cli.GpuMemory = None, enforce_eager: engine_cli.EnforceEager = False,
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
    gold: gold_cli.Gold = None,
    gold_mode: gold_cli.GoldMode = "auto",
    gold_scheme: gold_cli.GoldScheme = "auto",
    by: gold_cli.By = None,
    disagreements: gold_cli.Disagreements = None,
    executor: Executor = "local", ray_address: RayAddress = None, concurrency: Concurrency = None,
    seed: Seed = 0,
    limit: Limit = None,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup(quiet, verbose)
    from safesample import judge as stage

    serving = engine_cli.options(max_model_len, tensor_parallel_size, gpu_memory_utilization, enforce_eager)
    opts = stage.JudgeOptions(
        model=model, responses=responses, prompt_col=prompt_col, category_col=category_col,
        benign_col=benign_col, scorers=stage.parse_scorers(scorer), judge_model=judge_model,
        reward_model=reward_model, reward_label=reward_label, engine=engine, template=template, system=system,
        max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype, compare=compare, **serving,
        bootstrap=bootstrap, fail_under=fail_under or [], fail_over=fail_over or [], cache=not no_cache,
        seed=seed, gold=gold_cli.options(gold, gold_mode, gold_scheme, by, disagreements))
    stage.validate(opts)  # usage errors before any input is read
    if judge_template is not None:
        if not judge_template.is_file():
            raise UsageError(f"--judge-template {str(judge_template)!r} does not exist", "check the path")
        try:
            opts.judge_template = judge_template.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"--judge-template {str(judge_template)!r} is not UTF-8 text (byte {exc.start})",
                             "save the template as UTF-8 text with {instruction} and {response} placeholders") from None
    check_side_output(summary, "--summary")
    base = load(compare) if compare else None
    ex = executor_options(executor, ray_address, concurrency, batch_size, quiet, verbose)
    done = run_stage(NAME, opts, input, output, ex, limit=limit, seed=seed, dry_run=dry_run,
                     inputs=[input] + ([compare] if compare else []), context={"base": base})
    if done is None:  # a dry run
        return
    result = done.result
    report = {"input": input, **result.summary}
    if summary is not None:
        write_json(report, str(summary), "summary")
    _render(report)
    if opts.gold:
        gold_cli.finish(result.table, result.calibration, disagreements)
    from safesample.judge.summary import gate_failure

    failure = gate_failure(report)
    if failure is not None:
        raise failure


def _render(report: dict[str, Any]) -> None:
    """The summary (and comparison) tables on stderr; nothing with -q."""
    from safesample import console
    from safesample.judge.summary import compare_rows, summary_lines, summary_rows

    header, rows = summary_rows(report)
    console.table("judge summary (refused: among prompts not flagged benign)", header, rows, total_last=True)
    if "compare" in report:
        cmp = report["compare"]
        header, rows = compare_rows(report)
        console.table(f"change against {cmp['base']} ({cmp['paired']} paired prompts)", header, rows,
                      label_cols=2, bold=lambda row: row[1] == "overall")
    for line in summary_lines(report):
        console.info(line)
