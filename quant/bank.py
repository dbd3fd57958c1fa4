"""The bank: every option of every quantizable layer, quantized once, stored compactly.

On disk (a directory):
    bank.json                    metadata: model name, weight fingerprints, options, per-layer
                                 shapes / fp bytes / MACs, per (layer, option) stored bits, MSE
    bank-00000.safetensors ...   `{layer}/{option}/codes` (bit-packed uint8, exactly n·b bits)
                                 `{layer}/{option}/params` (fp16 scale+zero or codebook)

Tensors are read lazily (one `safe_open` per shard), so using a few layers of a large bank
reads only those. A bank refuses a model whose weights differ from the ones it was built from.

Tied layers (one weight tensor shared by several modules, quant.layers.tied_groups) are stored
once, under the group's first layer; bank.json lists the groups under `tied` (written only when
there are any, so banks of untied models are byte-identical to those built before) and each
follower's entries repeat the leader's. A config must give a group one option.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from quant.accounting import ConfigStats, layer_bits, summarize
from quant.activations import config_activation_bits
from quant.config import QuantConfig
from core.errors import BankFormatError, BankMismatchError, ConfigError
from core.jsonio import read_json, write_json
from quant.layers import (LayerInfo, check_finite_weights, combine_fingerprints, dead_layers,
                          layer_fingerprints, layer_infos, quantizable_layers, tied_groups)
from quant.options import DEFAULT_OPTIONS, FP16, Option, parse_option, parse_options
from quant.packing import pack_codes, unpack_codes
from core.progress import progress_bar
from quant.quantizers import QuantizedTensor, quantize

FORMAT_VERSION = 1
META_FILE = "bank.json"
SHARD_BYTES = 1 << 30  # start a new safetensors shard past ~1 GiB


AVG_BITS_TOLERANCE = 0.01  # bits


@dataclass
class BankEntry:
    """One (layer, option): what it costs and how far it is from the FP weight."""
    stored_bits: int  # payload + overhead, as accounted
    mse: float  # mean squared error per weight (the one normalisation for every method)
    seconds: float  # build time, in memory only
    shard: str  # safetensors file holding its tensors
    params_shape: tuple[int, ...]

    def to_dict(self) -> dict:
        """The entry as stored in bank.json: stored bits, MSE, shard, params shape (no timings: a rebuild
        gives a byte-identical bank).
        """
        # No timing on disk: the same model and options must give a byte-identical bank, so
        # DVC sees an unchanged output and skips every stage after a rebuild.
        return {"stored_bits": self.stored_bits, "mse": self.mse,
                "shard": self.shard, "params_shape": list(self.params_shape)}


@dataclass
class Bank:
    """Every quantizable layer × option quantized once: codes and params in safetensors shards, stored
    bits and MSE per (layer, option) in bank.json; read-only once built (`build_bank`, `Bank.load`).
    """

    model: str
    options: list[str]
    layers: dict[str, LayerInfo]
    entries: dict[str, dict[str, BankEntry]]
    layer_fingerprints: dict[str, str]
    path: Path | None = None
    _tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # in-memory (unsaved)
    _handles: dict[str, object] = field(default_factory=dict, repr=False)
    tied: list[list[str]] = field(default_factory=list)  # groups of layers sharing one weight tensor
    dead: dict[str, str] = field(default_factory=dict)  # layers in the module tree forward never runs: why

    def unit(self, layer: str) -> str:
        """The layer whose stored tensors `layer` uses: the first of its tied group, else itself."""
        for group in self.tied:
            if layer in group:
                return group[0]
        return layer

    # ------------------------------------------------------------------ queries
    @property
    def fingerprint(self) -> str:
        """One hash of every layer's weight fingerprint: identifies the weights the bank was built
        from."""
        return combine_fingerprints(self.layer_fingerprints)

    @property
    def layer_names(self) -> list[str]:
        """The bank's layers, in module order."""
        return list(self.layers)

    def error(self, layer: str, option: str) -> float:
        """Mean squared error per weight of `layer` under `option` (0 for fp16)."""
        return 0.0 if option == FP16 else self.entries[layer][option].mse

    def quantized_bits(self, layer: str, option: str) -> int:
        """Stored bits of `layer` under `option`, payload plus overhead
        (`quant.accounting.layer_bits`)."""
        return layer_bits(option, self.layers[layer])

    def errors(self) -> dict[tuple[str, str], float]:
        """`{(layer, option): MSE per weight}` over every stored entry (fp16 not included)."""
        return {(l, o): e.mse for l, opts in self.entries.items() for o, e in opts.items()}

    def summarize(self, config: QuantConfig) -> ConfigStats:
        """Size, avg bits, error and BOPs of `config`; a tied group's tensor counts once."""
        self.validate(config)
        act = (config_activation_bits(config, self.layers) if getattr(config, "act_options", None)
               else config.act_bits)
        return summarize(config.options, self.layers, self.errors(), act, tied=self.tied)

    def validate(self, config: QuantConfig, where: str | None = None) -> QuantConfig:
        """ConfigError for another model, unknown layers or options, different options on tied
        layers, or a stated `avg_bits` that this bank's accounting does not reproduce (within
        AVG_BITS_TOLERANCE: files may round it)."""
        where = where or getattr(config, "source", None) or "config"
        named_dead = [n for n in list(config.options) + list(getattr(config, "act_options", {}) or {})
                      if n in self.dead]
        if named_dead:
            raise ConfigError(f"{where} names {len(named_dead)} layer(s) that exist but never run: "
                              f"{named_dead[0]} ({self.dead[named_dead[0]]})"
                              f"{f' and {len(named_dead) - 1} more' if len(named_dead) > 1 else ''}; "
                              "quantizing them would change nothing: remove them from the config")
        if config.model != self.model:
            raise ConfigError(f"{where} is for model {config.model!r} but the bank is for {self.model!r}")
        config = config.validate(self.layers, self.options, where=where, tied=self.tied)
        if config.avg_bits is not None:
            actual = summarize(config.options, self.layers, self.errors(), config.act_bits, tied=self.tied).avg_bits
            if abs(actual - config.avg_bits) > AVG_BITS_TOLERANCE:
                raise ConfigError(f"{where}: avg_bits {config.avg_bits:g} does not match its options "
                                  f"({actual:.4f} bits with this bank's accounting); the file was edited "
                                  "or made for another bank")
        return config

    def check_model(self, model: nn.Module, where: str | None = None) -> None:
        """Raise BankMismatchError naming what differs between `model` and the bank's model."""
        theirs = layer_fingerprints(model)
        missing = [n for n in self.layer_fingerprints if n not in theirs]
        extra = [n for n in theirs if n not in self.layer_fingerprints]
        changed = [n for n in self.layer_fingerprints if n in theirs and theirs[n] != self.layer_fingerprints[n]]
        if changed:
            check_finite_weights({n: m for n, m in quantizable_layers(model).items() if n in changed},
                                 what=f"the {self.model!r} model given to {where or self.path or 'the bank'}")
        if missing or extra or changed:
            parts = []
            if changed:
                parts.append(f"{len(changed)} layer(s) with other weights (first: {changed[0]})")
            if missing:
                parts.append(f"{len(missing)} bank layer(s) absent from the model (first: {missing[0]})")
            if extra:
                parts.append(f"{len(extra)} model layer(s) absent from the bank (first: {extra[0]})")
            src = where or (str(self.path) if self.path else "bank")
            raise BankMismatchError(f"{src} (built for {self.model!r}) does not match the model given: "
                                    + "; ".join(parts) + ". Rebuild it with `qsens bank build` (the same "
                                    "model.layers / model.max_layers selection, if one is set).")

    # ------------------------------------------------------------------ tensors
    def quantized(self, layer: str, option: str) -> QuantizedTensor:
        """The stored `QuantizedTensor` of (layer, option), read from its shard (tied layers share their
        group's); ConfigError when the layer or option is not in the bank.
        """
        if layer not in self.entries:
            raise ConfigError(f"layer {layer!r} is not in the bank for {self.model!r}")
        if option not in self.entries[layer]:
            raise ConfigError(f"option {option!r} is not in the bank (has: {', '.join(self.options)})")
        info, entry, opt = self.layers[layer], self.entries[layer][option], parse_option(option)
        unit = self.unit(layer)  # tied layers read their group's one stored tensor
        packed = self._tensor(entry.shard, f"{unit}/{option}/codes")
        params = self._tensor(entry.shard, f"{unit}/{option}/params").to(torch.float32)
        codes = unpack_codes(packed, opt.bits, info.n_weights).reshape(info.c_out, -1)
        return QuantizedTensor(opt, info.shape, codes, params.reshape(entry.params_shape))

    def dequantize(self, layer: str, option: str, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """The quantized weight of (layer, option), rebuilt from the bank, as `dtype` on `device`."""
        return self.quantized(layer, option).dequantize(torch.float32).to(device=device, dtype=dtype)

    def _tensor(self, shard: str, key: str) -> torch.Tensor:
        if key in self._tensors:
            return self._tensors[key]
        if self.path is None:
            raise BankFormatError(f"bank tensor {key} missing from memory (bank not saved)")
        handle = self._handles.get(shard)
        file = self.path / shard
        if handle is None:
            if not file.is_file():
                raise BankFormatError(f"{file}: bank shard missing; rebuild with `qsens bank build`")
            try:
                handle = safe_open(str(file), framework="pt")
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise BankFormatError(f"{file}: unreadable bank shard ({exc})") from None
            self._handles[shard] = handle
        try:
            return handle.get_tensor(key)
        except Exception as exc:
            raise BankFormatError(f"{file}: cannot read {key} ({exc})") from None

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        """Write the bank to `directory`, replacing any bank there as a whole: shards and
        bank.json are written into a temporary directory beside it, then swapped in
        (core.atomicdir), so a crash leaves the old bank or the new one, never new shards under
        an old bank.json. Files in `directory` that are not the bank's are carried over."""
        from core.atomicdir import recover, write_dir

        directory = Path(directory)
        if not self._tensors:
            raise BankFormatError("only a freshly built bank can be saved; copy the bank directory instead")
        shards: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in self._tensors.items():
            layer, option, _kind = key.rsplit("/", 2)  # "{layer}/{option}/codes|params"
            shards.setdefault(self.entries[layer][option].shard, {})[key] = tensor.contiguous()
        meta = {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "options": self.options,
            "layers": [info.to_dict() | {"fp_bytes": info.n_weights * 2} for info in self.layers.values()],
            "layer_fingerprints": self.layer_fingerprints,
            "entries": {l: {o: e.to_dict() for o, e in opts.items()} for l, opts in self.entries.items()},
        }
        if self.tied:  # absent for untied models: their bank.json stays byte-identical to before
            meta["tied"] = [list(g) for g in self.tied]
        if self.dead:  # likewise absent for models without dead (fused-away) layers
            meta["dead"] = dict(self.dead)
        recover(directory)
        foreign = ([p for p in directory.iterdir() if not (p.name == META_FILE or
                    (p.name.startswith("bank-") and p.name.endswith(".safetensors")))]
                   if directory.is_dir() else [])

        def fill(tmp: Path) -> None:
            for p in foreign:  # not the bank's: kept as they were
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
            for shard, tensors in shards.items():
                # One metadata key: safetensors writes the metadata map in hash order, so two keys could
                # swap places between builds and break byte-identical banks (the model is in bank.json).
                save_file(tensors, str(tmp / shard), metadata={"format": f"qsens-bank/{FORMAT_VERSION}"})
            write_json(tmp / META_FILE, meta, indent=1)

        write_dir(directory, fill)
        self.path = directory
        self._handles.clear()
        return directory

    @staticmethod
    def load(directory: str | Path) -> "Bank":
        """Open a bank written by `qsens bank build` (bank.json + shards), recovering an interrupted save.

        Raises BankFormatError when `directory` is no bank, of another format version, holds a
        non-finite error, malformed `tied` / `dead` lists, or misses a shard.
        """
        from core.atomicdir import recover

        directory = Path(directory)
        recover(directory)  # a save killed between its two renames (file systems without renameat2)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise BankFormatError(f"{directory}: not a bank (no {META_FILE}); build one with `qsens bank build`")
        meta = read_json(meta_path, "bank metadata (a JSON object)", error=BankFormatError)
        if meta.get("format_version") != FORMAT_VERSION:
            raise BankFormatError(f"{meta_path}: format version {meta.get('format_version')!r}, "
                                  f"this qsens reads {FORMAT_VERSION}; rebuild the bank")
        layers = {d["name"]: LayerInfo.from_dict(d) for d in meta["layers"]}
        entries = {l: {o: BankEntry(int(e["stored_bits"]), float(e["mse"]), 0.0, e["shard"],
                                    tuple(e["params_shape"])) for o, e in opts.items()}
                   for l, opts in meta["entries"].items()}
        bad = sorted({l for l, opts in entries.items() for e in opts.values() if not math.isfinite(e.mse)})
        if bad:  # built by an older qsens from a damaged (NaN/inf) checkpoint
            raise BankFormatError(f"{meta_path}: non-finite quantization error for {len(bad)} layer(s) "
                                  f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}): the bank was "
                                  "built from NaN/inf weights; repair the checkpoint and rebuild the bank")
        tied = meta.get("tied", [])
        if not (isinstance(tied, list) and all(isinstance(g, list) and len(g) > 1 and
                                                all(isinstance(n, str) and n in layers and n in entries for n in g)
                                                for g in tied)):
            raise BankFormatError(f"{meta_path}: `tied` must list groups of ≥ 2 of the bank's layers; "
                                  "rebuild the bank")
        dead = meta.get("dead", {})
        if not (isinstance(dead, dict) and all(isinstance(k, str) and isinstance(v, str) and k not in layers
                                               for k, v in dead.items())):
            raise BankFormatError(f"{meta_path}: `dead` must map layers outside the bank to reasons; rebuild the bank")
        bank = Bank(meta["model"], list(meta["options"]), layers, entries, dict(meta["layer_fingerprints"]),
                    path=directory, tied=[list(g) for g in tied], dead=dict(dead))
        for shard in sorted({e.shard for opts in entries.values() for e in opts.values()}):
            if not (directory / shard).is_file():
                raise BankFormatError(f"{directory / shard}: bank shard missing; rebuild with `qsens bank build`")
        return bank


def build_bank(
    model: nn.Module,
    options: Iterable[str] = DEFAULT_OPTIONS,
    model_name: str = "model",
    macs: dict[str, int] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Bank:
    """Quantize every quantizable layer of `model` with every option. Returns an in-memory bank
    (call `.save(dir)` to write it). `device` runs the quantizers there (e.g. "cuda")."""
    opts: list[Option] = parse_options(list(options))
    option_names = [str(o) for o in opts]
    modules = quantizable_layers(model)
    if not modules:
        raise ConfigError(f"model {model_name!r} has no Conv1d/Conv2d/Linear layer to quantize")
    check_finite_weights(modules, what=f"model {model_name!r}")  # before any work: NaN in, NaN bank out
    infos = {i.name: i for i in layer_infos(model, macs)}
    tied = tied_groups(modules)
    leader = {name: group[0] for group in tied for name in group[1:]}
    entries: dict[str, dict[str, BankEntry]] = {}
    tensors: dict[str, torch.Tensor] = {}
    shard_index, shard_bytes = 0, 0
    bar = progress_bar(modules.items(), desc=f"bank {model_name}", unit="layer", disable=not progress)
    for name, module in bar:
        if name in leader:  # one shared tensor: quantized and stored once, under its first layer
            entries[name] = dict(entries[leader[name]])
            continue
        weight = module.weight.detach()
        if weight.device.type == "meta":
            raise ConfigError(f"layer {name} has no weights (meta device): load real weights to build a bank")
        w = weight.to(device or weight.device, torch.float32)
        entries[name] = {}
        for opt in opts:
            t0 = time.perf_counter()
            q = quantize(w, opt)
            if not bool(torch.isfinite(q.params.to(torch.float16)).all()):
                raise ConfigError(f"layer {name}: {opt} cannot store this weight: its scales/codebook "
                                  f"overflow fp16 (max |w| = {float(w.abs().max()):.4g}, fp16 max 65504)")
            mse = float(((q.dequantize(torch.float32) - w).double() ** 2).mean())
            packed = pack_codes(q.codes, opt.bits).cpu()
            params = q.params.to(torch.float16).cpu()
            seconds = time.perf_counter() - t0
            shard = f"bank-{shard_index:05d}.safetensors"
            tensors[f"{name}/{opt}/codes"] = packed
            tensors[f"{name}/{opt}/params"] = params
            entries[name][str(opt)] = BankEntry(layer_bits(opt, infos[name]), mse, round(seconds, 6), shard,
                                                tuple(params.shape))
            shard_bytes += packed.numel() + params.numel() * 2
            if shard_bytes > SHARD_BYTES:
                shard_index, shard_bytes = shard_index + 1, 0
    return Bank(model_name, option_names, infos, entries, layer_fingerprints(model), _tensors=tensors, tied=tied,
                dead=dead_layers(model))
