"""Docstring coverage of the public API (issue #26), counted from the code's AST.

Counted, in every .py file of the packages in PACKAGES (`bench/` is left out: scripts, not API):

- public module-level functions (`def`/`async def` whose name does not start with `_`);
- public module-level classes;
- their public methods (names not starting with `_`, so dunder methods such as `__init__` and
  `__call__` are left out; the class docstring documents construction).

Not counted: nested functions and classes inside functions (implementation detail), a method
decorated as a property setter/deleter (`@x.setter`, `@x.deleter`: the getter holds the
docstring), a `typing.overload` stub, and the `register(subparsers)` / `run(args)` functions of
`qsens/commands/*.py`: boilerplate every command has (argparse wiring and the handler), whose
documentation is the module docstring and the `qsens COMMAND --help` text.

Coverage = documented / counted must be at least MIN_COVERAGE; on failure the undocumented names
are printed (`path:line name`).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "quant", "denoisers", "sampling", "graphs", "predictor", "analysis", "search", "qsens")
MIN_COVERAGE = 0.95
COMMAND_BOILERPLATE = {"register", "run"}


def _decorator_names(node: ast.AST) -> list[str]:
    out = []
    for d in getattr(node, "decorator_list", []):
        if isinstance(d, ast.Call):
            d = d.func
        if isinstance(d, ast.Attribute):
            out.append(d.attr)
        elif isinstance(d, ast.Name):
            out.append(d.id)
    return out


def _skipped_method(node: ast.AST) -> bool:
    decos = _decorator_names(node)
    return "setter" in decos or "deleter" in decos or "overload" in decos


def public_api(path: Path) -> list[tuple[str, int, bool]]:
    """(qualified name, line, has docstring) of every counted definition in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_command = path.parent.name == "commands" and path.parent.parent.name == "qsens"
    out: list[tuple[str, int, bool]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("_") or "overload" in _decorator_names(node):
                continue
            if is_command and node.name in COMMAND_BOILERPLATE:
                continue
            out.append((node.name, node.lineno, ast.get_docstring(node) is not None))
        elif isinstance(node, ast.ClassDef):
            if node.name.startswith("_"):
                continue
            out.append((node.name, node.lineno, ast.get_docstring(node) is not None))
            for sub in node.body:
                if (isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and not sub.name.startswith("_") and not _skipped_method(sub)):
                    out.append((f"{node.name}.{sub.name}", sub.lineno,
                                ast.get_docstring(sub) is not None))
    return out


def coverage() -> tuple[int, int, list[str]]:
    """(documented, counted, undocumented `path:line name`) over every package in PACKAGES."""
    documented, total, missing = 0, 0, []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for name, line, has_doc in public_api(path):
                total += 1
                if has_doc:
                    documented += 1
                else:
                    missing.append(f"{path.relative_to(ROOT)}:{line} {name}")
    return documented, total, missing


def test_public_api_docstring_coverage():
    documented, total, missing = coverage()
    assert total > 0
    ratio = documented / total
    assert ratio >= MIN_COVERAGE, (
        f"docstring coverage {documented}/{total} = {ratio:.3f} < {MIN_COVERAGE}; undocumented:\n"
        + "\n".join(missing))


def test_the_counter_skips_what_the_rule_says(tmp_path: Path):
    src = (
        "def f():\n    'doc'\n"
        "def g(): pass\n"
        "def _h(): pass\n"
        "class C:\n"
        "    'doc'\n"
        "    def __init__(self): pass\n"
        "    @property\n"
        "    def p(self):\n        'doc'\n"
        "    @p.setter\n"
        "    def p(self, v): pass\n"
        "    def m(self): pass\n"
        "    def _m(self): pass\n"
        "class _D:\n"
        "    def m(self): pass\n")
    f = tmp_path / "m.py"
    f.write_text(src)
    got = {name: has for name, _, has in public_api(f)}
    assert got == {"f": True, "g": False, "C": True, "C.p": True, "C.m": False}
    cmd = tmp_path / "qsens" / "commands"
    cmd.mkdir(parents=True)
    (cmd / "x.py").write_text("def register(sub): pass\ndef run(args): pass\ndef helper(): pass\n")
    assert [n for n, _, _ in public_api(cmd / "x.py")] == ["helper"]


if __name__ == "__main__":  # print the coverage and the undocumented names
    d, t, miss = coverage()
    print("\n".join(miss))
    print(f"{d}/{t} = {d / t:.3f}")
