"""What a user types that cannot work is a usage error with a hint, never the "looks like a bug"
fallback (issue 26, rough edges): a model name that is no named model, folder nor hub id; a
prompt template that is not UTF-8; a path longer than the file system takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, cli

POOL = REPO / "safesample" / "demo" / "safety_pool.jsonl"
BUG = "looks like a bug"


def _usage_error(proc, *, code: int = 2) -> None:
    assert proc.returncode == code, proc.stderr
    assert "error:" in proc.stderr and "hint:" in proc.stderr and BUG not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args", [
    ("finetune", str(POOL), "--model", " ", "--dry-run"),
    ("finetune", str(POOL), "--model", "refusal=nan", "--dry-run"),
    ("label", str(POOL), "--generate", "0.5%", "--all-harmful"),
    ("audit", str(POOL), "--model", "{id:d}", "--dry-run"),
    ("judge", str(POOL), "--model", "a--b", "--dry-run"),
])
def test_a_model_that_is_no_name_folder_or_hub_id(args: tuple[str, ...], tmp_path: Path):
    out = tmp_path / ("run" if args[0] == "finetune" else "out.parquet")
    proc = cli(*args, "-o", str(out))
    _usage_error(proc)
    assert "hub id" in proc.stderr
    assert not out.exists()


def test_a_prompt_template_that_is_not_utf8(tmp_path: Path):
    template = tmp_path / "t.txt"
    template.write_bytes("Requête: {instruction}\nRéponse: {response}\n".encode("latin-1"))
    out = tmp_path / "out.parquet"
    proc = cli("label", str(POOL), "--judge", "llm", "--model", "x/y", "--prompt-file", str(template), "-o", str(out))
    _usage_error(proc)
    assert "not UTF-8" in proc.stderr and not out.exists()
    judged = tmp_path / "answers.jsonl"
    judged.write_text('{"id": "a", "prompt": "hi", "response": "I can\'t help with that."}\n')
    proc = cli("judge", str(judged), "--responses", "--judge-template", str(template), "-o", str(out))
    _usage_error(proc)
    assert "not UTF-8" in proc.stderr and not out.exists()


def test_a_path_longer_than_the_file_system_takes(tmp_path: Path):
    long = "a" * 5000
    proc = cli("select", str(POOL), "--budget", "2", "--report", long, "-o", str(tmp_path / "out.parquet"))
    _usage_error(proc)
    assert long not in proc.stderr  # named, but not printed whole
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("template", ["{id:d}", "{instruction:>999999999}", "{instruction!r}", "{instruction[0]}"])
def test_an_embed_template_placeholder_is_a_bare_column_name(template: str, tmp_path: Path):
    out = tmp_path / "out.parquet"
    for dry in (["--dry-run"], []):  # refused before any model loads, dry run or not
        proc = cli("embed", str(POOL), "--template", template, *dry, "-o", str(out))
        _usage_error(proc)
        assert "bare column names" in proc.stderr and not out.exists()
