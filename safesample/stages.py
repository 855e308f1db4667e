"""The stage registry: every subcommand, listed once.

The CLI registers its commands from it, the tests walk it (layering, `--help`, bad input), the
report tells what a table is from the stage that wrote it, and the executors run a per-row stage
from its entry. Nothing else lists the commands.

An entry names its modules and functions as strings, so reading the registry imports nothing
(`safesample --help` and shell completion stay fast); `Stage.library()` and `Stage.function()`
import on demand.

Adding a stage (see CONTRIBUTING.md): its library module `safesample/<name>.py` (Options,
`validate`, `plan`, `<name>_table`), its CLI module `safesample/cli/<name>.py` (parse, call,
print), its tests, and one entry below. A per-row stage (each output row depends on its own
input row only) also runs on Ray with `--executor ray`: name the keyword arguments through which
its table function loads models (`loaders`), so a Ray worker loads each model once and keeps it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str  # the subcommand
    summary: str  # one line: what it adds
    options: str  # the stage's Options dataclass
    run: str  # the stage's table function, `<name>_table(table, options, *, reporter, ...)`
    per_row: bool = False  # output row i depends on input row i only: executors may split the table
    # keyword argument of `run` -> "module:function" that loads a model for it (per-row stages).
    # A Ray worker calls each loader once per distinct model and keeps the result for later tasks.
    loaders: dict[str, str] = field(default_factory=dict)
    # Per-row stages whose output needs the whole table (a summary, ranks): `finish(table, rows,
    # options, *, reporter) -> result`, run once over all rows after the batches; and
    # `batch_options(options) -> options`, the options each batch runs with (the whole-table
    # work switched off).
    finish: str | None = None
    batch_options: str | None = None
    # `prepare(table, options, *, reporter) -> options`: validation against the input (an empty
    # table of its schema on Ray) and the automatic choices resolved, before any work.
    prepare: str | None = None
    # `generates(options) -> bool`: whether a run generates text (so it may go to vLLM on a GPU
    # cluster through ray.data.llm, the stage itself running on the driver).
    generates: str | None = None
    # `provenance(options) -> (args, models)`: what its output's provenance records, the same
    # whichever executor ran it.
    provenance: str = "provenance"
    # What `report` calls a table this stage wrote last (None: not a report input).
    table_kind: str | None = None
    # The library module, when not `safesample.<name>` (a stage defined outside the package).
    library_module: str | None = None
    # Columns the stage writes: an input that has them already gets them replaced, with a note.
    writes: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return self.library_module or f"safesample.{self.name}"

    @property
    def cli_module(self) -> str:
        return f"safesample.cli.{self.name}"

    def library(self) -> ModuleType:
        return importlib.import_module(self.module)

    def function(self, attr: str) -> Callable[..., Any]:
        """One of the stage module's functions, by the name this entry gives."""
        return getattr(self.library(), attr)

    def overwrite_note(self, columns: Any) -> str | None:
        """What to say when an input already has columns this stage writes (else None)."""
        present = set(columns)
        again = [c for c in self.writes if c in present]
        if not again:
            return None
        return (f"the input already has {', '.join(again)}: `{self.name}` writes {'it' if len(again) == 1 else 'them'} "
                "anew, replacing the input's values")

    def loader(self, keyword: str) -> Callable[..., Any]:
        module, attr = self.loaders[keyword].split(":")
        return getattr(importlib.import_module(module), attr)


_GENERATION = "safesample.backends.generation:load_engine"

STAGES: tuple[Stage, ...] = (
    Stage("label", "the behavior of each (instruction, response) pair", "LabelOptions", "label_table",
          per_row=True, loaders={"load_engine": _GENERATION}, prepare="prepare", generates="generates",
          table_kind="pool", writes=("harmful_request", "refusal", "harmful_response", "behavior", "refusal_style",
                                     "label_backend", "label_error")),
    Stage("embed", "sentence embeddings of a text column", "EmbedOptions", "embed_table", per_row=True,
          loaders={"load_encoder": "safesample.backends.embedding:load_encoder"}, prepare="prepare",
          table_kind="pool", writes=("embedding",)),
    Stage("cluster", "harm categories and semantic clusters", "ClusterOptions", "cluster_table",
          table_kind="pool", writes=("cluster", "cluster_distance", "cluster_size", "category_score", "categories")),
    Stage("select", "a budget of safety rows, behavior-aware and diverse", "SelectOptions", "select_table",
          table_kind="selection", writes=("select_reason", "select_rank", "select_role", "contrast_for")),
    Stage("mix", "benign and safety rows in one training table", "MixOptions", "mix_table"),
    Stage("finetune", "a LoRA fine-tune on a training table", "FinetuneOptions", "finetune_table"),
    Stage("judge", "a model's answers to evaluation prompts, scored", "JudgeOptions", "judge_table",
          per_row=True, loaders={"load_engine": _GENERATION,
                                 "load_reward_model": "safesample.backends.reward:load_reward_model"},
          prepare="prepare", finish="finish", batch_options="batch_options", generates="generates",
          table_kind="judge", writes=("refusal", "refusal_style", "eval_group", "generation_error")),
    Stage("report", "one self-contained HTML page of the other stages' outputs", "ReportOptions",
          "report_table"),
    Stage("audit", "how much each benign row may erode safety (its compliance shift)", "AuditOptions",
          "audit_table", per_row=True, loaders={"load_model": "safesample.backends.hidden_states:load"},
          prepare="prepare", finish="finish", batch_options="batch_options", table_kind="audit",
          writes=("audit_score", "audit_similarity", "audit_error", "audit_z", "audit_rank")),
)

BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = tuple(BY_NAME)


def get(name: str) -> Stage:
    return BY_NAME[name]


def table_kinds() -> dict[str, str]:
    """Command -> what `report` calls a table that command wrote last."""
    return {s.name: s.table_kind for s in STAGES if s.table_kind}
