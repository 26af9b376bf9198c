"""The house rules of src/tristage that a reader relies on (docs/architecture.md): imports go one way, with no
cycle (imports inside functions count), and the architecture page names the packages that exist."""
from __future__ import annotations

import re

from conftest import REPO

from tristage.closure import imported_modules, module_file

SRC = REPO / "src"
# lower layers never import these (what may import what: docs/architecture.md)
UPWARD = {
    "tristage.model": ("tristage.synthesis", "tristage.training", "tristage.evaluation"),
    "tristage.training": ("tristage.synthesis", "tristage.evaluation"),
    "tristage.features": ("tristage.model", "tristage.training", "tristage.synthesis", "tristage.evaluation"),
    "tristage.captions": ("tristage.model", "tristage.training", "tristage.synthesis", "tristage.evaluation"),
}


def _modname(path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the tristage modules it imports anywhere in the file (module level or in a function)."""
    graph = {}
    for f in sorted((SRC / "tristage").rglob("*.py")):
        name = _modname(f)
        deps = {_modname(m) for n in imported_modules(f) if (m := module_file(n, SRC)) is not None}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    u = stack.pop()
                    on.discard(u)
                    comp.append(u)
                    if u == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_library():
    found = cycles(import_graph())
    assert not found, f"import cycles (each a group of modules that import each other): {found}"


def test_no_upward_imports():
    bad = [f"{mod} imports {dep}" for mod, deps in import_graph().items() for low, high in UPWARD.items()
           if mod == low or mod.startswith(low + ".") for dep in deps if dep.startswith(high)]
    assert not bad, bad


def test_architecture_page_names_the_packages_that_exist():
    page = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`tristage\.([a-z_]+)`", page))
    packages = {p.name for p in (SRC / "tristage").iterdir() if (p / "__init__.py").is_file()}
    assert packages <= named, f"docs/architecture.md does not name {sorted(packages - named)}"
    assert named <= packages | {p.stem for p in (SRC / "tristage").glob("*.py")}, \
        f"docs/architecture.md names what does not exist: {sorted(named - packages)}"
