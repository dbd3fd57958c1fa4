"""MkDocs hook (mkdocs.yml `hooks:`): the site's home page is README.md, the single source.

No docs/index.md exists on disk: at build time `on_files` adds a generated `index.md` whose text is
README.md with its relative links rebased from the repository root to docs/ (`docs/cli.md` ->
`cli.md`, `docs/img/x.png` -> `img/x.png`), so every README link resolves in the built site and
`mkdocs build --strict` checks it like any other page's.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent
_LINK = re.compile(r"(\]\()docs/")  # a Markdown link target starting at docs/


def readme_as_index(text: str) -> str:
    """README.md's Markdown with every `](docs/...)` link target rebased to docs/ (`](...)`)."""
    return _LINK.sub(r"\1", text)


def on_files(files, config):
    """Add the generated home page `index.md` (README.md, links rebased) to the site's files."""
    text = readme_as_index((ROOT / "README.md").read_text(encoding="utf-8"))
    files.append(File.generated(config, "index.md", content=text))
    return files
