"""Reading one section of params.yaml into a dataclass, with one-line errors for unknown keys."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from quant.errors import QsensError

T = TypeVar("T")


def read_section(path: str | Path, section: str) -> dict[str, Any]:
    """The `section:` mapping of a params file; {} when the file or the section is absent."""
    path = Path(path)
    if not path.exists():
        return {}
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get(section) or {}


def load_section(cls: type[T], path: str | Path, section: str, lists_as_tuples: bool = False) -> T:
    """`cls(**params[section])`, refusing keys the dataclass does not have (named in the error)."""
    data = read_section(path, section)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise QsensError(f"unknown {section} params {unknown} in {path}; known: {sorted(known)}")
    if lists_as_tuples:
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**data)
