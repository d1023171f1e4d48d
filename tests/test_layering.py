"""The library's folders are its architecture (ser_modules/__init__.py): each subpackage imports only
subpackages on lower floors, no modules import each other in a cycle, each subpackage's docstring
says what it may import, and no module is over 400 lines.

Every import statement counts, wherever it is (module level, inside a function, under
``TYPE_CHECKING``): a lazy import is still a dependency."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def modules(package_dir: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package at ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that the module ``name`` at ``path`` imports, lazy imports included."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # `from pkg import sub` depends on the submodule; `from mod import name` on the module
            candidates = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for candidate in candidates:
            # `import a.b.c` imports a.b.c; the deepest known module is the dependency
            parts = candidate.split(".")
            for k in range(len(parts), 0, -1):
                if ".".join(parts[:k]) in known:
                    found.add(".".join(parts[:k]))
                    break
    found.discard(name)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    known = modules(package_dir)
    return {name: imported(path, name, known) for name, path in known.items()}


def room(module: str) -> str | None:
    """The subpackage (or top-level module) a module belongs to; None for the package's own __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Imports of a subpackage on the same or a higher floor (within a subpackage anything goes; the
    package's ``__init__`` may import the lowest floor only)."""
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = room(source), room(target)
            if a == b or b is None:
                continue
            floor_a = layers[a] if a is not None else min(layers.values()) + 1
            if layers[b] >= floor_a:
                bad.append(f"{source} imports {target} (floor {layers[b]} from floor {floor_a})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


@pytest.fixture(scope="module")
def library():
    import ser_modules

    return import_graph(ROOT / "ser_modules"), ser_modules.LAYERS


def test_every_import_goes_down_the_floors(library):
    graph, layers = library
    assert len(graph) > 60 and sum(map(len, graph.values())) > 200  # the walk saw the library
    assert upward_imports(graph, layers) == []


def test_no_modules_import_each_other_in_a_cycle(library):
    graph, _ = library
    assert cycles(graph) == []


def test_every_subpackage_has_a_floor_and_says_what_it_may_import(library):
    graph, layers = library
    rooms = {room(m) for m in graph} - {None}
    assert rooms == set(layers), "a subpackage or top-level module without a floor in ser_modules.LAYERS"
    for pkg, floor in layers.items():
        init = ROOT / "ser_modules" / pkg / "__init__.py"
        if not init.is_file():
            continue  # a top-level module (infer, export)
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        below = sorted((p for p, f in layers.items() if f < floor and (ROOT / "ser_modules" / p).is_dir()),
                       key=lambda p: (layers[p], list(layers).index(p)))
        said = next((line for line in doc.splitlines() if line.startswith("May import:")), None)
        assert said == "May import: " + (", ".join(below) if below else "nothing of the toolkit") + ".", pkg


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "ser_modules").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_catch_an_upward_import_a_lazy_one_and_a_cycle(tmp_path):
    pkg = tmp_path / "lib"
    files = {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from lib.high import b  # lazy, and upward\n",
        "high/__init__.py": "",
        "high/b.py": "from lib.low import a\nfrom . import c\n",
        "high/c.py": "import lib.high.b\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    assert graph["lib.high.b"] == {"lib.low.a", "lib.high.c"} and graph["lib.high.c"] == {"lib.high.b"}
    assert upward_imports(graph, {"low": 1, "high": 2}) == ["lib.low.a imports lib.high.b (floor 2 from floor 1)"]
    assert cycles(graph) == [["lib.high.b", "lib.high.c", "lib.low.a"]]
    assert upward_imports(graph, {"low": 2, "high": 2})  # the same floor is not below either
