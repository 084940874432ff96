"""The packages are floors: each module imports only its own floor and those below, the light
core and the search load neither torch nor the TFLite interpreter, and modules do not import
each other in a cycle at import time."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package prefix -> floor, ground floor first; the longest matching prefix decides
FLOORS = {"latency_tables": 0, "qfa.core": 1, "qfa.nn": 2, "qfa.train": 2, "export": 3, "hw": 4, "qfa.nas": 5,
          "qfa.app": 6, "qfa": 6}
SEAM = {"export.fold", "export.deploy"}  # the only modules of export/ that may import the model floor
OURS = ("qfa", "hw", "export", "latency_tables")


def floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[best]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in OURS:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = modules()


def imports(name: str, path: Path, top_level_only: bool = False) -> set[str]:
    """Our modules that ``name`` imports (anywhere in it, or only at module level)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m in MODULES and m != name and m.split(".")[0] in OURS}


def test_floors_are_what_the_layout_says():
    assert floor("qfa.core.space") == 1 and floor("qfa.nas.search") == 5 and floor("hw.table") == 4
    assert floor("qfa.app.cli") == 6 and floor("qfa.nn.elastic.ops") == 2


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_higher_floor(name):
    bad = sorted(m for m in imports(name, MODULES[name]) if floor(m) > floor(name))
    assert not bad, f"{name} (floor {floor(name)}) imports {[(m, floor(m)) for m in bad]}"
    if name.startswith(("export", "hw")):  # export and hw never import training code
        assert not [m for m in imports(name, MODULES[name]) if m.startswith("qfa.train")], name
    if name.startswith("export") and name not in SEAM:  # the torch -> IR fold is the one seam
        assert not [m for m in imports(name, MODULES[name]) if floor(m) == 2], name


def test_no_import_cycles_at_module_level():
    graph = {n: imports(n, p, top_level_only=True) for n, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m, path + [m])
        state[n] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_core_and_search_load_no_torch_and_no_interpreter():
    code = ("import sys, qfa.core.space, qfa.core.cost, qfa.nas.search, qfa.nas.pareto\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ai_edge_litert', 'tensorflow'))\n"
            "print(len(heavy), heavy[:5])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("0 "), r.stdout


def test_the_checker_sees_a_violation(tmp_path):
    """The import reader finds a relative import of a higher floor (so the tests above can fail)."""
    f = tmp_path / "space.py"
    f.write_text("def g():\n    from ..nas.search import search_front\n")
    found = imports("qfa.core.space", f)
    assert "qfa.nas.search" in found and floor("qfa.nas.search") > floor("qfa.core.space")
