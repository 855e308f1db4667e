"""`safesample audit`: the direction and both scores on synthetic hidden states with known
answers, the layer choice, the anchors' rules, early stopping (tiny Llama), the stage end to end
(input order, errors, cache, drop-top) and every bad input through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import no_output_left
from safesample.audit import AuditOptions, audit_table, batch_options, finish, prepare, provenance
from safesample.audit.anchors import MIN_PER_KIND, anchor_kinds, anchors_from_table
from safesample.audit.direction import (Direction, candidate_layers, choose_layer, class_direction, layer_aurocs,
                                        row_scores)
from safesample.errors import DataError, UsageError

pytestmark = pytest.mark.usefixtures("offline_models")

_RUN = """import sys
from safesample import cli
from safesample.cli import audit
if audit.NAME not in {c.name for c in cli.app.registered_commands}:  # until the stage registry lists audit
    cli.app.command(audit.NAME, help=audit.HELP, no_args_is_help=True)(audit.command)
sys.exit(cli.main(sys.argv[1:]))
"""


def audit_cli(*args: str) -> subprocess.CompletedProcess:
    """`safesample audit ARGS` in a subprocess, like conftest.cli (torch loads in 3-7 s: the
    bad-input cases run in this process instead, through `audit_main`)."""
    env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _RUN, "audit", *args], capture_output=True, env=env, timeout=300)
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    return proc


def audit_main(capsys, *args: str) -> tuple[int, str]:
    """`safesample audit ARGS` through the CLI's own main() in this process: (exit code, stderr)."""
    from safesample import cli
    from safesample.cli import audit

    if audit.NAME not in {c.name for c in cli.app.registered_commands}:
        cli.app.command(audit.NAME, help=audit.HELP, no_args_is_help=True)(audit.command)
    capsys.readouterr()
    code = cli.main(["audit", *args])
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# synthetic hidden states: known answers


def _direction(vector, similarity, layer: int = 1) -> Direction:
    return Direction(layer=layer, vector=np.asarray(vector, np.float32), similarity=np.asarray(similarity, np.float32),
                     held_out_auroc=1.0, cv_auroc={layer: 1.0}, forced=False, model="m", fingerprint="f",
                     dtype="float32", template="chat", max_tokens=256, anchors_name="a", anchors_digest="d")


def test_the_direction_is_the_unit_difference_of_class_means():
    rng = np.random.default_rng(0)
    e1 = np.eye(4)[0]
    compliant = rng.normal(0, 0.01, (20, 4)) + 3 * e1
    refusing = rng.normal(0, 0.01, (20, 4)) + 1 * e1
    states = np.vstack([compliant, refusing])
    d = class_direction(states, np.array([True] * 20 + [False] * 20))
    assert np.linalg.norm(d) == pytest.approx(1.0)
    assert d @ e1 == pytest.approx(1.0, abs=1e-3)


def test_both_scores_have_their_known_values():
    e1, e2, e3 = np.eye(3)
    # compliant anchors' last tokens along e1, refusing along e2: the similarity vector is e1 - e2
    direction = _direction(e1, e1 - e2)
    response = np.array([3 * e1 + 5 * e3, 0.5 * e1, e2])
    last_prompt = np.array([1 * e1, 2 * e1, e3])
    last = np.array([4 * e1, 7 * e2, e1 + e2])
    score, similarity = row_scores(response, last_prompt, last, direction)
    # score: mean response projection minus the last prompt token's (orthogonal parts ignored)
    assert score == pytest.approx([2.0, -1.5, 0.0])
    # similarity: cosine to compliant (e1) minus cosine to refusing (e2), length ignored
    assert similarity == pytest.approx([1.0, -1.0, 0.0], abs=1e-7)


def test_layer_choice_takes_the_shallowest_layer_that_separates():
    rng = np.random.default_rng(1)
    n, hidden = 60, 8
    compliant = np.arange(n) % 2 == 0
    states = rng.normal(size=(n, 3, hidden))
    states[compliant, 1, 0] += 4.0  # layer 2 and 3 separate the kinds; layer 1 is noise
    states[compliant, 2, 0] += 6.0
    held_out = np.arange(n) % 10 < 3
    folds = np.where(held_out, -1, np.arange(n) % 5)
    cv, held = layer_aurocs(states, compliant, held_out, folds)
    assert cv[0] < 0.75 and cv[1] > 0.95 and cv[2] > 0.95
    assert held[1] > 0.95
    assert choose_layer([1, 2, 3], cv) == 2  # as good as layer 3 within the tolerance, and cheaper
    assert choose_layer([1, 2, 3], [0.6, 0.80, 0.95]) == 3
    assert candidate_layers(24) == list(range(1, 20)) and candidate_layers(2) == [1]


def test_direction_round_trips_through_bytes():
    d = _direction(np.eye(3)[0], np.eye(3)[1], layer=7)
    back = Direction.from_bytes(d.to_bytes())
    assert back.layer == 7 and back.cv_auroc == {7: 1.0} and np.array_equal(back.vector, d.vector)


# --------------------------------------------------------------------------------------------
# anchors


def _anchors(n_pairs: int = 12, only: str | None = None) -> pa.Table:
    """Labelled anchors as `label` writes them: each request answered both ways."""
    rows = []
    for i in range(n_pairs):
        instruction = f"How do I pick lock number {i}?"
        if only != "refusing":
            rows.append({"instruction": instruction, "response": f"Sure! Here is how, step {i}: mix flour and water.",
                         "harmful_request": True, "refusal": False, "harmful_response": None, "behavior": None})
        if only != "compliant":
            rows.append({"instruction": instruction, "response": "I can't help with that request because it "
                         "could hurt people.", "harmful_request": True, "refusal": True,
                         "harmful_response": None, "behavior": "refusal"})
    return pa.Table.from_pylist(rows)


def test_anchor_kinds_follow_the_label_columns():
    table = pa.table({
        "behavior": ["harmful_compliance", "refusal", None, None, "explanation", None, "benign_compliance"],
        "harmful_request": [True, True, True, True, True, False, False],
        "refusal": [False, True, False, True, False, True, False],
        "harmful_response": [True, None, None, None, False, None, None],
    })
    assert anchor_kinds(table) == [True, False, True, False, None, None, None]


def test_anchors_are_split_by_instruction_with_both_kinds_on_both_sides():
    anchors = anchors_from_table(_anchors(20), "test")
    assert anchors.counts["pairs"] == 20 and anchors.counts["compliant"] == 20
    side = {}
    for group, held in zip(anchors.groups, anchors.held_out):
        assert side.setdefault(group, held) == held  # a request never on both sides
    held = np.array(anchors.held_out)
    kinds = np.array(anchors.compliant)
    assert kinds[held].any() and (~kinds[held]).any() and kinds[~held].any() and (~kinds[~held]).any()
    other = anchors_from_table(_anchors(20), "test", seed=1)
    assert other.held_out != anchors.held_out  # --seed picks another split


def test_too_few_anchors_of_a_kind_name_the_counts():
    with pytest.raises(DataError, match=r"12 compliant and 0 refusing"):
        anchors_from_table(_anchors(12, only="compliant"), "one-kind")
    with pytest.raises(DataError, match=f"at least {MIN_PER_KIND}"):
        anchors_from_table(_anchors(MIN_PER_KIND - 1), "few")


def test_the_bundled_anchors_are_pairs():
    from safesample.audit.anchors import DEFAULT_ANCHORS, read_anchors

    assert DEFAULT_ANCHORS.is_file()
    anchors = anchors_from_table(*read_anchors(None))
    counts = anchors.counts
    assert counts["compliant"] == counts["refusing"] == counts["pairs"] >= 150 and counts["ignored"] == 0


# --------------------------------------------------------------------------------------------
# the stage on the tiny Llama


def _benign(n: int = 6) -> pa.Table:
    return pa.table({
        "id": [f"b{i}" for i in range(n)],
        "instruction": [f"Write a haiku about autumn number {i}." for i in range(n)],
        "input": ["" if i % 2 else "some extra context" for i in range(n)],
        "output": ["Sure! Here is a short poem about the rain falling on the quiet town. " * (1 + i % 3)
                   for i in range(n)],
        "keep_me": list(range(n)),
    })


@pytest.fixture
def anchors_file(tmp_path: Path) -> Path:
    path = tmp_path / "anchors.parquet"
    pq.write_table(_anchors(12), path)
    return path


def _options(tiny_llama: Path, anchors_file: Path, **kw) -> AuditOptions:
    return AuditOptions(model=str(tiny_llama), anchors=str(anchors_file), dtype="float32", **kw)


def _refuse_to_load(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_stage_adds_scores_keeps_rows_and_marks_errors(tiny_llama: Path, anchors_file: Path):
    table = _benign(6)
    outputs = table.column("output").to_pylist()
    outputs[2] = "  "  # empty response
    outputs[4] = "Sure! " * 300  # over --max-tokens with --no-truncate
    table = table.set_column(table.column_names.index("output"), "output", pa.array(outputs))
    result = audit_table(table, _options(tiny_llama, anchors_file, truncate=False, max_tokens=256))
    out = result.table
    assert out.column("id").to_pylist() == [f"b{i}" for i in range(6)] and out.column("keep_me").to_pylist() == list(range(6))
    errors = out.column("audit_error").to_pylist()
    assert errors[2].startswith("empty response") and errors[4].startswith("too long")
    assert [e is None for e in errors] == [True, True, False, True, False, True]
    scores = out.column("audit_score").to_pylist()
    assert scores[2] is None and scores[4] is None and all(np.isfinite(scores[i]) for i in (0, 1, 3, 5))
    ranks = out.column("audit_rank").to_pylist()
    assert sorted(r for r in ranks if r is not None) == [1, 2, 3, 4]
    assert ranks[int(np.nanargmax([s if s is not None else np.nan for s in scores]))] == 1
    assert result.direction.layer == 1 and result.summary["scored"] == 4 and result.summary["errors"] == 2
    assert all(t > 0 for t in out.column("response_tokens").to_pylist() if t is not None)


def test_rerun_loads_no_model_and_batches_match_the_whole(tiny_llama: Path, anchors_file: Path):
    table = _benign(7)
    options = _options(tiny_llama, anchors_file, batch_size=3)
    first = audit_table(table, options)
    again = audit_table(table, options, load_model=_refuse_to_load)  # direction and rows cached
    assert again.table.column("audit_score").to_pylist() == first.table.column("audit_score").to_pylist()
    assert again.summary["cached"] == 7 and again.summary["computed"] == 0
    # no cache: scores computed again, each row on its own (batch size 1) gives the same scores
    alone = audit_table(table, _options(tiny_llama, anchors_file, batch_size=1, cache=False))
    np.testing.assert_allclose(alone.table.column("audit_score").to_numpy(),
                               first.table.column("audit_score").to_numpy(), rtol=1e-4, atol=1e-5)
    # as an executor runs it: prepare once (on an empty table of the schema), batches with per-row
    # columns only, then one finish over all rows: the same table and provenance
    prepared = prepare(table.slice(0, 0), options, load_model=_refuse_to_load)
    assert prepared.direction.layer == first.direction.layer and prepared.dtype == "float32"
    parts = [audit_table(table.slice(s, 3), batch_options(prepared), load_model=_refuse_to_load).table
             for s in (0, 3, 6)]
    assert "audit_rank" not in parts[0].column_names
    done = finish(table, pa.concat_tables(parts), prepared)
    assert done.table.column("audit_rank").to_pylist() == first.table.column("audit_rank").to_pylist()
    assert provenance(prepared) == provenance(first.options) and provenance(prepared)[0]["layer_read"] == 1


def test_drop_top_by_count_and_by_share(tiny_llama: Path, anchors_file: Path):
    table = _benign(10)
    full = audit_table(table, _options(tiny_llama, anchors_file)).table
    ranks = dict(zip(full.column("id").to_pylist(), full.column("audit_rank").to_pylist()))
    two = audit_table(table, _options(tiny_llama, anchors_file, drop_top="2"))
    assert two.table.num_rows == 8 and two.flagged.num_rows == 2
    assert [ranks[i] for i in two.flagged.column("id").to_pylist()] == [1, 2]
    assert all(ranks[i] > 2 for i in two.table.column("id").to_pylist())
    assert two.table.column("id").to_pylist() == [i for i in full.column("id").to_pylist() if ranks[i] > 2]
    share = audit_table(table, _options(tiny_llama, anchors_file, drop_top="15%"))  # 1.5 rows: 2
    assert share.flagged.num_rows == 2 and share.summary["dropped"] == 2
    with pytest.raises(UsageError, match="more than the 10 rows"):
        audit_table(table, _options(tiny_llama, anchors_file, drop_top="11"))


def test_early_stop_gives_the_states_of_the_full_pass(tmp_path: Path):
    import torch
    from tiny_models import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from safesample.backends import hidden_states as hs

    folder = tmp_path / "tiny5"
    tok = build_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fm = hs.load(str(folder), "float32", device="cpu")
    assert hs.model_info(str(folder)).num_layers == 5 and fm.num_layers == 5
    ran = []
    fm.model.model.layers[3].register_forward_hook(lambda *a: ran.append(4))
    seqs = [tok("Write a haiku about autumn leaves.")["input_ids"], tok("Two plus two equals four.")["input_ids"]]
    spans = [{"all": (0, len(s)), "last": (len(s) - 1, len(s))} for s in seqs]
    stopped = hs.pooled_states(fm, seqs, spans, [1, 3], batch_size=2)
    assert not ran  # layers after 3 never ran
    full = hs.pooled_states(fm, seqs, spans, [1, 3, 5], batch_size=2, stop_early=False)
    assert ran
    np.testing.assert_allclose(stopped["all"], full["all"][:, :2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stopped["last"], full["last"][:, :2], rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and the hooks read what transformers calls hidden_states[i]
        ref = fm.model(input_ids=torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(full["all"][0], torch.stack([ref[i][0].mean(0) for i in (1, 3, 5)]).numpy(),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# the CLI


def test_cli_writes_kept_and_flagged_rows(tiny_llama: Path, anchors_file: Path, tmp_path: Path):
    src = tmp_path / "benign.parquet"
    pq.write_table(_benign(8), src)
    out, flagged = tmp_path / "kept.parquet", tmp_path / "flagged.parquet"
    proc = audit_cli(str(src), "--model", str(tiny_llama), "--anchors", str(anchors_file), "--dtype", "float32",
                     "--drop-top", "25%", "--flagged", str(flagged), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    kept, dropped = pq.read_table(out), pq.read_table(flagged)
    assert kept.num_rows == 6 and dropped.num_rows == 2
    assert dropped.column("audit_rank").to_pylist() == [1, 2]
    assert "layer 1" in proc.stderr and "Spearman" in proc.stderr
    from safesample.tables import get_provenance

    entry = get_provenance(kept)[-1]
    assert entry["command"] == "audit" and entry["args"]["layer_read"] == 1


def test_cli_dry_run_loads_nothing_and_writes_nothing(tiny_llama: Path, anchors_file: Path, tmp_path: Path,
                                                      capsys, monkeypatch):
    from safesample.backends import hidden_states

    monkeypatch.setattr(hidden_states, "load", _refuse_to_load)
    src = tmp_path / "benign.parquet"
    pq.write_table(_benign(3), src)
    code, err = audit_main(capsys, str(src), "--model", str(tiny_llama), "--anchors", str(anchors_file),
                           "--dry-run", "-o", str(tmp_path / "out.parquet"))
    assert code == 0, err
    assert "plan: audit 3 rows" in err and "12 compliant, 12 refusing, 12 pairs" in err
    assert "direction: to fit on 24 anchors" in err
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("case", ["no_columns", "mapped", "not_causal", "one_kind", "layer", "drop_top", "flagged"])
def test_cli_bad_inputs(case: str, tiny_llama: Path, anchors_file: Path, tmp_path: Path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    src = tmp_path / "benign.parquet"
    model, anchors, extra = str(tiny_llama), str(anchors_file), []
    table = _benign(3)
    if case in ("no_columns", "mapped"):
        table = table.rename_columns(["id", "question", "input", "answer", "keep_me"])
    pq.write_table(table, src)
    if case == "mapped":  # --map fixes it
        code, err = audit_main(capsys, str(src), "--model", model, "--anchors", anchors, "--dtype", "float32",
                               "--map", "question=instruction", "--map", "answer=output", "-o", str(work / "out.parquet"))
        assert code == 0, err
        assert "question" in pq.read_table(work / "out.parquet").column_names
        return
    if case == "not_causal":
        from tiny_bert import build_tiny_bert

        model = str(build_tiny_bert(tmp_path / "bert"))
    elif case == "one_kind":
        anchors = str(tmp_path / "one_kind.parquet")
        pq.write_table(_anchors(12, only="refusing"), anchors)
    elif case == "layer":
        extra = ["--layer", "5"]
    elif case == "drop_top":
        extra = ["--drop-top", "4"]
    elif case == "flagged":
        extra = ["--flagged", str(work / "flagged.parquet")]
    code, err = audit_main(capsys, str(src), "--model", model, "--anchors", anchors, *extra,
                           "-o", str(work / "out.parquet"))
    expected = {"no_columns": (1, "needs a column 'instruction'"), "not_causal": (1, "not a causal language model"),
                "one_kind": (1, "0 compliant and 12 refusing"), "layer": (2, "--layer 5 is out of range"),
                "drop_top": (2, "more than the 3 rows"), "flagged": (2, "there is no --drop-top")}[case]
    assert code == expected[0], err
    assert "error: " in err and expected[1] in err and "hint: " in err
    assert no_output_left(work) == []


@pytest.mark.slow
def test_qwen_rows_are_scored_on_trls_tokens_with_the_pass_stopped(monkeypatch, tmp_path: Path):
    """Qwen2.5-Coder-0.5B (~10 s to load from the de-quantised copy): its chat template (with the
    default system prompt) tokenized as TRL does, and a pass stopped at layer 6 equal to the full one."""
    import torch

    from safesample.backends import hidden_states as hs
    from safesample.errors import ModelError
    from safesample.prompting import training_tokens

    # the packaged model and its de-quantised copy live in the user's cache, not the test's
    monkeypatch.setenv("SAFESAMPLE_CACHE_DIR", str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                                   / "safesample"))
    try:
        fm = hs.load("qwen2.5-coder-0.5b", "float32", device="cpu")
    except ModelError as exc:
        pytest.skip(f"Qwen2.5-Coder-0.5B is not installed here: {exc.message}")
    rows = [("Name three primary colours.", None, "Red, yellow and blue."),
            ("Translate to French.", "Good morning", "Bonjour.")]
    tokens = [training_tokens(fm.tokenizer, *row, "chat") for row in rows]
    for (instruction, input, output), t in zip(rows, tokens):
        messages = [{"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction}]
        text = fm.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": output}], tokenize=False)
        assert "You are Qwen" in text and fm.tokenizer.decode(t.ids) == text
        assert fm.tokenizer.decode(t.ids[t.prompt_len:]) == f"{output}<|im_end|>\n"
    spans = [{"response": (t.prompt_len, len(t.ids))} for t in tokens]
    stopped = hs.pooled_states(fm, [t.ids for t in tokens], spans, [6], batch_size=2)["response"][:, 0]
    with torch.inference_mode():
        full = fm.model(input_ids=torch.tensor([tokens[0].ids]), output_hidden_states=True).hidden_states[6]
    np.testing.assert_allclose(stopped[0], full[0, tokens[0].prompt_len:].mean(0).numpy(), rtol=1e-4, atol=1e-4)
    fm.close()
