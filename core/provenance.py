"""What a stored result depends on: the code that computed it (its import closure) and a job key.

Resumable outputs (sample shards, evaluation rows, analysis progress) and DVC stages must be
invalidated by exactly what can change their result. Listing code by hand drifts (issue 12,
case 7), so both come from one derivation here:

  - `import_closure(module)`: every first-party source file a module can import, following
    function-local (lazy) imports too, found by parsing the files (nothing is imported);
  - `code_digest(modules)`: a hash of those files' tokens without comments and blank lines, so a
    reworded comment does not force re-scoring but any change to code or strings does;
  - `job_key(**parts)`: a short hash of a job's settings (JSON-canonical).

`python -m core.provenance --write-dvc dvc.yaml` rewrites every stage's code deps from the
`qsens` commands in its `cmd` (`derive_dvc_deps`); tests/test_dvc_deps.py fails when they drift.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import sys
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "quant", "denoisers", "sampling", "graphs", "predictor", "search", "analysis", "qsens")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a first-party module (`pkg.mod` → pkg/mod.py or pkg/mod/__init__.py)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """First-party modules named by any import statement in `path` (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import mod` names a submodule as often as an attribute
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def import_closure(modules: Iterable[str], root: Path = ROOT) -> list[Path]:
    """Sorted first-party source files reachable by imports from `modules` (dotted names).

    Includes each parent package's `__init__.py` (Python runs it on import). Raises ValueError for
    a start module that does not exist.
    """
    todo = list(modules)
    for m in todo:
        if module_file(m, root) is None:
            raise ValueError(f"no first-party module {m!r} under {root}")
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        for i in range(1, len(parts)):  # parent packages' __init__
            init = module_file(".".join(parts[:i]), root)
            if init is not None:
                files.add(init)
        path = module_file(m, root)
        if path is None:
            continue
        files.add(path)
        todo.extend(_imported_modules(path, m) - seen)
    return sorted(files)


@lru_cache(maxsize=256)
def _file_tokens_digest(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for tok in tokenize.tokenize(io.BytesIO(fh.read()).readline):
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING):
                continue
            h.update(f"{tok.type}:{tok.string}\x00".encode())
    return h.hexdigest()


def code_digest(modules: Iterable[str], root: Path = ROOT) -> str:
    """16 hex digits over the import closure of `modules`: file paths and their code tokens."""
    h = hashlib.sha256()
    for path in import_closure(modules, root):
        st = path.stat()
        h.update(path.relative_to(root).as_posix().encode())
        h.update(_file_tokens_digest(str(path), st.st_mtime_ns, st.st_size).encode())
    return h.hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (64 digits): the one file digest (network files recorded in
    reference dirs, config files named in reports, every content digest below)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_digest(paths: Iterable[str | Path | None], skip: Iterable[str] = ()) -> str:
    """16 hex digits over the contents of `paths`, in the order given: a file is its name and
    SHA-256; a directory every file below it (sorted, by path relative to it; file names in `skip`
    left out); an absent path (or None) a marker of its own, so absent and empty differ.
    What job keys use for their input files (the bank, the reference, the cache, a family)."""
    skip = set(skip)
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            h.update(b"<none>\n")
            continue
        p = Path(p)
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file() and q.name not in skip)
            for f in files:
                h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\n".encode())
            h.update(b"<dir end>\n")
        elif p.is_file():
            h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
        else:
            h.update(f"{p.name}\0<absent>\n".encode())
    return h.hexdigest()[:16]


def job_key(**parts: Any) -> str:
    """16 hex digits over JSON-canonical `parts` (sorted keys; non-JSON values by str())."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bank_digest(bank: Any) -> str:
    """16 hex digits identifying a bank's contents: model, weight fingerprint, options and every
    (layer, option) error, so a bank rebuilt with other quantizers gets another digest."""
    errors = sorted((layer, option, float(mse)) for (layer, option), mse in bank.errors().items())
    return job_key(model=bank.model, fingerprint=str(bank.fingerprint), options=list(bank.options),
                   errors=errors)


def dvc_deps(modules: Iterable[str], root: Path = ROOT) -> list[str]:
    """The closure as repository-relative paths, the form dvc.yaml's `deps` lists use."""
    return [p.relative_to(root).as_posix() for p in import_closure(modules, root)]


_STAGE = re.compile(r"^  (\S[^:]*):\s*$")
_COMMAND = re.compile(r"\bqsens\s+([a-z][a-z-]*)")


def stage_modules(cmd: str) -> list[str]:
    """The command modules a stage's `cmd` runs: `qsens bank build ... && qsens cache show` →
    ["qsens.commands.bank", "qsens.commands.cache"]."""
    return sorted({f"qsens.commands.{name.replace('-', '_')}" for name in _COMMAND.findall(cmd)})


def stage_cmd(stage: dict) -> str:
    """A dvc.yaml stage's command; a `foreach` stage's is its `do:` block's."""
    return stage.get("cmd") or (stage.get("do") or {}).get("cmd", "")


def derive_dvc_deps(text: str, root: Path = ROOT) -> str:
    """dvc.yaml text with each stage's `.py` deps replaced by the import closure of its commands.

    Data deps (anything not ending in .py) are kept in place; the code deps follow them, sorted.
    Works on the text (keeps comments and layout); expects dvc.yaml's usual 2/4/6-space layout.
    """
    import yaml

    stages = yaml.safe_load(text).get("stages", {})
    out: list[str] = []
    stage = None
    item = None  # the indent of the open deps list's items ("      - ", or "        - " under foreach's `do:`)
    for line in text.splitlines():
        m = _STAGE.match(line)
        if m:
            stage = m.group(1)
        if item and not line.startswith(item):
            cmd = stage_cmd(stages.get(stage, {}))
            out.extend(f"{item}{p}" for p in dvc_deps(stage_modules(cmd), root))
            item = None
        if line.strip() == "deps:" and line[: len(line) - len(line.lstrip())] in ("    ", "      "):
            item = line[: len(line) - len(line.lstrip())] + "  - "
            out.append(line)
            continue
        if item and line.rstrip().endswith(".py"):
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-dvc":
        path = Path(sys.argv[2])
        path.write_text(derive_dvc_deps(path.read_text()))
        print(f"{path}: code deps derived from each stage's qsens commands")
    else:
        for entry in dvc_deps(sys.argv[1:]):
            print(f"      - {entry}")
