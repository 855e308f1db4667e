"""safesample.vectors: embeddings read from Arrow (validated), unit rows, written back with their
field metadata, and the model that made them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from safesample import vectors as V
from safesample.errors import DataError
from safesample.tables import with_provenance
from vector_fixtures import emb_table, planted, unit


def embedded(matrix: np.ndarray, model_dim: int, model: str = "sentence-transformers/all-MiniLM-L6-v2") -> pa.Table:
    """A table whose embedding column says `model` (of `model_dim` dims) made it."""
    table = pa.table({"id": [f"r{i}" for i in range(len(matrix))]})
    field = V.embedding_field(model_dim, model, "onnx", '{"text": "instruction"}')
    field = pa.field("embedding", pa.list_(pa.float32(), matrix.shape[1]), metadata=field.metadata)
    return table.append_column(field, V.embedding_column(matrix))


def test_embedding_matrix_reads_fixed_and_variable_lists_without_changing_values():
    vectors, _, _ = planted(n_per=3)
    fixed = V.embedding_matrix(emb_table(vectors))
    np.testing.assert_array_equal(fixed, vectors)
    ragged_type = pa.table({"embedding": pa.array(vectors.astype(np.float64).tolist(), pa.list_(pa.float64()))})
    np.testing.assert_allclose(V.embedding_matrix(ragged_type), vectors, rtol=1e-6)
    sliced = emb_table(vectors).slice(2, 5)  # offsets into the child array are honoured
    np.testing.assert_array_equal(V.embedding_matrix(sliced), vectors[2:7])


@pytest.mark.parametrize("case, message", [
    ("missing", "needs a column 'embedding'"),
    ("mixed", "mixed dimensions"),
    ("nan", "NaN"),
    ("null", "without an embedding"),
])
def test_bad_embeddings_are_data_errors_with_hints(case: str, message: str):
    tables = {
        "missing": pa.table({"id": ["a"], "instruction": ["x"]}),
        "mixed": pa.table({"id": ["a", "b"], "embedding": [[0.1, 0.2], [0.1, 0.2, 0.3]]}),
        "nan": pa.table({"id": ["a", "b"], "embedding": [[0.1, 0.2], [float("nan"), 0.3]]}),
        "null": pa.table({"id": ["a", "b"], "embedding": [[0.1, 0.2], None]}),
    }
    with pytest.raises(DataError, match=message) as exc:
        V.embedding_matrix(tables[case])
    assert "safesample embed" in exc.value.hint
    if case == "nan":
        assert "'b'" in exc.value.message



def test_pool_embedding_model_comes_from_the_embed_stage_provenance():
    history = [{"command": "label", "models": {"judge": "x"}},
               {"command": "embed", "models": {"embedding": "all-MiniLM-L6-v2"}, "args": {"backend": "onnx"}},
               {"command": "cluster", "models": {}}]
    assert V.provenance_model(history) == ("all-MiniLM-L6-v2", "onnx")
    assert V.provenance_model([]) == (None, None)


def test_embeddings_from_several_chunks_and_variable_lists_are_gathered_right():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 4)).astype(np.float32)
    chunks = [pa.array(emb[:10].tolist(), pa.list_(pa.float32())), pa.array(emb[10:].tolist(), pa.list_(pa.float32()))]
    table = pa.table({"embedding": pa.chunked_array(chunks)})
    rows = np.array([29, 3, 10, 9, 11])
    got = V.Vectors(table, positions=rows)[0:5]
    want = emb[rows] / np.linalg.norm(emb[rows], axis=1, keepdims=True)
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(V.Vectors(table)[12], emb[12] / np.linalg.norm(emb[12]), atol=1e-6)
    ragged = pa.table({"embedding": pa.array([[1.0, 0.0], [1.0, 0.0, 0.0]])})
    with pytest.raises(DataError, match="mixed dimensions"):
        V.Vectors(ragged)
    nan = pa.table({"embedding": pa.array([[np.nan, 1.0]])})
    with pytest.raises(DataError, match="NaN"):
        V.embedding_matrix(nan)


# ---- issue 18: wrong dimensions, all-zero vectors --------------------------------------------------


@pytest.mark.parametrize("dim", [10, 1])
def test_a_column_narrower_than_its_model_is_refused(dim: int):
    table = embedded(unit(np.random.default_rng(0).normal(size=(4, dim)) + 0.1), model_dim=384)
    for read in (lambda: V.embedding_matrix(table), lambda: V.Vectors(table)):
        with pytest.raises(DataError, match=f"{dim}-d embeddings.*384-d") as exc:
            read()
        assert "safesample embed" in exc.value.hint


def test_the_dimension_recorded_by_embed_passes_and_one_dimension_never_does():
    matrix = unit(np.random.default_rng(1).normal(size=(5, 6)))
    np.testing.assert_array_equal(V.embedding_matrix(embedded(matrix, model_dim=6)), matrix)
    assert V.Vectors(embedded(matrix, model_dim=6)).dim == 6
    one = pa.table({"id": ["a", "b"], "embedding": [[1.0], [-1.0]]})  # no metadata at all
    with pytest.raises(DataError, match="1-d embeddings") as exc:
        V.embedding_matrix(one)
    assert exc.value.hint


def test_all_zero_rows_have_no_direction_and_are_refused_by_id():
    matrix = unit(np.random.default_rng(2).normal(size=(4, 3)))
    matrix[2] = 0
    table = emb_table(matrix)
    assert V.embedding_matrix(table).shape == (4, 3)  # read as is: a zero row is a value
    with pytest.raises(DataError, match="all-zero") as exc:
        V.embedding_matrix(table, unit=True)
    assert "'r2'" in exc.value.message and exc.value.hint
    vectors = V.Vectors(table, positions=np.array([3, 2]))
    assert np.allclose(np.linalg.norm(vectors[0:1], axis=1), 1)
    with pytest.raises(DataError, match="all-zero.*'r2'"):
        vectors[1]
    with pytest.raises(DataError, match="all-zero"):
        V.unit_rows(np.zeros((1, 3), np.float32))


def test_unit_rows_scales_and_keeps_unit_input_without_a_copy():
    matrix = unit(np.random.default_rng(3).normal(size=(6, 5)))
    assert V.unit_rows(matrix) is matrix
    scaled = V.unit_rows(matrix * 3)
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=1), 1, rtol=1e-6)


# ---- writing the column, and the model that made it ------------------------------------------------


def test_put_embeddings_replaces_in_place_with_field_metadata():
    table = pa.table({"embedding": [1, 2], "id": ["a", "b"]})
    field = V.embedding_field(2, "m", "torch", '{"text": "prompt"}')
    out = V.put_embeddings(table, np.eye(2), field)
    assert out.column_names == ["embedding", "id"]
    assert V.field_info(out) == {"model": "m", "backend": "torch", "text": '{"text": "prompt"}', "dim": "2"}
    assert V.embedding_matrix(out).tolist() == [[1, 0], [0, 1]]


def test_embedding_model_prefers_the_column_metadata_then_the_provenance():
    matrix = np.eye(3, dtype=np.float32)
    plain = emb_table(matrix)
    assert V.embedding_model(plain) == (None, None)
    entry = {"command": "embed", "models": {"embedding": "from/provenance"}, "args": {"backend": "onnx"}}
    assert V.embedding_model(with_provenance(plain, entry)) == ("from/provenance", "onnx")
    assert V.embedding_model(with_provenance(embedded(matrix, 3, model="from/field"), entry)) == ("from/field", "onnx")
