"""The registry of model adapters: which code loads a model source into a `Denoiser`.

`denoisers.spec.classify_source` names what a source string is (its *kind*: "builtin",
"digits-dir", "pipeline-dir", "hub-id", ...); the adapter registered for that kind loads it
(`denoisers.registry.load_denoiser`). The built-ins (the digits models, any diffusers pipeline)
register in `denoisers/registry.py`. A new model family is one file that calls
`register_adapter(ModelAdapter(kind, load, marker=FILE))`: a directory holding FILE is then that
kind for every command (spec, bank, sample, ...), checked before the built-in forms
(`tests/test_models.py` registers a toy one).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from core.errors import QsensError
from core.registry import Registry

if TYPE_CHECKING:
    from denoisers.base import Denoiser
    from denoisers.spec import ModelSpec

_KIND = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class ModelAdapter:
    """Loads sources of one kind: `load(spec, data_dir) -> Denoiser` on the spec's device (raises
    QsensError, one line, for anything it cannot load). `marker`: a file name that makes a
    directory this kind (None for the built-in kinds, which `classify_source` detects itself)."""

    kind: str
    load: "Callable[[ModelSpec, Path], Denoiser]"
    summary: str = ""
    marker: str | None = None


_ADAPTERS: Registry[ModelAdapter] = Registry("model adapter for sources of kind")


def register_adapter(adapter: ModelAdapter, replace: bool = False) -> ModelAdapter:
    """Add `adapter` (returns it). Raises QsensError for a malformed kind or a taken one (unless
    `replace`)."""
    if not _KIND.match(adapter.kind):
        raise QsensError(f"model adapter kind {adapter.kind!r}: use lowercase letters, digits and '-'")
    return _ADAPTERS.register(adapter.kind, adapter, replace)


def unregister_adapter(kind: str) -> None:
    """Remove the adapter of `kind` (tests that register a toy one clean up with it)."""
    _ADAPTERS.unregister(kind)


def adapter_for(kind: str) -> ModelAdapter | None:
    """The adapter registered for sources of `kind`, or None."""
    return _ADAPTERS.find(kind)


def marker_kind(directory: Path) -> str | None:
    """The kind of a registered adapter whose marker file `directory` holds, or None."""
    for adapter in _ADAPTERS:
        if adapter.marker and (directory / adapter.marker).is_file():
            return adapter.kind
    return None
