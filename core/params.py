"""Reading one section of params.yaml into a dataclass: unknown keys and ill-typed values are one
QsensError each, naming the key, the value and the expected type.

Every value is checked against the dataclass field's declared type (`typing.get_type_hints`):

| declared                     | accepted                                                   |
| ---------------------------- | ---------------------------------------------------------- |
| `bool`                       | true / false only (not 0 / 1)                              |
| `int`                        | an integer; a float with an exact integer value (8.0 → 8)  |
| `float`                      | a finite int or float (→ float), not a bool; also `1e-3`   |
|                              | as a string (PyYAML reads exponents without a dot so)      |
| `str`                        | a string                                                   |
| `X | None`                   | null, or what X accepts                                    |
| `tuple[X, ...]` / `list[X]`  | a list of what X accepts; one X alone is a one-element list |

A scalar where a list is expected is accepted because `dvc exp run -S search.budgets=3.4` (one
value per `-S`) writes exactly that. A string is never split into characters, nor on commas
(no list-typed field is documented as comma-separated). Any other type (dicts, `Any`) passes as is.

**One source of defaults.** The shipped params.yaml (next to this package) holds every knob's
default; a params dataclass declares types and validation only and takes its defaults from it
with `@defaults_from("section")` (under `@dataclass`). A field given a default in the class body
as well is refused when the class is defined (TypeError naming the field), and
`tests/test_params_defaults.py` checks that every shipped section has its dataclass and every
dataclass knob has its shipped value.

**The `calibration:` section** is shared by every stage that calibrates (inputs from the FP
trajectory, seed 003): a dataclass maps its own fields to it (`calibration={"calib_seed": "seed"}`),
and a field the stage's own section does not set takes the params file's `calibration:` value
(`section_values`), so one edit moves every stage while a stage may still override one field.
"""
from __future__ import annotations

import copy
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

from core.errors import QsensError

T = TypeVar("T")

SHIPPED_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
CALIBRATION = "calibration"
# section -> the dataclasses reading it (a section may be split over several, e.g. `evaluate`)
SECTIONS: dict[str, list[type]] = {}


@lru_cache(maxsize=None)
def _shipped(section: str) -> dict[str, Any]:
    if not SHIPPED_PARAMS.is_file():  # e.g. a non-editable wheel install: the defaults live in the repository
        raise QsensError(f"{SHIPPED_PARAMS}: the shipped params.yaml (every knob's default) is missing; "
                         "install qsens from its repository (`pip install -e .`, as `make install` does)")
    return read_section(SHIPPED_PARAMS, section)


def defaults_from(section: str, *, calibration: dict[str, str] | None = None,
                  not_knobs: tuple[str, ...] = (), leave: tuple[str, ...] = (),
                  prefix: str = "") -> Callable[[type[T]], type[T]]:
    """Class decorator, applied under `@dataclass`: each annotated field takes its default from the
    shipped params.yaml — `section.<field>`, or for a field in `calibration` (field → key)
    `calibration.<key>`. Lists become tuples for tuple fields and default factories otherwise.

    `not_knobs`: fields that are no params knob (set by code, e.g. `ModelSpec.name`); they may
    keep a class default. `leave`: key prefixes of the section that another dataclass reads
    (`evaluate`'s `act_*` keys: `search.activation.ActEvalParams`); loading skips them; `prefix`:
    the class reads only the section's keys that start with it (that other dataclass). Raises
    TypeError at class definition for a field that has a default in the class body *and* a shipped
    value (a knob with two defaults)."""
    def wrap(cls: type[T]) -> type[T]:
        own = cls.__dict__.get("__annotations__", {})
        shipped = _shipped(section)
        calib = calibration or {}
        values = {name: shipped[name] for name in own if name in shipped}
        values.update({name: _shipped(CALIBRATION)[key] for name, key in calib.items()
                       if name in own and name not in values and key in _shipped(CALIBRATION)})
        twice = sorted(n for n in values if n in cls.__dict__)
        if twice:
            raise TypeError(f"{cls.__name__}: {twice} have a default in the class and in {SHIPPED_PARAMS.name} "
                            f"`{section}`: params.yaml is the only source of defaults")
        for name, value in check_types(cls, values, section, SHIPPED_PARAMS).items():
            if isinstance(value, (list, dict)):
                setattr(cls, name, field(default_factory=lambda v=value: copy.deepcopy(v)))
            else:
                setattr(cls, name, value)
        cls.__params_section__ = section
        cls.__params_calibration__ = dict(calib)
        cls.__params_not_knobs__ = tuple(not_knobs)
        cls.__params_leave__ = tuple(leave)
        cls.__params_prefix__ = prefix
        SECTIONS.setdefault(section, []).append(cls)
        return cls
    return wrap


def section_values(cls: type, path: str | Path, section: str) -> dict[str, Any]:
    """`params[section]` of the file at `path`, plus, for each of `cls`'s calibration fields
    (`defaults_from(..., calibration=...)`) the section does not set, the file's `calibration:`
    value (so a user's `calibration.samples: 128` reaches every stage that calibrates)."""
    leave, prefix = getattr(cls, "__params_leave__", ()), getattr(cls, "__params_prefix__", "")
    data = {k: v for k, v in read_section(path, section).items()
            if not (leave and k.startswith(leave)) and k.startswith(prefix)}
    calib = getattr(cls, "__params_calibration__", {})
    if calib:
        shared = calibration_section(path)
        data.update({name: shared[key] for name, key in calib.items() if name not in data and key in shared})
    return data


def calibration_section(path: str | Path) -> dict[str, Any]:
    """The params file's `calibration:` section, checked against `CalibrationParams` like any
    section: QsensError (one line, `calibration.KEY`) for an unknown key or a value of another type."""
    shared = dict(read_section(path, CALIBRATION))
    reject_unknown(CalibrationParams, shared, CALIBRATION, path)
    return shared


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field `name` (its factory called), or MISSING."""
    for f in fields(cls):
        if f.name == name:
            return f.default_factory() if f.default_factory is not MISSING else f.default
    return MISSING


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
    """Check `data` (a params section) against the dataclass `cls`: one QsensError naming every
    key `cls` does not have, or the first value whose type does not fit its field (see the module
    doc). Accepted values are normalised **in place** (3.4 → [3.4] for a list field, 8.0 → 8 for
    an int field, lists → tuples for tuple fields), so `cls(**data)` gets the declared types."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        place = f" in {where}" if where else ""
        raise QsensError(f"unknown {section} params {unknown}{place}; known: {sorted(known)}")
    data.update(check_types(cls, data, section, where))


def check_types(cls: type, data: dict[str, Any], section: str, where: str | Path | None = None) -> dict[str, Any]:
    """`data` with every value converted to its field's declared type; QsensError
    `"{where}: {section}.{key} = {value!r}: expected {type}"` for the first value that does not fit."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        hint = hints.get(key, Any)
        try:
            out[key] = _convert(value, hint)
        except _Mismatch:
            place = f"{where}: " if where else "params.yaml: "
            raise QsensError(f"{place}{section}.{key} = {value!r}: expected {describe(hint)}") from None
    return out


def load_section(cls: type[T], path: str | Path, section: str, lists_as_tuples: bool = False) -> T:
    """`cls(**params[section])` with every key and value checked (`reject_unknown`).

    `lists_as_tuples` is kept for callers; tuple-typed fields always get tuples now."""
    data = section_values(cls, path, section)
    reject_unknown(cls, data, section, path)
    try:
        return cls(**data)
    except TypeError as exc:
        raise QsensError(f"{path}: bad `{section}` params ({exc})") from None


# ---------------------------------------------------------------------------------------------
class _Mismatch(Exception):
    pass


# `1e-3`, `-2.5E+4`: numbers in exponent form without a dot, which YAML 1.1 leaves as strings
_EXPONENT_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _sequence_item(hint: Any) -> tuple[type, Any] | None:
    """(list | tuple, item type) for `list[X]` / `tuple[X, ...]`; None for anything else."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return list, (args[0] if args else Any)
    if origin is tuple and (not args or (len(args) == 2 and args[1] is Ellipsis)):
        return tuple, (args[0] if args else Any)
    return None


def _convert(value: Any, hint: Any) -> Any:
    if hint is Any:
        return value
    if _is_union(hint):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    seq = _sequence_item(hint)
    if seq is not None:
        kind, item = seq
        items = list(value) if isinstance(value, (list, tuple)) else [value]  # one value → one element
        return kind(_convert(v, item) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads `1e-3` as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    return value  # dicts and other declared types: not checked here


def describe(hint: Any) -> str:
    """Plain words for a declared type: `tuple[float, ...]` → "a list of numbers"."""
    if hint is Any:
        return "any value"
    if _is_union(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        text = " or ".join(describe(a) for a in args)
        return text + (" or null" if len(args) < len(typing.get_args(hint)) else "")
    seq = _sequence_item(hint)
    if seq is not None:
        return "a list of " + _plural(seq[1])
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    return {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}.get(
        hint, describe(hint))


# defined last: its defaults are read with the converters above
@dataclass(frozen=True)
@defaults_from(CALIBRATION)
class CalibrationParams:
    """The `calibration:` section: the inputs drawn from the FP trajectory (seed 003) for every
    stage that calibrates; each stage maps its own fields onto these keys (`defaults_from(...,
    calibration=...)`)."""

    samples: int  # (x_t, t, conditioning) inputs drawn from the trajectories
    trajectories: int  # FP sampling trajectories they come from
    seed: int  # their image seed set
    timesteps: str  # uniform | normal (PTQ4DM)
    normal_mean: float
    normal_std: float
    chunk: int  # calibration samples per forward
