"""`safesample cluster`: embedding validation, harm categories from a reference, k-means clusters,
the CLI's bad inputs, and a real `embed | cluster` pipe under pipefail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cli, no_output_left, shared_dataset, shell
from safesample import cluster
from safesample.errors import DataError, UsageError
from safesample.tables import get_provenance
from vector_fixtures import emb_table, planted, unit


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two labelings group rows identically (up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# --------------------------------------------------------------------------------------------
# categories


def test_categories_by_nearest_centroid_with_mean_similarity_scores():
    ref_vectors, ref_labels, centres = planted(n_per=10, k=3, dim=12, noise=0.3, seed=1)
    names = np.array(["crime", "hate", "self_harm"])
    reference = cluster.build_reference(ref_vectors, names[ref_labels].tolist())
    assert reference.labels == ["crime", "hate", "self_harm"] and reference.counts == [10, 10, 10]
    pool_vectors, truth, _ = planted(n_per=5, k=3, dim=12, noise=0.1, seed=1)
    table = emb_table(pool_vectors, category=pa.nulls(15))  # null-typed, as in safety_tuned_llamas
    out, report = cluster.assign_categories(table, pool_vectors, reference, threshold=2.0)
    assert out.column("category").to_pylist() == names[truth].tolist()
    assert report.assigned == 15 and report.kept == 0
    # category_score is the mean cosine to the category's reference rows (the paper's score).
    expected = [(ref_vectors[ref_labels == t] @ v).mean() for v, t in zip(pool_vectors, truth)]
    np.testing.assert_allclose(out.column("category_score").to_numpy(), expected, rtol=1e-5)
    assert out.column("categories").to_pylist() == [[c] for c in names[truth]]  # nothing passes 2.0
    assert out.schema.field("categories").type == pa.list_(pa.string())
    assert out.schema.field("category_score").type == pa.float32()


def test_multi_label_membership_above_threshold_best_first():
    reference = cluster.build_reference(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    row = unit(np.array([[0.8, 0.5, 0.1]]))  # scores 0.84, 0.52, 0.10
    out, _ = cluster.assign_categories(emb_table(row), row, reference, threshold=0.5)
    assert out.column("categories").to_pylist() == [["a", "b"]]
    out, _ = cluster.assign_categories(emb_table(row), row, reference, threshold=0.05)
    assert out.column("categories").to_pylist() == [["a", "b", "c"]]


def test_existing_categories_are_kept_and_blank_ones_filled():
    reference = cluster.build_reference(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    rows = unit(np.array([[1, 0.1, 0], [0, 1, 0.1], [0.1, 0, 1], [0, 0.1, 1]], dtype=np.float32))
    table = emb_table(rows, category=["c", "", None, "own_label"])
    out, report = cluster.assign_categories(table, rows, reference, threshold=0.5)
    assert out.column("category").to_pylist() == ["c", "b", "c", "own_label"]
    assert (report.kept, report.assigned) == (2, 2)
    scores = out.column("category_score").to_pylist()
    assert scores[0] == pytest.approx(rows[0, 2], abs=1e-6)  # the kept category's own score
    assert scores[3] is None  # a kept label the reference does not know has no score
    assert out.column("categories").to_pylist()[3] == ["own_label", "c"]


def test_reference_columns_and_empty_categories():
    ref = pa.table({"prompt": ["x", "y", "z"], "category_coarse": ["a", None, " "], "category": ["p", "q", "r"]})
    assert cluster.reference_column(ref, None) == "category_coarse"
    assert cluster.reference_column(ref, "category") == "category"
    with pytest.raises(DataError, match="no column 'harm'") as exc:
        cluster.reference_column(ref, "harm")
    assert "--reference-col" in exc.value.hint
    with pytest.raises(DataError, match="neither"):
        cluster.reference_column(pa.table({"prompt": ["x"]}), None)
    assert cluster.labelled_rows(ref, "category_coarse").num_rows == 1  # null and blank dropped
    with pytest.raises(DataError, match="is empty"):
        cluster.labelled_rows(ref.slice(1), "category_coarse")


# --------------------------------------------------------------------------------------------
# clusters


@pytest.mark.parametrize("algorithm", ["sklearn", "faiss"])
def test_kmeans_recovers_planted_clusters_deterministically(algorithm: str):
    vectors, truth, centres = planted(n_per=50, k=5, dim=24)
    labels, distance, size, report = cluster.cluster_vectors(vectors, None, 5, algorithm, seed=3)
    assert same_partition(labels, truth) and report.clusters == 5
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(size, np.bincount(labels)[labels])
    # Distance to the centroid: centroids sit next to the planted centres here.
    true_distance = np.linalg.norm(vectors - centres[truth], axis=1)
    np.testing.assert_allclose(distance, true_distance, atol=0.03)
    again = cluster.cluster_vectors(vectors, None, 5, algorithm, seed=3)
    np.testing.assert_array_equal(again[0], labels)
    np.testing.assert_array_equal(again[1], distance)


def test_within_groups_ids_are_unique_across_groups():
    vectors, truth, _ = planted(n_per=30, k=4, dim=16)
    groups = ["a" if t < 2 else "b" for t in truth]
    labels, _, size, report = cluster.cluster_vectors(vectors, groups, 2, "sklearn", seed=0)
    assert report.groups == {"a": 2, "b": 2} and report.clusters == 4
    for c in set(labels.tolist()):  # every cluster lies inside one group
        assert len({groups[i] for i in np.flatnonzero(labels == c)}) == 1
    assert same_partition(labels, truth)
    # A group smaller than k is capped (and reported), not an error.
    small = cluster.cluster_vectors(vectors[:5], ["x"] * 2 + ["y"] * 3, 3, "sklearn", seed=0)
    assert small[3].capped == ["x"] and small[3].clusters == 5


def test_k_larger_than_rows_and_bad_k_values():
    vectors, _, _ = planted(n_per=2, k=2)
    with pytest.raises(UsageError, match="more clusters than the input has rows"):
        cluster.cluster_vectors(vectors, None, 5, "sklearn", seed=0)
    for bad in ["0", "-3", "many", "2.5"]:
        with pytest.raises(UsageError):
            cluster.parse_k(bad)
    assert cluster.parse_k("auto") is None and cluster.parse_k("12") == 12
    assert [cluster.auto_k(n) for n in (1, 2, 50, 2483, 10**6)] == [1, 1, 5, 35, 100]


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 8), dup=st.booleans(), seed=st.integers(0, 3))
def test_cluster_output_is_consistent_for_any_input(n: int, k: int, dup: bool, seed: int):
    rng = np.random.default_rng(seed)
    vectors = unit(rng.normal(size=(n, 6)))
    if dup:  # many identical rows: k-means leaves clusters empty, ids must stay consecutive
        vectors[: n // 2 + 1] = vectors[0]
    k = min(k, n)
    labels, distance, size, report = cluster.cluster_vectors(vectors, None, k, "sklearn", seed=seed)
    assert set(labels.tolist()) == set(range(report.clusters)) and report.clusters <= k
    np.testing.assert_array_equal(size, np.bincount(labels)[labels])
    assert np.all((distance >= 0) & (distance <= 2 + 1e-5))
    np.testing.assert_array_equal(cluster.cluster_vectors(vectors, None, k, "sklearn", seed=seed)[0], labels)


# --------------------------------------------------------------------------------------------
# the CLI


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    vectors, truth, _ = planted(n_per=25, k=4, dim=16)
    path = tmp_path / "pool.parquet"
    pq.write_table(emb_table(vectors, category=[["a", "b"][t % 2] for t in truth],
                             instruction=[f"text {i}" for i in range(len(truth))]), path)
    return path


def test_cli_clusters_a_table_within_category(pool_file: Path, tmp_path: Path):
    out = tmp_path / "out.parquet"
    proc = cli("cluster", str(pool_file), "--within", "category", "--k", "2", "--seed", "1", "-o", str(out),
               env={"SAFESAMPLE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    source = pq.read_table(pool_file)
    assert table.column_names == source.column_names + ["cluster", "cluster_distance", "cluster_size"]
    assert table.column("embedding").equals(source.column("embedding"))
    assert (table.schema.field("cluster").type, table.schema.field("cluster_distance").type,
            table.schema.field("cluster_size").type) == (pa.int64(), pa.float32(), pa.int64())
    assert len(set(table.column("cluster").to_pylist())) == 4
    entry = get_provenance(table)[-1]
    assert entry["command"] == "cluster" and entry["seed"] == 1 and entry["args"]["within"] == "category"
    assert "clusters: 4 within 2 groups" in " ".join(proc.stderr.split())


def test_cli_assigns_categories_from_an_embedded_reference(tmp_path: Path):
    ref_vectors, ref_truth, _ = planted(n_per=10, k=3, dim=16, noise=0.2, seed=5)
    names = np.array(["crime", "hate", "privacy"])
    ref = tmp_path / "ref.parquet"
    pq.write_table(emb_table(ref_vectors, category_coarse=names[ref_truth].tolist()), ref)
    pool_vectors, truth, _ = planted(n_per=8, k=3, dim=16, noise=0.1, seed=5)
    pool = tmp_path / "pool.parquet"
    pq.write_table(emb_table(pool_vectors, category=pa.nulls(24)), pool)
    out = tmp_path / "out.parquet"
    proc = cli("cluster", str(pool), "--reference", str(ref), "--no-clusters", "-o", str(out),
               env={"SAFESAMPLE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "its own embeddings" in proc.stderr and "24 rows assigned from the reference" in proc.stderr
    table = pq.read_table(out)
    assert table.column("category").to_pylist() == names[truth].tolist()
    assert table.column_names == ["id", "category", "embedding", "category_score", "categories"]
    assert get_provenance(table)[-1]["inputs"] == [str(pool), str(ref)]


def test_reference_text_follows_the_pool_then_instruction_then_prompt():
    from safesample.cluster import reference_spec as _reference_spec
    from safesample.texts import TextSpec

    pair = TextSpec(template="{instruction}\n{response}")
    both = pa.table({"instruction": ["a"], "response": ["b"], "prompt": ["c"]})
    assert _reference_spec(both, None, pair) == pair  # embedded like the pool
    assert _reference_spec(both.drop_columns(["response"]), None, pair).text == "instruction"
    assert _reference_spec(pa.table({"prompt": ["c"]}), None, pair).text == "prompt"  # e.g. harmbench
    assert _reference_spec(both, "response", pair).text == "response"
    with pytest.raises(DataError, match="no text column") as exc:
        _reference_spec(pa.table({"goal": ["c"]}), None, None)
    assert "--reference-text" in exc.value.hint


def test_cli_dry_run_writes_nothing(pool_file: Path, tmp_path: Path):
    out = tmp_path / "out.parquet"
    proc = cli("cluster", str(pool_file), "--dry-run", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "plan: k-means over 100 rows x 16 dims, k = 7" in " ".join(proc.stderr.split())
    assert not out.exists()


def _bad(tmp_path: Path, case: str) -> tuple[list[str], int, str]:
    """(arguments, exit code, text in the error) for one bad input."""
    vectors, _, _ = planted(n_per=3, k=2, dim=4)
    d = tmp_path / "in"
    d.mkdir()

    def write(name: str, table: pa.Table) -> str:
        pq.write_table(table, d / name)
        return str(d / name)

    good = write("good.parquet", emb_table(vectors, instruction=[f"t{i}" for i in range(6)]))
    if case == "no embedding column":
        return [write("x.parquet", pa.table({"instruction": ["a", "b"]}))], 1, "safesample embed"
    if case == "mixed dimensions":
        return [write("x.parquet", pa.table({"embedding": [[0.1, 0.2], [0.3]]}))], 1, "mixed dimensions"
    if case == "NaN":
        return [write("x.parquet", pa.table({"embedding": [[0.1, float("nan")], [0.3, 0.1]]}))], 1, "NaN"
    if case == "k larger than rows":
        return [good, "--k", "50"], 2, "more clusters than the input has rows"
    if case == "reference without its category column":
        ref = write("ref.parquet", emb_table(vectors, topic=["a"] * 6))
        return [good, "--reference", ref, "--reference-col", "category_coarse"], 1, "no column 'category_coarse'"
    if case == "empty reference category":
        ref = write("ref.parquet", emb_table(vectors, category=pa.nulls(6, pa.string())))
        return [good, "--reference", ref], 1, "is empty"
    if case == "within an empty category":
        return [write("x.parquet", emb_table(vectors, category=[None] * 6)), "--within", "category"], 1, \
            "--reference"
    if case == "missing input":
        return [str(d / "absent.parquet")], 2, "does not exist"
    if case == "missing reference":
        return [good, "--reference", str(d / "absent.parquet")], 2, "does not exist"
    if case == "empty input":
        (d / "empty.parquet").touch()
        return [str(d / "empty.parquet")], 1, "is empty"
    if case == "truncated input":
        data = Path(good).read_bytes()
        (d / "cut.parquet").write_bytes(data[: len(data) - 40])
        return [str(d / "cut.parquet")], 1, "truncated or corrupt"
    if case == "bad --k":
        return [good, "--k", "lots"], 2, "--k"
    if case == "bad --algorithm":
        return [good, "--algorithm", "dbscan"], 2, "--algorithm"
    raise AssertionError(case)


BAD = ["no embedding column", "mixed dimensions", "NaN", "k larger than rows",
       "reference without its category column", "empty reference category", "within an empty category",
       "missing input", "missing reference", "empty input", "truncated input", "bad --k", "bad --algorithm"]


@pytest.mark.parametrize("case", BAD)
def test_cli_bad_input_fails_with_hint_exit_code_and_no_output(case: str, tmp_path: Path):
    args, code, text = _bad(tmp_path, case)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = cli("cluster", *args, "-o", str(outdir / "c.parquet"), env={"SAFESAMPLE_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and any(line.startswith("hint: ") for line in lines), proc.stderr
    assert text in proc.stderr, proc.stderr
    assert no_output_left(outdir) == []


# --------------------------------------------------------------------------------------------
# real data: embed | cluster in a pipe


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """An embedding cache of this module's own that sees the ONNX export test_embed.py shares
    (whichever runs first exports the real model once)."""
    onnx = tmp_path_factory.getbasetemp() / "safesample-onnx"
    onnx.mkdir(exist_ok=True)
    folder = tmp_path_factory.mktemp("cache")
    (folder / "onnx").symlink_to(onnx, target_is_directory=True)
    return folder


@pytest.mark.slow
def test_real_pipe_embed_into_cluster_with_reference(cache_dir: Path, tmp_path: Path):
    pool = shared_dataset("safety_tuned_llamas")
    reference = tmp_path / "ref.parquet"  # a slice of a labelled pool, without embeddings
    labelled = pq.read_table(shared_dataset("do_not_answer"))
    pq.write_table(labelled.take(list(range(0, labelled.num_rows, 4))), reference)  # every category
    out = tmp_path / "out.parquet"
    proc = shell(f"export SAFESAMPLE_CACHE_DIR={cache_dir}\n"
                 f"safesample embed {pool} --limit 60 -o - "
                 f"| safesample cluster - --reference {reference} --within category -o {out}")
    assert proc.returncode == 0, proc.stderr
    assert "embedded on the fly" in proc.stderr
    table = pq.read_table(out)
    source = pq.read_table(pool).slice(0, 60)
    assert table.column_names == source.column_names + ["embedding", "category_score", "categories",
                                                        "cluster", "cluster_distance", "cluster_size"]
    assert table.column("id").equals(source.column("id"))
    types = {f.name: f.type for f in table.schema}
    assert types["embedding"] == pa.list_(pa.float32(), 384)
    assert types["category"] == pa.string() and types["category_score"] == pa.float32()
    assert types["categories"] == pa.list_(pa.string()) and types["cluster"] == pa.int64()
    ref_categories = set(pq.read_table(reference).column("category_coarse").to_pylist())
    categories = table.column("category").to_pylist()
    assert None not in categories and set(categories) <= ref_categories  # the null column is filled
    assert all(row[0] == c for row, c in zip(table.column("categories").to_pylist(), categories))
    assert all(0 < s < 1 for s in table.column("category_score").to_pylist())
    for c in set(table.column("cluster").to_pylist()):  # clusters lie within one category
        assert len({categories[i] for i, x in enumerate(table.column("cluster").to_pylist()) if x == c}) == 1
    history = get_provenance(table)
    assert [e["command"] for e in history] == ["embed", "cluster"]
    assert history[0]["models"]["embedding"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert history[1]["models"]["reference_embedding"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert str(reference) in history[1]["inputs"]


# --------------------------------------------------------------------------------------------
# issue 18: nothing silently wrong


def _with_model_field(table: pa.Table, model_dim: int) -> pa.Table:
    """The embedding column as `safesample embed` labels it: the model, and its dimension."""
    from safesample.vectors import embedding_field

    meta = embedding_field(model_dim, "sentence-transformers/all-MiniLM-L6-v2", "onnx",
                           '{"text": "instruction"}').metadata
    i = table.column_names.index("embedding")
    return table.set_column(i, table.schema.field("embedding").with_metadata(meta), table.column("embedding"))


@pytest.mark.parametrize("dim", [10, 1])
def test_cli_refuses_embeddings_of_another_width_than_their_model(dim: int, tmp_path: Path):
    vectors, _, _ = planted(n_per=5, k=2, dim=dim) if dim > 1 else (np.ones((10, 1), np.float32), None, None)
    pool = tmp_path / "pool.parquet"
    pq.write_table(_with_model_field(emb_table(vectors), 384), pool)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = cli("cluster", str(pool), "--k", "2", "-o", str(outdir / "c.parquet"),
               env={"SAFESAMPLE_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "hint: " in proc.stderr
    assert f"{dim}-d embeddings" in proc.stderr and "384-d" in proc.stderr
    assert no_output_left(outdir) == []


def test_an_all_zero_vector_gets_no_category_but_a_clear_error(tmp_path: Path):
    reference = cluster.build_reference(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    rows = np.array([[1, 0.1, 0], [0, 0, 0]], dtype=np.float32)
    with pytest.raises(DataError, match="all-zero"):
        cluster.assign_categories(emb_table(rows), rows, reference, threshold=0.5)
    with pytest.raises(DataError, match="all-zero"):
        cluster.cluster_vectors(rows, None, 1, "sklearn", seed=0)
    ref = tmp_path / "ref.parquet"
    pq.write_table(emb_table(np.eye(3, dtype=np.float32), category_coarse=["a", "b", "c"]), ref)
    pool = tmp_path / "pool.parquet"
    pq.write_table(emb_table(np.array([[1, 0.1, 0], [0, 0, 0], [0, 1, 0]], dtype=np.float32)), pool)
    out = tmp_path / "out.parquet"
    proc = cli("cluster", str(pool), "--reference", str(ref), "--no-clusters", "-o", str(out),
               env={"SAFESAMPLE_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 1, proc.stderr
    assert "all-zero" in proc.stderr and "'r1'" in proc.stderr and "hint: " in proc.stderr
    assert not out.exists()


def test_cluster_table_is_the_stage_the_cli_calls():
    from safesample.reporter import RecordingReporter

    vectors, truth, _ = planted(n_per=10, k=3, dim=8)
    table = emb_table(vectors, category=[["a", "b"][t % 2] for t in truth])
    options = cluster.ClusterOptions(within="category", k=2, algorithm="sklearn", seed=1)
    lines = cluster.plan(table, options)
    assert lines == ["plan: k-means within 2 groups of 'category' (4 clusters in all) with sklearn"]
    reporter = RecordingReporter()
    result = cluster.cluster_table(table, options, reporter=reporter)
    assert result.table.column_names == table.column_names + ["cluster", "cluster_distance", "cluster_size"]
    assert result.clusters.clusters == 4 and result.models == {}
    assert any("clusters: 4 within 2 groups" in m for _, m in reporter.messages)
