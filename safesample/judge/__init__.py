"""Judging a model: generate its responses to evaluation prompts, score them, summarise, compare.

Stage logic only (no CLI code): `JudgeOptions`, `validate(opts)` (the checks that need no
table), `plan(table, opts)` (what --dry-run prints) and `judge_table(table, opts, *, reporter,
load_engine, load_reward_model) -> JudgeResult`, which generates, scores, summarises, compares
and checks the gates. One model is resident at a time: each engine is closed before the next
loads. Collaborators come in as arguments, so everything here runs with fake engines in tests:

- an *engine* (`safesample.backends.generation.load_engine`) with `.chat(instructions, system=,
  max_new_tokens=, progress=)` and `.generate(prompts, max_new_tokens=, progress=)`;
- scorers: `rules` (the refusal classifier of `safesample.behavior`, always available),
  `wildguard` / `llm` guard judges (`safesample.guards.judge_pairs` over a judge engine) and
  `reward` (`safesample.backends.reward.RewardModel`); `refusal_score` (the model's own log-odds
  of a refusal opening vs a compliance opening, forward passes only, `backends/refusal_score.py`;
  alone it needs no generation); `harm` (the offline harm judge, `backends/harm_judge.py`: the
  probability that each answer is harmful, from forward passes of a small instruct model on the CPU).

Columns added (input columns are kept; these are replaced when re-judging a judged file):
`response` (when generated), `eval_group` (harmful / benign / unflagged), `refusal_style` and
`rules_refusal` (rules), `<kind>_harmful_request`, `<kind>_refusal`, `<kind>_harmful_response`,
`<kind>_error` (each guard), `reward` (reward), `refusal_score` (float), `harm_score` (float) and
`harm_harmful_response` (harm), and the combined `refusal` (the first guard's verdict where it parsed,
else the rules') and `harmful_response` (the first guard's, else the harm judge's).

The inputs and the scorers: `safesample/judge/scoring.py`; the summary, the comparison with a base
run and the gates: `safesample/judge/summary.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from safesample.errors import DataError, UsageError
from safesample.prompting import resolve_template
from safesample.judge.scoring import (assemble, combine, eval_groups, generate,
                                      prompt_column, prompt_texts, score_guard, score_harm, score_learned,
                                      score_refusal, score_reward, score_rules)
from safesample.judge.summary import GUARDS, Gate, check_gates, compare, parse_gates, summarize
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.calibration import Calibration
    from safesample.gold import GoldOptions

COMMAND = "judge"
SCORERS = ("rules", "wildguard", "llm", "reward", "learned", "refusal_score", "harm")
# `--gold`: the scorers that judge refusal, the column holding each one's answer, and those of
# them that say a refusal style (the guards say yes/no and are calibrated in binary mode).
REFUSAL_COLUMNS = {"rules": "refusal_style", "wildguard": "wildguard_refusal", "llm": "llm_refusal",
                   "learned": "learned_refusal_style"}
STYLE_SCORERS = ("rules", "learned")
GROUPS = ("harmful", "benign", "unflagged")



@dataclass
class JudgeOptions:
    model: str | None = None  # generate the responses with this model; else score `response`
    responses: bool = False  # score the input's existing `response` column
    prompt_col: str | None = None  # default: prompt, else instruction
    category_col: str | None = "category"  # summary breakdown (skipped when absent)
    benign_col: str | None = None
    scorers: list[str] = field(default_factory=lambda: ["rules"])  # see `parse_scorers`
    judge_model: str | None = None  # the wildguard / llm scorers' guard model
    judge_template: str | None = None  # the llm scorer's prompt (text)
    reward_model: str | None = None
    reward_label: str | None = None
    engine: str = "auto"
    template: str = "auto"  # how prompts are written for the model: auto, alpaca, chat, raw
    system: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 16
    dtype: str = "auto"
    max_model_len: int | None = None  # prompt + answer bound (both engines); None: from the prompts (vLLM)
    tensor_parallel_size: int = 1  # vLLM: GPUs to shard a model over
    gpu_memory_utilization: float | None = None  # vLLM: share of GPU memory (None: vLLM's 0.92)
    enforce_eager: bool = False  # vLLM: no CUDA graphs
    compare: str | None = None  # the name of the `base` table judge_table compares against
    bootstrap: int = 1000
    fail_under: list[str] = field(default_factory=list)  # METRIC=VALUE
    fail_over: list[str] = field(default_factory=list)
    cache: bool = True
    seed: int = 0
    gold: "GoldOptions | None" = None  # calibrate each refusal scorer against human labels

    @property
    def guards(self) -> list[str]:
        return [s for s in self.scorers if s in GUARDS]

    @property
    def refusal_judges(self) -> dict[str, str]:
        """The scorers `--gold` calibrates, and the column of each one's answer."""
        return {s: REFUSAL_COLUMNS[s] for s in self.scorers if s in REFUSAL_COLUMNS}


@dataclass
class JudgeResult:
    table: "pa.Table"
    summary: dict[str, Any]  # what --summary writes: settings, metrics, compare, gates
    models: dict[str, str]  # for provenance
    prompt_col: str
    category_col: str | None
    template: str | None
    calibration: dict[str, "Calibration"] = field(default_factory=dict)  # scorer -> agreement with --gold


# --------------------------------------------------------------------------------------------
# options


def parse_scorers(values: Sequence[str] | None) -> list[str]:
    """`--scorer` values (repeated or comma-separated) as a list without duplicates."""
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


def validate(opts: JudgeOptions) -> list["Gate"]:
    """Every check that needs neither the table nor a model; returns the parsed gates."""
    unknown = [s for s in opts.scorers if s not in SCORERS]
    if unknown:
        raise UsageError(f"unknown scorer {unknown[0]!r}", f"scorers: {', '.join(SCORERS)}")
    if opts.guards and not opts.judge_model:
        raise UsageError(f"the {opts.guards[0]} scorer needs --judge-model",
                         "pass a guard model, e.g. --judge-model allenai/wildguard or a local folder")
    if "refusal_score" in opts.scorers and not opts.model:
        raise UsageError("the refusal_score scorer needs --model: it reads that model's own odds of "
                         "refusing", "pass --model MODEL (with --scorer refusal_score alone nothing is generated)")
    if "reward" in opts.scorers and not opts.reward_model:
        raise UsageError("the reward scorer needs --reward-model",
                         "pass a sequence-classification model folder or hub id")
    if opts.responses and opts.model:
        raise UsageError("--responses scores existing responses; --model generates new ones",
                         "pass one of them")
    if not opts.responses and not opts.model:
        raise UsageError("nothing to judge: pass --model MODEL to generate responses, or --responses "
                         "to score the input's `response` column", "see `safesample judge --help`")
    if opts.gold and not opts.refusal_judges:
        raise UsageError("--gold calibrates a refusal scorer, and the reward scorer judges no refusal",
                         "add --scorer rules (or wildguard / llm)")
    gates = parse_gates(opts.fail_under, opts.fail_over, opts.scorers, comparing=opts.compare is not None)
    resolve_template(opts.model, opts.template)
    return gates


def check_models(opts: JudgeOptions) -> None:
    """A bad path, adapter or uncached hub id fails now, before anything loads."""
    from safesample.backends.models import check_offline, resolve

    for spec in filter(None, [opts.model, opts.judge_model if opts.guards else None]):
        check_offline(resolve(spec))


@dataclass
class _Inputs:
    prompt_col: str
    prompts: list[str]
    inputs: list[str | None]
    groups: list[str]
    group_source: str | None
    category: str | None
    template: str | None
    existing: list[str | None] | None  # the responses scored with --responses


def _read_inputs(table: "pa.Table", opts: JudgeOptions, base: "pa.Table | None") -> _Inputs:
    """Every check of the data (no model): prompts, benign flags, responses, the compared table."""
    prompt_col = prompt_column(table, opts.prompt_col)
    prompts, inputs = prompt_texts(table, prompt_col)
    groups, group_source = eval_groups(table, opts.benign_col)
    existing = None
    if opts.responses:
        from safesample.schema import require

        if "response" not in table.column_names:
            raise DataError(f"--responses scores the input's 'response' column, which it lacks "
                            f"(found: {', '.join(table.column_names)})",
                            "drop --responses and pass --model MODEL to generate the responses")
        require(table, ["response"], COMMAND)  # the type check
        existing = table.column("response").to_pylist()
    if base is not None and "refusal" not in base.column_names:
        raise DataError(f"--compare {opts.compare!r} has no 'refusal' column",
                        "pass a file written by `safesample judge`")
    if opts.gold:
        from safesample.gold import check_gold

        check_gold(table, opts.gold, produced=written_columns(opts), judges=list(opts.refusal_judges),
                   style_judges=STYLE_SCORERS)
    return _Inputs(prompt_col, prompts, inputs, groups, group_source,
                   opts.category_col if opts.category_col in table.column_names else None,
                   resolve_template(opts.model, opts.template) if opts.model else None, existing)


def _plan_line(table: "pa.Table", opts: JudgeOptions, got: _Inputs) -> str:
    counts = {g: got.groups.count(g) for g in GROUPS if got.groups.count(g)}
    return (f"judge {table.num_rows} prompts from {got.prompt_col!r} "
            f"({', '.join(f'{v} {k}' for k, v in counts.items())}"
            + (f", flagged by {got.group_source!r}" if got.group_source else "") + ")"
            + (f"; generate with {opts.model} ({got.template} template, {opts.max_new_tokens} new tokens, "
               f"engine {opts.engine})" if opts.model else "; score the existing responses")
            + f"; scorers: {', '.join(opts.scorers)}"
            + (f"; compare with {opts.compare}" if opts.compare else "")
            + (f"; calibrate {', '.join(opts.refusal_judges)} against gold column {opts.gold.column!r}"
               if opts.gold else ""))


def plan(table: "pa.Table", opts: JudgeOptions, base: "pa.Table | None" = None) -> list[str]:
    """What --dry-run prints; validates the options, the data and the model names first."""
    validate(opts)
    got = _read_inputs(table, opts, base)
    check_models(opts)
    return [_plan_line(table, opts, got)]


# --------------------------------------------------------------------------------------------
# the stage


def judge_table(table: "pa.Table", opts: JudgeOptions, *, base: "pa.Table | None" = None,
                reporter: Reporter = SILENT, load_engine: Callable[..., Any] | None = None,
                load_reward_model: Callable[..., Any] | None = None) -> JudgeResult:
    """Generate (with `opts.model`) or take the responses, score them, summarise, compare with
    `base` (another judged table) and check the gates.

    `load_engine(model, engine=, batch_size=, max_new_tokens=, dtype=, reporter=)` and
    `load_reward_model(spec, batch_size=, label=, dtype=, reporter=)` make the models; each is
    closed before the next one loads. A failed gate is in `summary["gates"]`; `gate_failure`
    turns it into the error to raise once the outputs are written.
    """
    gates = validate(opts)
    got = _read_inputs(table, opts, base)
    if load_engine is None:
        from safesample.backends.generation import load_engine

        check_models(opts)
    if load_reward_model is None:
        from safesample.backends.reward import load_reward_model
    n = table.num_rows
    reporter.info(_plan_line(table, opts, got))
    from safesample.backends.generation import engine_settings

    responses = got.existing
    generating = bool(opts.model) and needs_responses(opts)
    gen_errors: dict[int, str] = {}  # prompts the engine could not run: their row's generation_error
    if generating:
        if "response" in table.column_names:
            reporter.warn("the input already has a 'response' column; it is replaced by the new "
                          "generations (pass --responses to score it instead)")
        with load_engine(opts.model, max_new_tokens=opts.max_new_tokens, reporter=reporter,
                         **engine_settings(opts)) as gen, reporter.progress(n, "generating") as advance:
            responses = generate(gen, got.prompts, got.inputs, got.template, system=opts.system,
                                 max_new_tokens=opts.max_new_tokens, cache=opts.cache, progress=advance,
                                 errors=gen_errors)
    responses = responses if responses is not None else [None] * n  # refusal_score alone generates none
    columns: dict[str, list] = {}
    if generating:
        columns["response"] = responses
        columns["generation_error"] = [gen_errors.get(i) for i in range(n)]
    columns["eval_group"] = got.groups
    for name in opts.scorers:
        if name == "rules":
            columns.update(score_rules(responses))
        elif name == "learned":
            columns.update(score_learned(responses, reporter, cache=opts.cache))
        elif name in GUARDS:
            with load_engine(opts.judge_model, max_new_tokens=64, reporter=reporter,
                             **engine_settings(opts)) as guard, \
                    reporter.progress(n, f"judging ({name})") as advance:
                columns.update(score_guard(guard, name, got.prompts, responses, template=opts.judge_template,
                                           cache=opts.cache, progress=advance))
        elif name == "reward":
            with load_reward_model(opts.reward_model, batch_size=opts.batch_size, label=opts.reward_label,
                                   dtype=opts.dtype, reporter=reporter) as rm, \
                    reporter.progress(n, "reward") as advance:
                columns.update(score_reward(rm, got.prompts, responses, cache=opts.cache, progress=advance))
        elif name == "harm":  # forward passes of the harm judge's own model (transformers)
            columns.update(score_harm(load_engine, got.prompts, responses, dtype=opts.dtype,
                                      batch_size=opts.batch_size, cache=opts.cache, reporter=reporter))
        elif name == "refusal_score":  # forward passes of the model itself (transformers)
            with load_engine(opts.model, max_new_tokens=1, reporter=reporter,
                             **{**engine_settings(opts), "engine": "transformers"}) as scorer, \
                    reporter.progress(n, "refusal score") as advance:
                columns["refusal_score"] = score_refusal(scorer, got.prompts, got.inputs, got.template,
                                                         system=opts.system, cache=opts.cache, progress=advance)
    columns.update(combine(columns, opts.guards, n))
    judged = assemble(table, columns)
    return finish(table, judged, opts, base=base, got=got, gates=gates)


def finish(table: "pa.Table", judged: "pa.Table", opts: JudgeOptions, *, base: "pa.Table | None" = None,
           got: "_Inputs | None" = None, gates: "list[Gate] | None" = None,
           reporter: Reporter = SILENT) -> JudgeResult:
    """Summary, comparison, calibration and gates over the whole judged table. A batch executor
    runs `judge_table` per batch (no compare, no gates) and this once over all the rows."""
    got = got if got is not None else _read_inputs(table, opts, base)
    gates = validate(opts) if gates is None else gates
    summary = {"model": opts.model, "template": got.template, "scorers": list(opts.scorers),
               "benign_flag": got.group_source, "category_col": got.category,
               **summarize(judged, got.category, opts.guards)}
    if base is not None:
        summary["compare"] = {"base": opts.compare, **compare(judged, base, got.category, n_boot=opts.bootstrap,
                                                               seed=opts.seed)}
    calibration: dict[str, Calibration] = {}
    if opts.gold:
        from safesample.gold import calibrate_judges, gold_report

        calibration = calibrate_judges(table, judged, opts.gold, opts.refusal_judges, style_judges=STYLE_SCORERS)
        summary["calibration"] = gold_report(calibration)
    summary["gates"] = check_gates(summary, gates)
    models = {k: v for k, v in (("model", opts.model), ("judge", opts.judge_model),
                                ("reward", opts.reward_model)) if v}
    return JudgeResult(judged, summary, models, got.prompt_col, got.category, got.template, calibration)


def prepare(table: "pa.Table", opts: JudgeOptions, *, reporter: Reporter = SILENT) -> JudgeOptions:
    """Before any work (an executor calls this with the input, or an empty table of its schema):
    the options, the data and the model names checked, and the automatic choices resolved (the
    prompt column, the category column, the template), so every batch judges the same way and
    the provenance names what was used."""
    from dataclasses import replace

    validate(opts)
    got = _read_inputs(table, opts, None)
    check_models(opts)
    return replace(opts, prompt_col=got.prompt_col, category_col=got.category,
                   template=got.template or opts.template)


def batch_options(opts: JudgeOptions) -> JudgeOptions:
    """What each batch of a split run is judged with: no comparison, gates or calibration, which
    `finish` computes once over every row."""
    from dataclasses import replace

    return replace(opts, compare=None, fail_under=[], fail_over=[], gold=None)


def generates(opts: JudgeOptions) -> bool:
    return bool(opts.model)


def provenance(opts: JudgeOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """What a `judge` output records: its arguments and models."""
    from safesample.gold import gold_args

    args = {"model": opts.model, "responses": opts.responses, "scorers": list(opts.scorers),
            "judge_model": opts.judge_model, "reward_model": opts.reward_model, "reward_label": opts.reward_label,
            "template": opts.template if opts.model else None, "system": opts.system,
            "max_new_tokens": opts.max_new_tokens, "engine": opts.engine, "max_model_len": opts.max_model_len,
            "tensor_parallel_size": opts.tensor_parallel_size,
            "gpu_memory_utilization": opts.gpu_memory_utilization, "enforce_eager": opts.enforce_eager,
            "prompt_col": opts.prompt_col, "benign_col": opts.benign_col, "category_col": opts.category_col,
            "compare": opts.compare, "fail_under": opts.fail_under, "fail_over": opts.fail_over,
            **gold_args(opts.gold)}
    models = {k: v for k, v in (("model", opts.model), ("judge", opts.judge_model),
                                ("reward", opts.reward_model)) if v}
    return args, models


def written_columns(opts: JudgeOptions) -> list[str]:
    """The columns `judge_table` adds or replaces with these options."""
    names = (["response"] if opts.model and needs_responses(opts) else []) + ["eval_group", "refusal"]
    for scorer in opts.scorers:
        if scorer == "rules":
            names += ["refusal_style", "rules_refusal"]
        elif scorer in GUARDS:
            names += [f"{scorer}_{x}" for x in ("harmful_request", "refusal", "harmful_response", "error")]
        elif scorer == "reward":
            names.append("reward")
        elif scorer == "learned":
            names += ["learned_refusal_style", "learned_refusal"]
        elif scorer == "refusal_score":
            names.append("refusal_score")
        elif scorer == "harm":
            names += ["harm_score", "harm_harmful_response"]
    return names + (["harmful_response"] if opts.guards or "harm" in opts.scorers else [])


def needs_responses(opts: JudgeOptions) -> bool:
    """Whether a scorer reads responses (refusal_score alone reads the model, not its answers)."""
    return any(s != "refusal_score" for s in opts.scorers)
