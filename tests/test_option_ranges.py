"""Option values out of range are usage errors (exit 2, `error:` + `hint:`), checked in one place
for every command (issue 26 item 10): `--seed` in 0..2**32-1 (what numpy, scikit-learn and torch
take), every float option finite, every integer option within 64 bits."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from conftest import REPO, cli
from safesample.stages import STAGES

POOL = REPO / "safesample" / "demo" / "safety_pool.jsonl"


def _main(*args: str) -> tuple[int, str]:
    from safesample.cli import main

    err = io.StringIO()
    with redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


def _commands_with(flag: str) -> list[str]:
    import typer

    from safesample.cli import app

    commands = typer.main.get_command(app).commands
    return [s.name for s in STAGES if any(flag in getattr(p, "opts", []) for p in commands[s.name].params)]


@pytest.mark.parametrize("seed", ["-1", "4294967296", str(2 ** 64)])
@pytest.mark.parametrize("command", _commands_with("--seed"))
def test_a_seed_out_of_range_is_a_usage_error_in_every_command(command: str, seed: str, tmp_path: Path):
    # An input that is not there and --dry-run: the seed must be refused first, whatever comes later.
    code, err = _main(command, str(tmp_path / "absent.parquet"), f"--seed={seed}", "--dry-run",
                      "-o", str(tmp_path / "out.parquet"))
    assert code == 2, err
    assert "--seed" in err and "error:" in err and "hint:" in err and "looks like a bug" not in err
    assert not (tmp_path / "out.parquet").exists()


def test_the_largest_seed_is_fine(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    proc = cli("mix", str(REPO / "safesample" / "demo" / "benign.jsonl"), str(POOL), "--seed", "4294967295",
               "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args", [
    ("cluster", "--threshold", "nan"),
    ("cluster", "--threshold", "-inf"),
    ("select", "--budget", "5", "--exclude-threshold", "nan"),
    ("select", "--budget", "5", "--contrast-lexical", "inf"),
    ("select", "--budget", "5", "--dedup", "nan"),
    ("finetune", "--dry-run", "--lr", "nan"),
    ("finetune", "--dry-run", "--epochs", "inf"),
    ("label", "--all-harmful", "--gpu-memory-utilization", "nan"),
    ("label", "--all-harmful", "--max-new-tokens", str(10 ** 30)),
])
def test_numbers_that_are_no_numbers_are_usage_errors(args: tuple[str, ...], tmp_path: Path):
    command, *rest = args
    out = tmp_path / ("run" if command == "finetune" else "out.parquet")
    code, err = _main(command, str(POOL), *rest, "-o", str(out))
    assert code == 2, err
    assert "error:" in err and "hint:" in err and "looks like a bug" not in err
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ("mix", str(REPO / "safesample" / "demo" / "benign.jsonl"), str(POOL), "--system", "\udcff\udcfe"),
    ("mix", str(REPO / "safesample" / "demo" / "benign.jsonl"), str(POOL), "--map", "instruction=\udcff"),
    ("report", str(POOL), "--title", "\udcff"),
])
def test_text_that_is_not_utf8_is_a_usage_error(args: tuple[str, ...], tmp_path: Path):
    """Bytes that are not UTF-8 on the command line arrive as lone surrogates; in a path that
    exists they are fine, in text bound for a table or a page they are a usage error."""
    out = tmp_path / ("r.html" if args[0] == "report" else "out.jsonl")
    code, err = _main(*args, "-o", str(out))
    assert code == 2 and "not valid UTF-8" in err and "hint:" in err and "looks like a bug" not in err, err
    assert not out.exists()


def test_a_file_name_that_is_not_utf8_still_works(tmp_path: Path):
    import shutil

    odd = tmp_path / "caf\udce9.jsonl"  # the latin-1 byte 0xe9 in a file name
    shutil.copy(POOL, odd)
    out = tmp_path / "out.parquet"
    code, err = _main("label", str(odd), "--all-harmful", "-q", "-o", str(out))
    assert code == 0, err
