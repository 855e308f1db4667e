"""`safesample label`: parse options, load, call the label stage, save."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from safesample.cli import engine_options as engine_cli
from safesample.cli import gold as gold_cli
from safesample.cli.common import (BatchSize, Concurrency, DryRun, Executor, Input, Limit, Output, Quiet,
                                   RayAddress, Seed, Verbose, check_side_output, executor_options, run_stage, setup,
                                   write_json)
from safesample.errors import UsageError

NAME = "label"
HELP = """Label the behavior of each (instruction, response) pair: harmful request, refusal, harmful response.

Adds harmful_request, refusal, harmful_response (true/false, null when undecidable), behavior
(refusal, explanation, harmful_compliance, benign_compliance, over_refusal), refusal_style
(full_refusal, partial_refusal, compliance), label_backend, label_error (why a row has no
labels) and label_truncated. Input columns are kept; a relabel replaces the label columns.

--judge rules (default) needs no model: refusal and refusal style come from a fast rule
classifier; tell it whether requests are harmful with --harmful-col COL or --all-harmful, and
vouch for harmless responses with --safe-responses. --judge wildguard (default model
allenai/wildguard) and --judge llm (any instruct model, prompt in --prompt-file) answer all
three questions with a guard model, through vLLM on a GPU or transformers elsewhere
(--engine). --judge harm decides harmful_response offline on the CPU (the harm judge: a probe
on qwen2.5-coder-0.5b's hidden states after a rubric prompt, threshold calibrated on human
labels; adds harm_score, its probability), with refusals from the rules: a pool it labels needs
no --safe-responses. --generate MODEL first writes the responses with that model, to label what it does.
Model outputs are cached on disk (SAFESAMPLE_CACHE_DIR); --no-cache recomputes.
--gold COL calibrates the judge against a column of human labels (accuracy, Cohen's kappa,
confusion matrix, per --by group; --report r.json, --disagreements rows.parquet).

Examples:

\b
  safesample label pool.parquet --all-harmful --safe-responses -o labeled.parquet
  safesample label pool.parquet --harmful-col is_harmful -o labeled.parquet
  safesample label pool.parquet --all-harmful --judge harm -o labeled.parquet
  safesample label pool.parquet --judge wildguard --model /models/wildguard -o labeled.parquet
  safesample label eval.parquet --generate runs/lora-0 --all-harmful -o behavior.parquet
  safesample label pool.parquet --judge llm --model smollm2 --limit 20 -o - | safesample embed - -o e.parquet
  safesample label mine.parquet --judge wildguard --gold human --by model --report r.json \\
      --disagreements wrong.csv -o labeled.parquet
"""


def command(
    input: Input,
    output: Output = "-",
    judge: Annotated[str, typer.Option("--judge", help="rules, learned (embedding "
                                  "classifier over the rules, CPU), harm (harmful answers, CPU), "
                                  "wildguard or llm.")] = "rules",
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Judge model for --judge wildguard/llm: hub id, local folder, or 'smollm2'.",
        show_default=False)] = None,
    engine: Annotated[str, typer.Option("--engine", help="auto (vLLM when it and a GPU are there), "
                                        "transformers or vllm.")] = "auto",
    generate: Annotated[Optional[str], typer.Option(
        "--generate", metavar="MODEL", help="Generate the responses with MODEL first (greedy; chat "
        "template when the tokenizer has one).", show_default=False)] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt for --generate.",
                                                  show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1,
                                                help="Longest generated response, in tokens.")] = 256,
    prompt_file: Annotated[Optional[Path], typer.Option(
        "--prompt-file", help="Prompt template for --judge llm, with {instruction} and {response}.",
        show_default=False)] = None,
    harmful_col: Annotated[Optional[str], typer.Option(
        "--harmful-col", metavar="COL", help="Column saying whether each request is harmful "
        "(bool, 0/1 or yes/no).", show_default=False)] = None,
    all_harmful: Annotated[bool, typer.Option("--all-harmful", help="Every request in the file is "
                                              "harmful (a safety pool, a harmful eval set).")] = False,
    safe_responses: Annotated[bool, typer.Option("--safe-responses", help="The responses are known "
                                                 "to be harmless (a curated safety pool).")] = False,
    harm_threshold: Annotated[Optional[float], typer.Option(
        "--harm-threshold", metavar="P", help="--judge harm: the P(harmful) at which an answer is "
        "harmful [default: the calibrated one stored with the judge].", show_default=False)] = None,
    max_response_chars: Annotated[int, typer.Option("--max-response-chars", min=1, help="Cut longer "
                                                    "responses to this for a model judge.")] = 4000,
    dtype: Annotated[str, typer.Option("--dtype", help="Model dtype: auto, float32, bfloat16, "
                                       "float16.")] = "auto",
    max_model_len: engine_cli.MaxModelLen = None, tensor_parallel_size: engine_cli.TensorParallel = 1,
    gpu_memory_utilization: engine_cli.GpuMemory = None, enforce_eager: engine_cli.EnforceEager = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore and do not fill the cache of "
                                           "model outputs.")] = False,
    gold: gold_cli.Gold = None,
    gold_mode: gold_cli.GoldMode = "auto",
    gold_scheme: gold_cli.GoldScheme = "auto",
    by: gold_cli.By = None,
    disagreements: gold_cli.Disagreements = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the label counts (and the "
                                                   "--gold calibration) as JSON here.",
                                                   show_default=False)] = None,
    executor: Executor = "local", ray_address: RayAddress = None, concurrency: Concurrency = None,
    seed: Seed = 0,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup(quiet, verbose)
    from safesample.console import CONSOLE
    from safesample.label import LabelOptions, summary

    if engine not in ("auto", "transformers", "vllm"):
        raise UsageError(f"unknown engine {engine!r}", "use auto, transformers or vllm")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UsageError(f"unknown dtype {dtype!r}", "use auto, float32, bfloat16 or float16")
    template = None
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise UsageError(f"prompt file {str(prompt_file)!r} does not exist",
                             "pass a text file with {instruction} and {response} placeholders")
        try:
            template = prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"prompt file {str(prompt_file)!r} is not UTF-8 text (byte {exc.start})",
                             "save the template as UTF-8 text with {instruction} and {response} placeholders") from None
    serving = engine_cli.options(max_model_len, tensor_parallel_size, gpu_memory_utilization, enforce_eager)
    opts = LabelOptions(judge=judge, model=model, engine=engine, batch_size=batch_size, dtype=dtype, **serving,
                        template=template, prompt_file=str(prompt_file) if prompt_file else None,
                        harmful_col=harmful_col, all_harmful=all_harmful, safe_responses=safe_responses,
                        harm_threshold=harm_threshold, generate=generate, system=system, max_new_tokens=max_new_tokens,
                        max_response_chars=max_response_chars, cache=not no_cache,
                        gold=gold_cli.options(gold, gold_mode, gold_scheme, by, disagreements))
    ex = executor_options(executor, ray_address, concurrency, batch_size, quiet, verbose)
    if ex.kind == "ray" and (opts.gold or report is not None):
        raise UsageError("--gold and --report are not available with --executor ray yet",
                         "run it with --executor local")
    if not dry_run:
        check_side_output(report, "--report")
    done = run_stage(NAME, opts, input, output, ex, limit=limit, seed=seed, dry_run=dry_run)
    if done is None or done.result is None:  # a dry run, or rows written by Ray workers
        return
    result = done.result
    CONSOLE.info(summary(result.stats))
    if opts.gold:
        gold_cli.finish(result.table, result.calibration, disagreements)
    if report is not None:
        from safesample.gold import gold_report

        write_json({"input": input, "judge": judge, "stats": result.stats,
                    "calibration": gold_report(result.calibration)}, str(report))
