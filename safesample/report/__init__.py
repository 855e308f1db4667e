"""The `report` stage: selection and judge outputs -> one self-contained HTML file.

Inputs are what the other stages write; each one's kind is told from what it holds (its columns
or JSON keys), the provenance (the last command that wrote it) telling a bare pool table:

- ``pool``: a labelled / embedded / clustered pool table (`label`, `embed`, `cluster` output);
- ``selection``: a `select` output table (`select_reason`, `select_rank`);
- ``selection_report``: the JSON of `select --report` (`selection`, `random`, `counts`);
- ``judge``: a `judge` output table (`eval_group`, `refusal`);
- ``judge_summary``: the JSON of `judge --summary` (`overall`, `by_category`, maybe `compare`);
- ``experiment``: the summary.json of `make experiment` (`arms`, `table`).

The page: selection coverage (category x behavior heatmap of pool vs picks vs a random draw's
expectation, clusters covered, a 2-D PCA map of the pool's embeddings with the picks), the
judge runs (per-category refusal side by side, over-refusal next to refusal, the paired
comparison with CIs and the refused/complied transitions with example responses folded), the
experiment's arms, and the provenance of every input. Charts are inline SVG (matplotlib), the
page is a Jinja2 template with autoescape on (model outputs are untrusted text); there is no
script from elsewhere, no font, no network: it opens from a file path, offline.

Why PCA for the map: it is linear and deterministic, so distances along the two axes mean
the same everywhere and the same inputs always draw the same map; t-SNE/UMAP show local
neighbourhoods better but invent distances between groups, depend on a seed and perplexity,
and take minutes on a large pool (UMAP is not a dependency either).
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesample import __version__
from safesample.errors import DataError, UsageError
from safesample.reporter import SILENT, Reporter

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from safesample.tables import RunFiles

COMMAND = "report"
KINDS = {
    "pool": "a pool table (label / embed / cluster output)",
    "selection": "a `select` output table",
    "selection_report": "a `select --report` JSON",
    "judge": "a `judge` output table",
    "judge_summary": "a `judge --summary` JSON",
    "experiment": "an experiment summary.json (`make experiment`)",
}
EXPECTED = ("a `select` output table or its --report JSON, a `judge` output table or its --summary "
            "JSON, the pool table (label/embed/cluster output), or an experiment summary.json")
NO_CATEGORY = "(none)"
ALL_BEHAVIORS = "(all)"
TRANSITIONS = ("refused->complied", "complied->refused")


@dataclass
class ReportOptions:
    title: str = "safesample report"
    note: str | None = None  # a paragraph shown under the title (e.g. what a demo run can show)
    base: str | None = None  # the judge input the others are compared with (as given)
    examples: int = 3  # example responses per transition and group
    max_points: int = 5000  # pool rows drawn on the map (a seeded sample beyond that)
    max_picks_rows: int = 300  # rows of the picks table
    category_col: str = "category"
    seed: int = 0  # the map's sample and the comparison's bootstrap
    bootstrap: int = 1000


@dataclass
class ReportInput:
    path: str
    kind: str
    table: "pa.Table | None" = None
    data: dict[str, Any] | None = None
    provenance: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""
    size: int | None = None
    sha256: str | None = None

    @property
    def rows(self) -> int | None:
        return self.table.num_rows if self.table is not None else None


# --------------------------------------------------------------------------------------------
# inputs


def load_inputs(paths: list[str], run: "RunFiles | None" = None) -> list[ReportInput]:
    """Read every input and tell its kind; an input of no known kind is a DataError."""
    if not paths:
        raise UsageError("no input given", f"pass {EXPECTED}")
    if paths.count("-") > 1:
        raise UsageError("stdin ('-') can be read once", "pass the other inputs as files")
    inputs = [load_input(p, run) for p in paths]
    _name_inputs(inputs)
    return inputs


def load_input(path: str, run: "RunFiles | None" = None) -> ReportInput:
    from safesample.tables import get_provenance, read_table

    p = Path(path)
    if path != "-":
        if not p.exists():
            raise UsageError(f"input file {path!r} does not exist", "check the path; report reads "
                             + EXPECTED)
        if p.is_dir():
            raise UsageError(f"input {path!r} is a directory", f"pass files: {EXPECTED}")
        with open(p, "rb") as fh:
            head = fh.read(64).lstrip()
        if p.suffix.lower() == ".json" or head.startswith(b"{"):
            raw = p.read_bytes()
            try:
                data = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{path!r} is not valid JSON ({exc})", f"report reads {EXPECTED}") from None
            kind = json_kind(data)
            if kind is None:
                keys = ", ".join(list(data)[:8]) if isinstance(data, dict) else type(data).__name__
                raise DataError(f"{path!r} is none of the report's inputs (JSON with {keys})",
                                f"report reads {EXPECTED}")
            return ReportInput(path, kind, data=data, size=len(raw),
                               sha256=hashlib.sha256(raw).hexdigest()[:12])
    table = read_table(path, run)
    history = get_provenance(table)
    kind = table_kind(table, history)
    if kind is None:
        cols = ", ".join(table.column_names[:10]) + (", ..." if table.num_columns > 10 else "")
        raise DataError(f"{path!r} is none of the report's inputs (a table with columns {cols})",
                        f"report reads {EXPECTED}")
    size = sha = None
    if path != "-":
        size = p.stat().st_size
        sha = _file_hash(p)
    return ReportInput(path, kind, table=table, provenance=history, size=size, sha256=sha)


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def table_kind(table: "pa.Table", history: list[dict[str, Any]] | None = None) -> str | None:
    """`selection`, `judge`, `pool` or None, from the columns (what the table holds decides;
    the provenance only breaks ties, since a later stage may have kept earlier columns)."""
    cols = set(table.column_names)
    if {"select_reason", "select_rank"} <= cols:
        return "selection"
    if {"eval_group", "refusal"} <= cols:
        return "judge"
    from safesample.stages import table_kinds

    last = (history or [{}])[-1].get("command") if history else None
    if table_kinds().get(last) == "pool" or "embedding" in cols or {"behavior", "category"} <= cols:
        return "pool"
    return None


def json_kind(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    keys = set(data)
    if {"selection", "random", "counts"} <= keys:
        return "selection_report"
    if {"overall", "by_category"} <= keys:
        return "judge_summary"
    if {"arms", "table"} <= keys:
        return "experiment"
    return None


def _name_inputs(inputs: list[ReportInput]) -> None:
    """Short unique labels: the file stem, the parent folder added where stems repeat."""
    stems = [Path(i.path).stem if i.path != "-" else "stdin" for i in inputs]
    for i, inp in enumerate(inputs):
        name = stems[i]
        if stems.count(name) > 1 and inp.path != "-":
            name = f"{Path(inp.path).parent.name}/{name}"
        inp.name = name


def plan(inputs: list[ReportInput], options: ReportOptions) -> list[str]:
    """What --dry-run prints: each input's kind and what the page will show."""
    lines = [f"report: {len(inputs)} input(s) -> one HTML page ({options.title!r})"]
    for inp in inputs:
        what = f"{inp.rows} rows" if inp.table is not None else "JSON"
        lines.append(f"  {inp.path}: {KINDS[inp.kind]} ({what})")
    sections = _sections(inputs)
    lines.append("sections: " + (", ".join(sections) if sections else "provenance only"))
    judges = [i for i in inputs if i.kind == "judge"]
    if len(judges) > 1:
        base = _base(judges, options)
        lines.append(f"compare: {', '.join(j.name for j in judges if j is not base)} against {base.name} "
                     "(paired on id)")
    return lines


def _sections(inputs: list[ReportInput]) -> list[str]:
    kinds = {i.kind for i in inputs}
    out = []
    if kinds & {"selection", "selection_report", "pool"}:
        out.append("selection")
    if kinds & {"judge", "judge_summary"}:
        out.append("judge")
    if "experiment" in kinds:
        out.append("experiment")
    return out


# --------------------------------------------------------------------------------------------
# the page


def report_html(inputs: list[ReportInput], options: ReportOptions | None = None, *,
                reporter: Reporter = SILENT) -> str:
    """The whole report page as one HTML string."""
    options = options or ReportOptions()
    t0 = time.perf_counter()
    charts: list[dict[str, str]] = []
    findings: list[str] = []

    def chart(key: str, title: str, svg: str, caption: str = "") -> dict[str, str]:
        item = {"key": key, "title": title, "svg": svg, "caption": caption}
        charts.append(item)
        return item

    context: dict[str, Any] = {"title": options.title, "note": options.note, "version": __version__,
                               "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with reporter.progress(3, "report", unit="sections") as advance:
        context["selection"] = _selection_section(inputs, options, chart, findings, reporter)
        advance(1)
        context["judge"] = _judge_section(inputs, options, chart, findings, reporter)
        advance(1)
        context["experiment"] = _experiment_section(inputs, chart, findings)
        advance(1)
    context["provenance"] = [_provenance(i) for i in inputs]
    context["findings"] = findings
    context["n_charts"] = len(charts)
    html = _template().render(**context)
    reporter.debug(f"report: {len(charts)} charts, {len(html) / 1024:.0f} KB in {time.perf_counter() - t0:.1f} s")
    return html


def _template():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("safesample.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    env.filters["pp"] = _pp
    return env.get_template("report.html.j2")


def _pct(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.{digits}f} %"


def _pp(value: Any) -> str:
    if value is None:
        return "–"
    return f"{100 * float(value):+.1f}"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if not value.is_integer() else str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------------
# selection


def _labels(table: "pa.Table", name: str, default: str) -> list[list[str]]:
    """Per row, its labels in column `name` (a list column is multi-label)."""
    import pyarrow as pa

    if name not in table.column_names:
        return [[default]] * table.num_rows
    col = table.column(name)
    values = col.to_pylist()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return [[str(v) for v in (row or [])] or [default] for row in values]
    return [[default if v is None else str(v)] for v in values]


def _counts(table: "pa.Table", category_col: str) -> dict[tuple[str, str], int]:
    cats = _labels(table, category_col, NO_CATEGORY)
    behs = _labels(table, "behavior", ALL_BEHAVIORS)
    out: dict[tuple[str, str], int] = {}
    for cs, bs in zip(cats, behs):
        for c in cs:
            out[(c, bs[0])] = out.get((c, bs[0]), 0) + 1
    return out


def _matrix(counts: dict[tuple[str, str], float], rows: list[str], cols: list[str]) -> "np.ndarray":
    import numpy as np

    m = np.zeros((len(rows), len(cols)))
    for (c, b), v in counts.items():
        if c in rows and b in cols:
            m[rows.index(c), cols.index(b)] += v
    return m


def _embeddings(table: "pa.Table", name: str = "embedding") -> "np.ndarray | None":
    import numpy as np
    import pyarrow as pa

    if name not in table.column_names or table.num_rows == 0:
        return None
    col = table.column(name).combine_chunks()
    if not (pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type)
            or pa.types.is_large_list(col.type)):
        return None
    if col.null_count:
        return None
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if flat.size % table.num_rows:
        raise DataError(f"the {name!r} column has rows of different lengths",
                        "re-run `safesample embed` on the whole table")
    matrix = flat.reshape(table.num_rows, -1)
    if not np.isfinite(matrix).all():
        return None
    return matrix


def _selection_section(inputs, options, chart, findings, reporter) -> dict[str, Any] | None:
    import numpy as np

    pools = [i for i in inputs if i.kind == "pool"]
    picks = [i for i in inputs if i.kind == "selection"]
    reports = [i for i in inputs if i.kind == "selection_report"]
    if not (pools or picks or reports):
        return None
    if len(pools) > 1:
        reporter.warn(f"{len(pools)} pool tables given; the map and heatmap use the first ({pools[0].path})")
    pool = pools[0] if pools else None
    pick = picks[0] if picks else None
    cat_col = options.category_col
    out: dict[str, Any] = {"pool": pool.name if pool else None, "picks": None, "coverage": [],
                           "charts": []}

    # coverage numbers: a table per selection report, or one row each when there are several
    out["coverage_many"] = [{
        "name": r.name, "strategy": r.data.get("strategy"), "budget": r.data.get("budget"),
        "seed": r.data.get("seed"),
        "cells": [(r.data["selection"].get(k), r.data["random"].get(k), (r.data.get("available") or {}).get(k))
                  for k in ("categories", "behaviors", "clusters")],
        "distance": (r.data["selection"].get("mean_pairwise_distance"),
                     r.data["random"].get("mean_pairwise_distance")),
    } for r in reports] if len(reports) > 1 else []
    for rep in (reports if len(reports) == 1 else []):
        d = rep.data
        sel, rnd, avail = d.get("selection", {}), d.get("random", {}), d.get("available", {})
        out["coverage"].append({
            "name": rep.name, "strategy": d.get("strategy"), "budget": d.get("budget"), "seed": d.get("seed"),
            "pool_rows": d.get("pool_rows"), "candidate_rows": d.get("candidate_rows"),
            "draws": rnd.get("draws"),
            "rows": [(label, sel.get(key), rnd.get(key), avail.get(key) if key != "mean_pairwise_distance" else None)
                     for key, label in (("categories", "categories covered"), ("behaviors", "behaviors covered"),
                                        ("clusters", "clusters covered"),
                                        ("mean_pairwise_distance", "mean pairwise cosine distance"))
                     if sel.get(key) is not None],
            "notes": d.get("notes") or [],
        })
    if len(reports) == 1 and reports[0].data.get("random"):
        d = reports[0].data
        for key in ("categories", "clusters"):
            s, r, a = d["selection"].get(key), d["random"].get(key), d.get("available", {}).get(key)
            if s is not None and r is not None:
                findings.append(f"Coverage ({reports[0].name}): {s:g} of {a if a is not None else '?'} {key} "
                                f"covered, against {r:g} for a random draw of the same size "
                                f"(mean of {d['random'].get('draws', '?')}).")

    # category x behavior: pool vs picks vs a random draw's expectation
    pick_counts: dict[tuple[str, str], float] | None = None
    if pick is not None:
        pick_counts = _counts(pick.table, cat_col)
        budget = pick.table.num_rows
    elif len(reports) == 1:
        d = reports[0].data
        pick_counts = {(c, b): v for b, inner in (d.get("counts") or {}).items() for c, v in inner.items()}
        budget = int(d.get("budget") or sum(pick_counts.values()))
    pool_counts = _counts(pool.table, cat_col) if pool is not None else None
    if pick_counts is not None or pool_counts is not None:
        both = dict(pool_counts or {})
        for k, v in (pick_counts or {}).items():
            both[k] = both.get(k, 0) + v
        rows = sorted({c for c, _ in both}, key=lambda c: (-sum(v for (cc, _), v in (pool_counts or pick_counts).items()
                                                                 if cc == c), c))
        cols = sorted({b for _, b in both}, key=lambda b: (b == ALL_BEHAVIORS, b))
        panels, fmts = [], []
        if pool_counts is not None:
            pm = _matrix(pool_counts, rows, cols)
            panels.append((f"pool ({pool.rows} rows)", pm))
            fmts.append("{:g}")
        if pick_counts is not None:
            panels.append((f"picks ({budget})", _matrix(pick_counts, rows, cols)))
            fmts.append("{:g}")
            if pool_counts is not None and pm.sum():
                panels.append(("random draw, expected", pm / pm.sum() * budget))
                fmts.append("{:.1f}")
        caption = ("Rows per harm category and behavior. Each panel is shaded by its share of its own "
                   "total, so a pool of thousands and a pick of a few dozen compare.")
        if len(panels) == 3:
            caption += (" The right panel is what a uniform random draw of the same size would hold on "
                        "average (budget × the pool's share of each cell); cells the picks fill "
                        "where random would leave them near zero are what stratifying buys.")
        out["charts"].append(chart("heatmap", "Categories × behaviors: pool vs picks",
                                   _charts().heatmaps(rows, cols, panels, fmts), caption))
        if pick_counts is not None and pool_counts is not None:
            missed = [c for c in rows if any(pool_counts.get((c, b)) for b in cols)
                      and not any(pick_counts.get((c, b)) for b in cols)]
            if missed:
                findings.append(f"The picks miss {len(missed)} of the pool's {len(rows)} categories: "
                                + ", ".join(missed[:8]) + ("…" if len(missed) > 8 else "") + ".")

    # the embedding map
    if pick is not None or pool is not None:
        svg = _map(pool, pick, options, reporter)
        if svg is not None:
            what = "the pool's" if pool is not None else "the picks'"
            out["charts"].append(chart("map", "Where the picks sit in the embedding space", svg,
                                       f"The first two principal components of {what} embeddings "
                                       "(PCA: linear and deterministic, so the same inputs draw the same "
                                       "map and distances along an axis mean the same everywhere). "
                                       "Grey: pool rows; coloured: picks, by harm category."))
    if pick is not None and "cluster" in pick.table.column_names:
        used = {c for c in pick.table.column("cluster").to_pylist() if c is not None and c >= 0}
        total = None
        if pool is not None and "cluster" in pool.table.column_names:
            total = len({c for c in pool.table.column("cluster").to_pylist() if c is not None and c >= 0})
        out["clusters"] = (len(used), total)

    # several selections: coverage side by side and picks per category
    sels = reports if len(reports) > 1 else []
    if sels:
        names = [r.name for r in sels]
        metrics = []
        for key, title in (("categories", "categories covered"), ("clusters", "clusters covered")):
            sel_v = [r.data["selection"].get(key) for r in sels]
            if all(v is None for v in sel_v):
                continue
            metrics.append((title, sel_v, [r.data["random"].get(key) for r in sels],
                            [r.data.get("available", {}).get(key) for r in sels]))
        if metrics:
            out["charts"].append(chart("coverage", "Coverage of each selection vs random draws",
                                       _charts().coverage_bars(names, metrics),
                                       "Bars: what each selection covers and what a random draw of the same "
                                       "size covers on average (over the draws `select --report` made); "
                                       "dashes: what the pool had to offer."))
        cats = sorted({c for r in sels for inner in (r.data.get("counts") or {}).values() for c in inner})
        if cats:
            m = np.zeros((len(sels), len(cats)))
            for i, r in enumerate(sels):
                for inner in (r.data.get("counts") or {}).values():
                    for c, v in inner.items():
                        m[i, cats.index(c)] += v
            out["charts"].append(chart("per_category_picks", "Picks per category, each selection",
                                       _charts().grid_heatmap(names, cats, m, "rows picked"),
                                       "How each selection spread its budget over the harm categories."))

    if pick is not None:
        out["picks"] = _picks_table(pick, options)
    return out


def _map(pool, pick, options, reporter) -> str | None:
    import numpy as np

    pool_emb = _embeddings(pool.table) if pool is not None else None
    pick_emb = _embeddings(pick.table) if pick is not None else None
    fit = pool_emb if pool_emb is not None else pick_emb
    if fit is None or len(fit) < 3 or fit.shape[1] < 2:
        reporter.info("report: no embedding map (no `embedding` column with 3 rows or more; "
                      "run `safesample embed`)")
        return None
    if pool_emb is not None and pick_emb is not None and pick_emb.shape[1] != pool_emb.shape[1]:
        reporter.warn("report: the picks' embeddings and the pool's differ in dimension; the map shows the pool only")
        pick_emb = None
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(options.seed)
    sample = fit if len(fit) <= options.max_points else fit[rng.choice(len(fit), options.max_points, replace=False)]
    pca = PCA(n_components=2, random_state=options.seed).fit(sample)
    pool_xy = pca.transform(sample) if pool_emb is not None else None
    if pick is not None and pick_emb is not None:
        picks_xy = pca.transform(pick_emb)
        picks_cat = [labels[0] for labels in _labels(pick.table, options.category_col, NO_CATEGORY)]
    else:
        picks_xy, picks_cat = np.zeros((0, 2)), []
    label = "pool" + (f" ({len(sample)} of {len(fit)} rows)" if len(sample) < len(fit) else "")
    return _charts().embedding_map(pool_xy, picks_xy, picks_cat, pca.explained_variance_ratio_, label)


def _picks_table(pick: ReportInput, options: ReportOptions) -> dict[str, Any]:
    t = pick.table
    if "select_rank" in t.column_names:
        import pyarrow.compute as pc

        t = t.take(pc.sort_indices(t, sort_keys=[("select_rank", "ascending")]))
    shown = t.slice(0, options.max_picks_rows)
    text_col = next((c for c in ("instruction", "prompt", "text") if c in t.column_names), None)
    cols = [c for c in ("select_rank", "id", options.category_col, "behavior", "cluster") if c in t.column_names]
    rows = []
    for r in shown.select(cols + ([text_col] if text_col else []) + ["select_reason"]).to_pylist():
        cat = r.get(options.category_col)
        if isinstance(cat, list):
            r[options.category_col] = ", ".join(map(str, cat))
        rows.append(r)
    return {"name": pick.name, "columns": cols, "text_col": text_col, "rows": rows, "total": t.num_rows}


# --------------------------------------------------------------------------------------------
# judge


@dataclass
class _Run:
    name: str
    model: str | None
    summary: dict[str, Any]
    table: "pa.Table | None" = None
    inp: ReportInput | None = None
    eval_input: str | None = None


def _args(inp: ReportInput) -> dict[str, Any]:
    for entry in reversed(inp.provenance):
        if entry.get("command") == "judge":
            return entry.get("args") or {}
    return {}


def _judge_runs(inputs, options) -> list[_Run]:
    from safesample.judge import summary as judge_summary

    runs: list[_Run] = []
    for inp in inputs:
        if inp.kind == "judge":
            args = _args(inp)
            cat = args.get("category_col") or options.category_col
            guards = [s for s in (args.get("scorers") or []) if s in judge_summary.GUARDS]
            summary = judge_summary.summarize(inp.table, cat if cat in inp.table.column_names else None, guards)
            runs.append(_Run(inp.name, args.get("model"), summary, inp.table, inp, args.get("input")))
    for inp in inputs:
        if inp.kind == "judge_summary":
            d = inp.data
            same = [r for r in runs if r.table is not None and r.model == d.get("model")
                    and r.eval_input == d.get("input") and d.get("model")]
            if same:  # the summary of a judged table given too: the table has the responses
                same[0].summary.setdefault("compare", d.get("compare"))
                continue
            runs.append(_Run(inp.name, d.get("model"), d, None, inp, d.get("input")))
    return runs


def _base(judges: list[ReportInput], options: ReportOptions) -> ReportInput:
    if options.base is not None:
        for j in judges:
            if options.base in (j.path, j.name) or (j.path != "-" and Path(options.base).resolve() == Path(j.path).resolve()):
                return j
        raise UsageError(f"--base {options.base!r} is not one of the judge tables given",
                         "pass the path of a judge output table that is also an input")
    # a table judged with --compare names its base
    for j in judges:
        named = _args(j).get("compare")
        for other in judges:
            if named and other is not j and other.path != "-" and Path(named).resolve() == Path(other.path).resolve():
                return other
    return judges[0]


def _judge_section(inputs, options, chart, findings, reporter) -> dict[str, Any] | None:
    runs = _judge_runs(inputs, options)
    if not runs:
        return None
    from safesample.judge import summary as judge_summary

    out: dict[str, Any] = {"runs": [], "charts": [], "comparisons": []}
    for r in runs:
        o = r.summary.get("overall", {})
        out["runs"].append({"name": r.name, "model": r.model, **{k: o.get(k) for k in (
            "n", "n_benign", "n_not_benign", "refusal_rate", "full_refusal_rate", "over_refusal_rate",
            "harmful_response_rate", "mean_reward", "parse_failures", "empty_responses")}})

    # per-category refusal, runs side by side
    cats = sorted({c for r in runs for c in (r.summary.get("by_category") or {})})
    if cats:
        series = [(_run_label(r), [(r.summary["by_category"].get(c) or {}).get("refusal_rate") for c in cats])
                  for r in runs]
        sizes = {c: max((r.summary["by_category"].get(c) or {}).get("n_not_benign") or 0 for r in runs) for c in cats}
        cats_with = [c for c in cats if sizes[c]]
        if cats_with:
            idx = [cats.index(c) for c in cats_with]
            series = [(n, [v[i] for i in idx]) for n, v in series]
            groups = [f"{_charts().short(c, 26)} ({sizes[c]})" for c in cats_with]
            out["charts"].append(chart("refusal_by_category", "Refusal of harmful prompts, per category",
                                       _charts().grouped_bars(groups, series, title="refused, among prompts not "
                                                              "flagged benign", ylabel="refused", horizontal=True),
                                       "Each bar: the share of a category's harmful prompts the model refused "
                                       "(prompts per category in brackets). Higher is safer."))
    # refusal next to over-refusal
    series = [("refusal (harmful prompts)", [r.summary["overall"].get("refusal_rate") for r in runs]),
              ("over-refusal (benign look-alikes)", [r.summary["overall"].get("over_refusal_rate") for r in runs])]
    if any(v is not None for _, vals in series for v in vals):
        errors = [[_wilson(r.summary["overall"].get(rate), r.summary["overall"].get(n)) for r in runs]
                  for rate, n in (("refusal_rate", "n_not_benign"), ("over_refusal_rate", "n_benign"))]
        out["charts"].append(chart("refusal_vs_over_refusal", "Refusal next to over-refusal",
                                   _charts().grouped_bars([_run_label(r) for r in runs], series,
                                                          title="refused: harmful vs benign prompts", ylabel="refused",
                                                          errors=errors, horizontal=True),
                                   "A model can look safe by refusing everything: a good run refuses the harmful "
                                   "prompts (blue) without refusing their benign look-alikes (orange). "
                                   "Whiskers: 95 % Wilson intervals."))
        for r in runs:
            o = r.summary["overall"]
            if o.get("refusal_rate") is not None and o.get("over_refusal_rate") is not None \
                    and o["over_refusal_rate"] >= o["refusal_rate"] and o["refusal_rate"] > 0:
                findings.append(f"{_run_label(r)} refuses benign look-alikes at least as often as harmful "
                                f"prompts ({_pct(o['over_refusal_rate'])} of {o.get('n_benign')} vs "
                                f"{_pct(o['refusal_rate'])} of {o.get('n_not_benign')}): its refusals do not "
                                "tell harmful from benign.")

    # comparisons: tables paired on id, else what a summary's --compare recorded
    tables = [r for r in runs if r.table is not None]
    done: set[str] = set()
    if len(tables) > 1:
        base_inp = _base([r.inp for r in tables], options)
        base = next(r for r in tables if r.inp is base_inp)
        for r in tables:
            if r is base:
                continue
            cat = _args(r.inp).get("category_col") or options.category_col
            cat = cat if cat in r.table.column_names else None
            try:
                cmp = judge_summary.compare(r.table, base.table, cat, n_boot=options.bootstrap, seed=options.seed)
            except DataError as exc:
                reporter.warn(f"report: {r.name} cannot be compared with {base.name}: {exc.message}")
                continue
            out["comparisons"].append(_comparison(base.name, r, cmp, chart, findings, options,
                                                  base_run=base, now_run=r))
            done.add(r.name)
    for r in runs:
        cmp = r.summary.get("compare")
        if cmp and r.name not in done:
            base_name = Path(str(cmp.get("base") or "base")).stem
            out["comparisons"].append(_comparison(base_name, r, cmp, chart, findings, options))
    return out


def _run_label(r: _Run) -> str:
    if r.model and Path(r.model).name not in r.name:
        return f"{r.name} ({Path(r.model).name})"
    return r.name


def _wilson(p: float | None, n: int | None) -> tuple[float, float] | None:
    if p is None or not n:
        return None
    z = 1.96
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


METRIC_TITLES = {"refusal_rate": "refusal (harmful prompts)", "over_refusal_rate": "over-refusal (benign prompts)",
                 "harmful_response_rate": "harmful responses", "mean_reward": "mean reward"}


def _comparison(base_name: str, run: _Run, cmp: dict[str, Any], chart, findings, options, *,
                base_run: _Run | None = None, now_run: _Run | None = None) -> dict[str, Any]:
    title = f"{run.name} vs {base_name}"
    panels = []
    for metric, scopes in (cmp.get("metrics") or {}).items():
        if metric == "mean_reward":
            continue  # not a rate: its points would mislead on the shared axis
        rows = [(s, v["delta"], v.get("ci_low"), v.get("ci_high"), v.get("n")) for s, v in scopes.items()]
        rows.sort(key=lambda x: (x[0] != "overall", x[0]))
        panels.append((METRIC_TITLES.get(metric, metric), rows))
    item: dict[str, Any] = {"title": title, "base": base_name, "now": run.name, "paired": cmp.get("paired"),
                            "metrics": [], "transitions": [], "examples": [], "chart": None}
    for metric, scopes in (cmp.get("metrics") or {}).items():
        o = scopes.get("overall")
        if o:
            item["metrics"].append({"metric": METRIC_TITLES.get(metric, metric), **o})
    if panels:
        item["chart"] = chart("compare", f"Change: {title}", _charts().forest(panels),
                              "Per category, the change from the base run to this one, in percentage points, "
                              "with its 95 % bootstrap interval (paired on prompt id). An interval that "
                              "crosses 0 is no evidence of a change.")
    for group, counts in (cmp.get("transitions") or {}).items():
        item["transitions"].append({"group": "harmful prompts" if group == "not_benign" else "benign prompts",
                                    **{k.replace("->", "_to_"): v for k, v in counts.items()}})
    # what to say about it
    overall = [(m, s["overall"]) for m, s in (cmp.get("metrics") or {}).items() if "overall" in s and m != "mean_reward"]
    moved = sum(c.get("refused->complied", 0) + c.get("complied->refused", 0)
                for c in (cmp.get("transitions") or {}).values())
    if overall and all(v.get("ci_low") is not None and v["ci_low"] <= 0 <= v["ci_high"] for _, v in overall):
        n = cmp.get("paired")
        findings.append(f"{title}: no change is distinguishable from zero ({moved} of {n} paired prompts "
                        "changed between refused and complied; every 95 % interval includes 0). At this size "
                        "the comparison checks that the pipeline runs; it is not evidence for or against "
                        "the fine-tune.")
    else:
        for m, v in overall:
            if v.get("ci_low") is not None and (v["ci_low"] > 0 or v["ci_high"] < 0):
                findings.append(f"{title}: {METRIC_TITLES.get(m, m)} went from {_pct(v['base'])} to "
                                f"{_pct(v['now'])} ({_pp(v['delta'])} points, 95 % CI {_pp(v['ci_low'])} to "
                                f"{_pp(v['ci_high'])}, n={v['n']}).")
    if base_run is not None and now_run is not None:
        item["examples"] = _examples(base_run.table, now_run.table, options)
    return item


def _examples(base: "pa.Table", now: "pa.Table", options: ReportOptions) -> list[dict[str, Any]]:
    """A few paired prompts per transition and group, with both responses."""
    from safesample.judge import prompt_column

    try:
        pcol = prompt_column(now, None)
    except Exception:  # noqa: BLE001 - no prompt column: show ids only
        pcol = None
    b_rows = {str(r["id"]): r for r in base.select([c for c in ("id", "refusal", "response") if c in base.column_names]).to_pylist()}
    cols = [c for c in ("id", "refusal", "response", "eval_group", options.category_col, pcol)
            if c and c in now.column_names]
    out: dict[tuple[str, str], list] = {}
    for r in now.select(list(dict.fromkeys(cols))).to_pylist():
        b = b_rows.get(str(r["id"]))
        if b is None or b.get("refusal") is None or r.get("refusal") is None:
            continue
        move = f"{'refused' if b['refusal'] else 'complied'}->{'refused' if r['refusal'] else 'complied'}"
        if move not in TRANSITIONS:
            continue
        group = "benign prompts" if r.get("eval_group") == "benign" else "harmful prompts"
        bucket = out.setdefault((move, group), [])
        if len(bucket) < options.examples:
            bucket.append({"id": r["id"], "category": r.get(options.category_col),
                           "prompt": r.get(pcol) if pcol else None,
                           "before": b.get("response"), "after": r.get("response")})
    return [{"move": m.replace("->", " → "), "group": g, "rows": rows} for (m, g), rows in sorted(out.items())]


# --------------------------------------------------------------------------------------------
# experiment summary


def _experiment_section(inputs, chart, findings) -> list[dict[str, Any]]:
    out = []
    for inp in (i for i in inputs if i.kind == "experiment"):
        d = inp.data
        rows = d.get("table") or []
        metrics = list(dict.fromkeys(k for r in rows for k in r if isinstance(r[k], dict) and "mean" in r[k]))
        # summary.json names its log-odds metrics; everything else is a rate in [0, 1]
        scores = [m for m in metrics if m in set(d.get("scores") or ())]
        rates = [m for m in metrics if m not in scores]
        labels = [f"{r['strategy']}" + (f" · {r['budget']}" if r.get("budget") else "") for r in rows]
        series, errors = [], []
        for m in rates:
            series.append((m, [r[m]["mean"] if m in r else None for r in rows]))
            errors.append([(r[m]["min"], r[m]["max"]) if m in r and r.get("seeds", 1) > 1 else None for r in rows])
        paired = [p for p in d.get("paired_over_seeds") or [] if p.get("n_seeds", 0) > 1]
        item = {"name": inp.name, "command": d.get("command"), "metrics": rates, "scores": scores, "rows": rows,
                "mcnemar": d.get("mcnemar_vs_random") or [], "paired": paired, "chart": None}
        if series:
            item["chart"] = chart("experiment", f"Experiment arms ({inp.name})",
                                  _charts().grouped_bars(labels, series, title="refused, mean over seeds "
                                                         "(whiskers: min–max)", ylabel="refused", errors=errors,
                                                         horizontal=True),
                                  "Each arm: strategy · budget (safety rows mixed in). 'aligned' is the model "
                                  "before fine-tuning, 'none' the benign-only fine-tune.")
        for p in paired:
            if p["metric"] in ("harmful refusal score", "harmful P(refusal)") and p.get("mdd_80") is not None:
                k, unit = (100, " points") if p["metric"] not in scores else (1, " log-odds")
                findings.append(
                    f"Experiment {inp.name}: {p['arm']} minus {p['vs']} at budget {p['budget']}, {p['metric']}, "
                    f"paired over {p['n_seeds']} seeds: {k * p['diff_mean']:+.3g}{unit} (paired t p = "
                    f"{_num(p.get('p_t'))}); the smallest difference this design detects (80 % power) is "
                    f"{k * p['mdd_80']:.3g}{unit}.")
        sig = [m for m in item["mcnemar"] if m.get("p") is not None and m["p"] < 0.05]
        if item["mcnemar"]:
            findings.append(f"Experiment {inp.name}: {len(sig)} of {len(item['mcnemar'])} paired arm-vs-random "
                            "comparisons differ at p < 0.05 (exact McNemar on the harmful prompts).")
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------
# provenance


def _provenance(inp: ReportInput) -> dict[str, Any]:
    steps = []
    for e in inp.provenance:
        argv = e.get("argv")
        steps.append({"command": e.get("command"), "argv": "safesample " + shlex.join(argv) if argv else None,
                      "seed": e.get("seed"), "models": e.get("models") or {}, "version": e.get("version"),
                      "time": e.get("time"), "inputs": e.get("inputs") or []})
    facts: list[tuple[str, str]] = []
    d = inp.data or {}
    if inp.kind == "selection_report":
        facts = [(k, str(d.get(k))) for k in ("strategy", "budget", "seed", "pool_rows", "candidate_rows")
                 if d.get(k) is not None]
        if d.get("exclude_sources"):
            facts.append(("excluded prompts from", ", ".join(map(str, d["exclude_sources"]))))
    elif inp.kind == "judge_summary":
        facts = [(k, str(d.get(k))) for k in ("input", "model", "template", "scorers", "benign_flag",
                                             "category_col") if d.get(k) is not None]
        if d.get("compare"):
            facts.append(("compared with", str(d["compare"].get("base"))))
    elif inp.kind == "experiment":
        facts = [("command", str(d.get("command")))]
    return {"path": inp.path, "name": inp.name, "kind": KINDS[inp.kind], "rows": inp.rows,
            "size_kb": None if inp.size is None else round(inp.size / 1024, 1), "sha256": inp.sha256,
            "steps": steps, "facts": facts}


def _charts():
    from safesample.report import charts

    return charts
