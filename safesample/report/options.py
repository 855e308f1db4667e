"""The report's options (`safesample report`'s flags), shared by the sections that read them."""

from __future__ import annotations

from dataclasses import dataclass


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

