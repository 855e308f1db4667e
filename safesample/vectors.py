"""Embeddings in Arrow: the one place that reads, checks and writes vectors.

- `embedding_matrix(table)`: the `embedding` column as a float32 (n, d) matrix, validated: the
  column exists and holds lists of floats, no row is null, every row has the same dimension
  (and the dimension `embed` recorded in the field metadata, when there is one), d >= 2, and
  every value is finite. With `unit=True` the rows are scaled to length 1, and an all-zero row
  (no direction, so no cosine to anything) is a DataError naming its id.
- `Vectors`: the same checks, but unit rows gathered on demand from zero-copy views of the
  Arrow chunks, for `select`, which touches a budget of rows of a pool of millions.
- `unit_rows(matrix)`: rows scaled to length 1 (no copy when they already are).
- `embedding_field` / `embedding_column` / `put_embeddings`: the column written back with its
  field metadata (model, backend, text, dimension).
- `field_info(table)` and `embedding_model(table)`: the model that made the column, from the
  field metadata, else from the latest `embed` stage in the provenance.

Every vector from `embed` is L2-normalised, so a dot product of unit rows is a cosine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from safesample.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

COLUMN = "embedding"
# Field metadata on the `embedding` column: which model and text made it (so `cluster` can embed
# a reference table the same way and refuse to compare vectors of different models), and the
# model's dimension (so a column of another width is refused, not silently compared).
META_MODEL = b"safesample.model"
META_BACKEND = b"safesample.backend"
META_TEXT = b"safesample.text"
META_DIM = b"safesample.dim"
_META = (META_MODEL, META_BACKEND, META_TEXT, META_DIM)
_REEMBED = "re-run `safesample embed` on the whole table"


# --------------------------------------------------------------------------------------------
# column -> matrix, validated


def column_dimension(table: "pa.Table", column: str = COLUMN, name: str = "the input",
                     command: str = "cluster") -> int:
    """The dimension of every vector of `column`; refuses a column that is missing, not a list
    of floats, with nulls, of mixed dimensions, of a dimension other than the one recorded in
    its field metadata, or narrower than 2 (a 1-d unit vector is +1 or -1: no direction)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from safesample.schema import require

    require(table, [column], command)
    col = table.column(column)
    kind = col.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
            or not pa.types.is_floating(kind.value_type):
        raise DataError(f"column {column!r} of {name} has type {kind}, not a list of floats",
                        f"{column!r} comes from `safesample embed`")
    if col.null_count:
        raise DataError(f"{name} has {col.null_count} rows without an embedding (first: id "
                        f"{_first_id(table, pc.is_null(col))!r})", _REEMBED)
    n = len(col)
    if pa.types.is_fixed_size_list(kind):
        dim = kind.list_size
    else:
        lengths = pc.list_value_length(col)
        lo, hi = (pc.min(lengths).as_py(), pc.max(lengths).as_py()) if n else (0, 0)
        if lo != hi:
            raise DataError(f"{name} has embeddings of mixed dimensions ({lo} to {hi})",
                            "embed every row with the same model: " + _REEMBED)
        dim = int(lo or 0)
    if n and dim == 0:
        raise DataError(f"{name} has empty embedding vectors", _REEMBED)
    info = field_info(table, column)
    expected = info.get("dim")
    if n and expected and expected.isdigit() and int(expected) != dim:
        model = info.get("model") or "its model"
        raise DataError(f"{name} has {dim}-d embeddings, but the column says {model} made them, "
                        f"which gives {expected}-d vectors",
                        f"the column was changed after `safesample embed`; {_REEMBED}")
    if n and dim < 2:
        raise DataError(f"{name} has {dim}-d embeddings: a vector of one value has no direction to "
                        "compare", f"embed the text with a sentence-embedding model: {_REEMBED}")
    return dim


def embedding_matrix(table: "pa.Table", column: str = COLUMN, name: str = "the input",
                     command: str = "cluster", unit: bool = False) -> np.ndarray:
    """The embeddings as a float32 (n, d) array (zero-copy when the column allows), validated by
    `column_dimension` and for finite values; `unit=True` scales rows to length 1 and refuses
    all-zero rows."""
    import pyarrow as pa

    dim = column_dimension(table, column, name, command)
    col = table.column(column)
    n = len(col)
    if col.num_chunks == 1 and col.type.value_type == pa.float32():
        matrix = _chunk_matrix(col.chunk(0), dim)  # zero-copy
    else:  # one copy, chunk by chunk (no combined Arrow array on the way)
        matrix = np.empty((n, dim), np.float32)
        lo = 0
        for chunk in col.chunks:
            matrix[lo:lo + len(chunk)] = _chunk_matrix(chunk, dim)
            lo += len(chunk)
    # A row sum is finite only if every value is (no n x d boolean temporary at 1M rows).
    finite = np.isfinite(matrix.sum(axis=1, dtype=np.float64))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(f"{name} has {len(bad)} embeddings with NaN or infinite values "
                        f"(first: id {_id_at(table, int(bad[0]))!r})",
                        "re-run `safesample embed` (with --no-cache if they came from the cache)")
    return unit_rows(matrix, name=name, ids=_ids(table)) if unit else matrix


def unit_rows(matrix: np.ndarray, name: str = "the embeddings", ids: "pa.ChunkedArray | None" = None,
              rows: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to length 1, float32; no copy when they already are.

    An all-zero row has no direction (its cosine to everything is 0, so it would get a category
    with score 0.0 and sit in every cluster alike): a DataError naming the row's id (`ids`, at
    table row `rows[i]` when the matrix holds a subset)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise DataError("embeddings must be a matrix of vectors", "re-run `safesample embed`")
    if not len(matrix):
        return matrix
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    if not np.isfinite(norms).all():  # a NaN or inf anywhere in a row shows in its norm
        raise DataError(f"{name} hold NaN or infinite values", "re-run `safesample embed`")
    zero = norms == 0
    if zero.any():
        first = int(np.flatnonzero(zero)[0])
        row = int(rows[first]) if rows is not None else first
        where = f"id {ids[row].as_py()!r}" if ids is not None else f"row {row}"
        raise DataError(f"{name} has {int(zero.sum())} all-zero embeddings (first: {where}); a zero "
                        "vector has no direction, so it has no cosine similarity to anything",
                        "drop those rows, or embed their text again (an empty text, or a model "
                        "that failed, gives a zero vector): " + _REEMBED)
    if np.abs(norms - 1).max() < 1e-3:
        return matrix
    return matrix / norms[:, None]


class Vectors:
    """Unit embedding vectors of a table's rows, gathered on demand from zero-copy views of the
    Arrow chunks: `v[pos]` one vector, `v[lo:hi]` or `v[array]` a matrix. The column is checked
    up front (`column_dimension`); NaN and all-zero rows are refused as they are gathered.

    `positions` (optional) maps the caller's positions to table rows, so a selection over a
    re-ordered candidate list never copies the whole (n, d) column.
    """

    def __init__(self, table: "pa.Table", column: str = COLUMN, positions: np.ndarray | None = None,
                 name: str = "the input", command: str = "select"):
        self.name = name
        self.dim = column_dimension(table, column, name, command)
        self.ids = _ids(table)
        col = table.column(column)
        self.views = [_chunk_matrix(chunk, self.dim) for chunk in col.chunks if len(chunk)]
        self.offsets = np.cumsum([0] + [len(v) for v in self.views])
        self.positions = positions
        self.length = len(positions) if positions is not None else int(self.offsets[-1])
        self.dense: np.ndarray | None = None

    def __len__(self) -> int:
        return self.length

    def materialize(self) -> None:
        """Gather every vector once, in position order: later slices are views. Worth it when a
        strategy scans most rows (prototype, similarity, diverse with many picks)."""
        if self.dense is None:
            self.dense = self[0:self.length]

    def _rows(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            key = np.arange(*key.indices(self.length))
        key = np.asarray(key, dtype=np.int64)
        return self.positions[key] if self.positions is not None else key

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.dense is not None:
            return self.dense[key]
        if isinstance(key, (int, np.integer)):
            row = int(self.positions[key]) if self.positions is not None else int(key)
            k = int(np.searchsorted(self.offsets, row, side="right")) - 1
            return self._unit(self.views[k][row - self.offsets[k]][None, :], np.array([row]))[0]
        rows = self._rows(key)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if len(self.views) == 1:
            out[:] = self.views[0][rows]
        elif len(rows):
            # Only the chunks that hold a wanted row (a Parquet file read without decoding has a
            # chunk per page: ~1,500 for 1M x 384).
            chunk_of = np.searchsorted(self.offsets[1:], rows, side="right")
            order = np.argsort(chunk_of, kind="stable")
            grouped = chunk_of[order]
            bounds = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1, len(order)].tolist()
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                sel = order[lo:hi]
                k = int(grouped[lo])
                out[sel] = self.views[k][rows[sel] - self.offsets[k]]
        return self._unit(out, rows)

    def _unit(self, matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return unit_rows(matrix, name=self.name, ids=self.ids, rows=rows)


def _chunk_matrix(chunk: "pa.Array", dim: int) -> np.ndarray:
    values = chunk.flatten().to_numpy(zero_copy_only=False)
    if len(values) != len(chunk) * dim:
        raise DataError("the input has embeddings of mixed dimensions", "re-run `safesample embed`")
    return values.reshape(len(chunk), dim)


def _ids(table: "pa.Table") -> "pa.ChunkedArray | None":
    return table.column("id") if "id" in table.column_names else None


def _id_at(table: "pa.Table", row: int) -> Any:
    ids = _ids(table)
    return ids[row].as_py() if ids is not None else f"row {row}"


def _first_id(table: "pa.Table", mask: Any) -> Any:
    if "id" not in table.column_names:
        return "?"
    return table.filter(mask).column("id")[0].as_py()


# --------------------------------------------------------------------------------------------
# matrix -> column, with its field metadata


def embedding_field(dim: int, model: str, backend: str, text: str, column: str = COLUMN) -> "pa.Field":
    """The field of an embedding column: fixed-size float32 lists, and which model (backend,
    text as `TextSpec.describe()`) made them and how wide its vectors are."""
    import pyarrow as pa

    return pa.field(column, pa.list_(pa.float32(), dim),
                    metadata={META_MODEL: model.encode(), META_BACKEND: backend.encode(),
                              META_TEXT: text.encode(), META_DIM: str(dim).encode()})


def numpy_to_arrow(values: np.ndarray) -> "pa.Array":
    """A 1-d numeric numpy array as an Arrow array, zero-copy; unlike `pa.array` this does not
    import pandas (0.3-0.5 s, a large part of a fully cached rerun)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def embedding_column(vectors: np.ndarray) -> "pa.FixedSizeListArray":
    """An (n, d) matrix as a fixed-size float32 list array (zero-copy for float32 input)."""
    import pyarrow as pa

    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = numpy_to_arrow(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def put_embeddings(table: "pa.Table", vectors: np.ndarray, field: "pa.Field") -> "pa.Table":
    """The table with the embedding column `field.name` added (or replaced in place)."""
    from safesample.tables import put_column

    return put_column(table, field.name, embedding_column(vectors), field)


# --------------------------------------------------------------------------------------------
# which model made them


def field_info(table: "pa.Table", column: str = COLUMN) -> dict[str, str]:
    """The model, backend, text and dim recorded on an embedding column (empty when unknown)."""
    if column not in table.column_names:
        return {}
    meta = table.schema.field(column).metadata or {}
    return {key.decode().removeprefix("safesample."): value.decode() for key, value in meta.items()
            if key in _META}


def provenance_model(history: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(model, backend) of the latest `embed` stage in a table's provenance."""
    for entry in reversed(history):
        if entry.get("command") == "embed":
            models = entry.get("models") or {}
            model = models.get("embedding") or models.get("model") or next(iter(models.values()), None)
            args = entry.get("args") or {}
            return model or args.get("model"), args.get("backend")
    return None, None


def embedding_model(table: "pa.Table", column: str = COLUMN) -> tuple[str | None, str | None]:
    """(model, backend) that made the table's embeddings: the column's field metadata, else the
    latest `embed` stage of its provenance; (None, None) when neither says."""
    from safesample.tables import get_provenance

    info = field_info(table, column)
    if info.get("model"):
        return info["model"], info.get("backend")
    return provenance_model(get_provenance(table))
