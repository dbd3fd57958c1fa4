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

    data = (yaml.safe_load(path.read_text()) or {}).get(section) or {}
    if not isinstance(data, dict):
        raise QsensError(f"{path}: `{section}` must be a mapping")
    return data


def reject_unknown(cls: type, data: dict[str, Any], section: str, where: str | Path | None = None) -> None:
    """One QsensError naming every key of `data` that the dataclass `cls` does not have."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        place = f" in {where}" if where else ""
        raise QsensError(f"unknown {section} params {unknown}{place}; known: {sorted(known)}")


def load_section(cls: type[T], path: str | Path, section: str, lists_as_tuples: bool = False) -> T:
    """`cls(**params[section])`, refusing keys the dataclass does not have (named in the error)."""
    data = read_section(path, section)
    reject_unknown(cls, data, section, path)
    if lists_as_tuples:
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**data)
    except TypeError as exc:
        raise QsensError(f"{path}: bad `{section}` params ({exc})") from None
