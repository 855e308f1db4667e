"""Mix the picked safety rows into the benign fine-tuning set, in the formats trainers read.

The union keeps every row of every input exactly once, marks each with `source` (`benign`,
`safety`, or `contrast` for the benign look-alikes of `select --contrast`, trained as benign
rows), shuffles with a seed, and writes Alpaca columns (`instruction`, `input`, `output`) and/or
a chat `messages` column (a list of {role, content}); `-o train.jsonl` exports JSON Lines for TRL,
axolotl or LLaMA-Factory.

Column names are mapped before the union: by default `response` -> `output` and `prompt` ->
`instruction` (when the target is absent); `--map old=new` adds or overrides mappings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from safesample.errors import CheckFailed, DataError, UsageError
from safesample.schema import parse_maps  # noqa: F401 - the --map syntax, shared with audit
from safesample.texts import refuse_blank

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.reporter import Reporter

BENIGN, SAFETY = "benign", "safety"
# Benign look-alikes of the safety rows (`select --contrast`): trained as benign rows, with their
# own answer; the ratio checks count them as benign.
CONTRAST = "contrast"
DEFAULT_MAP = {"response": "output", "prompt": "instruction"}
FORMATS = ("both", "alpaca", "chat")
ALPACA_COLUMNS = ("instruction", "input", "output")
# What --slim keeps besides the format's own columns.
SLIM_KEEP = ("id", "source")


@dataclass
class Part:
    """One input table and its role in the mixture."""

    name: str  # the path as the user wrote it (for messages)
    role: str  # benign | safety
    table: "pa.Table"


def parse_ratio(spec: str) -> float:
    """`0.5%` or `0.005`: safety rows per benign row."""
    text = spec.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"bad --ratio {spec!r}: expected a positive share such as 0.5% or 0.005",
                         "the ratio is safety rows per benign row (the paper: 100 on 20,000 = 0.5%)")
    return value


def _rename(part: Part, mapping: dict[str, str], explicit: bool) -> "pa.Table":
    table = part.table
    names = list(table.column_names)
    if explicit:
        mapping = dict(mapping)
        for old, new in DEFAULT_MAP.items():
            # `--map response=output` on a table with both chooses `response`; the displaced
            # `output` is kept as `output_orig` (the choice an ambiguous table asks for).
            if mapping.get(old) == new and old in names and new in names and new not in mapping:
                if f"{new}_orig" in names:
                    raise DataError(f"--map {old}={new}: {part.name!r} already has {new!r} and {new}_orig",
                                    f"map {new!r} away explicitly, e.g. --map {new}={new}_before")
                mapping[new] = f"{new}_orig"
        # All at once, so `--map output=output_orig --map response=output` works in any order.
        renamed = [mapping.get(name, name) for name in names]
        for old, new in mapping.items():
            if old in names and old != new and renamed.count(new) > 1:
                raise DataError(f"--map {old}={new}: {part.name!r} already has a column {new!r}",
                                f"map it away first, e.g. --map {new}={new}_orig")
        return table.rename_columns(renamed)
    for old, new in mapping.items():
        if old not in names or old == new:
            continue
        if new in names:
            if explicit:
                raise DataError(f"--map {old}={new}: {part.name!r} already has a column {new!r}",
                                f"map it away first, e.g. --map {new}={new}_orig")
            continue  # a default mapping never overwrites a column the table has
        names[names.index(old)] = new
    return table.rename_columns(names)


def _prepare(part: Part, mapping: dict[str, str], chat: bool) -> "pa.Table":
    import pyarrow as pa
    import pyarrow.compute as pc

    from safesample.schema import kind_of

    if part.table.num_rows == 0:
        raise DataError(f"{part.role} input {part.name!r} has no rows: there is nothing to mix",
                        "check the command that wrote it (e.g. `safesample select` with a budget of 0, "
                        "or a --limit); mix needs rows in every input")
    _check_ambiguous(part, mapping)
    table = _rename(part, mapping, explicit=True)
    table = _rename(Part(part.name, part.role, table), DEFAULT_MAP, explicit=False)
    for name, alternatives in (("instruction", "prompt"), ("output", "response")):
        if name not in table.column_names:
            raise DataError(f"{part.role} input {part.name!r} has no {name!r} column (nor {alternatives!r}); "
                            f"found: {', '.join(table.column_names) or 'no columns'}",
                            f"map the column that holds it: --map COLUMN={name}")
    for name in ALPACA_COLUMNS:
        if name in table.column_names and kind_of(table.schema.field(name).type) not in ("string", "null"):
            raise DataError(f"column {name!r} of {part.name!r} has type {table.schema.field(name).type}, "
                            "not text", f"map a text column to {name!r} with --map")
    for name in ("instruction", "output"):  # empty, blank or invisible text trains on nothing
        refuse_blank(table, name, f"rows of {part.name!r}")
    strings = {name: table.column(name).cast(pa.string()) for name in ALPACA_COLUMNS if name in table.column_names}
    for name, col in strings.items():
        table = table.set_column(table.column_names.index(name), name, col)
    if "input" in table.column_names:
        table = table.set_column(table.column_names.index("input"), "input",
                                 pc.fill_null(table.column("input"), ""))
    else:
        table = table.add_column(table.column_names.index("instruction") + 1, "input",
                                 pa.array([""] * table.num_rows, pa.string()))
    if chat and "messages" in table.column_names:
        raise DataError(f"{part.name!r} already has a 'messages' column",
                        "write --format alpaca, or rename it: --map messages=messages_orig")
    if "source" in table.column_names:
        values = set(pc.unique(table.column("source")).to_pylist())
        if not values <= {BENIGN, SAFETY, CONTRAST}:
            # The shared datasets name their origin in `source`: keep it under another name.
            if "origin" in table.column_names:
                raise DataError(f"{part.name!r} has both 'source' and 'origin' columns",
                                "rename one: --map source=dataset")
            table = table.rename_columns(["origin" if n == "source" else n for n in table.column_names])
    if "source" not in table.column_names:
        table = table.append_column("source", pa.array([part.role] * table.num_rows, pa.string()))
        if part.role == SAFETY and "select_role" in table.column_names:  # rows of `select --contrast`
            contrast = pc.fill_null(pc.equal(table.column("select_role").cast(pa.string()), CONTRAST), False)
            table = table.set_column(table.column_names.index("source"), "source",
                                     pc.if_else(contrast, CONTRAST, table.column("source")))
    return table


def _check_ambiguous(part: Part, mapping: dict[str, str]) -> None:
    """A table with both `response` and `output` (or `prompt` and `instruction`): which one is
    the answer to train on is the user's choice, never a silent default."""
    names = part.table.column_names
    for source, target in DEFAULT_MAP.items():
        if source in names and target in names and source not in mapping and target not in mapping:
            raise DataError(f"{part.role} input {part.name!r} has both a {source!r} and an {target!r} column; "
                            f"which one holds the {target} to train on is ambiguous",
                            f"choose with --map: `--map {source}={target}` uses {source!r} (the old {target!r} "
                            f"is kept as '{target}_orig'); `--map {target}={target}` keeps {target!r} "
                            f"(and {source!r} as a column of its own)")


def _check_ids(parts: Sequence[Part], tables: Sequence["pa.Table"]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    seen: dict[str, str] = {}
    for part, table in zip(parts, tables):
        if "id" not in table.column_names:
            raise DataError(f"{part.name!r} has no 'id' column", "read it with `safesample` commands, "
                            "which add content-derived ids, or add an 'id' column")
        ids = table.column("id").cast(pa.string())
        if ids.null_count:
            raise DataError(f"{part.name!r} has {ids.null_count} rows with an empty (null) id; training "
                            "rows need an id to be traced back to their input",
                            "fill the ids, or drop the 'id' column so stage one derives ids from the "
                            "content")
        counts = pc.value_counts(ids)
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        if len(repeated):
            raise DataError(f"{part.name!r} repeats ids (e.g. {repeated[0].as_py()!r}, {len(repeated)} in all)",
                            "ids must be unique; drop the duplicate rows, or drop the 'id' column to "
                            "get content-derived ids")
        overlap = pc.filter(ids, pc.is_in(ids, value_set=pa.array(list(seen), pa.string()))) if seen else []
        if len(overlap):
            first = overlap[0].as_py()
            raise DataError(f"{len(overlap)} ids of {part.name!r} are also in {seen[first]!r} "
                            f"(e.g. {first!r}); mixing would train on those rows twice",
                            "remove the shared rows from one input (e.g. the safety rows already "
                            "mixed into the benign set), or give the inputs distinct ids")
        seen.update(dict.fromkeys(ids.to_pylist(), part.name))


def _messages(table: "pa.Table", system: str | None) -> "pa.Array":
    """The chat column: [system], user (instruction + input), assistant (output)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    instruction = table.column("instruction").combine_chunks()
    extra = table.column("input").combine_chunks()
    user = pc.if_else(pc.equal(extra, ""), instruction,
                      pc.binary_join_element_wise(instruction, extra, "\n\n"))
    turns = [("user", user), ("assistant", table.column("output").combine_chunks())]
    if system:
        turns.insert(0, ("system", pa.array([system] * n, pa.string())))
    k = len(turns)
    contents = pa.concat_arrays([t.cast(pa.string()) for _, t in turns])
    roles = pa.concat_arrays([pa.array([r] * n, pa.string()) for r, _ in turns])
    order = pa.array((np.arange(k)[None, :] * n + np.arange(n)[:, None]).ravel())  # row-major turns
    values = pa.StructArray.from_arrays([roles.take(order), contents.take(order)], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), values)


@dataclass
class MixOptions:
    mapping: dict[str, str] = field(default_factory=dict)  # OLD -> NEW column names (`parse_maps`)
    seed: int = 0
    shuffle: bool = True
    fmt: str = "both"  # alpaca columns, a chat `messages` column, or both
    system: str | None = None  # a system message opening every chat
    slim: bool = False  # keep only id, source and the format's columns
    ratio: float | None = None  # check: safety rows per benign row (`parse_ratio`)
    safety_budget: int | None = None  # check: exactly this many safety rows
    maps: list[str] = field(default_factory=list)  # the --map specs as given (for provenance)
    ratio_spec: str | None = None  # the --ratio as given (for provenance)


@dataclass
class MixResult:
    table: "pa.Table"
    counts: dict[str, int]  # rows by source: benign, safety, contrast


def validate(parts: Sequence[Part], options: MixOptions) -> None:
    """The checks that need no data: a format, a benign table and a safety table."""
    if options.fmt not in FORMATS:
        raise UsageError(f"unknown format {options.fmt!r}", "choose one of: " + ", ".join(FORMATS))
    if not any(p.role == BENIGN for p in parts) or not any(p.role == SAFETY for p in parts):
        raise UsageError("mix needs a benign table and at least one safety table",
                         "safesample mix BENIGN.parquet SAFETY.parquet [MORE.parquet ...] -o train.parquet")


def _parts(parts: Sequence[Part], options: MixOptions, reporter: "Reporter | None") -> list["pa.Table"]:
    """Every input mapped to the training columns, checked, look-alikes folded: the rows of the
    mix, not yet joined or shuffled."""
    validate(parts, options)
    unused = [old for old in options.mapping if not any(old in p.table.column_names for p in parts)]
    if unused:
        raise UsageError(f"--map names a column no input has: {', '.join(unused)}",
                         "check the column names (e.g. with a dry run: --dry-run -v)")
    chat = options.fmt in ("both", "chat")
    tables = [_prepare(p, dict(options.mapping), chat) for p in parts]
    tables = _fold_contrast(parts, tables, reporter)
    _check_ids(parts, tables)
    return tables


def describe(counts: dict[str, int]) -> str:
    """'240 benign + 8 safety rows (3.33% safety per benign row)', look-alikes counted as benign."""
    look_alikes = f" + {counts[CONTRAST]} contrast" if counts.get(CONTRAST) else ""
    benign = counts[BENIGN] + counts.get(CONTRAST, 0)
    return (f"{counts[BENIGN]} benign{look_alikes} + {counts[SAFETY]} safety rows "
            f"({counts[SAFETY] / max(benign, 1):.2%} safety per benign row)")


def plan(parts: Sequence[Part], options: MixOptions) -> list[str]:
    """What --dry-run prints: the rows by source and the checks, without building the mix."""
    tables = _parts(parts, options, None)
    counts = mix_counts(tables)
    check(counts, options.ratio, options.safety_budget)
    columns = sorted({c for t in tables for c in t.column_names}
                     | ({"messages"} if options.fmt in ("both", "chat") else set()))
    return [f"plan: mix {describe(counts)}" + ("" if options.shuffle else ", unshuffled") + f"; format {options.fmt}",
            "columns: " + ", ".join(columns)]


def mix_table(parts: Sequence[Part], options: MixOptions, *, reporter: "Reporter | None" = None) -> MixResult:
    """The union of `parts` (one benign, then safety tables), mapped, checked and shuffled."""
    import pyarrow as pa

    tables = _parts(parts, options, reporter)
    counts = mix_counts(tables)
    check(counts, options.ratio, options.safety_budget)
    try:
        table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the inputs' columns do not fit together: {str(exc).splitlines()[0][:200]}",
                        "a column has different types in different inputs; rename it in one with "
                        "--map OLD=NEW") from exc
    if options.shuffle:
        table = table.take(pa.array(np.random.default_rng(options.seed).permutation(table.num_rows)))
    chat = options.fmt in ("both", "chat")
    if chat:
        table = table.append_column("messages", _messages(table, options.system))
    if options.slim:
        keep = [*SLIM_KEEP, *(ALPACA_COLUMNS if options.fmt in ("both", "alpaca") else ()),
                *(("messages",) if chat else ())]
        table = table.select([c for c in keep if c in table.column_names])
    return MixResult(table, counts)


def provenance(options: MixOptions) -> dict:
    """The arguments a `mix` output records."""
    return {"map": list(options.maps), "format": options.fmt, "system": options.system, "slim": options.slim,
            "shuffle": options.shuffle, "ratio": options.ratio_spec, "safety_budget": options.safety_budget}


def _fold_contrast(parts: Sequence[Part], tables: list["pa.Table"], reporter: "Reporter | None") -> list["pa.Table"]:
    """Contrast rows that are rows of the benign input (same id: `select --contrast` was given the
    fine-tuning set itself) are kept once, as contrast rows: the benign copy goes, with a warning,
    since they then add no new training rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = [t.filter(pc.equal(t.column("source"), CONTRAST)).column("id").cast(pa.string())
           for t in tables[1:] if "id" in t.column_names and pc.any(pc.equal(t.column("source"), CONTRAST)).as_py()]
    if not ids or "id" not in tables[0].column_names:
        return tables
    benign = tables[0]
    mask = pc.is_in(benign.column("id").cast(pa.string()), value_set=pa.concat_arrays(
        [c.combine_chunks() for c in ids]))
    shared = int(pc.sum(mask).as_py() or 0)
    if not shared:
        return tables
    if reporter is not None:
        reporter.warn(f"{shared} contrast rows are rows of the benign input {parts[0].name!r} already: kept once, as "
                      "source=contrast, so they add no new training rows; pass `select --contrast` another "
                      "instruction table (e.g. a larger pool than the fine-tuning set) to add look-alikes")
    return [benign.filter(pc.invert(mask)), *tables[1:]]


def mix_counts(tables: Sequence["pa.Table"]) -> dict[str, int]:
    import pyarrow.compute as pc

    counts = {BENIGN: 0, SAFETY: 0, CONTRAST: 0}
    for table in tables:
        vc = pc.value_counts(table.column("source"))
        for value, count in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            counts[value] = counts.get(value, 0) + count
    return counts


def check(counts: dict[str, int], ratio: float | None, safety_budget: int | None) -> None:
    """The mixture checks a user asked for: a safety row count, or a safety-to-benign ratio."""
    benign, safety = counts[BENIGN] + counts.get(CONTRAST, 0), counts[SAFETY]  # look-alikes are benign
    if safety_budget is not None and safety != safety_budget:
        raise CheckFailed(f"the mixture has {safety} safety rows, not the {safety_budget} of --safety-budget",
                          f"select exactly that many: safesample select ... --budget {safety_budget}")
    if ratio is not None:
        expected = math.floor(ratio * benign + 0.5)  # rounded as `select --budget P% --of` rounds
        if safety != expected:
            raise CheckFailed(f"the mixture has {safety} safety rows on {benign} benign rows "
                              f"({safety / max(benign, 1):.4%}); --ratio {ratio:.4%} needs {expected}",
                              f"select with --budget {ratio * 100:g}% --of BENIGN so the counts agree")
