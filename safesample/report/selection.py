"""The report's selection section: what a selection picked, against its pool and against chance.

From the pool table (label / embed / cluster output), a `select` output table and the JSON of
`select --report`: coverage numbers against random draws of the same budget, category x
behavior heatmaps of pool vs picks vs a random draw's expectation, clusters covered, a 2-D PCA
map of the pool's embeddings with the picks, and the picks with their `select_reason`.

Why PCA for the map: it is linear and deterministic, so distances along the two axes mean
the same everywhere and the same inputs always draw the same map; t-SNE/UMAP show local
neighbourhoods better but invent distances between groups, depend on a seed and perplexity,
and take minutes on a large pool (UMAP is not a dependency either).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safesample.errors import DataError
from safesample.report.inputs import ReportInput
from safesample.report.options import ReportOptions
from safesample.reporter import Reporter

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

NO_CATEGORY = "(none)"
ALL_BEHAVIORS = "(all)"


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


def selection_section(inputs: list[ReportInput], options: ReportOptions, chart, findings,
                      reporter: Reporter) -> dict[str, Any] | None:
    """Coverage of the picks against the pool and against random draws: a table per selection
    report, the category x behavior heatmaps, the embedding map, clusters covered, several
    selections side by side, and the picks themselves."""
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


def _map(pool: ReportInput | None, pick: ReportInput | None, options: ReportOptions,
         reporter: Reporter) -> str | None:
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



def _charts():
    """The chart module, imported when a chart is drawn (it imports numpy; matplotlib on use)."""
    import safesample.report.charts as charts

    return charts
