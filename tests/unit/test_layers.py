"""The import graph of study/, dashboards/ and trainables/, read with ast (nothing is imported).

Rules (docs/architecture.md, Layers):
- no import cycle, counting function-local imports too;
- trainables/ imports neither study/ nor dashboards/, and only ray_adapter.py imports ray;
- dashboards/ imports from study/ only the shared models: study.schema, study.space, study.search;
- the driver reaches dashboards/ only through dashboards.publish.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("study", "trainables", "dashboards")
SHARED_MODELS = {"study.schema", "study.space", "study.search"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports, anywhere in it (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {m: _imports(p, known) - {m} for m, p in mods.items()}
    # A package's __init__ runs before any of its modules: importing pkg.mod imports pkg too.
    for m, deps in graph.items():
        for d in list(deps):
            parent = d.rpartition(".")[0]
            if parent in known and parent != m and not m.startswith(parent + "."):
                deps.add(parent)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                found.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_trainables_is_plain_pytorch():
    mods = _modules()
    for m, p in mods.items():
        if not m.startswith("trainables"):
            continue
        deps = _imports(p, set(mods))
        assert not {d for d in deps if d.startswith(("study", "dashboards"))}, m
        tree = ast.parse(p.read_text())
        ray = [
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            and any(
                (a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0] in ("ray", "mlflow", "optuna")
                for a in n.names
            )
        ]
        assert not ray or m == "trainables.ray_adapter", f"{m} imports ray/mlflow/optuna"


def test_dashboards_never_import_the_driver():
    mods = _modules()
    for m, p in mods.items():
        if m.startswith("dashboards"):
            driver = {d for d in _imports(p, set(mods)) if d.startswith("study") and d != "study"} - SHARED_MODELS
            assert not driver, f"{m} imports the driver: {sorted(driver)}"


def test_the_driver_reaches_dashboards_through_one_door():
    mods = _modules()
    for m, p in mods.items():
        if m.startswith("study"):
            doors = {d for d in _imports(p, set(mods)) if d.startswith("dashboards") and d != "dashboards"}
            assert doors <= {"dashboards.publish"}, f"{m} imports {sorted(doors)}"
