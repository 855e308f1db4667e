"""`select --contrast`: benign look-alikes of the safety picks (issue 13), and how `mix` trains them.

Small tables are built here (random unit vectors, look-alikes as perturbed copies of the picks);
the real-data test embeds Safety-Tuned LLaMAs, GPTeacher and XSTest with TF-IDF + SVD, so no
embedding model is needed; the model path (a contrast table without embeddings) runs with an
injected encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli, shared_dataset, shell
from safesample import mix as mx
from safesample import select as sel
from safesample.errors import DataError, UsageError
from safesample.reporter import RecordingReporter
from safesample.select.contrast import lexical_weights, split_budget
from vector_fixtures import unit, vector_array


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def make_pool(n: int = 30, dim: int = 16, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = unit(rng.standard_normal((n, dim)))
    table = pa.table({
        "id": [f"p{i}" for i in range(n)],
        "instruction": [f"harmful request number {i}" for i in range(n)],
        "response": [f"I can't help with request {i}." for i in range(n)],
        "category": [f"cat{i % 3}" for i in range(n)],
        "behavior": ["refusal"] * n,
        "harmful_response": [False] * n,
        "embedding": vector_array(emb),
    })
    return table, emb


def make_benign(pool_emb: np.ndarray, per_pick: int = 3, distractors: int = 100, seed: int = 1,
                noise: tuple[float, ...] = (0.2, 0.5, 0.8)) -> pa.Table:
    """For each pool row, `per_pick` look-alikes at increasing distance; then random distractors."""
    rng = np.random.default_rng(seed)
    dim = pool_emb.shape[1]
    rows, ids, texts = [], [], []
    for i, v in enumerate(pool_emb):
        for k in range(per_pick):
            rows.append(v + noise[k] * rng.standard_normal(dim) / np.sqrt(dim))
            ids.append(f"b{i}_{k}")
            texts.append(f"benign look-alike {k} of topic {i}")
    for j in range(distractors):
        rows.append(rng.standard_normal(dim))
        ids.append(f"d{j}")
        texts.append(f"unrelated task {j}")
    return pa.table({"id": ids, "instruction": texts, "input": [""] * len(ids),
                     "output": [f"Sure: {t}." for t in texts], "embedding": vector_array(unit(np.array(rows)))})


def _run(pool: pa.Table, benign: pa.Table, budget: int, **kw) -> sel.SelectResult:
    exclude = kw.pop("exclude", ())
    embedder = kw.pop("embedder", None)
    options = sel.SelectOptions(budget=budget, strategy=kw.pop("strategy", "random"), random_draws=1, **kw)
    return sel.select_table(pool, options, exclude=exclude, contrast=("benign.parquet", benign), embedder=embedder)


# ---- counts and roles -----------------------------------------------------------------------------


@pytest.mark.parametrize("budget, share, within, want", [
    (100, 0.5, False, (100, 50)), (100, 0.5, True, (67, 33)), (100, 1.0, True, (50, 50)),
    (7, 0.5, False, (7, 4)), (10, 2.0, False, (10, 20)), (3, 0.25, False, (3, 1))])
def test_split_budget(budget, share, within, want):
    assert split_budget(budget, share, within) == want


@pytest.mark.parametrize("budget, share, within", [(10, 0.0, False), (10, -1, False), (10, 11, False),
                                                   (1, 0.5, True), (2, 0.1, False), (10, float("nan"), False)])
def test_bad_shares_are_usage_errors(budget, share, within):
    with pytest.raises(UsageError) as err:
        split_budget(budget, share, within)
    assert err.value.hint


@pytest.mark.parametrize("budget, share, within", [(10, 0.5, False), (12, 1.0, False), (12, 0.5, True), (6, 2.0, False)])
def test_exact_counts_roles_and_reasons(budget, share, within):
    pool, emb = make_pool()
    result = _run(pool, make_benign(emb), budget, contrast_share=share, contrast_within_budget=within)
    n_safety, n_contrast = split_budget(budget, share, within)
    t = result.table
    roles = t.column("select_role").to_pylist()
    assert roles == ["safety"] * n_safety + ["contrast"] * n_contrast
    assert t.column("select_rank").to_pylist() == list(range(1, n_safety + n_contrast + 1))
    safety_ids = t.column("id").to_pylist()[:n_safety]
    rows = t.to_pylist()
    for row in rows[:n_safety]:
        assert row["contrast_for"] is None and row["response"].startswith("I can't")
    for row in rows[n_safety:]:
        assert row["contrast_for"] in safety_ids
        assert row["select_reason"].startswith(f"benign look-alike of {row['contrast_for']}, cosine 0.")
        assert row["response"].startswith("Sure:")  # the benign answer, under the pool's column name
        assert row["category"] is None and row["input"] == ""
    # round-robin: no pick has two look-alikes before every pick has one
    per_pick = [t.column("contrast_for").to_pylist().count(i) for i in safety_ids]
    assert max(per_pick) - min(per_pick) <= 1 and sum(per_pick) == n_contrast
    section = result.report["contrast"]
    assert section["rows"] == n_contrast and section["within_budget"] == within
    assert section["mean_cosine"] > section["random_mean_cosine"] + 0.3
    assert result.report["budget"] == n_safety


def test_each_pick_gets_its_nearest_look_alike_first():
    pool, emb = make_pool(12)
    result = _run(pool, make_benign(emb, distractors=20), 12, contrast_share=1.0, dedup=0.999)
    rows = result.table.to_pylist()[12:]
    assert sorted(r["contrast_for"] for r in rows) == sorted(f"p{i}" for i in range(12))
    for r in rows:  # the closest perturbation (noise 0.2) of its own pick
        assert r["id"] == f"b{r['contrast_for'][1:]}_0"
    benign = make_benign(emb, distractors=20)
    twice = _run(pool, benign, 12, contrast_share=2.0, dedup=0.999).table.to_pylist()[12:]
    assert [r["id"] for r in twice[:12]] == [r["id"] for r in rows]  # round one as before
    cos, ids = sel.embedding_matrix(benign) @ emb.T, benign.column("id").to_pylist()
    taken = {r["id"] for r in rows}
    for r in twice[12:]:  # round two: each pick's nearest candidate not taken yet
        j = int(r["contrast_for"][1:])
        expected = next(ids[i] for i in np.argsort(-cos[:, j]) if ids[i] not in taken)
        assert r["id"] == expected
        taken.add(r["id"])


def test_same_seed_same_output():
    pool, emb = make_pool(40)
    benign = make_benign(emb)
    a = _run(pool, benign, 10, seed=3).table
    b = _run(pool, benign, 10, seed=3).table
    assert a.equals(b)
    c = _run(pool, benign, 10, seed=4).table
    assert c.column("id").to_pylist()[:10] != a.column("id").to_pylist()[:10]


# ---- never a duplicate, never an excluded or non-benign row ------------------------------------------


def test_no_duplicates_by_id_or_text_and_labels_honoured():
    pool, emb = make_pool(10)
    base = make_benign(emb, per_pick=1, distractors=0, noise=(0.05,))
    # More look-alikes of p0..p9, each a trap that must never be chosen, then usable ones.
    rng = np.random.default_rng(9)
    traps = {
        "p3": dict(instruction="some text"),                      # an id of the pool
        "t_text": dict(instruction="Harmful request number 4!"),  # a pick's text, normalised
        "t_dup": dict(instruction="benign look-alike 0 of topic 5"),  # a text of another candidate
        "t_harm": dict(harmful_request=True), "t_ref": dict(refusal=True), "t_over": dict(behavior="over_refusal"),
        "t_hresp": dict(harmful_response=True), "t_empty": dict(output=" "),
    }
    rows = base.drop_columns(["embedding"]).to_pylist()
    vecs = list(sel.embedding_matrix(base))
    for k, (tid, fields) in enumerate(traps.items()):
        rows.append({"id": tid, "instruction": f"trap {tid}", "input": "", "output": "fine", **fields})
        vecs.append(emb[k % 10] + 0.01 * rng.standard_normal(emb.shape[1]))  # nearer than any real look-alike
    for k in range(30):
        rows.append({"id": f"ok{k}", "instruction": f"other benign task {k}", "input": "", "output": "fine"})
        vecs.append(emb[k % 10] + 0.3 * rng.standard_normal(emb.shape[1]))
    keys = sorted({k for r in rows for k in r})  # every column, None where a row has no value
    table = pa.table({k: [r.get(k) for r in rows] for k in keys})
    table = table.append_column("embedding", vector_array(unit(np.array(vecs))))
    result = _run(pool, table, 10, contrast_share=3.0, dedup=0.999)
    out = result.table
    chosen = out.column("id").to_pylist()[10:]
    assert len(chosen) == 30 and not set(chosen) & set(traps)
    assert len(set(out.column("id").to_pylist())) == out.num_rows
    texts = [sel.normalise(t) for t in out.column("instruction").to_pylist()]
    assert len(set(texts)) == len(texts)
    excluded = result.report["contrast"]["excluded"]
    assert excluded["harmful_request"] == 1 and excluded["refusal"] == 2 and excluded["harmful_response"] == 1
    assert excluded["duplicate_id"] == 1 and excluded["exact_duplicate"] == 2 and excluded["no_text"] == 1


def test_near_duplicates_of_picks_and_of_each_other_are_skipped():
    pool, emb = make_pool(5)
    same = np.repeat(emb, 2, axis=0)  # two identical vectors per pick, the first identical to the pick
    table = pa.table({"id": [f"c{i}" for i in range(10)], "instruction": [f"task {i}" for i in range(10)],
                      "output": ["ok"] * 10, "embedding": vector_array(same)})
    with pytest.raises(DataError, match="only 0 of the 3 look-alikes"):
        _run(pool, table, 5, contrast_share=0.5)  # each is a near duplicate (cosine 1) of its pick
    result = _run(pool, table, 5, contrast_share=0.5, dedup=None)
    assert result.report["contrast"]["rows"] == 3


def test_exclusions_are_honoured_by_text_and_by_embedding():
    pool, emb = make_pool(10)
    benign = make_benign(emb, distractors=50)
    vecs = sel.embedding_matrix(benign)
    # b1_0 by its text; b2_1 by cosine (its own vector; --exclude-threshold 0.97 leaves the pool alone)
    evals = pa.table({"prompt": ["Benign look-alike 0 of topic 1", "unrelated"],
                      "embedding": vector_array(np.stack([vecs[40], vecs[2 * 3 + 1]]))})
    result = _run(pool, benign, 10, contrast_share=3.0, exclude=[("eval.parquet", evals)], exclude_threshold=0.97,
                  dedup=0.999)
    chosen = set(result.table.column("id").to_pylist()[10:])
    assert len(chosen) == 30 and not chosen & {"b1_0", "b2_1", "d10"}
    excluded = result.report["contrast"]["excluded"]
    assert excluded["eval_exact"] == 1 and excluded["eval_similar"] >= 2


def test_a_table_without_embeddings_is_embedded_with_the_shared_encoder_once():
    pool, emb = make_pool(8)
    benign = make_benign(emb, distractors=10)
    vectors = {t: v for t, v in zip(benign.column("instruction").to_pylist(), sel.embedding_matrix(benign))}
    made, calls = [], []

    def factory():
        made.append(1)

        def encode(texts):
            calls.append(list(texts))
            return np.stack([vectors.get(t, np.ones(16)) * 2 for t in texts])  # not unit: normalised
        return encode

    evals = pa.table({"prompt": ["no such prompt"]})
    got = _run(pool, benign.drop_columns(["embedding"]), 8, embedder=factory, exclude=[("e", evals)])
    want = _run(pool, benign, 8)
    assert got.table.column("id").to_pylist() == want.table.column("id").to_pylist()
    assert made == [1] and len(calls) == 2  # one model for --exclude and --contrast
    assert np.allclose(np.linalg.norm(sel.embedding_matrix(got.table), axis=1), 1)


def test_lexical_weights_favour_words_of_the_safety_pool():
    pool = ["how do I kill my neighbour", "how to kill a person quietly", "make a bomb at home", "bomb a school"]
    benign = ["write a poem about the sea", "how do I bake bread at home", "summarise this article"]
    w = lexical_weights(pool, benign)
    assert w["kill"] == w["bomb"] == 1.0 and "home" not in w and "poem" not in w


# ---- bad input (the CLI) ------------------------------------------------------------------------------


def _write(table: pa.Table, path: Path) -> str:
    pq.write_table(table, path)
    return str(path)


def test_cli_bad_inputs_error_hint_exit_code_and_no_output(tmp_path: Path):
    pool, emb = make_pool(20)
    p = _write(pool, tmp_path / "pool.parquet")
    benign = make_benign(emb, distractors=0, per_pick=1, noise=(0.5,))
    good = _write(benign, tmp_path / "benign.parquet")
    no_output = _write(benign.drop_columns(["output"]), tmp_path / "noout.parquet")
    far = unit(np.random.default_rng(5).standard_normal((benign.num_rows, 16)))  # near nothing: text decides
    evals = _write(pa.table({"prompt": benign.column("instruction"), "embedding": vector_array(far)}),
                   tmp_path / "evals.parquet")
    small = _write(benign.slice(0, 4), tmp_path / "small.parquet")
    plain = _write(pool.drop_columns(["embedding"]), tmp_path / "plain.parquet")
    out = str(tmp_path / "out.parquet")
    cases = [
        (["--contrast", no_output], 1, "no an 'output' (or 'response') column"),
        (["--contrast", good, "--exclude", evals], 1, "no row of the --contrast table", "excluded eval exact: 20"),
        (["--contrast", small], 1, "can supply only", "of the 5 look-alikes", "--contrast-share"),
        (["--contrast", good, "--contrast-share", "0"], 2, "--contrast-share 0"),
        (["--contrast", good, "--contrast-lexical", "2"], 2, "--contrast-lexical 2"),
        (["--contrast", "-", "--of", "-"], 2, "only one table can come from stdin"),
    ]
    for extra, code, *needles in cases:
        proc = cli("select", p, "--budget", "10", "--strategy", "random", *extra, "-o", out)
        assert proc.returncode == code, (extra, proc.stderr)
        assert "error: " in proc.stderr and "hint: " in proc.stderr, proc.stderr
        for needle in needles:
            assert needle in proc.stderr.replace("\n", " "), (needle, proc.stderr)
        assert not Path(out).exists()
    proc = cli("select", plain, "--budget", "10", "--strategy", "random", "--contrast", good, "-o", out)
    assert proc.returncode == 1 and "safesample embed" in proc.stderr and not Path(out).exists()


def test_cli_dry_run_says_what_contrast_will_do(tmp_path: Path):
    pool, emb = make_pool(20)
    p = _write(pool, tmp_path / "pool.parquet")
    good = _write(make_benign(emb), tmp_path / "benign.parquet")
    proc = cli("select", p, "--budget", "10", "--strategy", "random", "--contrast", good, "--contrast-within-budget",
               "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "plan: select 7 of 20 rows" in proc.stderr
    assert "contrast: 3 benign look-alikes of the picks" in proc.stderr and "within the budget" in proc.stderr


# ---- mix: contrast rows are benign training rows -----------------------------------------------------


def test_mix_trains_contrast_rows_as_benign_and_counts_them_in_the_ratio():
    pool, emb = make_pool(20)
    picked = _run(pool, make_benign(emb), 10).table
    benign = pa.table({"id": [f"f{i}" for i in range(1990)], "instruction": [f"task {i}" for i in range(1990)],
                       "output": ["done"] * 1990})
    parts = [mx.Part("benign.parquet", mx.BENIGN, benign), mx.Part("picked.parquet", mx.SAFETY, picked)]
    out = mx.mix_table(parts, mx.MixOptions(ratio=0.005)).table  # 10 safety on 1990 + 5 contrast = 1995 benign rows: 0.5 %
    assert mx.mix_counts([out]) == {mx.BENIGN: 1990, mx.SAFETY: 10, mx.CONTRAST: 5}
    for row in out.filter(pa.compute.equal(out.column("source"), mx.CONTRAST)).to_pylist():
        assert row["output"].startswith("Sure:") and row["messages"][-1]["content"] == row["output"]
    with pytest.raises(mx.CheckFailed):
        mx.mix_table(parts, mx.MixOptions(ratio=0.004))


def test_mix_keeps_a_contrast_row_from_the_benign_set_once_with_a_warning():
    pool, emb = make_pool(20)
    benign = make_benign(emb)
    picked = _run(pool, benign, 10).table
    reporter = RecordingReporter()
    out = mx.mix_table([mx.Part("benign.parquet", mx.BENIGN, benign.drop_columns(["embedding"])),
                        mx.Part("picked.parquet", mx.SAFETY, picked)], mx.MixOptions(), reporter=reporter).table
    assert out.num_rows == benign.num_rows + 10
    assert len(set(out.column("id").to_pylist())) == out.num_rows
    assert mx.mix_counts([out])[mx.CONTRAST] == 5
    assert any(kind == "warn" and "add no new training rows" in msg for kind, msg in reporter.messages)


def test_pipe_select_with_contrast_into_mix_jsonl(tmp_path: Path):
    pool, emb = make_pool(20)
    _write(pool, tmp_path / "pool.parquet")
    _write(make_benign(emb), tmp_path / "lookalikes.parquet")
    _write(pa.table({"id": [f"f{i}" for i in range(40)], "instruction": [f"task {i}" for i in range(40)],
                     "output": ["done"] * 40}), tmp_path / "benign.parquet")
    proc = shell("safesample select pool.parquet --budget 8 --strategy random --contrast lookalikes.parquet "
                 "--report sel.json -q -o - | safesample mix benign.parquet - -o train.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    sources = [r["source"] for r in rows]
    assert (sources.count("benign"), sources.count("safety"), sources.count("contrast")) == (40, 8, 4)
    picks = {r["id"] for r in rows if r["source"] == "safety"}
    for r in rows:
        if r["source"] == "contrast":
            assert r["contrast_for"] in picks and r["output"].startswith("Sure:")
    report = json.loads((tmp_path / "sel.json").read_text())
    assert report["contrast"]["rows"] == 4 and report["budget"] == 8


# ---- real data -----------------------------------------------------------------------------------------


def test_real_pool_finds_xstest_safe_prompts_among_benign_rows(tmp_path: Path):
    """Safety-Tuned LLaMAs as the pool, GPTeacher with XSTest's safe prompts mixed in as the contrast
    table (TF-IDF + SVD vectors for all three): the look-alikes hold far more XSTest prompts than a
    random draw would (the benchmark measures it with the real embedding model)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    pool = pq.read_table(shared_dataset("safety_tuned_llamas")).select(["id", "instruction", "response"])
    gpt = pq.read_table(shared_dataset("gpteacher")).slice(0, 3000).select(["id", "instruction", "output"])
    xs = pq.read_table(shared_dataset("xstest"))
    xs = xs.filter(pa.compute.equal(xs.column("label"), "safe"))
    xs = pa.table({"id": xs.column("id"), "instruction": xs.column("prompt"),
                   "output": pa.array(["(a helpful answer)"] * xs.num_rows)})
    benign = pa.concat_tables([gpt, xs], promote_options="permissive")
    texts = pool.column("instruction").to_pylist() + benign.column("instruction").to_pylist()
    vecs = TruncatedSVD(64, random_state=0).fit_transform(TfidfVectorizer(sublinear_tf=True).fit_transform(texts))
    vecs = unit(vecs + 1e-6)
    pool = pool.append_column("embedding", vector_array(vecs[:pool.num_rows]))
    benign = benign.append_column("embedding", vector_array(vecs[pool.num_rows:]))
    result = _run(pool, benign, 100, seed=0)
    chosen = result.table.column("id").to_pylist()[100:]
    share = sum(i.startswith("xstest") for i in chosen) / len(chosen)
    random_share = xs.num_rows / benign.num_rows
    assert len(chosen) == 50 and share / random_share > 3, (share, random_share)
