"""Judging's inputs and scorers: which column holds the prompts, each row's evaluation group, the
greedy answers, and one function per scorer that returns the columns it adds (`score_rules`,
`score_learned`, `score_guard`, `score_reward`, `score_harm`, `score_refusal`), then `combine`
(the overall `refusal` / `harmful_response`) and `assemble`. Each takes its engine or model as an
argument, so `judge_table` (in `safesample.judge`) decides what loads when and tests pass fakes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from safesample.errors import DataError
from safesample.prompting import model_prompts
from safesample.reporter import SILENT, Advance, Reporter

if TYPE_CHECKING:
    import pyarrow as pa

BENIGN_VALUES = {"safe", "benign", "comply", "compliance", "true", "yes", "1"}
HARMFUL_VALUES = {"unsafe", "harmful", "refuse", "refusal", "false", "no", "0"}


# --------------------------------------------------------------------------------------------
# inputs


def prompt_column(table: "pa.Table", prompt_col: str | None) -> str:
    from safesample.schema import require

    if prompt_col is None:
        if "prompt" in table.column_names:
            prompt_col = "prompt"
        elif "instruction" in table.column_names:
            prompt_col = "instruction"  # alpaca_eval and other instruction sets
        else:
            found = ", ".join(table.column_names) or "no columns"
            raise DataError(f"`safesample judge` needs a prompt column: neither 'prompt' nor "
                            f"'instruction' is in the input (found: {found})",
                            "name the column holding the prompts with --prompt-col")
    if prompt_col not in table.column_names:
        found = ", ".join(table.column_names)
        raise DataError(f"--prompt-col {prompt_col!r} is not a column of the input (found: {found})",
                        "pass the name of the column holding the prompts")
    require(table, [_string_col(prompt_col)], "judge")
    return prompt_col


def _string_col(name: str):
    from safesample.schema import Column

    return Column(name, "string", "your input data (or pass --prompt-col)")


def prompt_texts(table: "pa.Table", prompt_col: str) -> tuple[list[str], list[str | None]]:
    """The instructions, and each row's extra `input` (Alpaca style) when prompting by instruction."""
    from safesample.texts import refuse_blank

    refuse_blank(table, prompt_col, "prompts")  # empty, blank or invisible: as every stage refuses them
    prompts = table.column(prompt_col).to_pylist()
    inputs: list[str | None] = [None] * len(prompts)
    if prompt_col == "instruction" and "input" in table.column_names:
        inputs = [x if isinstance(x, str) and x.strip() else None for x in table.column("input").to_pylist()]
    return prompts, inputs


def eval_groups(table: "pa.Table", benign_col: str | None = None) -> tuple[list[str], str | None]:
    """harmful / benign / unflagged per row, and the column that decided it (or None)."""
    n = table.num_rows
    if benign_col is not None:
        if benign_col not in table.column_names:
            raise DataError(f"--benign-col {benign_col!r} is not a column of the input",
                            f"columns: {', '.join(table.column_names)}")
        source = benign_col
    elif "label" in table.column_names:
        source = "label"
    elif "expected_behavior" in table.column_names:
        source = "expected_behavior"
    else:
        return ["unflagged"] * n, None
    groups = []
    for value in table.column(source).to_pylist():
        if isinstance(value, bool):
            groups.append("benign" if value else "harmful")
            continue
        text = str(value).strip().lower() if value is not None else ""
        groups.append("benign" if text in BENIGN_VALUES else "harmful" if text in HARMFUL_VALUES
                      else "unflagged")
    return groups, source


# --------------------------------------------------------------------------------------------
# generation and scoring


def generate(engine, prompts: Sequence[str], inputs: Sequence[str | None], template: str, *,
             system: str | None = None, max_new_tokens: int | None = None, cache: bool = True,
             progress: Advance | None = None, errors: dict[int, str] | None = None) -> list[str]:
    """Greedy responses, in order; cached by (model fingerprint, settings, prompt text). A prompt
    the engine could not run gets "" and, in `errors`, its reason by row."""
    from safesample.backends.generation import cached_generate

    texts = model_prompts(engine, prompts, inputs, template, system)
    out, _hits = cached_generate(engine, texts, max_new_tokens=max_new_tokens, cache=cache, progress=progress,
                                 purpose="judge:respond", errors=errors)
    if len(out) != len(texts):
        raise RuntimeError(f"the engine returned {len(out)} responses for {len(texts)} prompts")
    return [(r or "").strip() for r in out]


def score_rules(responses: Sequence[str | None], classify: Callable | None = None) -> dict[str, list]:
    if classify is None:
        from safesample.behavior import classify_responses as classify
    styles = classify([r if r is not None else None for r in responses])
    return {"refusal_style": styles,
            "rules_refusal": [None if s is None else s != "compliance" for s in styles]}


def score_learned(responses: Sequence[str | None], reporter: Reporter = SILENT, *,
                  cache: bool = True) -> dict[str, list]:
    """The learned refusal judge (`safesample.backends.learned_judge`): a style and a yes/no. Its
    response embeddings go through the embedding cache (`embedding_cache.CachedEncoder`)."""
    from safesample.backends.learned_judge import load
    from safesample.backends.embedding_cache import CachedEncoder

    encoder = CachedEncoder(enabled=cache, reporter=reporter)
    styles = load().classify(list(responses), encoder=encoder, reporter=reporter)
    return {"learned_refusal_style": styles,
            "learned_refusal": [None if s is None else s != "compliance" for s in styles]}


def score_guard(engine, kind: str, prompts: Sequence[str], responses: Sequence[str | None], *,
                template: str | None = None, cache: bool = True, progress: Advance | None = None,
                judge_pairs: Callable | None = None) -> dict[str, list]:
    if judge_pairs is None:
        from safesample.guards import judge_pairs
    verdicts = judge_pairs(engine, list(prompts), [r or "" for r in responses], kind=kind,
                           template=template, cache=cache, progress=progress)
    return {f"{kind}_harmful_request": [v.harmful_request for v in verdicts],
            f"{kind}_refusal": [v.refusal for v in verdicts],
            f"{kind}_harmful_response": [v.harmful_response for v in verdicts],
            f"{kind}_error": [v.error or None for v in verdicts]}


def score_reward(reward_model, prompts: Sequence[str], responses: Sequence[str | None], *,
                 cache: bool = True, progress: Advance | None = None) -> dict[str, list]:
    scores = reward_model.score(list(prompts), [r or "" for r in responses], progress=progress, cache=cache)
    return {"reward": scores}


def score_harm(load_engine: Callable[..., Any], prompts: Sequence[str], responses: Sequence[str | None], *,
               dtype: str = "auto", batch_size: int = 16, cache: bool = True,
               reporter: Reporter = SILENT) -> dict[str, list]:
    """harm: P(harmful) of each answer (`harm_score`) and the verdict at the judge's stored
    threshold (`harm_harmful_response`); an empty answer gets neither (it is counted as empty)."""
    from safesample.backends.harm_judge import harm_probability, load

    judge = load()
    rows = [i for i, r in enumerate(responses) if r is not None and r.strip()]
    scores: list[float | None] = [None] * len(responses)
    if rows:
        with load_engine(judge.model, max_new_tokens=1, reporter=reporter, engine="transformers",
                         batch_size=batch_size, dtype=judge.dtype if dtype == "auto" else dtype) as engine, \
                reporter.progress(len(rows), "judging harm") as advance:
            probs, _ = harm_probability(engine, [prompts[i] for i in rows], [responses[i] for i in rows],
                                        judge=judge, cache=cache, progress=advance)
        for i, p in zip(rows, probs):
            scores[i] = p
    return {"harm_score": scores,
            "harm_harmful_response": [None if p is None else p >= judge.threshold for p in scores]}


def score_refusal(engine, prompts: Sequence[str], inputs: Sequence[str | None], template: str | None, *,
                  system: str | None = None, cache: bool = True, progress: Advance | None = None) -> list[float]:
    """refusal_score: the log-odds of the model's refusal vs compliance openings after each prompt,
    from forward passes only (`safesample.backends.refusal_score`)."""
    from safesample.backends.refusal_score import refusal_scores

    texts = model_prompts(engine, prompts, inputs, template or "chat", system)
    return refusal_scores(engine, texts, cache=cache, progress=progress)


def combine(columns: dict[str, list], guards: Sequence[str], n: int) -> dict[str, list]:
    """The combined `refusal` (the first guard's verdict, else the learned judge's, else the rules')
    and `harmful_response` (the first guard's, else the harm judge's)."""
    rules = columns.get("learned_refusal") or columns.get("rules_refusal", [None] * n)
    guard = guards[0] if guards else None
    g_ref = columns.get(f"{guard}_refusal", [None] * n) if guard else [None] * n
    g_harm = columns.get(f"{guard}_harmful_response", [None] * n) if guard else [None] * n
    out = {"refusal": [g if g is not None else r for g, r in zip(g_ref, rules)]}
    if guard:
        out["harmful_response"] = list(g_harm)
    elif "harm_harmful_response" in columns:
        out["harmful_response"] = list(columns["harm_harmful_response"])
    return out


def assemble(table: "pa.Table", columns: dict[str, list]) -> "pa.Table":
    """The input table with `columns` added, replacing any of the same name."""
    import pyarrow as pa

    from safesample.tables import put_column

    types = {"refusal_style": pa.string(), "learned_refusal_style": pa.string(), "response": pa.string(), "eval_group": pa.string(),
             "reward": pa.float64(), "refusal_score": pa.float64(), "harm_score": pa.float64()}
    for name, values in columns.items():
        if name.endswith(("_error",)):
            typ = pa.string()
        elif name in types:
            typ = types[name]
        else:
            typ = pa.bool_()
        table = put_column(table, name, pa.array(values, typ))
    return table
