"""The report's charts: matplotlib figures rendered to inline SVG text.

SVG rather than PNG: it stays sharp at any zoom, weighs less for charts of a few hundred marks,
and keeps its text as text (`svg.fonttype: none`), so a reader can search and copy labels. No
pyplot: each chart is its own `Figure`, so nothing global changes and no GUI backend loads.
Labels are plain text (`text.parse_math: False`): a `$` in a category or model name is not
TeX. matplotlib escapes text for XML, so untrusted names cannot inject markup.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Sequence

import numpy as np

# Okabe-Ito, then tab20's: distinguishable for colour-blind readers first.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#8c564b", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
           "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d"]
SCATTER_POINTS = 1500  # kept rows drawn in an audit's scatter (a fixed sample beyond)
RC = {"svg.fonttype": "none", "svg.hashsalt": "safesample", "text.parse_math": False,
      "font.family": "sans-serif", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
      "axes.titlesize": 10, "axes.titleweight": "bold", "legend.frameon": False}


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig) -> str:
    """The figure as an inline <svg> element (no XML prolog, no doctype, no date)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(RC), warnings.catch_warnings():
        # The SVG keeps text as text (svg.fonttype none): the browser draws every glyph with its
        # own fonts, so matplotlib's "Glyph N missing from font(s) DejaVu Sans" (CJK, emoji,
        # control characters in a category name) is about a font the page never uses.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    start = text.find("<svg")
    svg = text[start:]
    # Let CSS size it: drop the fixed pt size, keep the viewBox for the aspect ratio.
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1', svg, count=1)
    return svg


def _rc():
    import matplotlib

    return matplotlib.rc_context(RC)


def short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def embedding_map(pool_xy: np.ndarray | None, picks_xy: np.ndarray, picks_cat: Sequence[str],
                  explained: Sequence[float], pool_label: str) -> str:
    """Pool points in grey, picks coloured by category, on the first two principal components."""
    with _rc():
        fig = _figure(8.6, 5.2)
        ax = fig.add_subplot()
        if pool_xy is not None and len(pool_xy):
            ax.scatter(pool_xy[:, 0], pool_xy[:, 1], s=7, c="#c9ced6", linewidths=0, label=pool_label,
                       rasterized=False)
        cats = sorted(set(picks_cat))
        for i, cat in enumerate(cats):
            mask = np.array([c == cat for c in picks_cat])
            ax.scatter(picks_xy[mask, 0], picks_xy[mask, 1], s=46, c=color(i), edgecolors="#222",
                       linewidths=0.6, label=short(cat, 34), zorder=3)
        ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
        ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="picks by category",
                  title_fontsize=8, markerscale=0.9, handletextpad=0.3)
        return to_svg(fig)


def heatmaps(rows: Sequence[str], cols: Sequence[str], panels: Sequence[tuple[str, np.ndarray]],
             value_fmt: Sequence[str] | None = None) -> str:
    """Side-by-side heatmaps over the same rows x cols; each panel shaded by its share of its own
    total (so a pool of thousands and a pick of 25 compare), annotated with the counts."""
    n = len(panels)
    width = min(15.0, 2.6 + n * (0.9 + 0.62 * len(cols)))
    height = 1.2 + 0.27 * len(rows)
    with _rc():
        fig = _figure(width, height)
        axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
        shares = [v / v.sum() if v.sum() else v for _, v in panels]
        top = max([float(s.max()) for s in shares] + [1e-9])  # one colour scale for every panel
        for k, (ax, (title, values)) in enumerate(zip(axes, panels)):
            share = shares[k]
            ax.imshow(share, cmap="Blues", aspect="auto", vmin=0, vmax=top)
            fmt = value_fmt[k] if value_fmt else "{:g}"
            _label_cells(ax, values, share > 0.55 * top, fmt)
            _grid_axes(ax, title, rows, cols, col_width=14, row_width=34, rotation=30)
        return to_svg(fig)


def _label_cells(ax, values: np.ndarray, dark: np.ndarray, fmt: str = "{:g}") -> None:
    """Write each non-zero cell's value on it, white on the dark cells."""
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            if values[r, c]:
                ax.text(c, r, fmt.format(values[r, c]), ha="center", va="center", fontsize=7.5,
                        color="white" if dark[r, c] else "#1b2a3a")


def _grid_axes(ax, title: str, rows: Sequence[str], cols: Sequence[str], *, col_width: int,
               row_width: int, rotation: int) -> None:
    """Title, shortened row/column labels and no frame: the look every heatmap here shares."""
    ax.set_title(title)
    ax.set_xticks(range(len(cols)), [short(c, col_width) for c in cols], rotation=rotation, ha="right")
    ax.set_yticks(range(len(rows)), [short(r, row_width) for r in rows])
    ax.tick_params(length=0)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)


def grid_heatmap(rows: Sequence[str], cols: Sequence[str], values: np.ndarray, title: str) -> str:
    """One heatmap of counts (e.g. picks per category for each selection)."""
    with _rc():
        fig = _figure(min(15.0, 2.8 + 0.55 * len(cols)), 1.6 + 0.28 * len(rows))
        ax = fig.add_subplot()
        ax.imshow(values, cmap="Blues", aspect="auto", vmin=0, vmax=max(float(values.max()), 1e-9))
        _label_cells(ax, values, values > 0.6 * values.max())
        _grid_axes(ax, title, rows, cols, col_width=22, row_width=30, rotation=35)
        return to_svg(fig)


def coverage_bars(names: Sequence[str], metrics: Sequence[tuple[str, list, list, list]]) -> str:
    """Per selection: covered by the selection vs the mean random draw, available as a tick."""
    with _rc():
        fig = _figure(min(14.0, 3.0 + 0.55 * len(names) * len(metrics)), 3.4)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        x = np.arange(len(names))
        for ax, (title, sel, rnd, avail) in zip(axes, metrics):
            sel_v = np.array([np.nan if v is None else v for v in sel], float)
            rnd_v = np.array([np.nan if v is None else v for v in rnd], float)
            ax.bar(x - 0.2, sel_v, 0.4, color=PALETTE[0], label="selection")
            ax.bar(x + 0.2, rnd_v, 0.4, color="#b8c4d6", label="random draws (mean)")
            for i, a in enumerate(avail):
                if a is not None:
                    ax.plot([i - 0.45, i + 0.45], [a, a], color="#333", lw=1, ls="--",
                            label="available" if i == 0 else None)
            ax.set_title(title)
            ax.set_xticks(x, [short(n, 20) for n in names], rotation=40, ha="right")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=3, fontsize=8)
        return to_svg(fig)


def grouped_bars(groups: Sequence[str], series: Sequence[tuple[str, list]], *, title: str,
                 ylabel: str, errors: Sequence[list | None] | None = None, percent: bool = True,
                 horizontal: bool = False, notes: Sequence[str] | None = None) -> str:
    """Bars of several series side by side within each group (e.g. runs within a category).

    `errors[k][g]` is (low, high) for series k, group g, or None. None values are drawn as
    an empty slot marked 'n/a'."""
    n_series = max(1, len(series))
    width = 0.8 / n_series
    if horizontal:
        fig_w, fig_h = 8.6, 1.0 + 0.22 * len(groups) * n_series + 0.3
    else:
        fig_w, fig_h = min(15.0, 2.5 + 0.22 * len(groups) * n_series + 0.35 * len(groups)), 4.0
    with _rc():
        fig = _figure(fig_w, fig_h)
        ax = fig.add_subplot()
        pos = np.arange(len(groups))
        for k, (name, values) in enumerate(series):
            vals = np.array([np.nan if v is None else v for v in values], float)
            at = pos - 0.4 + width * (k + 0.5)
            err = None
            if errors and errors[k] is not None:
                lo = [np.nan if e is None or v is None else v - e[0] for v, e in zip(values, errors[k])]
                hi = [np.nan if e is None or v is None else e[1] - v for v, e in zip(values, errors[k])]
                err = np.array([lo, hi], float)
            kwargs = dict(color=color(k), label=short(name, 40), error_kw={"elinewidth": 0.9, "capsize": 2})
            if horizontal:
                ax.barh(at, np.nan_to_num(vals), width * 0.92, xerr=err, **kwargs)
            else:
                ax.bar(at, np.nan_to_num(vals), width * 0.92, yerr=err, **kwargs)
            ends = vals if err is None else np.where(np.isnan(err[1]), vals, vals + err[1])
            for a, v, end in zip(at, vals, ends):
                if horizontal and not np.isnan(v) and (v > 0 or len(groups) <= 8):
                    ax.text(end + 0.01 if percent else end, a, f"{v:.0%}" if percent else f"{v:.3g}",
                            va="center", fontsize=7, color="#444")
                if np.isnan(v):
                    if horizontal:
                        ax.text(0.005, a, "n/a", va="center", fontsize=6.5, color="#888")
                    else:
                        ax.text(a, 0.005, "n/a", ha="center", va="bottom", fontsize=6.5, color="#888",
                                rotation=90)
        labels = [short(g, 30) for g in groups]
        if horizontal:
            ax.set_yticks(pos, labels)
            ax.invert_yaxis()
            ax.set_xlabel(ylabel)
            if percent:
                ax.set_xlim(0, 1.0)
                ax.xaxis.set_major_formatter(_percent())
        else:
            ax.set_xticks(pos, labels, rotation=35 if len(groups) > 4 else 0,
                          ha="right" if len(groups) > 4 else "center")
            ax.set_ylabel(ylabel)
            if percent:
                ax.set_ylim(0, 1.0)
                ax.yaxis.set_major_formatter(_percent())
        ax.set_title(title, loc="left")
        ax.grid(axis="x" if horizontal else "y", color="#e5e7eb", lw=0.6)
        ax.set_axisbelow(True)
        if len(series) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        return to_svg(fig)


def forest(panels: Sequence[tuple[str, list[tuple[str, float, float | None, float | None, int]]]]) -> str:
    """Change after vs before with its 95 % CI, per scope (overall first), one panel per metric.

    Each row: (scope, delta, ci_low, ci_high, n)."""
    rows_max = max((len(rows) for _, rows in panels), default=1)
    with _rc():
        fig = _figure(min(14.0, 4.4 * len(panels) + 1.6), 1.1 + 0.26 * rows_max)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, rows) in zip(axes, panels):
            y = np.arange(len(rows))
            for i, (scope, d, lo, hi, n) in enumerate(rows):
                c = PALETTE[3] if d < 0 else PALETTE[0] if d > 0 else "#666"
                if lo is not None and hi is not None:
                    ax.plot([lo * 100, hi * 100], [i, i], color=c, lw=1.4)
                ax.plot([d * 100], [i], "o", color=c, ms=5 if scope == "overall" else 4)
            ax.axvline(0, color="#333", lw=0.8)
            ax.set_yticks(y, [f"{short(s, 30)}  (n={n})" for s, *_, n in rows])
            ax.set_ylim(rows_max - 0.5, -0.5)  # rows start at the top in every panel
            ax.set_xlabel("points, after − before (95 % CI)")
            ax.set_title(title, loc="left")
            ax.grid(axis="x", color="#e5e7eb", lw=0.6)
            ax.set_axisbelow(True)
        return to_svg(fig)


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


def score_panels(scores: np.ndarray, lengths: np.ndarray, flagged: np.ndarray, *, score_name: str) -> str:
    """An audit's scores: their distribution (the flagged rows' part marked), and the score
    against response length (what confounds it)."""
    with _rc():
        fig = _figure(9.0, 3.0)
        left, right = fig.subplots(1, 2)
        bins = np.histogram_bin_edges(scores, bins=40)
        left.hist(scores[~flagged], bins=bins, color="#b8c4d6", label="kept")
        if flagged.any():
            left.hist(scores[flagged], bins=bins, color=PALETTE[3], label="flagged")
            left.legend(fontsize=8)
        left.set_title(f"{score_name} over the rows")
        left.set_xlabel(score_name)
        left.set_ylabel("rows")
        # Every point is an SVG element: past SCATTER_POINTS kept rows, a fixed random sample of
        # them is drawn (the flagged rows always), so a 7,000-row audit is not a 1 MB page.
        kept = np.flatnonzero(~flagged)
        n_kept = len(kept)
        if n_kept > SCATTER_POINTS:
            kept = np.sort(np.random.default_rng(0).choice(kept, SCATTER_POINTS, replace=False))
        right.scatter(lengths[kept], scores[kept], s=4, alpha=0.35, color=PALETTE[0], linewidths=0)
        if flagged.any():
            right.scatter(lengths[flagged], scores[flagged], s=6, color=PALETTE[3], linewidths=0)
        shown = "" if len(kept) == n_kept else f" ({len(kept):,} of {n_kept:,} kept rows drawn)"
        right.set_title(f"{score_name} vs response length{shown}", fontsize=9)
        right.set_xlabel("response tokens (as trained on)")
        right.set_ylabel(score_name)
        return to_svg(fig)
