"""Small embedding tables with known structure, for the vector, cluster and select tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n_per: int = 40, k: int = 4, dim: int = 16, noise: float = 0.05, seed: int = 0):
    """Rows around k well-separated unit centres; returns (vectors, true labels, centres)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(k, dim)))
    labels = np.repeat(np.arange(k), n_per)
    return unit(centres[labels] + noise * rng.normal(size=(len(labels), dim))), labels, centres


def emb_table(vectors: np.ndarray, **columns) -> pa.Table:
    """An `id` + `embedding` table (plus `columns`) of the rows of `vectors`."""
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    data = {"id": [f"r{i}" for i in range(len(vectors))], **columns,
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
    return pa.table(data)


def vector_array(matrix: np.ndarray) -> pa.Array:
    """A fixed-size float32 list array of the rows of `matrix` (an `embedding` column)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
