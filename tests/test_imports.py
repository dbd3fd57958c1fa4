"""Import rules computed from the code (issue #26): a command never imports another command;
what several commands share lives in a CLI-side module (e.g. qsens/search_args.py)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports anywhere (top level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
