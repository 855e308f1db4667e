"""Where an unfinished fine-tune lives, and when it resumes.

Until training is complete everything is in a work folder beside the output, `<output>.partial/`:
checkpoints, metrics, and the run's fingerprint (its settings and a digest of its data). A rerun
resumes from the last checkpoint only when the fingerprint matches (the length of training may
change), and refuses checkpoints of another run naming what differs. A folder at the output path
is always a finished run (`is_complete_run`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safesample.backends.models import RUN_CONFIG
from safesample.errors import UsageError
from safesample.finetune.examples import Examples
from safesample.finetune.options import FinetuneOptions
from safesample.reporter import Reporter

PARTIAL_SUFFIX = ".partial"
CHECKPOINTS = "checkpoints"
FINGERPRINT = "run.json"
RESUME_MODES = ("auto", "yes", "no")


def work_dir_for(output: Path) -> Path:
    """Where a run lives until it is finished: `<output>.partial/` beside the output."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def is_complete_run(folder: Path) -> bool:
    """A finished run: its record (written last) and its adapter are there."""
    return (folder / RUN_CONFIG).is_file() and (folder / "adapter_config.json").is_file()


def check_output_dir(output: str, overwrite: bool = False) -> Path:
    """Fail fast when the output folder cannot be written (before any heavy work)."""
    if output == "-":
        raise UsageError("finetune writes a folder, not a table: '-' is not a valid output",
                         "pass -o runs/NAME")
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output {output!r} exists and is a file", "pass a folder path such as runs/lora-0")
    if not path.parent.is_dir():
        raise UsageError(f"output folder {str(path.parent)!r} does not exist",
                         f"create it first: mkdir -p {path.parent}")
    if path.is_dir() and any(path.iterdir()):
        if is_complete_run(path):
            if not overwrite:
                raise UsageError(f"{output!r} already holds a finished fine-tuning run",
                                 "pass --overwrite to replace it, or another -o")
        else:
            raise UsageError(f"output folder {output!r} exists and is not empty",
                             "pass a new folder; finetune creates it")
    return path


def checkpoints(work: Path) -> list[Path]:
    """The work folder's complete checkpoints, oldest first."""
    folder = work / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        step = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and p.name.startswith("checkpoint-") and step.isdigit() and \
                (p / "trainer_state.json").exists():
            found.append((int(step), p))
    return [p for _, p in sorted(found)]


def run_fingerprint(options: FinetuneOptions, examples: Examples) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed: the settings and the data."""
    return {"config": options.fingerprint_fields(), "data": examples.digest(), "rows": len(examples)}


def plan_resume(work: Path, fingerprint: dict[str, Any], resume: str) -> Path | None:
    """The checkpoint to resume from, or None to start fresh; refuses a mismatched one."""
    if resume not in RESUME_MODES:
        raise UsageError(f"unknown --resume {resume!r}", f"use one of: {', '.join(RESUME_MODES)}")
    found = checkpoints(work)
    if resume == "no" or not found:
        if resume == "yes":
            raise UsageError(f"--resume yes, but {work} holds no checkpoint",
                             "drop --resume yes to start a new run")
        return None
    saved = work / FINGERPRINT
    theirs = json.loads(saved.read_text()) if saved.exists() else None
    if theirs != fingerprint:
        diff = _describe_difference(theirs, fingerprint)
        raise UsageError(f"{work} holds checkpoints of a different run ({diff})",
                         "pass --resume no to discard them and start over, or rerun with the "
                         "settings and data of that run")
    return found[-1]


def _describe_difference(theirs: dict | None, ours: dict) -> str:
    if not theirs:
        return "no record of its settings"
    if theirs.get("data") != ours.get("data"):
        return "the training data differs"
    a, b = theirs.get("config", {}), ours.get("config", {})
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "settings differ: " + ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop the log lines of steps after the checkpoint (they are redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def after_failure(work: Path, reporter: Reporter) -> None:
    """After training stopped: keep the checkpoints (a rerun resumes), else remove the work folder."""
    found = checkpoints(work)
    if found:
        reporter.warn(f"training stopped; checkpoints are kept in {work / CHECKPOINTS} "
                     f"(last: {found[-1].name}); rerun the same command to resume")
    else:
        shutil.rmtree(work, ignore_errors=True)
