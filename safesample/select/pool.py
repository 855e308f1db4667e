"""The candidate pool: validate the columns, apply the row exclusions, group the candidates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from safesample.errors import DataError
from safesample.reporter import SILENT, Reporter
from safesample.select.options import ALL_BEHAVIORS, EMBEDDING_STRATEGIES, NO_CATEGORY, SAFE_BEHAVIORS
from safesample.vectors import Vectors

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.select.exclusions import Exclusions


class Texts:
    """A string column read row by row without converting it all to Python."""

    def __init__(self, column: "pa.ChunkedArray", positions: np.ndarray | None = None):
        self.chunks = [c for c in column.chunks if len(c)]
        self.offsets = np.cumsum([0] + [len(c) for c in self.chunks])
        self.positions = positions

    def __getitem__(self, pos: int) -> str | None:
        row = int(self.positions[pos]) if self.positions is not None else int(pos)
        k = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.chunks[k][row - self.offsets[k]].as_py()


@dataclass
class Pool:
    """The candidate rows, sorted by (behavior, category) so each group is a contiguous slice."""

    rows: np.ndarray  # pool row index of each position
    beh: np.ndarray  # behavior code per position
    cat: np.ndarray  # category code per position
    behaviors: list[str]
    categories: list[str]
    emb: Vectors | None  # unit embeddings per position, gathered on demand
    texts: Texts | None  # the instruction (or prompt) per position
    cluster: np.ndarray | None  # cluster id per position (-1 = none)
    cluster_dist: np.ndarray | None
    cat_score: np.ndarray | None
    n_clusters: int
    key: np.ndarray = field(default=None)  # behavior * #categories + category, ascending

    def __post_init__(self) -> None:
        self.key = self.beh * len(self.categories) + self.cat

    def __len__(self) -> int:
        return len(self.rows)

    def slice(self, b: int, c: int | None = None) -> tuple[int, int]:
        """Positions [lo, hi) of behavior b (and category c)."""
        if c is None:
            lo_key, hi_key = b * len(self.categories), (b + 1) * len(self.categories)
        else:
            lo_key = b * len(self.categories) + c
            hi_key = lo_key + 1
        return int(np.searchsorted(self.key, lo_key)), int(np.searchsorted(self.key, hi_key))


@dataclass
class Plan:
    pool: Pool
    weights: list[float]  # per behavior code
    excluded: dict[str, int]
    pool_rows: int
    pool_categories: int
    pool_behaviors: int | None
    pool_clusters: int | None
    notes: list[str]
    has_behavior: bool
    has_category: bool


def plan_selection(table: "pa.Table", strategy: str, *, behavior: dict[str, float] | None = None,
                   category_col: str = "category", dedup: float | None = 0.95,
                   keep_harmful: bool = False, exclusions: Exclusions | None = None,
                   reporter: Reporter = SILENT) -> Plan:
    """Validate the columns, apply the row exclusions and group the candidates (no picking)."""
    import pyarrow.compute as pc

    from safesample.schema import kind_of, require

    n = table.num_rows
    names = table.column_names
    notes: list[str] = []
    if "id" in names:
        check_unique_ids(table)
    if strategy in EMBEDDING_STRATEGIES and "embedding" not in names:
        raise DataError(f"`--strategy {strategy}` needs an 'embedding' column, which the input lacks",
                        "run `safesample embed` (and `safesample cluster` for categories and clusters) "
                        "first, or use --strategy random or stratified")
    has_emb = "embedding" in names
    if has_emb:
        require(table, ["embedding"], "select")
        missing = table.column("embedding").null_count
        if missing and strategy in EMBEDDING_STRATEGIES:
            raise DataError(f"{missing} of {n} rows have no 'embedding'",
                            "run `safesample embed` on the whole pool (a mixed table has none for "
                            "benign rows), or use --strategy random or stratified")
        if missing:
            reporter.warn(f"{missing} rows have no embedding: near-duplicate and eval-similarity checks are off")
            has_emb = False

    # behavior
    has_behavior = "behavior" in names and table.column("behavior").null_count < n
    if behavior is not None:
        require(table, ["behavior"], "select")
        if not has_behavior:
            raise DataError("--behavior needs behavior labels, but the 'behavior' column is empty",
                            "run `safesample label` on the pool first")
    beh_values = _strings(table, "behavior") if has_behavior else None
    if strategy == "diverse" and behavior is None:
        if has_behavior:
            present = set(pc.unique(beh_values).to_pylist())
            safe = [b for b in SAFE_BEHAVIORS if b in present]
            if not safe:
                raise DataError("no row has a safe behavior (refusal or explanation) to pick from",
                                "pass --behavior with the behaviors you want, e.g. --behavior "
                                + ",".join(sorted(p for p in present if p)))
            behavior = {b: 1 / len(safe) for b in safe}
            notes.append("behaviors " + " + ".join(safe) + " in equal shares (the default; set --behavior)")
        else:
            reporter.warn("no behavior labels (column 'behavior'): all rows count as one behavior; "
                 "run `safesample label` for behavior-aware selection")
    keep = np.ones(n, dtype=bool)
    excluded: dict[str, int] = {}

    # harmful responses never belong in a safety set
    if "harmful_response" in names:
        if kind_of(table.schema.field("harmful_response").type) not in ("bool", "null"):
            require(table, ["harmful_response"], "select")
        if not keep_harmful:
            harmful = _bools(table, "harmful_response")
            excluded["harmful_response"] = int(harmful.sum())
            keep &= ~harmful
            notes.append(f"harmful answers dropped: {int(harmful.sum())} of {n}" + _judged_by(table))
            unknown = table.column("harmful_response").null_count
            if unknown:
                reporter.warn(f"{unknown} of {n} rows have no harmful_response label (their answers' harm is "
                              "unknown) and stay candidates; `safesample label --judge harm` decides it")
    elif not keep_harmful:
        reporter.warn("no 'harmful_response' labels: pairs with harmful responses cannot be excluded; "
             "run `safesample label` first")

    # behavior filter
    beh_names: list[str]
    if behavior is not None:
        beh_names = list(behavior)
        codes = _codes(beh_values, beh_names)
        outside = codes < 0
        excluded["other_behavior"] = int((outside & keep).sum())
        keep &= ~outside
        beh_code = np.maximum(codes, 0)
        weights = [behavior[b] for b in beh_names]
    else:
        beh_names = [ALL_BEHAVIORS]
        beh_code = np.zeros(n, dtype=np.int64)
        weights = [1.0]

    # text: exact duplicates and exact eval matches are checked on candidates as they are picked
    text_col = next((c for c in ("instruction", "prompt") if c in names), None)
    if exclusions is not None and not has_emb and exclusions.texts:
        reporter.warn("the pool has no embeddings: --exclude drops exact text matches only; run "
             "`safesample embed` to drop near matches too")
    if text_col is None and (dedup is not None or (exclusions is not None and exclusions.texts)):
        reporter.warn("no 'instruction' or 'prompt' column: exact duplicates and exact eval matches are not checked")

    # categories: a code per row, smallest category (among candidates) first
    has_category = category_col in names and table.column(category_col).null_count < n
    uses_category = strategy in ("stratified", "prototype", "similarity", "diverse")
    if category_col in names and has_category and kind_of(table.schema.field(category_col).type) != "string":
        raise DataError(f"column {category_col!r} has type {table.schema.field(category_col).type}, "
                        "but categories must be strings",
                        "pick a string column with --category-col, or run `safesample cluster`")
    if has_category:
        cat_values = pc.fill_null(_strings(table, category_col), NO_CATEGORY)
        dictionary = pc.dictionary_encode(cat_values)
        raw_codes = dictionary.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        labels = dictionary.dictionary.to_pylist()
        sizes = np.bincount(raw_codes[keep], minlength=len(labels))
        order = sorted(range(len(labels)), key=lambda i: (sizes[i], labels[i]))
        remap = np.empty(len(labels), dtype=np.int64)
        remap[order] = np.arange(len(labels))
        cat_code = remap[raw_codes]
        categories = [labels[i] for i in order]
        pool_categories = len(labels)
    else:
        if uses_category:
            reporter.warn(f"no harm categories (column {category_col!r}): all rows count as one category; "
                 "run `safesample cluster` (or pass --category-col)")
        cat_code = np.zeros(n, dtype=np.int64)
        categories = [NO_CATEGORY]
        pool_categories = 1 if n else 0

    # group the candidates: by behavior, then category, then cluster; table order within
    clusters = _ints(table, "cluster") if "cluster" in names else None
    candidates = np.flatnonzero(keep)
    key = beh_code[candidates] * len(categories) + cat_code[candidates]
    minor = clusters[candidates] if clusters is not None and len(candidates) else None
    if minor is not None and int(minor.max()) < 1 << 31:
        key = key * (int(minor.max()) + 2) + (minor + 1)  # one sort key; clusters are >= -1
    elif minor is not None:
        key = np.lexsort((minor, key))
        key = np.argsort(key)  # rank in (group, cluster) order
    rows = candidates[np.argsort(key, kind="stable")]
    pool_clusters = None
    if clusters is not None:
        pool_clusters = n_distinct(clusters)
    elif strategy == "diverse" and has_emb:
        notes.append("no 'cluster' column: farthest-first on the embeddings within each quota")
    emb = Vectors(table, positions=rows) if has_emb else None
    if emb is not None and exclusions is not None and exclusions.embeddings is not None \
            and len(exclusions.embeddings) and exclusions.embeddings.shape[1] != emb.dim:
        raise DataError(f"the --exclude embeddings have {exclusions.embeddings.shape[1]} dimensions, "
                        f"the pool's {emb.dim}",
                        "embed both with the same model (`safesample embed --model ...`)")
    pool = Pool(
        rows=rows, beh=beh_code[rows], cat=cat_code[rows], behaviors=beh_names, categories=categories,
        emb=emb, texts=Texts(table.column(text_col), rows) if text_col else None,
        cluster=clusters[rows] if clusters is not None else None,
        cluster_dist=_floats(table, "cluster_distance")[rows] if "cluster_distance" in names else None,
        cat_score=_floats(table, "category_score")[rows] if "category_score" in names else None,
        n_clusters=pool_clusters or 0)
    pool_behaviors = len(pc.unique(beh_values).drop_null()) if has_behavior else None
    return Plan(pool, weights, excluded, n, pool_categories, pool_behaviors, pool_clusters, notes,
                has_behavior, has_category)


def check_unique_ids(table: "pa.Table") -> None:
    """A selection never holds two rows with the same id: refuse a pool that has them (ids are
    how later stages and the report name a row)."""
    import pyarrow.compute as pc

    ids = table.column("id")
    hint = ("give every row its own id (drop repeated rows, or drop the 'id' column and let "
            "`safesample` assign content-hash ids) before selecting")
    if ids.null_count:
        raise DataError(f"{ids.null_count} rows of the pool have no id", hint)
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return
    counts = pc.value_counts(ids)
    repeated = [v for v, c in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()) if c > 1]
    raise DataError(f"the pool has {len(repeated)} ids that occur more than once (first: {repeated[0]!r}), "
                    "so a selection could hold two rows with the same id", hint)


# ---- column helpers (vectorised, null-safe)


def _strings(table: "pa.Table", name: str) -> "pa.Array":
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.cast(pa.string()) if not pa.types.is_string(col.type) else col


def _judged_by(table: "pa.Table") -> str:
    """' (labelled by <label_backend>)': the judge the label stage names, when it does."""
    if "label_backend" not in table.column_names:
        return ""
    import pyarrow.compute as pc

    backends = [b for b in pc.unique(table.column("label_backend")).to_pylist() if b]
    return f" (labelled by {', '.join(sorted(backends))})" if backends else ""


def _bools(table: "pa.Table", name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name)
    if pa.types.is_null(col.type):
        return np.zeros(table.num_rows, dtype=bool)
    return pc.fill_null(col, False).to_numpy().astype(bool)


def _ints(table: "pa.Table", name: str) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.fill_null(table.column(name), -1).to_numpy().astype(np.int64)


def _floats(table: "pa.Table", name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(table.column(name).cast(pa.float64()), np.nan).to_numpy()


def n_distinct(values: np.ndarray) -> int:
    """How many distinct non-negative ids (negative = none)."""
    values = values[values >= 0]
    if not len(values):
        return 0
    if values.max() < 1 << 24:
        return int(np.count_nonzero(np.bincount(values)))
    return int(len(np.unique(values)))


def _codes(values: "pa.Array", names: list[str]) -> np.ndarray:
    """Index of each value in `names`, -1 when absent or null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pc.index_in(values, value_set=pa.array(names, pa.string())), -1) \
        .to_numpy().astype(np.int64)
