"""`safesample select`: budgets, strategies, quotas, exclusions, the coverage report, bad input.

Property tests run the stage logic on small random pools (random unit vectors as embeddings);
CLI tests run `python -m safesample select` for real on the Do-Not-Answer pool from
../shared/data, with its own harm categories (`category_coarse`), behaviors from its human
response labels, and embeddings and clusters computed here (TF-IDF + SVD + k-means) so the test
needs no embedding model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli, shared_dataset
from safesample import select as sel
from safesample.errors import DataError, ModelError, UsageError
from safesample.reporter import RecordingReporter
from safesample.tables import get_provenance, read_table
from vector_fixtures import vector_array

# every strategy but targeted, which needs the audited benign rows (its own tests below)
STRATEGIES = [s for s in sel.STRATEGIES if s != "targeted"]


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def real_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Do-Not-Answer with behavior, harmful_response, embedding, cluster, cluster_distance."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    table = pq.read_table(shared_dataset("do_not_answer"))
    texts = table.column("instruction").to_pylist()
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform(texts)
    emb = TruncatedSVD(48, random_state=0).fit_transform(tfidf).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    km = KMeans(12, n_init=1, random_state=0).fit(emb)
    centres = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    dist = 1 - np.einsum("ij,ij->i", emb, centres[km.labels_])
    # The human labels of the dataset: refusal, or a safe non-refusing answer (an explanation).
    behavior = ["refusal" if v == "refusal" else "explanation" for v in table.column("response_label").to_pylist()]
    table = (table.append_column("behavior", pa.array(behavior))
             .append_column("harmful_response", pa.array(table.column("response_harmful").to_numpy() == 1))
             .append_column("cluster", pa.array(km.labels_.astype(np.int32)))
             .append_column("cluster_distance", pa.array(dist.astype(np.float32)))
             .append_column("embedding", vector_array(emb)))
    path = tmp_path_factory.mktemp("pool") / "dna.parquet"
    pq.write_table(table, path)
    return path


def synthetic_pool(n: int, seed: int, dim: int = 8, categories: int = 4, clusters: int = 5,
                   harmful_share: float = 0.15) -> pa.Table:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]
    texts = [f"{words[rng.integers(len(words))]} request {rng.integers(n)}" for _ in range(n)]
    return pa.table({
        "id": [f"r{i}" for i in range(n)],
        "instruction": texts,
        "category": rng.choice([f"cat{k}" for k in range(categories)], n),
        "behavior": rng.choice(["refusal", "explanation", "benign_compliance"], n),
        "harmful_response": rng.random(n) < harmful_share,
        "cluster": rng.integers(0, clusters, n).astype(np.int32),
        "embedding": vector_array(emb),
    })


def _unit_rows(table: pa.Table) -> np.ndarray:
    return sel.embedding_matrix(table, unit=True)


# ---- budget and behavior specs ----------------------------------------------------------------


@pytest.mark.parametrize("spec, of, rows", [("100", None, 100), ("+7", None, 7), ("0.5%", 20_000, 100),
                                            ("0.5%", 999, 5), ("1%", 150, 2), ("250%", 10, 25)])
def test_budget_counts_and_shares(spec: str, of: int | None, rows: int):
    assert sel.parse_budget(spec, of) == rows


@pytest.mark.parametrize("spec, of", [("abc", None), ("0", None), ("-3", None), ("1.5", None), ("%", 100),
                                      ("0.5%", None), ("100", 2000), ("0.001%", 100), ("nan%", 10)])
def test_bad_budgets_are_usage_errors_with_hints(spec: str, of: int | None):
    with pytest.raises(UsageError) as err:
        sel.parse_budget(spec, of)
    assert err.value.hint


def test_behavior_specs():
    assert sel.parse_behavior("refusal") == {"refusal": 1.0}
    assert sel.parse_behavior("refusal,explanation") == {"refusal": 0.5, "explanation": 0.5}
    assert sel.parse_behavior("refusal=0.7, explanation=0.3") == pytest.approx({"refusal": 0.7, "explanation": 0.3})
    assert sel.parse_behavior("refusal=7,explanation=3") == pytest.approx({"refusal": 0.7, "explanation": 0.3})
    assert sel.parse_behavior(None) is None
    for bad in ["refusals", "refusal=0.7,explanation", "refusal=-1", "refusal=x", "refusal,refusal", "=0.5"]:
        with pytest.raises(UsageError):
            sel.parse_behavior(bad)


# ---- quotas -----------------------------------------------------------------------------------


@given(total=st.integers(0, 300), caps=st.lists(st.integers(0, 60), min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_allocate_is_exact_capped_and_fair(total: int, caps: list[int]):
    alloc = sel.allocate(total, caps)
    assert alloc.sum() == min(total, sum(caps))
    assert (alloc <= np.array(caps)).all() and (alloc >= 0).all()
    for i in range(len(caps)):
        for j in range(len(caps)):
            # a group gets two or more fewer than another only when it has nothing more to give
            if alloc[i] < alloc[j] - 1:
                assert alloc[i] == caps[i]


@given(total=st.integers(1, 200), weights=st.lists(st.floats(0.05, 5), min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
def test_weighted_allocation_follows_the_weights_when_nothing_is_capped(total: int, weights: list[float]):
    alloc = sel.allocate(total, [10_000] * len(weights), weights)
    share = total * np.array(weights) / sum(weights)
    assert alloc.sum() == total
    assert (np.abs(alloc - share) < 1 + 1e-9).all()


def test_small_budget_spreads_behaviors_over_different_categories():
    """8 rows over 2 behaviors x 13 categories: each behavior's 4 go to categories the other left
    out (the largest first), so the quotas cover 8 categories, not the 4 largest twice."""
    caps = np.array([[30, 25, 20, 18, 15, 12, 10, 9, 8, 7, 6, 5, 4],
                     [28, 26, 19, 17, 14, 13, 11, 9, 8, 7, 6, 5, 4]])
    quotas = sel.allocate_nested(8, caps, [1.0, 1.0])
    assert quotas.sum(axis=1).tolist() == [4, 4] and quotas.max() == 1
    assert (quotas.sum(axis=0) > 0).sum() == 8
    assert np.flatnonzero(quotas[0]).tolist() == [0, 1, 2, 3]  # the largest, for the first behavior
    assert np.flatnonzero(quotas[1]).tolist() == [4, 5, 6, 7]  # the next largest for the second
    # a budget that reaches every category is split as before: each behavior covers all of them
    wide = sel.allocate_nested(26, caps, [1.0, 1.0])
    assert (wide == 1).all()


@given(total=st.integers(0, 120), caps=st.lists(st.lists(st.integers(0, 20), min_size=5, max_size=5),
                                                  min_size=1, max_size=3))
@settings(max_examples=150, deadline=None)
def test_nested_allocation_stays_exact_and_capped(total: int, caps: list[list[int]]):
    c = np.array(caps)
    quotas = sel.allocate_nested(total, c, [1.0] * len(caps))
    assert quotas.sum() == min(total, int(c.sum())) and (quotas <= c).all() and (quotas >= 0).all()


# ---- selection properties -------------------------------------------------------------------------


pools = st.builds(lambda n, seed, k, c: synthetic_pool(n, seed, categories=k, clusters=c),
                  st.integers(20, 120), st.integers(0, 10_000), st.integers(1, 5), st.integers(1, 8))
behaviors = st.sampled_from([None, {"refusal": 1.0}, {"refusal": 0.7, "explanation": 0.3},
                             {"refusal": 0.5, "explanation": 0.5}])


def _candidates(table: pa.Table, behavior: dict[str, float] | None, strategy: str) -> np.ndarray:
    keep = ~np.array(table.column("harmful_response").to_pylist(), dtype=bool)
    allowed = behavior or ({"refusal": 1, "explanation": 1} if strategy == "diverse" else None)
    if allowed:
        keep &= np.isin(np.array(table.column("behavior").to_pylist()), list(allowed))
    return np.flatnonzero(keep)


@given(table=pools, strategy=st.sampled_from(STRATEGIES), behavior=behaviors, seed=st.integers(0, 99),
       share=st.floats(0.05, 1.0))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_exact_budget_subset_and_same_seed_same_output(table, strategy, behavior, seed, share):
    candidates = _candidates(table, behavior, strategy)
    budget = max(1, int(len(candidates) * share))
    if not len(candidates):
        with pytest.raises(DataError):
            sel.select(table, 1, strategy, behavior=behavior, dedup=None, seed=seed, random_draws=1)
        return
    result = sel.select(table, budget, strategy, behavior=behavior, dedup=None, seed=seed, random_draws=1)
    out = result.table
    assert out.num_rows == budget
    ids = out.column("id").to_pylist()
    assert len(set(ids)) == budget
    assert set(ids) <= {table.column("id")[int(i)].as_py() for i in candidates}
    assert out.column("select_rank").to_pylist() == list(range(1, budget + 1))
    assert all(out.column("select_reason").to_pylist())
    assert out.column_names == [*table.column_names, "select_reason", "select_rank"]
    again = sel.select(table, budget, strategy, behavior=behavior, dedup=None, seed=seed, random_draws=1)
    assert again.table.equals(out)


@given(table=pools, strategy=st.sampled_from(["prototype", "similarity", "diverse"]), behavior=behaviors,
       budget=st.integers(1, 60))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_quotas_follow_behavior_weights_and_spread_evenly_over_categories(table, strategy, behavior, budget):
    candidates = _candidates(table, behavior, strategy)
    budget = min(budget, len(candidates))
    if budget < 1:
        return
    out = sel.select(table, budget, strategy, behavior=behavior, dedup=None, random_draws=0).table
    beh = np.array(table.column("behavior").to_pylist())[candidates]
    if behavior is None and strategy != "diverse":  # no behavior quotas: one group
        beh = np.full(len(candidates), "any")
        weights = {"any": 1.0}
    else:
        weights = behavior or {b: 1 / len(set(beh)) for b in set(beh)}
    cat = np.array(table.column("category").to_pylist())[candidates]
    got_beh = np.array(out.column("behavior").to_pylist()) if "any" not in weights else np.full(budget, "any")
    got_cat = np.array(out.column("category").to_pylist())
    available = {b: int((beh == b).sum()) for b in weights}
    if all(available[b] >= budget for b in weights):  # nothing capped: the weights, to a row
        for b, w in weights.items():
            assert abs((got_beh == b).sum() - w * budget) < 1 + 1e-9
    for b in weights:
        counts = {c: int(((got_beh == b) & (got_cat == c)).sum()) for c in set(cat[beh == b])}
        caps = {c: int(((beh == b) & (cat == c)).sum()) for c in counts}
        for c1 in counts:
            for c2 in counts:
                if counts[c1] < counts[c2] - 1:  # only an exhausted category gets fewer
                    assert counts[c1] == caps[c1]


@given(table=pools, strategy=st.sampled_from(STRATEGIES), seed=st.integers(0, 99),
       dedup=st.floats(0.3, 0.95), threshold=st.floats(0.3, 0.95), n_eval=st.integers(0, 6),
       budget=st.integers(1, 40))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_excluded_row_is_ever_selected(table, strategy, seed, dedup, threshold, n_eval, budget):
    rng = np.random.default_rng(seed)
    emb = _unit_rows(table)
    texts = table.column("instruction").to_pylist()
    eval_texts = [texts[i].upper() + "?!" for i in rng.integers(0, len(texts), n_eval)]  # same key
    eval_vecs = rng.standard_normal((3, emb.shape[1])).astype(np.float32)
    eval_vecs /= np.linalg.norm(eval_vecs, axis=1, keepdims=True)
    exclusions = sel.Exclusions(eval_texts, eval_vecs, threshold)
    try:
        out = sel.select(table, budget, strategy, dedup=dedup, exclusions=exclusions, seed=seed,
                         random_draws=1).table
    except DataError as exc:
        assert "can supply only" in exc.message or "budget" in exc.message
        return
    rows = [int(i[1:]) for i in out.column("id").to_pylist()]
    assert not any(table.column("harmful_response")[r].as_py() for r in rows)
    picked = emb[rows]
    sims = picked @ picked.T
    np.fill_diagonal(sims, -1)
    assert (sims < dedup).all(), "near duplicates selected"
    assert ((picked @ eval_vecs.T) < threshold).all(), "a row too similar to an eval prompt"
    keys = [sel.normalise(texts[r]) for r in rows]
    assert len(set(keys)) == len(keys), "exact duplicates selected"
    assert not set(keys) & {sel.normalise(t) for t in eval_texts}, "an eval prompt selected"


def test_a_budget_the_pool_cannot_supply_is_an_error_not_a_short_output():
    table = synthetic_pool(40, 1, harmful_share=0.0)
    with pytest.raises(DataError, match="budget is 41 rows but the pool has only 40"):
        sel.select(table, 41, "random")
    eligible = len(_candidates(table, None, "diverse"))
    with pytest.raises(DataError, match=f"can supply only {eligible} of the {eligible + 1}"):
        sel.select(table, eligible + 1, "diverse", dedup=None)
    assert sel.select(table, eligible, "diverse", dedup=None).table.num_rows == eligible


def test_diverse_spreads_over_clusters_and_explains_each_pick():
    table = synthetic_pool(400, 3, categories=2, clusters=10, harmful_share=0.0)
    out = sel.select(table, 20, "diverse", behavior={"refusal": 1.0}).table
    clusters = out.column("cluster").to_pylist()
    assert len(set(clusters)) == 10  # 20 picks over 2 categories: every cluster before any repeats
    reasons = out.column("select_reason").to_pylist()
    assert re.fullmatch(r"category=cat\d, behavior=refusal, cluster \d of 10, nearest to centroid", reasons[0])
    assert all(re.fullmatch(r"category=cat\d, behavior=refusal, cluster \d of 10, "
                            r"of the \d+ most central, farthest from earlier picks", r) for r in reasons[1:10])
    assert all(re.search(r"farthest from earlier picks in the cluster \(cosine distance \d\.\d+\)$", r)
               for r in reasons[10:])
    assert set(out.column("behavior").to_pylist()) == {"refusal"}


def test_similarity_uses_category_score_when_present():
    table = synthetic_pool(60, 4, categories=2, harmful_share=0.0)
    score = np.linspace(0, 1, 60)
    table = table.append_column("category_score", pa.array(score))
    out = sel.select(table, 6, "similarity", dedup=None).table
    cat = np.array(table.column("category").to_pylist())
    for c in ("cat0", "cat1"):
        mine = [int(i[1:]) for i, k in zip(out.column("id").to_pylist(), out.column("category").to_pylist()) if k == c]
        best = sorted(np.flatnonzero(cat == c), key=lambda i: -score[i])[:len(mine)]
        assert sorted(mine) == sorted(best)
    assert "category_score" in out.column("select_reason")[0].as_py()


def test_prototype_picks_the_rows_closest_to_the_category_centroid():
    table = synthetic_pool(80, 5, categories=1, harmful_share=0.0)
    emb = _unit_rows(table)
    centroid = emb.mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    out = sel.select(table, 5, "prototype", dedup=None).table
    assert [int(i[1:]) for i in out.column("id").to_pylist()] == list(np.argsort(-(emb @ centroid))[:5])


def test_stratified_takes_k_per_category_smallest_first_then_fills():
    table = pa.table({"id": [f"r{i}" for i in range(30)], "instruction": [f"t{i}" for i in range(30)],
                      "category": ["a"] * 2 + ["b"] * 10 + ["c"] * 18})
    out = sel.select(table, 12, "stratified", seed=3).table
    cats = out.column("category").to_pylist()
    assert cats.count("a") == 2  # k = 12 // 3 = 4, but a has only 2; the fill is random
    assert cats.count("b") >= 4 and cats.count("c") >= 4
    assert cats[:2] == ["a", "a"]  # smallest category first
    assert sum("random fill" in r for r in out.column("select_reason").to_pylist()) == 2


def test_missing_columns_degrade_with_warnings():
    reporter = RecordingReporter()
    table = synthetic_pool(60, 6).drop_columns(["category", "behavior", "cluster", "harmful_response"])
    out = sel.select(table, 10, "diverse", reporter=reporter).table
    assert out.num_rows == 10
    text = " ".join(reporter.warnings())
    assert "no behavior labels" in text and "no harm categories" in text and "harmful_response" in text
    assert all("farthest from earlier picks" in r for r in out.column("select_reason").to_pylist()[1:])
    with pytest.raises(DataError, match="behavior") as err:
        sel.select(table, 10, "diverse", behavior={"refusal": 1.0})
    assert "safesample label" in err.value.hint
    with pytest.raises(DataError, match="embedding") as err:
        sel.select(table.drop_columns(["embedding"]), 10, "prototype")
    assert "safesample embed" in err.value.hint
    assert sel.select(table.drop_columns(["embedding"]), 10, "random").table.num_rows == 10


def test_exclusions_embed_prompts_with_the_injected_encoder_and_check_dimensions():
    pool = synthetic_pool(50, 7, harmful_share=0.0)
    emb = _unit_rows(pool)
    calls: list[list[str]] = []

    def factory():
        def encode(texts: list[str]) -> np.ndarray:
            calls.append(texts)
            return emb[: len(texts)] * 3  # not unit length: must be normalised
        return encode

    evals = pa.table({"prompt": ["first", None, "second"]})
    exclusions = sel.exclusions_from_tables([("eval.parquet", evals)], 0.9, True, factory)
    assert calls == [["first", "second"]]
    assert np.allclose(np.linalg.norm(exclusions.embeddings, axis=1), 1)
    out = sel.select(pool, 20, "random", exclusions=exclusions).table
    assert not {"r0", "r1"} & set(out.column("id").to_pylist())
    with pytest.raises(ModelError) as err:
        sel.exclusions_from_tables([("eval.parquet", evals)], 0.9, True, None)
    assert "safesample embed" in err.value.hint
    wrong = pa.table({"prompt": ["x"], "embedding": vector_array(np.ones((1, 3)))})
    with pytest.raises(DataError, match="dimensions"):
        sel.select(pool, 5, "random", exclusions=sel.exclusions_from_tables([("w", wrong)], 0.9, True, None))
    with pytest.raises(DataError, match="neither a 'prompt' nor an 'instruction'"):
        sel.exclusions_from_tables([("w", pa.table({"text": ["x"]}))], 0.9, True, None)


# ---- the CLI on the real pool -----------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cli_every_strategy_on_the_real_pool(real_pool: Path, tmp_path: Path, strategy: str):
    out = tmp_path / "picked.parquet"
    proc = cli("select", str(real_pool), "--budget", "24", "--strategy", strategy,
               "--category-col", "category_coarse", "--seed", "3", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    picked, pool = read_table(str(out)), read_table(str(real_pool))
    assert picked.num_rows == 24
    assert picked.column_names == [*pool.column_names, "select_reason", "select_rank"]
    assert picked.schema.field("embedding").type == pool.schema.field("embedding").type
    assert set(picked.column("id").to_pylist()) <= set(pool.column("id").to_pylist())
    entry = get_provenance(picked)[-1]
    assert entry["command"] == "select" and entry["seed"] == 3
    assert entry["args"]["strategy"] == strategy and entry["args"]["rows"] == 24
    assert "coverage" in proc.stderr and "random (mean of 10)" in proc.stderr
    if strategy != "random":
        assert len(set(picked.column("category_coarse").to_pylist())) == 8


def test_cli_coverage_report_on_the_real_pool_beats_random_draws(real_pool: Path, tmp_path: Path):
    out, report = tmp_path / "picked.parquet", tmp_path / "sel.json"
    proc = cli("select", str(real_pool), "--budget", "40", "--category-col", "category_coarse",
               "--report", str(report), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(report.read_text())
    sel_, rnd, avail = rep["selection"], rep["random"], rep["available"]
    assert rep["strategy"] == "diverse" and rep["budget"] == 40 and rnd["draws"] == 10
    assert avail == {"categories": 8, "behaviors": 2, "clusters": 12}
    # The method's promise, measured against 10 random draws of the same budget:
    assert sel_["categories"] == 8 and sel_["categories"] >= rnd["categories"]
    assert sel_["behaviors"] == 2
    assert sel_["clusters"] == 12 and sel_["clusters"] >= rnd["clusters"]
    assert sel_["mean_pairwise_distance"] > rnd["mean_pairwise_distance"]
    counts = rep["counts"]
    assert sum(sum(v.values()) for v in counts.values()) == 40
    assert sum(counts["refusal"].values()) == 20 and sum(counts["explanation"].values()) == 20
    for row in ("categories covered", "behaviors covered", "clusters covered", "mean pairwise cosine distance"):
        assert row in proc.stderr


def test_cli_percentage_budget_of_the_benign_set(real_pool: Path, tmp_path: Path):
    out = tmp_path / "picked.parquet"
    benign = shared_dataset("alpaca_gpt4_demo")  # 999 rows: 0.5% -> 5
    proc = cli("select", str(real_pool), "--budget", "0.5%", "--of", str(benign), "--strategy", "stratified",
               "--category-col", "category_coarse", "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert read_table(str(out)).num_rows == 5
    assert proc.stderr == ""  # -q: no report, no warnings


def test_cli_behavior_mix_and_harmful_rows(tmp_path: Path):
    table = synthetic_pool(300, 11, harmful_share=0.3)
    pool = tmp_path / "pool.parquet"
    pq.write_table(table, pool)
    out = tmp_path / "picked.parquet"
    proc = cli("select", str(pool), "--budget", "30", "--behavior", "refusal=0.7,explanation=0.3",
               "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    picked = read_table(str(out))
    beh = picked.column("behavior").to_pylist()
    assert beh.count("refusal") == 21 and beh.count("explanation") == 9
    assert not any(picked.column("harmful_response").to_pylist())
    assert "excluded: harmful response" in proc.stderr


def test_cli_decontamination_by_text_and_by_embedding(tmp_path: Path):
    table = synthetic_pool(40, 12, harmful_share=0.0).drop_columns(["behavior"])
    table = table.set_column(1, "instruction", pa.array([f"Prompt number {i}" for i in range(40)]))
    pool, out = tmp_path / "pool.parquet", tmp_path / "picked.parquet"
    pq.write_table(table, pool)
    emb = _unit_rows(table)
    # 3 prompts equal to pool rows up to case and punctuation (their vectors point away), and
    # 2 prompts with other words whose vectors nearly equal two pool rows'
    by_text = pa.table({"prompt": [f"  PROMPT number {i}!!" for i in (0, 1, 2)],
                        "embedding": vector_array(-emb[[0, 1, 2]])})
    near = emb[[5, 6]] + 0.01
    by_vec = pa.table({"instruction": ["something else", "and another"], "embedding": vector_array(near)})
    pq.write_table(by_text, tmp_path / "eval1.parquet")
    pq.write_table(by_vec, tmp_path / "eval2.parquet")
    vecs = np.concatenate([-emb[[0, 1, 2]], near / np.linalg.norm(near, axis=1, keepdims=True)])
    excluded = {0, 1, 2} | set(np.flatnonzero((emb @ vecs.T).max(axis=1) >= 0.9).tolist())
    assert {5, 6} <= excluded
    supply = 40 - len(excluded)
    args = ["select", str(pool), "--strategy", "random", "--exclude", str(tmp_path / "eval1.parquet"),
            "--exclude", str(tmp_path / "eval2.parquet"), "--dedup", "0.9999"]
    proc = cli(*args, "--budget", str(supply), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    picked = {int(i[1:]) for i in read_table(str(out)).column("id").to_pylist()}
    assert not picked & excluded and len(picked) == supply
    out.unlink()
    proc = cli(*args, "--budget", str(supply + 1), "-o", str(out))
    assert proc.returncode == 1 and f"can supply only {supply} of the {supply + 1}" in proc.stderr
    assert "eval exact: 3" in proc.stderr
    assert "hint:" in proc.stderr and not out.exists()


def test_cli_exclude_without_embeddings_needs_the_pool_model(real_pool: Path, tmp_path: Path):
    # The test pool's provenance names no embedding model, so prompts cannot be embedded alike.
    out = tmp_path / "picked.parquet"
    proc = cli("select", str(real_pool), "--budget", "10", "--exclude", str(shared_dataset("harmbench")),
               "-o", str(out))
    assert proc.returncode == 1
    assert "error: " in proc.stderr and "hint: " in proc.stderr and "safesample embed" in proc.stderr
    assert not out.exists()


def test_cli_same_seed_same_output_and_seed_matters(real_pool: Path, tmp_path: Path):
    def run(seed: int, name: str) -> list[str]:
        out = tmp_path / name
        proc = cli("select", str(real_pool), "--budget", "15", "--strategy", "random", "--seed", str(seed),
                   "-o", str(out), "-q")
        assert proc.returncode == 0, proc.stderr
        return read_table(str(out)).column("id").to_pylist()

    first = run(1, "a.parquet")
    assert first == run(1, "b.parquet")
    # ... and the seed matters (in-process: the same code path, without another interpreter)
    table = read_table(str(real_pool))
    assert sel.select(table, 15, "random", seed=1).table.column("id").to_pylist() == first
    assert sel.select(table, 15, "random", seed=2).table.column("id").to_pylist() != first


def test_cli_dry_run_prints_the_plan_and_writes_nothing(real_pool: Path, tmp_path: Path):
    proc = cli("select", str(real_pool), "--budget", "40", "--category-col", "category_coarse", "--dry-run",
               "-o", str(tmp_path / "picked.parquet"), "--report", str(tmp_path / "sel.json"))
    assert proc.returncode == 0, proc.stderr
    assert "plan: select 40 of 916 rows with --strategy diverse" in proc.stderr
    assert "quota refusal: 20" in proc.stderr and "quota explanation: 20" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---- bad input --------------------------------------------------------------------------------


def _fails(args: list[str], code: int, *needles: str, folder: Path) -> None:
    proc = cli(*args)
    assert proc.returncode == code, (args, proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error: ") or "\nerror: " in proc.stderr, proc.stderr
    assert "hint: " in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert not [p for p in folder.iterdir() if p.name.startswith(("out", ".out"))], "output left behind"


def test_bad_input_each_with_error_hint_exit_code_and_no_output(real_pool: Path, tmp_path: Path):
    out = str(tmp_path / "out.parquet")
    empty, truncated = tmp_path / "empty.parquet", tmp_path / "truncated.parquet"
    empty.write_bytes(b"")
    truncated.write_bytes(real_pool.read_bytes()[: 5000])
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(real_pool).drop_columns(["embedding", "behavior"]), plain)
    pool = str(real_pool)
    cases = [
        (["select", str(tmp_path / "missing.parquet"), "--budget", "5", "-o", out], 2, "does not exist"),
        (["select", str(empty), "--budget", "5", "-o", out], 1, "is empty"),
        (["select", str(truncated), "--budget", "5", "-o", out], 1, "truncated or corrupt"),
        (["select", str(plain), "--budget", "5", "-o", out], 1, "'embedding'", "safesample embed"),
        (["select", str(plain), "--budget", "5", "--strategy", "random", "--behavior", "refusal", "-o", out],
         1, "'behavior'", "safesample label"),
        (["select", pool, "--budget", "5000", "-o", out], 1, "budget is 5000 rows but the pool has only 916"),
        (["select", pool, "--budget", "1000", "--of", pool, "-o", out], 2, "--of only applies"),
        (["select", pool, "--budget", "five", "-o", out], 2, "bad --budget 'five'"),
        (["select", pool, "--budget", "0.5%", "-o", out], 2, "no --of was given"),
        (["select", pool, "--budget", "5", "--behavior", "refusal=0.7,nonsense=0.3", "-o", out], 2,
         "unknown behavior 'nonsense'"),
        (["select", pool, "--budget", "5", "--strategy", "best", "-o", out], 2, "'best'"),
        (["select", pool, "-o", out], 2, "--budget"),
        (["select", pool, "--budget", "5", "--dedup", "1.5", "-o", out], 2, "--dedup 1.5"),
        (["select", pool, "--budget", "5", "-o", str(tmp_path / "nowhere" / "out.parquet")], 2, "does not exist"),
        (["select", pool, "--budget", "5", "--category-col", "cluster", "-o", out], 1, "must be strings"),
        (["select", "-", "--of", "-", "--budget", "1%", "-o", out], 2, "only one table can come from stdin"),
    ]
    # Real subprocesses, a few at a time: each one spends most of its time starting Python.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool_:
        list(pool_.map(lambda case: _fails(case[0], case[1], *case[2:], folder=tmp_path), cases))


# ---- issue 18: nothing silently wrong --------------------------------------------------------------


def test_cli_refuses_a_pool_with_repeated_ids(tmp_path: Path):
    table = synthetic_pool(30, 21, harmful_share=0.0)
    ids = table.column("id").to_pylist()
    ids[7] = ids[3]  # e.g. two tables concatenated
    pool, out = tmp_path / "pool.parquet", tmp_path / "out.parquet"
    pq.write_table(table.set_column(0, "id", pa.array(ids)), pool)
    for strategy in ("random", "diverse"):
        _fails(["select", str(pool), "--budget", "20", "--strategy", strategy, "-o", str(out)], 1,
               "occur more than once", "'r3'", folder=tmp_path)
    with pytest.raises(DataError, match="no id"):
        sel.select(table.set_column(0, "id", pa.array([None] + ids[1:], pa.string())), 5, "random")


def test_cli_refuses_embeddings_narrower_than_their_model(tmp_path: Path):
    from safesample.vectors import embedding_field

    table = synthetic_pool(30, 22, dim=10, harmful_share=0.0)
    meta = embedding_field(384, "sentence-transformers/all-MiniLM-L6-v2", "onnx", '{"text": "instruction"}').metadata
    i = table.column_names.index("embedding")
    table = table.set_column(i, table.schema.field("embedding").with_metadata(meta), table.column("embedding"))
    pool, out = tmp_path / "pool.parquet", tmp_path / "out.parquet"
    pq.write_table(table, pool)
    _fails(["select", str(pool), "--budget", "5", "-o", str(out)], 1, "10-d embeddings", "384-d", folder=tmp_path)


def test_an_all_zero_embedding_is_an_error_not_a_pick():
    table = synthetic_pool(20, 23, categories=1, harmful_share=0.0)
    emb = sel.embedding_matrix(table).copy()
    emb[5] = 0
    table = table.set_column(table.column_names.index("embedding"), "embedding", vector_array(emb))
    with pytest.raises(DataError, match="all-zero.*'r5'"):
        sel.select(table, 20, "prototype", dedup=None, behavior={"refusal": 1, "explanation": 1,
                                                                   "benign_compliance": 1})


def test_select_table_and_plan_are_the_stage_the_cli_calls():
    table = synthetic_pool(80, 24, harmful_share=0.0)
    options = sel.SelectOptions(budget=10, strategy="diverse", seed=2, random_draws=1)
    lines = sel.plan(table, options)
    assert lines[0].startswith("plan: select 10 of 80 rows with --strategy diverse")
    assert any(line.startswith("  quota refusal: 5") for line in lines)
    result = sel.select_table(table, options)
    assert result.table.equals(sel.select(table, 10, "diverse", seed=2, random_draws=1).table)
    assert result.models == {}
    with pytest.raises(UsageError, match="--exclude-threshold"):
        sel.select_table(table, sel.SelectOptions(budget=10, exclude_threshold=1.5))


# ---- --strategy targeted ----------------------------------------------------------------------


def _targeted_pool() -> tuple[pa.Table, np.ndarray]:
    """3 categories x 6 rows of random unit vectors, all of one behavior."""
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((18, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = pa.table({"id": [f"r{i}" for i in range(18)], "instruction": [f"request {i}" for i in range(18)],
                      "category": [f"cat{i // 6}" for i in range(18)], "behavior": ["refusal"] * 18,
                      "embedding": vector_array(emb)})
    return table, emb


def _audited(rows: dict[str, np.ndarray]) -> tuple[pa.Table, "object"]:
    """An audit output whose riskiest rows (in the dict's order) embed to the given vectors."""
    ids = list(rows)
    audited = pa.table({"id": ids, "instruction": [f"benign {i}" for i in ids],
                        "audit_score": [float(len(ids) - k) for k in range(len(ids))],
                        "audit_rank": list(range(1, len(ids) + 1))})
    by_text = {f"benign {i}": v for i, v in rows.items()}

    def factory():
        return lambda texts: np.stack([by_text[t] * 2.0 for t in texts])  # not unit: normalised by select
    return audited, factory


def test_targeted_picks_the_counter_example_of_each_risky_row_within_the_category_quotas():
    pool, emb = _targeted_pool()
    noise = np.random.default_rng(1).standard_normal(8).astype(np.float32) * 0.01
    # the riskiest benign rows sit next to pool rows r2 (cat0), r9 (cat1) and r14 (cat2)
    audited, factory = _audited({"b1": emb[2] + noise, "b2": emb[9] + noise, "b3": emb[14] + noise})
    options = sel.SelectOptions(budget=3, strategy="targeted", dedup=None, against_top="3")
    result = sel.select_table(pool, options, against=("audited.parquet", audited), embedder=factory)
    assert sorted(result.table.column("id").to_pylist()) == ["r14", "r2", "r9"]
    reasons = dict(zip(result.table.column("id").to_pylist(), result.table.column("select_reason").to_pylist()))
    assert "counter-example to risky benign row b1 (audit rank 1)" in reasons["r2"]
    assert "counter-example to risky benign row b3 (audit rank 3)" in reasons["r14"]
    assert result.report["targets"] == {"against": "audited.parquet", "risky_rows": 3, "answered": 3}


def test_targeted_serves_every_risky_row_before_any_gets_a_second():
    pool, emb = _targeted_pool()
    audited, factory = _audited({"b1": emb[0], "b2": emb[7], "b3": emb[13], "b4": emb[4]})
    options = sel.SelectOptions(budget=6, strategy="targeted", dedup=None, against_top="3")  # the top 3 only
    result = sel.select_table(pool, options, against=("a", audited), embedder=factory)
    served = [re.search(r"risky benign row (\w+)", r).group(1) for r in result.table.column("select_reason").to_pylist()]
    assert sorted(served) == ["b1", "b1", "b2", "b2", "b3", "b3"]  # b4 is not a target
    assert len(set(result.table.column("category").to_pylist())) == 3  # still spread over the categories
    assert result.table.num_rows == 6 and len(set(result.table.column("id").to_pylist())) == 6


def test_targeted_options_are_checked_before_any_work():
    pool, emb = _targeted_pool()
    audited, factory = _audited({"b1": emb[0]})
    with pytest.raises(UsageError, match="--against AUDITED"):
        sel.select_table(pool, sel.SelectOptions(budget=2, strategy="targeted"), embedder=factory)
    with pytest.raises(UsageError, match="--against is for --strategy targeted"):
        sel.select_table(pool, sel.SelectOptions(budget=2, strategy="diverse"), against=("a", audited))
    with pytest.raises(DataError, match="audit_score"):
        sel.select_table(pool, sel.SelectOptions(budget=2, strategy="targeted"),
                         against=("a", audited.drop_columns(["audit_score"])), embedder=factory)
    with pytest.raises(UsageError, match="--against-top"):
        sel.select_table(pool, sel.SelectOptions(budget=2, strategy="targeted", against_top="0%"),
                         against=("a", audited), embedder=factory)


def test_cli_targeted_on_the_real_pool(real_pool: Path, tmp_path: Path):
    pool = read_table(str(real_pool))
    emb = sel.embedding_matrix(pool, unit=True)
    # "audited" benign rows: the pool's own embeddings stand in for the benign rows' (same model)
    audited = pa.table({"id": [f"b{i}" for i in range(40)], "instruction": pool.column("instruction").to_pylist()[:40],
                        "audit_score": [float(-i) for i in range(40)], "embedding": vector_array(emb[:40])})
    pq.write_table(audited, tmp_path / "audited.parquet")
    out = tmp_path / "picked.parquet"
    proc = cli("select", str(real_pool), "--strategy", "targeted", "--against", str(tmp_path / "audited.parquet"),
               "--against-top", "12", "--budget", "12", "--category-col", "category_coarse", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    picked = read_table(str(out))
    assert picked.num_rows == 12
    reasons = picked.column("select_reason").to_pylist()
    assert all("counter-example to risky benign row b" in r for r in reasons)
    assert len({re.search(r"row (b\d+)", r).group(1) for r in reasons}) == 12  # each target once
    assert len(set(picked.column("category_coarse").to_pylist())) > 4
    other = tmp_path / "none.parquet"
    missing = cli("select", str(real_pool), "--strategy", "targeted", "--budget", "5", "-o", str(other))
    assert missing.returncode == 2 and "--against AUDITED" in missing.stderr and not other.exists()
