"""QuantConfig: which option each layer takes. JSON on disk, validated against a model or bank.

    {"model": "digits", "options": {"conv_in": "uaq4", ...}, "avg_bits": 3.52, "act_bits": null,
     "act_options": {"conv_in": 6, ...}}

A layer missing from `options` stays unquantized (`fp16`). Activations: a layer in
`act_options` has its inputs quantized at that many bits (2–8); a layer missing from it takes the
global `act_bits` (null: FP activations). `act_options` is optional: files without it load as
before, are written as before (no key when empty), and keep their config id.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from core.errors import ConfigError, QsensError
from core.jsonio import read_json, write_json
from quant.options import FP16, parse_option

ACT_BITS_ALLOWED = (None, 8, 6)  # the global setting (the reference system's A8 / A6)
MIN_ACT_BITS, MAX_ACT_BITS = 2, 8  # per layer (act_options)


@dataclass
class QuantConfig:
    """A mixed-precision config: one weight option per layer (absent = fp16), optional activation bits.

    Saved as JSON (`model`, `options`, `avg_bits`, `act_bits`, `act_options`); see docs/formats.md.
    """

    model: str
    options: dict[str, str] = field(default_factory=dict)
    avg_bits: float | None = None
    act_bits: int | None = None
    act_options: dict[str, int] = field(default_factory=dict)  # per-layer activation bits
    # where it was read from (error messages name the file); not part of the config's identity
    source: str | None = field(default=None, compare=False, repr=False)

    def option(self, layer: str) -> str:
        """The option of `layer` (`fp16` when the config leaves it out)."""
        return self.options.get(layer, FP16)

    def canonical_options(self) -> dict[str, str]:
        """Sorted options with fp16 entries dropped: equal configs have equal canonical forms."""
        return {k: self.options[k] for k in sorted(self.options) if self.options[k] != FP16}

    def act_bits_of(self, layer: str) -> int | None:
        """The activation bits of `layer`: its `act_options` entry, else the global `act_bits`."""
        return self.act_options.get(layer, self.act_bits)

    @property
    def config_id(self) -> str:
        """Stable 16-hex-digit hash of the canonical config (options, and act_bits / act_options
        when set: a weight-only config keeps the id it had before act_options existed)."""
        payload: dict = {"options": self.canonical_options()}
        if self.act_bits is not None:
            payload["act_bits"] = self.act_bits
        if self.act_options:
            payload["act_options"] = {k: int(self.act_options[k]) for k in sorted(self.act_options)}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @staticmethod
    def uniform(model: str, layers: Iterable[str], option: str) -> "QuantConfig":
        """Every layer of `layers` at `option`; ConfigError when the option does not parse."""
        parse_option(option)
        return QuantConfig(model, {name: option for name in layers})

    def validate(self, layers: Iterable[str], allowed_options: Iterable[str] | None = None,
                 where: str = "config", tied: Sequence[Sequence[str]] = ()) -> "QuantConfig":
        """Raise one ConfigError that names every unknown layer and every bad option, and the first
        group of `tied` layers (one shared weight tensor) given different options."""
        known = set(layers)
        allowed = None if allowed_options is None else set(allowed_options) | {FP16}
        unknown_layers = [name for name in self.options if name not in known]
        bad_options = []
        for name, text in self.options.items():
            try:
                parse_option(text)
                ok = allowed is None or text in allowed
            except ConfigError:
                ok = False
            if not ok:
                bad_options.append(f"{name}={text!r}")
        problems = []
        if unknown_layers:
            problems.append(f"{len(unknown_layers)} unknown layer(s): {_clip(unknown_layers)}")
        if bad_options:
            choice = "" if allowed is None else f" (allowed: {', '.join(sorted(allowed))})"
            problems.append(f"{len(bad_options)} unknown option(s): {_clip(bad_options)}{choice}")
        if self.act_bits not in ACT_BITS_ALLOWED:
            problems.append(f"act_bits={self.act_bits!r} (allowed: null, 8, 6)")
        unknown_act = [name for name in self.act_options if name not in known]
        if unknown_act:
            problems.append(f"act_options: {len(unknown_act)} unknown layer(s): {_clip(unknown_act)}")
        bad_act = [f"{name}={b!r}" for name, b in self.act_options.items() if not _act_bits_ok(b)]
        if bad_act:
            problems.append(f"act_options: {len(bad_act)} bit-width(s) outside "
                            f"{MIN_ACT_BITS}-{MAX_ACT_BITS}: {_clip(bad_act)}")
        if problems:
            raise ConfigError(f"{where} for model {self.model!r}: " + "; ".join(problems))
        check_tied(self.options, tied, where)
        return self

    # --- JSON ---
    def to_dict(self) -> dict:
        """The config as the JSON dict it is saved as (`act_options` only when non-empty)."""
        d = {"model": self.model, "options": dict(self.options),
             "avg_bits": self.avg_bits, "act_bits": self.act_bits}
        if self.act_options:  # absent when empty: weight-only files stay byte-identical
            d["act_options"] = dict(self.act_options)
        return d

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a temporary file renamed over `path`): a failed write never
        leaves a truncated config. ConfigError when `path` is a directory or cannot be written."""
        try:
            return write_json(path, self.to_dict(), sort_keys=False)
        except QsensError as exc:  # the one atomic write (core.jsonio), as this module's error type
            raise ConfigError(str(exc)) from None

    @staticmethod
    def from_dict(data: object, where: str = "config") -> "QuantConfig":
        """A config from its JSON dict; `where` names the source in errors.

        Raises ConfigError on a non-object, a missing or unknown key, or a malformed value.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object with 'model' and 'options'")
        missing = [k for k in ("model", "options") if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
        extra = sorted(set(data) - {"model", "options", "avg_bits", "act_bits", "act_options"})
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} "
                              "(expected model, options, avg_bits, act_bits, act_options)")
        options = data["options"]
        if not isinstance(options, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in options.items()):
            raise ConfigError(f"{where}: 'options' must map layer names to option strings")
        avg_bits = data.get("avg_bits")
        if avg_bits is not None and not isinstance(avg_bits, (int, float)):
            raise ConfigError(f"{where}: 'avg_bits' must be a number or null")
        act_bits = data.get("act_bits")
        if isinstance(act_bits, float) and act_bits.is_integer():
            act_bits = int(act_bits)  # 8.0 is 8 (as for params.yaml integers)
        if act_bits is not None and (isinstance(act_bits, bool) or not isinstance(act_bits, int)):
            raise ConfigError(f"{where}: 'act_bits' = {act_bits!r}: expected null, 8 or 6")
        act_options = data.get("act_options") or {}
        if not isinstance(act_options, dict) or not all(isinstance(k, str) for k in act_options):
            raise ConfigError(f"{where}: 'act_options' must map layer names to activation bits (2-8)")
        act_options = {k: int(v) if isinstance(v, float) and v.is_integer() else v
                       for k, v in act_options.items()}
        bad_act = [f"{k}={v!r}" for k, v in act_options.items() if not _act_bits_ok(v)]
        if bad_act:
            raise ConfigError(f"{where}: 'act_options' bit-width(s) outside {MIN_ACT_BITS}-{MAX_ACT_BITS}: "
                              f"{_clip(bad_act)}")
        return QuantConfig(str(data["model"]), dict(options),
                           None if avg_bits is None else float(avg_bits), act_bits, act_options)

    @staticmethod
    def load(path: str | Path) -> "QuantConfig":
        """Read a config JSON file; ConfigError when it is missing or malformed (the message names
        the file)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        data = read_json(path, "a JSON object with 'model' and 'options'", error=ConfigError)
        config = QuantConfig.from_dict(data, where=str(path))
        config.source = str(path)
        return config


def check_tied(options: Mapping[str, str], tied: Sequence[Sequence[str]], where: str = "config") -> None:
    """ConfigError naming two layers and their options when a group of layers sharing one weight
    tensor is given different options (an unlisted layer is fp16). One tensor holds one set of
    values, so such a config cannot be applied: give every layer of the group the same option
    (`tie_options` does that from the group's first layer)."""
    for group in tied:
        first = group[0]
        for other in group[1:]:
            a, b = options.get(first, FP16), options.get(other, FP16)
            if a != b:
                raise ConfigError(f"{where}: layers {first} and {other} share one weight tensor but get "
                                  f"different options ({first}={a}, {other}={b}); give them the same option")


def tie_options(options: Mapping[str, str], tied: Sequence[Sequence[str]]) -> dict[str, str]:
    """`options` with every layer of each tied group set to the option of the group's first layer
    (fp16 when it is unlisted): for samplers that draw one option per layer."""
    out = dict(options)
    for group in tied:
        option = out.get(group[0], FP16)
        for name in group[1:]:
            if option == FP16:
                out.pop(name, None)
            else:
                out[name] = option
    return out


def _act_bits_ok(b: object) -> bool:
    return isinstance(b, int) and not isinstance(b, bool) and MIN_ACT_BITS <= b <= MAX_ACT_BITS


def _clip(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
