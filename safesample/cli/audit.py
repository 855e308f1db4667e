"""`safesample audit`: score benign fine-tuning rows by how much training on them may erode safety."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from safesample.cli.common import (BatchSize, Concurrency, DryRun, Executor, Input, Limit, Output, Quiet,
                                   RayAddress, Seed, Verbose, argv, check_output, executor_options, files,
                                   run_stage, setup)
from safesample.errors import UsageError

NAME = "audit"
HELP = """Score benign fine-tuning rows by how much training on them may erode a model's safety.

Each row is formatted exactly as `safesample finetune` would train on it (--template, cut at
--max-tokens) and run through the model, stopping at one layer. Adds audit_score (the
compliance shift, as DataShield: the response tokens' mean projection on a compliance
direction minus the last prompt token's), audit_similarity (mean cosine of the last token to
compliant anchors minus to refusing ones, as He et al. 2024), audit_z, audit_rank (1 = most
like compliance), response_tokens, audit_truncated and audit_error (why a row has no score).
Every input column and the row order are kept.

The compliance direction comes from anchors: harmful requests answered by complying and by
refusing (label's behavior columns; --anchors FILE, default a bundled set of 186 HH-RLHF
request pairs answered both ways). The layer is the shallowest whose direction separates
anchors it was not fit on about as well as the best (cross-validated AUROC, last fifth of the
layers skipped); --layer N forces one. The chosen layer and its held-out AUROC are printed and
kept in the provenance. The direction and each row's scores are cached (model files, dtype,
layer, template, cut, anchors); --no-cache recomputes.

--dtype auto runs bfloat16 where the hardware computes it natively (a bf16 GPU, or a CPU with
avx512_bf16 or AMX) and float32 elsewhere. Measured on Qwen2.5-Coder-0.5B on a 2-core CPU
(bench/bench_audit.py): bf16 picked the same layer as fp32, ran 2.7x faster, and ranked 64
Alpaca rows as fp32 does (Spearman rho 0.9997 of audit_score; bf16 is kept only at >= 0.99).
Pass --dtype float32 to compare on another model.

--seed picks which anchors are held out to check the direction (a hash of seed and request).

Length and format confound such scores: the summary gives their Spearman correlation with
response length, and warns above 0.5.

Examples:

\b
  safesample audit benign.parquet -o audited.parquet
  safesample audit benign.parquet --drop-top 5% --flagged flagged.parquet -o kept.parquet
  safesample audit benign.parquet --drop-top 5% -o - | safesample mix - picked.parquet -o train.jsonl
  safesample audit qa.csv --map question=instruction --map answer=output -o audited.parquet
  safesample audit benign.parquet --anchors labelled.parquet --layer 12 --template alpaca -o a.parquet
"""

Model = Annotated[str, typer.Option("--model", "-m", help="The causal LM to audit for: a named model, a "
                                    "folder, or a `safesample finetune` output.")]
Anchors = Annotated[Optional[str], typer.Option(
    "--anchors", help="Labelled harmful requests with compliant and refusing answers (the output of "
    "`safesample label`). Default: the bundled HH-RLHF pairs.", show_default=False)]
Layer = Annotated[Optional[int], typer.Option("--layer", min=1, help="Read this layer (1 = the first "
                                              "decoder layer) instead of choosing one.", show_default=False)]
Template = Annotated[str, typer.Option("--template", help="How finetune will format the rows: chat (the "
                                       "tokenizer's chat template) or alpaca.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", help="Cut each row here, as finetune's --max-length "
                                        "does (the score sees what training sees).")]
NoTruncate = Annotated[bool, typer.Option("--no-truncate", help="Give longer rows an audit_error instead of "
                                          "cutting them.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (bf16 where native, else fp32), float32 or bfloat16.")]
DropTop = Annotated[Optional[str], typer.Option(
    "--drop-top", metavar="K|P%", help="Write only the rows outside the top K (or top P% of the scored "
    "rows) by audit_score.", show_default=False)]
Flagged = Annotated[Optional[str], typer.Option(
    "--flagged", metavar="FILE", help="Write the rows --drop-top drops here, highest score first.",
    show_default=False)]
Map = Annotated[Optional[List[str]], typer.Option(
    "--map", metavar="OLD=NEW", help="Read column OLD as NEW (instruction, input, output or response); "
    "repeatable.", show_default=False)]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the direction and score caches.")]


def command(input: Input, output: Output = "-", model: Model = "qwen2.5-coder-0.5b", anchors: Anchors = None,
            layer: Layer = None, template: Template = "chat", max_tokens: MaxTokens = 256,
            no_truncate: NoTruncate = False, dtype: Dtype = "auto", batch_size: BatchSize = 8,
            drop_top: DropTop = None, flagged: Flagged = None, map_: Map = None, no_cache: NoCache = False,
            executor: Executor = "local", ray_address: RayAddress = None, concurrency: Concurrency = None,
            seed: Seed = 0, limit: Limit = None, dry_run: DryRun = False, quiet: Quiet = False,
            verbose: Verbose = False) -> None:
    setup(quiet, verbose)
    from safesample.audit import AuditOptions
    from safesample.audit.options import check
    from safesample.console import CONSOLE
    from safesample.schema import parse_maps
    from safesample.tables import provenance_entry, write_table

    columns = {new: old for old, new in parse_maps(map_).items()}
    options = AuditOptions(model=model, anchors=anchors, layer=layer, template=template, max_tokens=max_tokens,
                           truncate=not no_truncate, dtype=dtype, batch_size=batch_size, drop_top=drop_top,
                           columns=columns, seed=seed, cache=not no_cache, flagged=flagged)
    check(options)
    if flagged is not None and drop_top is None:
        raise UsageError("--flagged writes the rows --drop-top drops, and there is no --drop-top",
                         "add --drop-top K or --drop-top P%")
    if anchors is not None and files() is not None:
        files().claim_input(anchors)  # no output may replace the anchors
    if flagged is not None and not dry_run:
        if flagged == "-":
            raise UsageError("--flagged cannot be stdout", "pass a file such as flagged.parquet")
        check_output(flagged, "--flagged")
    ex = executor_options(executor, ray_address, concurrency, batch_size, quiet, verbose)
    done = run_stage(NAME, options, input, output, ex, limit=limit, seed=seed, dry_run=dry_run)
    if done is None:
        return
    result = done.result
    if result.flagged is not None and flagged is not None:
        from safesample.audit import provenance

        args, models = provenance(result.options)
        entry = provenance_entry(NAME, {**args, "limit": limit}, seed=seed, models=models, inputs=[input], argv=argv())
        write_table(result.flagged, flagged, provenance=entry, what="--flagged", run=files())
        CONSOLE.info(f"wrote the {result.flagged.num_rows} dropped rows to {flagged}")
    _print_summary(result.summary)


def _print_summary(summary: dict) -> None:
    from safesample import console

    rho = summary.get("spearman_length")
    console.info(f"audit: {summary['scored']} of {summary['rows']} rows scored at layer {summary['layer']} "
                 f"(held-out AUROC {_num(summary.get('held_out_auroc'))}); score vs response length: "
                 f"Spearman rho {_num(rho, '+.2f')}" + (f"; dropped the top {summary['dropped']}"
                                                        if summary.get("dropped") else ""))
    rows = [(str(t["id"]), t["instruction"], str(t["rank"]), f"{t['audit_score']:.3f}", _num(t["audit_z"], ".2f"),
             str(t["response_tokens"])) for t in summary.get("top", [])]
    if rows:
        console.table("rows most like compliance (these erode safety first)",
                      ["id", "instruction", "rank", "score", "z", "tokens"], rows, label_cols=2)


def _num(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)
