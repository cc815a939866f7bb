"""The shape of the code, kept: every import points down, no function over 60 lines, no line over 120."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("resnetx", "exporters", "runtimes", "pipeline")  # the floor first
MAX_FUNCTION_LINES = 60
MAX_LINE = 120


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            out[".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = f
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (anywhere in the file, TYPE_CHECKING blocks included)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            names += _imported_by_name(node)
            edges[m] |= {n for n in names if n in mods and n != m}
    return edges


def _imported_by_name(node: ast.AST) -> list[str]:
    """importlib.import_module("pipeline.x") and __import__("pipeline.x"): imports too, and so part of the graph
    (a cycle hidden behind a string is still a cycle)."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return []
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    arg = node.args[0].value
    return [arg] if name in ("import_module", "__import__") and isinstance(arg, str) else []


def test_a_string_import_counts() -> None:
    tree = ast.parse("import importlib\nimportlib.import_module('pipeline.make.graphs')\n__import__('pipeline.cli')")
    assert [n for node in ast.walk(tree) for n in _imported_by_name(node)] == ["pipeline.make.graphs", "pipeline.cli"]


# pipeline's packages, the top first: each imports only its own package and those below it (the order of the work:
# the command line, the fleet, the hand-offs, checking a folder, making one, the folder's records, where a model
# comes from, what a model is, and the few modules every one of them reads)
PIPELINE_LAYERS = (("pipeline.cli",), ("pipeline.fleet",), ("pipeline.handoff",), ("pipeline.check",),
                   ("pipeline.make",), ("pipeline.folder",), ("pipeline.sources",), ("pipeline.model",),
                   ("pipeline.defaults", "pipeline.precisions", "pipeline.machine", "pipeline"))


def _layer(module: str) -> int:
    """The index of the module's layer in PIPELINE_LAYERS (modules outside pipeline: below all of them)."""
    for i, layer in enumerate(PIPELINE_LAYERS):
        if any(module == p or module.startswith(p + ".") for p in layer if p != "pipeline") or module in layer:
            return i
    return len(PIPELINE_LAYERS) if not module.startswith("pipeline") else len(PIPELINE_LAYERS) - 1


def test_every_import_points_down() -> None:
    """resnetx imports nothing of the project; exporters and runtimes import only the floor and themselves;
    inside pipeline, a package imports only its own and the ones below it (nothing imports the CLI)."""
    wrong = []
    for m, targets in _imports(_modules()).items():
        pkg = m.split(".")[0]
        allowed = {"resnetx": {"resnetx"}, "exporters": {"resnetx", "exporters"}, "runtimes": {"resnetx", "runtimes"},
                   "pipeline": set(PACKAGES)}[pkg]
        wrong += [f"{m} -> {t}" for t in targets if t.split(".")[0] not in allowed
                  or (pkg == "pipeline" and _layer(t) < _layer(m))]
    assert wrong == []


def test_every_pipeline_module_has_a_layer() -> None:
    """A new folder of pipeline is placed in PIPELINE_LAYERS (and docs/development.md's map), not left out of the
    rule."""
    loose = [m for m in _modules() if m.startswith("pipeline.") and m.count(".") > 1
             and not any(m.startswith(p + ".") for layer in PIPELINE_LAYERS for p in layer if p != "pipeline")]
    assert loose == []


def test_no_import_cycles() -> None:
    edges = _imports(_modules())
    state: dict[str, int] = {}  # 1 on the path, 2 done
    cycles: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [m, t]) if t in path else f"{m} -> {t}")
            elif t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [])
    assert cycles == []


def test_functions_and_lines_stay_short() -> None:
    long_functions, long_lines = [], []
    for m, f in _modules().items():
        src = f.read_text()
        long_lines += [f"{m}:{i}" for i, line in enumerate(src.splitlines(), 1) if len(line) > MAX_LINE]
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{m}:{node.lineno} {node.name} ({n} lines)")
    assert long_functions == [] and long_lines == []
