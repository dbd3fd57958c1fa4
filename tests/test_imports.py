"""Import rules computed from the code (issue #26): packages import downwards only (README's
layout: core <- quant <- denoisers <- sampling/graphs <- predictor <- search/analysis <- qsens), no two
files import each other through any chain (an import under `if TYPE_CHECKING:` is not counted),
and a command never imports another command (what several share lives in a CLI-side module, e.g.
qsens/search_args.py). Imports inside functions count: they run."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# a package may import only packages of a lower level (the same package: itself)
LEVEL = {"core": -1, "quant": 0, "denoisers": 1, "sampling": 2, "graphs": 2, "predictor": 3, "search": 4, "analysis": 4,
         "qsens": 5}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports anywhere (top level or inside functions), except
    under `if TYPE_CHECKING:` (annotations only: never executed)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_commands_import_no_other_command():
    commands = {p.stem for p in (ROOT / "qsens" / "commands").glob("*.py") if p.stem != "__init__"}
    bad = {}
    for name in sorted(commands):
        others = {m for m in imported_modules(ROOT / "qsens" / "commands" / f"{name}.py")
                  if m.startswith("qsens.commands.") and m.split(".")[2] in commands - {name}}
        if others:
            bad[name] = sorted(others)
    assert not bad, f"commands importing other commands (move the shared code to a qsens/ module): {bad}"


def test_the_rule_sees_an_import_inside_a_function(tmp_path: Path):
    f = tmp_path / "x.py"
    f.write_text("def run():\n    from qsens.commands.search import make_context\n")
    assert "qsens.commands.search" in imported_modules(f)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """{module name: file} of every package in LEVEL."""
    out = {}
    for pkg in LEVEL:
        for f in (root / pkg).rglob("*.py"):
            parts = f.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the modules of LEVEL's packages it imports} (a `from M import name` is M, or M.name
    when that is a module)."""
    files = module_files(root)
    graph = {}
    for mod, f in files.items():
        deps = set()
        for m in imported_modules(f):
            while m and m not in files:
                m = m.rpartition(".")[0]
            if m and m != mod:
                deps.add(m)
        graph[mod] = deps
    return graph


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        pkg = mod.split(".")[0]
        for d in deps:
            other = d.split(".")[0]
            if other != pkg and LEVEL[other] >= LEVEL[pkg]:
                kind = "upward" if LEVEL[other] > LEVEL[pkg] else "sideways"
                bad.append(f"{mod} -> {d} ({kind})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_packages_import_downwards_only():
    bad = layering_problems(import_graph())
    assert not bad, "imports against the layering (move the shared code below both):\n" + "\n".join(bad)


def test_no_file_import_cycles():
    found = cycles(import_graph())
    assert not found, f"file import cycles (type-only imports go under `if TYPE_CHECKING:`): {found}"


def test_the_rules_see_a_cycle_a_sideways_import_and_skip_type_only_imports(tmp_path: Path):
    for pkg in ("search", "analysis", "quant"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "search" / "a.py").write_text("def f():\n    from search.b import B\n")
    (tmp_path / "search" / "b.py").write_text("from search.a import f\nB = 1\n")
    (tmp_path / "search" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                              "    from search.d import D\n")
    (tmp_path / "search" / "d.py").write_text("from search.c import TYPE_CHECKING\nD = 1\n")
    (tmp_path / "analysis" / "x.py").write_text("from search.a import f\nfrom quant import y\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["search.a", "search.b"]]
    assert layering_problems(graph) == ["analysis.x -> search.a (sideways)"]


def test_every_package_has_a_row_in_the_readme_layout_table():
    """A file is findable from README's folder table: every package of the import levels has its
    row, and the table names no package that does not exist."""
    import re

    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)/` \|", readme, flags=re.M))
    assert set(LEVEL) <= rows, f"packages without a README layout row: {sorted(set(LEVEL) - rows)}"
    assert all((ROOT / r).is_dir() for r in rows), sorted(r for r in rows if not (ROOT / r).is_dir())
