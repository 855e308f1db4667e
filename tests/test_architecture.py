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
FOUNDATION = {"tables", "vectors", "schema", "behavior", "reporter", "errors", "cache", "stdio",
              "backends", "guards", "calibration", "gold", "demo", "executors", "prompts", "prompting", "texts", "stages",
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


# --------------------------------------------------------------------------------------------
# the module graph: no circles, no private names across modules, stages below the CLI and
# beside each other, small modules, a thin CLI

# The one stage that may read another stage: the report renders judge's summaries.
STAGE_EXCEPTIONS = {("report", "judge.summary")}
MAX_LINES = 500
# What a command module may use: the CLI itself, the registry, the I/O and executors it hands
# its stage to, errors, and its own stage (never a model backend, never another stage).
CLI_MAY_IMPORT = {"cli", "console", "errors", "stages", "tables", "executors", "calibration", "gold", "texts", "schema",
                  "__init__", "completions", "stdio", "reporter"}
HEAVY = {"torch", "transformers", "sentence_transformers", "vllm", "sklearn", "peft", "trl", "onnxruntime",
         "ray", "faiss", "pandas"}


def _resolve(name: str) -> str | None:
    """The module of the package an imported name lives in (a module, or the module defining it)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _edges(path: Path) -> set[str]:
    found = {_resolve(name) for name in _imports(path)}
    return {m for m in found if m}


GRAPH = {module: _edges(path) - {module} for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circles():
    # Every import counts: at the top, inside functions (lazy) and under TYPE_CHECKING.
    assert _cycles(GRAPH) == []


def test_the_cycle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _private_imports(path: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("safesample"):
            bad += [f"{node.module}.{a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    return bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_imported_across_modules(module: str):
    assert _private_imports(MODULES[module]) == [], "make the name public, or keep its use in its module"


def test_the_private_name_check_finds_one(tmp_path: Path):
    fake = tmp_path / "m.py"
    fake.write_text("from safesample.tables.formats import _read_csv, read_path\n")
    assert _private_imports(fake) == ["safesample.tables.formats._read_csv"]


def _stage_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in STAGES else None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _stage_of(m)))
def test_a_stage_never_imports_another_stage(module: str):
    own = _stage_of(module)
    bad = sorted(i for i in GRAPH[module] if _stage_of(i) not in (None, own)
                 and (own, i) not in STAGE_EXCEPTIONS)
    assert not bad, f"{module} imports the stage(s) {bad}: move what they share below the stages"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_the_line_limit(module: str):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it along its sections"


def _library_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("name", stages.NAMES)
def test_a_command_module_only_parses_and_calls(name: str):
    """cli/<name>.py parses options, builds the stage's options, calls the stage (or the executor)
    and prints: it loads no model (no backend, no heavy library) and reaches no other stage."""
    module = f"cli.{name}"
    assert module in MODULES, f"the registered stage {name!r} has no CLI module safesample/cli/{name}.py"
    allowed = CLI_MAY_IMPORT | {name}
    bad = sorted(i for i in GRAPH[module] if i.split(".")[0] not in allowed
                 and not (name == "judge" and i == "judge.summary"))
    assert not bad, f"{module} reaches {bad}: stage logic and model loading belong to the stage"
    heavy = sorted(_library_imports(MODULES[module]) & HEAVY)
    assert not heavy, f"{module} imports {heavy}"


def test_every_registered_stage_has_its_library_parts():
    """The registry's names resolve: the stage's module has its Options, table function, plan and
    the hooks its entry names; a per-row stage names every model loader its function takes."""
    import inspect

    for stage in stages.STAGES:
        lib = stage.library()
        for attr in filter(None, [stage.options, stage.run, "plan", stage.finish, stage.batch_options,
                                  stage.prepare, stage.generates]):
            assert hasattr(lib, attr), f"{stage.module} lacks {attr}"
        if stage.per_row:
            assert hasattr(lib, stage.provenance), f"{stage.module} lacks {stage.provenance}"
            params = inspect.signature(stage.function(stage.run)).parameters
            loaders = {p for p in params if p.startswith("load_")}
            # a loader the registry does not name would load its model again for every Ray task
            assert loaders == set(stage.loaders), (stage.name, loaders, set(stage.loaders))
