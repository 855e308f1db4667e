"""The `report` stage: selection and judge outputs -> one self-contained HTML file.

Inputs are what the other stages write; each one's kind is told from what it holds (its columns
or JSON keys), the provenance (the last command that wrote it) telling a bare pool table:

- ``pool``: a labelled / embedded / clustered pool table (`label`, `embed`, `cluster` output);
- ``selection``: a `select` output table (`select_reason`, `select_rank`);
- ``selection_report``: the JSON of `select --report` (`selection`, `random`, `counts`);
- ``judge``: a `judge` output table (`eval_group`, `refusal`);
- ``judge_summary``: the JSON of `judge --summary` (`overall`, `by_category`, maybe `compare`);
- ``experiment``: the summary.json of `make experiment` (`arms`, `table`);
- ``audit``: an `audit` output table (`audit_score`, `audit_rank`).

The page: selection coverage (category x behavior heatmap of pool vs picks vs a random draw's
expectation, clusters covered, a 2-D PCA map of the pool's embeddings with the picks), the
judge runs (per-category refusal side by side, over-refusal next to refusal, the paired
comparison with CIs and the refused/complied transitions with example responses folded), the
experiment's arms, and the provenance of every input. Charts are inline SVG (matplotlib), the
page is a Jinja2 template with autoescape on (model outputs are untrusted text); there is no
script from elsewhere, no font, no network: it opens from a file path, offline.

The package: `inputs` reads each input and tells its kind, `selection`, `judged`, `experiment`
and `provenance` build the page's sections (`experiment` is the one module that reads
`experiments/summarize.py`'s summary.json), `charts` draws them, `formatting` writes numbers,
`options` holds `ReportOptions`; here `plan` (what --dry-run prints) and `report_table`, which
renders the page from `templates/report.html.j2`.
"""

from __future__ import annotations

import time
from typing import Any

from safesample import __version__
from safesample.report.audited import audit_section
from safesample.report.experiment import experiment_section
from safesample.report.formatting import num, pct, pp, visible
from safesample.report.inputs import EXPECTED, KINDS, ReportInput, json_kind, load_input, load_inputs, table_kind
from safesample.report.judged import base_input, judge_section
from safesample.report.options import ReportOptions
from safesample.report.provenance import provenance
from safesample.report.selection import selection_section
from safesample.reporter import SILENT, Reporter

COMMAND = "report"
__all__ = ["COMMAND", "EXPECTED", "KINDS", "ReportInput", "ReportOptions", "json_kind", "load_input", "load_inputs",
           "plan", "report_table", "table_kind"]


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
        base = base_input(judges, options)
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
    if "audit" in kinds:
        out.append("audit")
    return out


def report_table(inputs: list[ReportInput], options: ReportOptions | None = None, *,
                 reporter: Reporter = SILENT) -> str:
    """The whole report page as one HTML string (the report's stage function: its "table" is
    the inputs `load_inputs` read)."""
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
    with reporter.progress(4, "report", unit="sections") as advance:
        context["selection"] = selection_section(inputs, options, chart, findings, reporter)
        advance(1)
        context["judge"] = judge_section(inputs, options, chart, findings, reporter)
        advance(1)
        context["experiment"] = experiment_section([(i.name, i.data) for i in inputs if i.kind == "experiment"],
                                                   chart, findings)
        advance(1)
        context["audit"] = audit_section(inputs, options, chart, findings)
        advance(1)
    context["provenance"] = [provenance(i) for i in inputs]
    context["findings"] = findings
    context["n_charts"] = len(charts)
    html = _template().render(**context)
    reporter.debug(f"report: {len(charts)} charts, {len(html) / 1024:.0f} KB in {time.perf_counter() - t0:.1f} s")
    return html


def _template():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("safesample.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, finalize=visible)
    env.filters["pct"] = pct
    env.filters["num"] = num
    env.filters["pp"] = pp
    return env.get_template("report.html.j2")
