"""The import contract: cli/ on top, stages below it, the foundation below them.

Walks every module's imports (lazy ones inside functions too, since those are how the heavy
libraries come in) and fails on an arrow that points up, or on library code that prints through
the console instead of the reporter it is handed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from safesample import stages

PACKAGE = Path(__file__).resolve().parents[1] / "safesample"

# The command line: parses options, calls a stage, prints. Only it may use the console.
CLI = {"cli", "console", "completions", "__main__"}
# One module (or package) per stage: a library function from a table to a table.
STAGES = set(stages.NAMES)
# Everything stages build on; none of it may import a stage or the CLI.
FOUNDATION = {"tables", "shards", "vectors", "schema", "behavior", "reporter", "errors", "cache", "stdio",
              "backends", "guards", "calibration", "demo", "executors", "prompts", "prompting", "texts", "stages",
              "__init__"}


def _layer(module: str) -> str:
    top = module.split(".")[0]
    if top in CLI:
        return "cli"
    if top in STAGES:
        return "stage"
    if top in FOUNDATION:
        return "foundation"
    return "unknown"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """The safesample modules `path` imports, anywhere in the file, relative to the package."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("safesample."):
                out.add(name[len("safesample."):])
    return out


MODULES = _modules()


def test_every_module_has_a_layer():
    unknown = sorted(m for m in MODULES if _layer(m) == "unknown")
    assert not unknown, f"add these modules to a layer in {__file__}: {unknown}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) != "cli"))
def test_library_code_never_imports_the_cli_or_the_console(module: str):
    bad = sorted(i for i in _imports(MODULES[module]) if _layer(i) == "cli")
    assert not bad, f"{module} imports {bad}: report through the `reporter` argument instead"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "foundation"))
def test_the_foundation_never_imports_a_stage(module: str):
    bad = sorted(i for i in _imports(MODULES[module]) if _layer(i) == "stage")
    assert not bad, f"{module} (foundation) imports the stage(s) {bad}: the arrow points up"


def test_the_contract_catches_an_upward_import(tmp_path: Path):
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from safesample import console\n    from safesample.label import x\n")
    assert {"console", "label", "label.x"} <= _imports(fake)
