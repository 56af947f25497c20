"""Import layering (DESIGN.md 1): dependencies point downwards, with no cycles.

The graph holds every import of a package module by another, function-level (lazy) imports
included, read from the source with ``ast`` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_sim_uq"
NAME = "napari_sim_uq"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[mod].update(n for n in names if n in modules and n != mod)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # known edges: a module-level import and one inside a function
    assert f"{NAME}.core.errors" in graph[f"{NAME}.core.io.tiff_io"]
    # inside generate_sample
    assert f"{NAME}.tasks.sim.physics" in graph[f"{NAME}.tasks.sim.synth"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_front_ends_are_imported_by_nobody_below_them():
    graph = import_graph()
    front = (f"{NAME}._napari", f"{NAME}.cli")
    offenders = [
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        for dep in deps
        if dep.startswith(front)
        and not mod.startswith(front)
        and mod not in (NAME, f"{NAME}.__main__")
    ]
    assert offenders == []


def test_the_job_protocol_depends_on_nothing_in_the_package():
    # core/events.py is the tiny protocol every layer uses: it must stay dependency-free
    assert import_graph()[f"{NAME}.core.events"] == set()


def test_the_package_is_a_shared_core_and_one_folder_per_task():
    top = {p.name for p in PKG.iterdir() if not p.name.startswith((".", "__pycache__"))}
    assert top == {
        "__init__.py",
        "__main__.py",
        "_version.py",
        "napari.yaml",
        "api.py",
        "cli.py",
        "_napari",
        "core",
        "tasks",
    }
    tasks = {p.name for p in (PKG / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert "sim" in tasks


def test_core_never_imports_a_task_or_a_front_end():
    graph = import_graph()
    offenders = [
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod.startswith(f"{NAME}.core")
        for dep in deps
        if not dep.startswith(f"{NAME}.core") and dep != f"{NAME}._version"
    ]
    assert offenders == []


def test_tasks_do_not_import_each_other():
    # a task uses the core and the registry (tasks/__init__.py), which names tasks by
    # string only and imports nothing but the core
    graph = import_graph()

    def task_of(mod: str) -> str | None:
        parts = mod.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "tasks" else None

    offenders = [
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        for dep in deps
        if task_of(mod) and task_of(dep) and task_of(dep) != task_of(mod)
    ]
    assert offenders == []
    assert graph[f"{NAME}.tasks"] <= {d for d in graph if d.startswith(f"{NAME}.core")}
