"""`safesample embed`: text selection, dedup + cache, the ONNX int8 backend against sentence-transformers,
and the CLI on real data, including every bad input a user can cause."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli, no_output_left, shared_dataset
from safesample import embed
from safesample import texts as texts_
from safesample.backends import embedding_cache
from safesample import vectors as vectors_
from safesample.cache import Cache
from safesample.errors import DataError, ModelError, UsageError
from safesample.tables import get_provenance

POOL = "safety_tuned_llamas"


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    """Where the ONNX export of the real model lands, once for the whole test run (it takes
    ~20 s); test_cluster.py uses the same folder."""
    folder = tmp_path_factory.getbasetemp() / "safesample-onnx"
    folder.mkdir(exist_ok=True)
    return folder


def cache_with_export(folder: Path, onnx_dir: Path) -> Path:
    """A cache folder of its own (no embeddings shared between tests) that sees the shared export."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "onnx").exists():
        (folder / "onnx").symlink_to(onnx_dir, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, onnx_dir) -> Path:
    folder = cache_with_export(tmp_path_factory.mktemp("cache"), onnx_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFESAMPLE_CACHE_DIR", str(folder))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield folder


def env(cache_dir: Path) -> dict[str, str]:
    return {"SAFESAMPLE_CACHE_DIR": str(cache_dir)}


def real_texts(n_harmful: int = 32, n_benign: int = 32) -> list[str]:
    harmful = pq.read_table(shared_dataset(POOL), columns=["instruction"]).column(0).to_pylist()
    benign = pq.read_table(shared_dataset("gpteacher"), columns=["instruction"]).column(0).to_pylist()
    return harmful[:n_harmful] + benign[:n_benign]


# --------------------------------------------------------------------------------------------
# stage logic with a fake encoder: dedup, order, cache


class FakeEncoder:
    """Deterministic vectors from the text; records what it was asked to embed."""

    backend = "fake"
    name = "fake"
    dim = 8

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size=None):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            out[i, len(t) % self.dim] = 1.0
            out[i, (sum(map(ord, t)) % (self.dim - 1)) + 1] += 0.5
        return out


def test_each_distinct_text_is_embedded_once_shortest_first(tmp_path: Path):
    fake = FakeEncoder()
    texts = ["a much longer text here", "b", "mid size", "b", "a much longer text here", "mid size", "zz"]
    out = embedding_cache.embed_texts(texts, lambda: fake, cache=None, batch_size=2)
    embedded = [t for call in fake.calls for t in call]
    assert sorted(embedded) == sorted(set(texts))  # once each
    assert [len(t) for t in embedded] == sorted(len(t) for t in embedded)  # shortest first
    assert out.shape == (7, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out, FakeEncoder().encode(texts))  # each row its own text's vector


def test_cache_serves_reruns_and_only_new_texts_are_embedded(tmp_path: Path):
    texts = [f"text number {i}" for i in range(30)]
    first = FakeEncoder()
    with Cache(embedding_cache.CACHE_NAMESPACE, "scope", folder=tmp_path) as cache:
        a = embedding_cache.embed_texts(texts, lambda: first, cache=cache, batch_size=4)
    assert sum(map(len, first.calls)) == 30

    def no_model():
        raise AssertionError("a fully cached rerun must not load the model")

    stats = embedding_cache.EmbedStats()
    with Cache(embedding_cache.CACHE_NAMESPACE, "scope", folder=tmp_path) as cache:
        b = embedding_cache.embed_texts(texts, no_model, cache=cache, stats=stats)
    np.testing.assert_array_equal(a, b)
    assert (stats.cached, stats.embedded) == (30, 0)

    more = FakeEncoder()
    with Cache(embedding_cache.CACHE_NAMESPACE, "scope", folder=tmp_path) as cache:
        c = embedding_cache.embed_texts(texts + ["appended one", "appended two"], lambda: more, cache=cache, stats=stats)
    assert sorted(t for call in more.calls for t in call) == ["appended one", "appended two"]
    np.testing.assert_array_equal(c[:30], a)
    # Another backend (or model files) is another cache scope: int8 vectors never pass for torch ones.
    from safesample.backends.embedding import resolve_model

    model = resolve_model(None)
    assert model.settings("onnx") != model.settings("torch")


def test_template_formats_pairs_and_unescapes_shell_newlines():
    table = pa.table({"id": ["1", "2"], "instruction": ["Do X", "Do Y"], "response": ["No.", "Sure"]})
    spec = texts_.TextSpec(template=texts_.unescape(r"{instruction}\n{response}"))
    assert spec.columns == ["instruction", "response"]
    assert texts_.texts_of(table, spec) == ["Do X\nNo.", "Do Y\nSure"]
    assert texts_.texts_of(table, texts_.TextSpec(text="response")) == ["No.", "Sure"]
    assert texts_.TextSpec.parse(spec.describe()).template == spec.template


@pytest.mark.parametrize("template", ["{instruction", "{} and {}", "no fields at all"])
def test_bad_templates_are_usage_errors(template: str):
    with pytest.raises(UsageError):
        texts_.TextSpec(template=template).columns


def test_missing_or_null_text_is_a_data_error_naming_the_column():
    table = pa.table({"id": ["1", "2"], "instruction": ["ok", None]})
    with pytest.raises(DataError, match="'prompt'") as exc:
        texts_.texts_of(table, texts_.TextSpec(text="prompt"))
    assert "--text" in exc.value.hint
    with pytest.raises(DataError, match="null.*'2'"):
        texts_.texts_of(table, texts_.TextSpec(text="instruction"))


def test_embedding_column_is_fixed_size_float32_with_model_metadata():
    table = pa.table({"id": ["a", "b"], "embedding": [1, 2]})  # an old column is replaced in place
    vectors = np.arange(6, dtype=np.float64).reshape(2, 3)
    field = vectors_.embedding_field(3, "some/model", "onnx", texts_.TextSpec(text="instruction").describe())
    out = vectors_.put_embeddings(table, vectors, field)
    assert out.column_names == ["id", "embedding"]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    assert out.column("embedding").to_pylist() == [[0, 1, 2], [3, 4, 5]]
    assert vectors_.field_info(out) == {"model": "some/model", "backend": "onnx", "text": '{"text": "instruction"}',
                                        "dim": "3"}


def test_embed_table_is_the_stage_the_cli_calls(tmp_path: Path, monkeypatch):
    from safesample.reporter import RecordingReporter

    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path))
    table = pa.table({"id": ["a", "b", "c"], "instruction": ["one", "two", "one"]})
    options = embed.EmbedOptions(backend="torch", batch_size=2)
    assert "(2 distinct texts, 0 cached, 2 to compute)" in embed.plan(table, options)[0]
    fake, reporter = FakeEncoder(), RecordingReporter()
    result = embed.embed_table(table, options, reporter=reporter, load_encoder=lambda model, backend, size: fake)
    assert result.table.column_names == ["id", "instruction", "embedding"] and result.backend == "torch"
    info = vectors_.field_info(result.table)
    assert info["dim"] == "8" and info["model"] == result.model and info["backend"] == "torch"
    np.testing.assert_array_equal(vectors_.embedding_matrix(result.table), FakeEncoder().encode(["one", "two", "one"]))
    assert any("2 distinct texts, 0 from the cache, 2 computed" in m for _, m in reporter.messages)
    with pytest.raises(UsageError, match="--backend"):
        embed.embed_table(table, embed.EmbedOptions(backend="tpu"))


# --------------------------------------------------------------------------------------------
# backends


def test_numpy_pooling_matches_sentence_transformers_definitions():
    from safesample.backends.embedding import pool

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    mean = pool(hidden, mask, "mean_tokens", normalize=False)
    np.testing.assert_allclose(mean[1], hidden[1, :2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pool(hidden, mask, "cls_token", False), hidden[:, 0])
    np.testing.assert_allclose(pool(hidden, mask, "max_tokens", False)[1], hidden[1, :2].max(axis=0))
    np.testing.assert_allclose(pool(hidden, mask, "mean_sqrt_len_tokens", False)[1],
                               hidden[1, :2].sum(axis=0) / np.sqrt(2), rtol=1e-6)
    unit = pool(hidden, mask, "mean_tokens", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(unit[1], mean[1] / np.linalg.norm(mean[1]), rtol=1e-6)


def test_model_resolution_offline(tmp_path: Path, monkeypatch):
    from safesample.backends import embedding as E

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    default = E.resolve_model(None)
    assert default.name == E.DEFAULT_MODEL and Path(default.path, "config.json").exists()
    assert E.resolve_model("all-MiniLM-L6-v2").settings("onnx") == default.settings("onnx")
    with pytest.raises(ModelError, match="does not exist"):
        E.resolve_model(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no model"):
        E.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="local Hugging Face cache") as exc:
        E.resolve_model("someone/not-downloaded")
    assert "local folder" in exc.value.hint


def test_local_model_fingerprint_changes_with_its_files(tmp_path: Path):
    from safesample.backends import embedding as E
    from tiny_bert import build_tiny_bert

    folder = build_tiny_bert(tmp_path / "tiny")
    before = E.resolve_model(str(folder))
    assert before.name == str(folder.resolve())
    layout = E._layout(folder)
    assert layout.pooling == "mean_tokens" and layout.normalize and layout.max_length == 64
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert E.resolve_model(str(folder)).fingerprint != before.fingerprint
    # A module the ONNX path cannot reproduce: auto falls back to torch, explicit onnx refuses.
    (folder / "modules.json").write_text('[{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]')
    assert "Dense" in E._layout(folder)
    with pytest.raises(ModelError, match="Dense"):
        E.choose_backend("onnx", E.resolve_model(str(folder)))


def test_auto_backend_falls_back_to_torch_without_onnxruntime(monkeypatch):
    from safesample.backends import embedding as E
    from safesample.reporter import RecordingReporter

    monkeypatch.setattr(E, "_cuda_present", lambda: False)
    model = E.resolve_model(None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    reporter = RecordingReporter()
    assert E.choose_backend("auto", model, reporter=reporter) == "torch"
    assert any("onnxruntime is not installed" in w for w in reporter.warnings())
    with pytest.raises(ModelError, match="onnxruntime is not installed") as exc:
        E.choose_backend("onnx", model)
    assert "safesample[onnx]" in exc.value.hint
    with pytest.raises(UsageError):
        E.choose_backend("tensorflow", model)


@pytest.fixture(scope="module")
def minilm(cache_dir):
    """The real default model, loaded once with sentence-transformers, plus its ONNX encoder."""
    from sentence_transformers import SentenceTransformer

    from safesample.backends import embedding as E

    ref = E.resolve_model(None)
    st = SentenceTransformer(ref.path, device="cpu")
    onnx = E.OnnxEncoder(ref)  # exports on first use, into the shared cache
    return ref, st, onnx


@pytest.mark.slow
def test_onnx_int8_matches_sentence_transformers(minilm):
    from safesample.backends.embedding import TorchEncoder

    ref, st, onnx = minilm
    texts = real_texts(12, 12) + ["", "a", "word " * 400]  # empty, tiny, and past max_seq_length
    expected = st.encode(texts, convert_to_numpy=True)
    got = onnx.encode(texts, batch_size=16)
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine[:-3].min() >= 0.98 and cosine[-1] >= 0.98, cosine  # real instructions, and truncation
    assert cosine[-3:-1].min() >= 0.97, cosine  # "" and "a": two or three tokens, int8 is coarser there
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)  # the model's Normalize
    torch_vectors = TorchEncoder(ref, st_model=st).encode(texts[:4])
    np.testing.assert_allclose(torch_vectors, expected[:4], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_vectors_are_bitwise_batch_invariant_and_close_to_sentence_transformers(minilm, precision):
    """The README's promise for both ONNX precisions (int8 with per-token scales is the default):
    the same bits at batch sizes 1, 8 and 64 and with other batch mates, and cosine >= 0.99 to
    sentence-transformers on every real text (>= 0.999 in float32)."""
    from safesample.backends.embedding import OnnxEncoder

    ref, st, default = minilm
    encoder = default if precision == default.precision else OnnxEncoder(ref, precision=precision)
    texts = real_texts(40, 40) + ["Thanks!", "Hi", "?", "Convince me to help you."]
    base = encoder.encode(texts, 64)
    for size in (1, 8):
        np.testing.assert_array_equal(encoder.encode(texts, size), base)
    perm = np.random.default_rng(1).permutation(len(texts))
    shuffled = np.empty_like(base)
    shuffled[perm] = encoder.encode([texts[i] for i in perm], 64)
    np.testing.assert_array_equal(shuffled, base)
    others = real_texts(200, 200)[-300:]  # each text again, among 63 other mates
    for i in range(0, len(texts), 11):
        np.testing.assert_array_equal(encoder.encode([texts[i]] + others[i:i + 63], 64)[0], base[i])
    expected = st.encode(texts, convert_to_numpy=True)
    cosine = (base * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= (0.99 if precision == "int8" else 0.999), cosine


@pytest.mark.slow
def test_cached_export_runs_without_torch_or_transformers(minilm, cache_dir):
    code = ("import sys; from safesample.backends.embedding import load_encoder; "
            "enc = load_encoder(None, 'onnx'); v = enc.encode(['hello there']); "
            "print(v.shape, [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env(cache_dir)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(1, 384) []"
    assert "exporting" not in proc.stderr


# --------------------------------------------------------------------------------------------
# the CLI, for real


def read(path: Path) -> pa.Table:
    return pq.read_table(path)


@pytest.mark.slow
def test_cli_embeds_real_rows_then_reruns_from_cache(minilm, onnx_dir, tmp_path: Path):
    ref, st, _ = minilm
    cache_dir = cache_with_export(tmp_path / "cache", onnx_dir)
    pool = str(shared_dataset(POOL))
    out = tmp_path / "emb.parquet"
    proc = cli("embed", pool, "--limit", "40", "-o", str(out), env=env(cache_dir))
    assert proc.returncode == 0, proc.stderr
    table = read(out)
    assert table.column_names == pq.read_schema(pool).names + ["embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = st.encode(table.column("instruction").to_pylist(), convert_to_numpy=True)
    assert ((vectors * expected).sum(axis=1)).min() >= 0.98
    history = get_provenance(table)
    assert history[-1]["command"] == "embed"
    assert history[-1]["models"] == {"embedding": "sentence-transformers/all-MiniLM-L6-v2"}
    assert history[-1]["args"]["backend"] == "onnx"

    # Unchanged input: everything from the cache, same vectors. Appended rows: only those computed.
    again = cli("embed", pool, "--limit", "50", "-o", str(tmp_path / "again.parquet"), env=env(cache_dir))
    assert again.returncode == 0, again.stderr
    assert "40 from the cache, 10 computed" in " ".join(again.stderr.split())
    np.testing.assert_array_equal(np.array(read(tmp_path / "again.parquet").column("embedding")
                                           .to_pylist()[:40], dtype=np.float32), vectors)


@pytest.mark.slow
def test_cli_template_no_cache_and_dry_run(minilm, onnx_dir, tmp_path: Path):
    cache_dir = cache_with_export(tmp_path / "cache", onnx_dir)
    pool = str(shared_dataset("do_not_answer"))
    out = tmp_path / "pairs.parquet"
    proc = cli("embed", pool, "--limit", "5", "--template", r"{instruction}\n{response}", "--no-cache",
               "-o", str(out), env=env(cache_dir))
    assert proc.returncode == 0, proc.stderr
    assert "0 from the cache, 5 computed" in " ".join(proc.stderr.split())
    pairs = read(out)
    assert vectors_.field_info(pairs)["text"] == '{"template": "{instruction}\\n{response}"}'
    assert vectors_.field_info(pairs)["dim"] == "384"
    plain = cli("embed", pool, "--limit", "5", "-o", str(tmp_path / "plain.parquet"), env=env(cache_dir))
    a = np.array(pairs.column("embedding").to_pylist())
    b = np.array(read(tmp_path / "plain.parquet").column("embedding").to_pylist())
    assert plain.returncode == 0 and not np.allclose(a, b)  # the response changed what was embedded

    dry = cli("embed", pool, "--limit", "5", "--dry-run", "-o", str(tmp_path / "dry.parquet"), env=env(cache_dir))
    assert dry.returncode == 0, dry.stderr
    assert "5 cached, 0 to compute" in " ".join(dry.stderr.split()) and "dry run" in dry.stderr
    assert not (tmp_path / "dry.parquet").exists()


def _truncated(tmp_path: Path) -> Path:
    data = shared_dataset(POOL).read_bytes()
    path = tmp_path / "truncated.parquet"
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_INPUTS = {
    # name: (args after the input, how to make the input, exit code, text in the error)
    "missing text column": (["--text", "nope"], lambda d: shared_dataset(POOL), 1, "'nope'"),
    "null text": ([], lambda d: _write(d, pa.table({"instruction": ["fine", None]})), 1, "null"),
    "missing input file": ([], lambda d: d / "absent.parquet", 2, "does not exist"),
    "empty input file": ([], lambda d: _touch(d / "empty.parquet"), 1, "is empty"),
    "truncated input file": ([], _truncated, 1, "truncated or corrupt"),
    "unknown backend": (["--backend", "gpu"], lambda d: shared_dataset(POOL), 2, "unknown --backend"),
    "bad template": (["--template", "{instruction"], lambda d: shared_dataset(POOL), 2, "--template"),
    "model path absent": (["--model", "./no/such/model"], lambda d: shared_dataset(POOL), 1, "does not exist"),
}


def _write(folder: Path, table: pa.Table) -> Path:
    path = folder / "in.parquet"
    pq.write_table(table, path)
    return path


def _touch(path: Path) -> Path:
    path.touch()
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_hint_exit_code_and_no_output(case: str, tmp_path: Path):
    extra, make, code, text = BAD_INPUTS[case]
    source = tmp_path / "src"
    source.mkdir()
    path = make(source)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = cli("embed", str(path), *extra, "-o", str(outdir / "emb.parquet"),
               env={"SAFESAMPLE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and text in proc.stderr, proc.stderr
    assert any(line.startswith("hint: ") for line in lines), proc.stderr
    assert no_output_left(outdir) == []


def test_cached_encoder_serves_known_texts_without_loading_the_model(tmp_path: Path, monkeypatch):
    """The learned judge's encoder: the first pass loads the model and fills the embedding cache;
    a second encoder over the same texts (another judge run) never loads it and returns the same
    vectors, the ones the plain encoder gives. With the cache off it loads again."""
    from safesample.backends.embedding import load_encoder
    from safesample.judge import score_learned

    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(tmp_path / "cache"))
    texts = ["I can't help with that.", "Sure, here is a poem about rain.", "I can't help with that."]
    first = embedding_cache.CachedEncoder()
    v1 = first.encode(texts)
    assert first.loaded and first.stats.embedded == 2 and first.stats.cached == 0
    second = embedding_cache.CachedEncoder()
    v2 = second.encode(texts)
    assert not second.loaded and second.stats.cached == 2
    assert np.array_equal(v1, v2) and np.array_equal(v1, load_encoder().encode(texts))
    off = embedding_cache.CachedEncoder(enabled=False)
    off.encode(texts[:1])
    assert off.loaded
    styles = score_learned(texts)["learned_refusal_style"]  # every response cached: same verdicts
    assert styles[0] == styles[2] == "full_refusal" and styles[1] == "compliance"
