"""Real low-bit weights: packed layers that dequantize in the forward pass, and the checkpoint.

    model = pack(model, config, bank)          # Conv1d/Conv2d/Linear -> packed layers, in place
    save_quantized(model, "out/q", config, fingerprint=bank.fingerprint)
    model = load_quantized("out/q")            # no bank, no FP weights (diffusers models)
    model = load_quantized("out/q", fp_model)  # or swap into a model of the same weights

A packed layer keeps exactly what the bank stores: the bit-packed codes (`quant.packing`,
n·b bits) and the fp16 scale/zero (UAQ, (C_out, 2)) or codebook (K-Means-C (C_out, 2^b),
K-Means-A (1, 2^b)). Its `weight` is rebuilt in every forward with the same float32 operations
as `QuantizedTensor.dequantize` and cast to the layer's dtype, so a packed model's outputs equal
the fake-quant `quant.apply.quantized` model's bit for bit (same dtype, same device). The layer
class is a subclass of the original one (`PackedConv2d` ⊂ `nn.Conv2d`, any subclass too), so its
own `forward`, `isinstance` checks and activation-quantization hooks keep working.

Layers sharing one weight tensor stay tied: the group's first layer holds the packed tensors,
the others read them (one copy in memory and on disk).

Checkpoint directory (docs/export.md):
    manifest.json         format, model name + weight fingerprint, the QuantConfig, dtype, the
                          architecture (diffusers class + config) and per layer: option, format,
                          bits, shape, tensor keys, tie; byte sizes of both files and the SHA-256
                          of every tensor in them (checked on load: a swapped tensor is refused)
    weights.safetensors   `{layer}.codes` uint8 (little-endian bit stream: bit j of code i at
                          stream bit i·b + j) and `{layer}.params` float16, per stored layer
    rest.safetensors      every other tensor of the model's state dict (biases, norms,
                          embeddings, fp16 layers), in the model's dtype
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from quant.accounting import layer_bits
from core.atomicdir import recover, write_dir
from quant.bank import Bank
from quant.config import QuantConfig, check_tied
from core.errors import QsensError
from core.jsonio import read_json
from quant.methods import get_method
from quant.layers import QUANTIZABLE_TYPES, LayerInfo, alias_key, combine_fingerprints, layer_fingerprints, \
    quantizable_layers, tied_groups
from quant.options import FP16, parse_option
from quant.packing import decode_packed

FORMAT = "qsens-quantized"
FORMAT_VERSION = 2  # 2: per-tensor SHA-256 in the manifest (a swapped or edited tensor is refused)
MANIFEST = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
REST_FILE = "rest.safetensors"
_LAYOUT = ("codes: uint8 little-endian bit stream, bit j of code i at stream bit i*bits+j, codes in "
           "row-major order of the weight reshaped to (C_out, -1); params float16: uaq (C_out, 2) "
           "[scale, zero], w = (code - zero) * scale; kmc (C_out, 2^bits) codebook per output "
           "channel, w = params[row, code]; kma (1, 2^bits) one codebook, w = params[0, code]")


class PackedLayer:
    """Mixin of the packed classes: bit-packed codes + fp16 params as buffers, `weight` rebuilt
    on use. Buffers: `codes` (uint8, ceil(n·b/8)) and `params_bits` (int16: the fp16 params' bit
    pattern, so `model.to(dtype)` cannot round them); a follower of a tied group has neither and
    reads its leader's."""

    option: str
    weight_shape: tuple[int, ...]

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The weight, dequantized from the packed codes on every access."""
        return self.dequantize()

    @property
    def params(self) -> torch.Tensor:
        """fp16 scale/zero or codebook, (C_out, 2) | (C_out, 2^b) | (1, 2^b)."""
        return self._source().params_bits.view(torch.float16)

    @property
    def packed_nbytes(self) -> int:
        """Bytes this layer holds (0 for a tied follower): codes + params."""
        if self.__dict__.get("_tied_to") is not None:
            return 0
        return self.codes.numel() + self.params_bits.numel() * 2

    def _source(self) -> "PackedLayer":
        return self.__dict__.get("_tied_to") or self

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight, (C_out, C_in, *kernel), in the layer's dtype (or `dtype`), on its device.

        Each code's weight is computed once per table entry with `QuantizedTensor.dequantize`'s
        float32 arithmetic (UAQ `(c - zero) * scale` per row, codebooks as stored), cast to the
        output dtype, and looked up in one gather (`quant.packing.decode_packed`), so the result is
        bit-identical to the bank's dequantized weight cast to that dtype.
        Inside `hold_dequantized(model)` the weight is decoded once and kept until the block ends."""
        dtype = dtype or self._wdtype.dtype
        held = self.__dict__.get("_held")
        if held is not None and held.dtype == dtype:
            return held
        method, bits, numel = self._format
        src = self._source()
        p = self.params.to(torch.float32)
        table = get_method(method).table(p, bits)  # (C_out or 1, 2^b): the weight of each code
        ws = _workspace(numel, dtype, p.device) if self.__dict__.get("_in_forward") else None
        w = decode_packed(src.codes, bits, numel, table, self.weight_shape[0], dtype, ws).reshape(self.weight_shape)
        if "_held" in self.__dict__:
            self.__dict__["_held"] = w
        return w

    def forward(self, *args, **kwargs):
        """The layer's own forward; without autograd on CPU the weight is decoded into a reused
        per-thread workspace (no fresh allocation, so no page faults per forward) that the
        forward consumes and releases; with autograd recording, into a fresh tensor."""
        if torch.is_grad_enabled() or self._wdtype.device.type != "cpu" or "_held" in self.__dict__:
            return super().forward(*args, **kwargs)
        self.__dict__["_in_forward"] = True
        try:
            return super().forward(*args, **kwargs)
        finally:
            self.__dict__.pop("_in_forward", None)

    def extra_repr(self) -> str:
        """The module's repr with the packed option (and `tied` for a tied-group follower)."""
        tie = self.__dict__.get("_tied_to")
        return super().extra_repr() + f", packed={self.option}" + (", tied" if tie is not None else "")


_CLASSES: dict[type, type] = {}
_WS = threading.local()


def _workspace(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (numel,) view of this thread's decode workspace for `dtype` (grown to the largest layer:
    one layer's float weight, transient in every forward anyway)."""
    bufs = _WS.__dict__.setdefault("bufs", {})
    buf = bufs.get((dtype, device))
    if buf is None or buf.numel() < numel:
        buf = bufs[(dtype, device)] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def release_workspace() -> None:
    """Free this thread's decode workspace (it is rebuilt on the next packed forward)."""
    _WS.__dict__.pop("bufs", None)


def packed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """`Packed<cls>`: the packed subclass of a Conv1d/Conv2d/Linear class (or of a subclass)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Packed{cls.__name__}", (PackedLayer, cls), {"__module__": __name__})
    return _CLASSES[cls]


def packed_module(module: nn.Module, option: str, codes: torch.Tensor | None, params: torch.Tensor | None,
                  *, tied_to: nn.Module | None = None, dtype: torch.dtype | None = None,
                  device: str | torch.device | None = None) -> nn.Module:
    """A packed copy of `module` (its bias, attributes and hooks; no weight).

    codes: (ceil(n·b/8),) uint8; params: fp16 of the option's params shape; both moved to the
    module's device (or `device`). The rebuilt weight takes the module's weight dtype (or
    `dtype`; a weight on the meta device needs both). A tied follower passes `tied_to` (its
    group's packed leader) instead of tensors.
    Raises QsensError when the tensors do not fit the weight's shape and option.
    """
    if not isinstance(module, QUANTIZABLE_TYPES):
        raise QsensError(f"{type(module).__name__} is not a Conv1d/Conv2d/Linear: cannot pack it")
    weight = module.weight
    shape = tuple(int(s) for s in weight.shape)
    opt = parse_option(option)
    cls = packed_class(type(module))
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    # attributes and hook dicts are shared, not copied: the module is replaced, and handles to
    # hooks registered on it (activation quantization, ...) keep working
    skip = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"}
    new.__dict__.update((k, v) for k, v in module.__dict__.items() if k not in skip)
    new.training = module.training
    new._parameters.update((k, v) for k, v in module._parameters.items() if k != "weight")
    new._buffers.update(module._buffers)
    new._non_persistent_buffers_set.update(module._non_persistent_buffers_set)
    new._modules.update(module._modules)
    new.option = str(opt)
    new.weight_shape = shape
    new._format = (opt.method, opt.bits, int(torch.Size(shape).numel()))  # parsed once, read per forward
    device = torch.device(device) if device is not None else weight.device
    new.register_buffer("_wdtype", torch.empty(0, dtype=dtype or weight.dtype, device=device), persistent=False)
    if tied_to is not None:
        new.__dict__["_tied_to"] = tied_to  # a plain attribute: not a child module, not in state_dict
        return new
    n = 1
    for s in shape:
        n *= s
    want_codes = -(-n * opt.bits // 8)
    want_params = _params_shape(opt, shape)
    if codes is None or params is None or codes.dtype != torch.uint8 or codes.numel() != want_codes:
        raise QsensError(f"packed codes for a {shape} weight at {opt} must be {want_codes} uint8 bytes, "
                         f"got {None if codes is None else (tuple(codes.shape), str(codes.dtype))}")
    if tuple(params.shape) != want_params or params.dtype != torch.float16:
        raise QsensError(f"packed params for a {shape} weight at {opt} must be float16 {want_params}, "
                         f"got {str(params.dtype)} {tuple(params.shape)}")
    new.register_buffer("codes", codes.reshape(-1).to(device))
    new.register_buffer("params_bits", params.contiguous().view(torch.int16).to(device))
    return new


def _params_shape(opt, shape: tuple[int, ...]) -> tuple[int, int]:
    return tuple(get_method(opt.method).params_shape(shape[0], opt.bits))


def packed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The packed layers of `model`, by qualified name (each module once)."""
    return {n: m for n, m in quantizable_layers(model).items() if isinstance(m, PackedLayer)}


@contextmanager
def hold_dequantized(model: nn.Module) -> Iterator[nn.Module]:
    """Speed over memory: inside the block every packed layer of `model` decodes its weight on
    first use and keeps it (float weights of the model's dtype in memory, as an FP model holds),
    so the steps of one generate call pay the decoding once. Outside it (the default) a packed
    layer holds only its codes and params and decodes in every forward."""
    layers = list({id(m): m for m in packed_layers(model).values()}.values())
    for m in layers:
        m.__dict__["_held"] = None
    try:
        yield model
    finally:
        for m in layers:
            m.__dict__.pop("_held", None)


def _replace(model: nn.Module, swaps: dict[int, nn.Module]) -> None:
    """Put `swaps[id(old)]` wherever `old` is a child (a module reachable under several names is
    swapped under all of them)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in swaps:
                parent._modules[child_name] = swaps[id(child)]


def _check_unpacked(modules: dict[str, nn.Module], names) -> None:
    done = [n for n in names if isinstance(modules.get(n), PackedLayer)]
    if done:
        raise QsensError(f"layer {done[0]} is already packed: pack a model once, from its FP weights")


@torch.no_grad()
def pack(model: nn.Module, config: QuantConfig, bank: Bank, verify: bool = True) -> nn.Module:
    """Swap every layer `config` quantizes for its packed form, in place; return `model`.

    verify: check the FP weights against the bank's fingerprint first (hashes every weight).
    The packed model computes what `quantized(model, config, bank)` computes, bit for bit; with
    `config.act_bits` / `act_options` the same dynamic activation quantization is installed
    (permanently; static ranges are not part of a packed model).
    Raises ConfigError (nothing changed) for a config that does not fit the bank or gives tied
    layers different options, BankMismatchError for another model's weights, QsensError for a
    model that is already packed.
    """
    bank.validate(config)
    modules = quantizable_layers(model)
    _check_unpacked(modules, [n for n, o in config.options.items() if o != FP16])
    if verify:
        bank.check_model(model)
    tied = tied_groups(modules)
    check_tied(config.options, tied, where="config")
    leader = {name: group[0] for group in tied for name in group[1:]}
    swaps: dict[str, nn.Module] = {}
    for name, option in config.options.items():
        if option == FP16:
            continue
        unit = leader.get(name, name)
        if unit not in swaps:
            codes, params = _bank_tensors(bank, unit, option)
            swaps[unit] = packed_module(modules[unit], option, codes, params)
        if name != unit:
            swaps[name] = packed_module(modules[name], option, None, None, tied_to=swaps[unit])
    # all built first: a bad tensor leaves the model unchanged
    _replace(model, {id(modules[name]): new for name, new in swaps.items()})
    from quant.activations import enable_config_activations

    enable_config_activations(model, config)  # act_bits / act_options, dynamic ranges
    return model


def _bank_tensors(bank: Bank, layer: str, option: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank's stored bytes for (layer, option): bit-packed codes and fp16 params (no unpacking)."""
    entry = bank.entries[layer][option]
    unit = bank.unit(layer)
    codes = bank._tensor(entry.shard, f"{unit}/{option}/codes")
    params = bank._tensor(entry.shard, f"{unit}/{option}/params").to(torch.float16)
    return codes, params.reshape(entry.params_shape)


# ---------------------------------------------------------------------------------------- checkpoint
def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Resident bytes of `model`'s tensors (each storage once): `packed` (codes + params of the
    packed layers), `fp_layers` (weights of quantizable layers left unpacked), `rest` (all other
    parameters and buffers)."""
    modules = quantizable_layers(model)
    packed_ids = {id(m) for m in modules.values() if isinstance(m, PackedLayer)}
    fp_weights = {id(m.weight) for m in modules.values() if not isinstance(m, PackedLayer)}
    seen: set = set()
    out = {"packed": 0, "fp_layers": 0, "rest": 0}
    for mod in model.modules():
        for name, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is None or t.device.type == "meta" or name == "_wdtype":
                continue
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
            if key in seen:
                continue
            seen.add(key)
            nbytes = t.numel() * t.element_size()
            if id(mod) in packed_ids and name in ("codes", "params_bits"):
                out["packed"] += nbytes
            elif id(t) in fp_weights:
                out["fp_layers"] += nbytes
            else:
                out["rest"] += nbytes
    return out


def _architecture(model: nn.Module) -> dict[str, Any] | None:
    cls = type(model)
    config = getattr(model, "config", None)
    if not cls.__module__.startswith("diffusers.") or config is None:
        return None
    return {"class": f"{cls.__module__}.{cls.__qualname__}",
            "config": json.loads(json.dumps(dict(config), default=_json_default))}


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


@torch.no_grad()
def save_quantized(model: nn.Module, directory: str | Path, config: QuantConfig, *, fingerprint: str,
                   accounted: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a packed model (from `pack`) as a quantized checkpoint (module doc); return the dir.

    fingerprint: the FP model's weight fingerprint (`bank.fingerprint`): a load into a model
    with other weights is refused. accounted: the config's size accounting to record
    (`bank.summarize(config).to_dict()`). Raises QsensError when `model` has no packed layer
    or `directory` is a file.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise QsensError(f"--out {directory} exists and is not a directory")
    modules = quantizable_layers(model)
    packed = {n: m for n, m in modules.items() if isinstance(m, PackedLayer)}
    if not packed:
        raise QsensError("the model has no packed layer: call quant.pack(model, config, bank) first")
    by_id = {id(m): n for n, m in packed.items()}
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    accounted_bits = 0
    for name, module in modules.items():
        info = {"kind": _kind(module), "shape": list(_shape(module))}
        if name in packed:
            opt = parse_option(module.option)
            tie = module.__dict__.get("_tied_to")
            info |= {"option": module.option, "format": opt.method, "bits": opt.bits,
                     "tied_to": None if tie is None else by_id[id(tie)]}
            if tie is None:
                n = 1
                for d in module.weight_shape:
                    n *= d
                accounted_bits += layer_bits(opt, LayerInfo(name, info["kind"], module.weight_shape, n,
                                                             module.weight_shape[0]))
                tensors[f"{name}.codes"] = module.codes.detach().to("cpu").contiguous()
                tensors[f"{name}.params"] = module.params.detach().to("cpu").contiguous()
                info |= {"codes": f"{name}.codes", "params": f"{name}.params"}
        else:
            info |= {"option": FP16, "format": "fp", "bits": _bits_of(module.weight.dtype), "tied_to": None}
        layers[name] = info
    packed_keys = _packed_state_keys(model)
    rest, aliases = _dedupe(
        {k: v for k, v in model.state_dict(keep_vars=True).items() if k not in packed_keys})
    dtype = next(iter(packed.values()))._wdtype.dtype
    meta = {"format": f"{FORMAT}/{FORMAT_VERSION}"}
    # the whole checkpoint is written into a temporary sibling and swapped in at once
    # (core.atomicdir.write_dir): a failure (or a kill) at any point leaves the previous checkpoint
    # in `directory` as it was; other files in `directory` (torchao.json, skip lists) are carried over
    def fill(tmp: Path) -> None:
        _fault_point("weights")
        _write_tensors(tensors, tmp / WEIGHTS_FILE, meta)
        _fault_point("rest")
        _write_tensors(rest, tmp / REST_FILE, meta)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model": config.model, "fingerprint": fingerprint,
            "config": config.to_dict(), "dtype": str(dtype).removeprefix("torch."),
            "architecture": _architecture(model), "layout": _LAYOUT,
            "layers": layers, "rest_aliases": aliases,
            "files": {f: {"bytes": (tmp / f).stat().st_size} for f in (WEIGHTS_FILE, REST_FILE)},
            "tensor_sha256": {WEIGHTS_FILE: tensor_digests(tensors), REST_FILE: tensor_digests(rest)},
            # n·b + 16-bit overhead of the packed layers (quant.accounting): what weights.safetensors
            # should weigh, less its header
            "packed_accounted_bytes": accounted_bits / 8,
            "accounted": accounted, **(extra or {}),
        }
        _fault_point("manifest")
        with open(tmp / MANIFEST, "w") as f:
            f.write(json.dumps(manifest, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fault_point("carry")
        _carry_other_files(directory, tmp)
        _fault_point("swap")

    write_dir(directory, fill)
    return directory


def tensor_digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name: SHA-256 of dtype, shape and row-major bytes}: what the manifest records so that a
    tensor swapped with another of the same shape, or edited in place, is refused on load."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        out[name] = h.hexdigest()
    return out


def _check_digests(file: Path, tensors: dict[str, torch.Tensor], want: Any) -> None:
    if not isinstance(want, dict):
        raise QsensError(f"{file.parent / MANIFEST}: no valid tensor digests for {file.name}; export it again")
    have = tensor_digests(tensors)
    if set(have) != set(want):
        odd = sorted(set(have) ^ set(want))
        raise QsensError(f"{file}: tensors differ from the manifest's ({len(odd)} named in only one; "
                         f"first: {odd[0]}); export it again")
    bad = [k for k in want if have[k] != want[k]]
    if bad:
        raise QsensError(f"{file}: {len(bad)} tensor(s) differ from the manifest's SHA-256 (first: {bad[0]}): "
                         "swapped, edited or corrupted; export it again")


def _fault_point(where: str) -> None:
    """A named write point of save_quantized (tests replace this to fail or die there)."""


_CHECKPOINT_FILES = (MANIFEST, WEIGHTS_FILE, REST_FILE)


def _carry_other_files(old: Path, new: Path) -> None:
    """Files the old directory holds besides a checkpoint (a torchao.json or skip list written
    next to it by `qsens export`) go into the new one too (hard links where possible)."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name in _CHECKPOINT_FILES or entry.name.startswith(f".{MANIFEST}") or \
                entry.name.startswith(f".{WEIGHTS_FILE}") or entry.name.startswith(f".{REST_FILE}"):
            continue
        target = new / entry.name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True)
        else:
            try:
                os.link(entry, target, follow_symlinks=False)
            except OSError:
                shutil.copy2(entry, target, follow_symlinks=False)


def _kind(module: nn.Module) -> str:
    for t in QUANTIZABLE_TYPES:
        if isinstance(module, t):
            return t.__name__
    raise TypeError(type(module).__name__)


def _shape(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, PackedLayer):
        return module.weight_shape
    return tuple(int(s) for s in module.weight.shape)


def _bits_of(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


def _packed_state_keys(model: nn.Module) -> set[str]:
    keys = set()
    for name, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, PackedLayer):
            prefix = f"{name}." if name else ""
            keys |= {prefix + "codes", prefix + "params_bits"}
    return keys


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State tensors on CPU, each storage once: tensors aliasing an earlier one (tied weights)
    become `aliases[key] = first_key`; other views of a shared storage are copied."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    storages: set = set()
    for key, t in state.items():
        if t is None:
            continue
        t = t.detach()
        ak = alias_key(t)
        if ak in first:
            aliases[key] = first[ak]
            continue
        first[ak] = key
        storage = (t.device.type, t.untyped_storage().data_ptr())
        t = t.to("cpu")
        # another view of a shared storage is copied; any memory layout (channels_last, ...) is
        # written row-major: a layout changes no value
        out[key] = t.contiguous().clone() if storage in storages else t.contiguous()
        storages.add(storage)
    return out, aliases


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors file of `tensors` (any memory layout: values are written row-major), fsynced."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # safetensors writes 0600; a checkpoint is for sharing
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The checked manifest of a quantized checkpoint. QsensError (one line) when the directory,
    the manifest or a tensor file is missing, of another format, or a file's size differs from
    the manifest's (a truncated copy), and when a layer entry or `rest_aliases` is not what
    `save_quantized` writes (`_check_layer_entry`: e.g. a layer mapped to another layer's codes,
    a tie to a missing or differently shaped layer)."""
    directory = Path(directory)
    recover(directory)  # a swap killed between its two renames leaves the old checkpoint aside
    path = directory / MANIFEST
    if not directory.is_dir():
        raise QsensError(f"{directory}: no such quantized checkpoint directory (write one with `qsens export`)")
    if not path.is_file():
        raise QsensError(f"{directory}: not a quantized checkpoint (no {MANIFEST}); write one with `qsens export`")
    manifest = read_json(path, "a qsens quantized-checkpoint manifest")
    if manifest.get("format") != FORMAT:
        raise QsensError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise QsensError(f"{path}: format version {manifest.get('format_version')!r}, this qsens reads "
                         f"{FORMAT_VERSION}; export it again")
    for key, kind in (("model", str), ("fingerprint", str), ("config", dict), ("dtype", str),
                      ("layers", dict), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise QsensError(f"{path}: no valid {key!r}; export it again")
    bad = [n for n, l in manifest["layers"].items()
           if not (isinstance(l, dict) and {"kind", "shape", "option", "format"} <= set(l))]
    if bad:
        raise QsensError(f"{path}: layer entry {bad[0]!r} lacks kind/shape/option/format; export it again")
    for name, info in manifest["layers"].items():
        _check_layer_entry(path, name, info, manifest["layers"])
    _check_aliases(path, manifest)
    for name in (WEIGHTS_FILE, REST_FILE):
        file = directory / name
        if not file.is_file():
            raise QsensError(f"{file}: missing from the quantized checkpoint; export it again")
        want = (manifest["files"].get(name) or {}).get("bytes")
        have = file.stat().st_size
        if want is not None and have != want:
            raise QsensError(f"{file}: {have} bytes, the manifest says {want} (truncated or replaced "
                             "copy); export it again")
    return manifest


def _check_layer_entry(path: Path, name: str, info: dict[str, Any], layers: dict[str, Any]) -> None:
    """QsensError (one line, naming the layer) for a manifest layer entry that `save_quantized`
    cannot have written: wrong types, a format or bits that contradict the option, tensor keys
    that are not the layer's own (`{layer}.codes` / `{layer}.params`: another key would load
    another layer's codes, a wrong model whose tensors all pass their SHA-256), or a tie to a
    layer that is missing, unpacked, itself tied, or of another kind, shape or option."""
    where = f"{path}: layer {name}"
    if not isinstance(info["kind"], str) or not isinstance(info["shape"], list) or not info["shape"] or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in info["shape"]):
        raise QsensError(f"{where}: kind {info['kind']!r} / shape {info['shape']!r} is not a layer kind and a "
                         "list of positive integers; export it again")
    if not isinstance(info["option"], str):
        raise QsensError(f"{where}: option {info['option']!r} is not an option name; export it again")
    try:
        opt = parse_option(info["option"])
    except QsensError as exc:
        raise QsensError(f"{where}: {exc}; export it again") from None
    want_format = "fp" if opt.is_fp else opt.method
    if info["format"] != want_format or (not opt.is_fp and info.get("bits") != opt.bits):
        raise QsensError(f"{where}: format {info['format']!r}, bits {info.get('bits')!r} contradict option "
                         f"{info['option']!r} (expected {want_format!r}"
                         + ("" if opt.is_fp else f", {opt.bits}") + "); export it again")
    tie = info.get("tied_to")
    if opt.is_fp:
        if tie is not None:
            raise QsensError(f"{where}: an fp16 layer tied to {tie!r}; export it again")
        return
    if tie is None:
        for key in ("codes", "params"):
            if info.get(key) != f"{name}.{key}":
                raise QsensError(f"{where}: {key} tensor {info.get(key)!r} is not the layer's own "
                                 f"({name}.{key}): the manifest maps it to another tensor; export it again")
        return
    lead = layers.get(tie) if isinstance(tie, str) else None
    if not isinstance(lead, dict) or tie == name:
        raise QsensError(f"{where}: tied to {tie!r}, which is not another layer of the checkpoint; export it again")
    if lead.get("format") == "fp" or lead.get("tied_to") is not None:
        raise QsensError(f"{where}: tied to {tie!r}, which holds no packed tensors (it is "
                         + ("fp16" if lead.get("format") == "fp" else f"tied to {lead.get('tied_to')!r}")
                         + "); export it again")
    if (lead.get("kind"), lead.get("shape"), lead.get("option")) != (info["kind"], info["shape"], info["option"]):
        raise QsensError(f"{where}: tied to {tie!r}, a {lead.get('kind')} {lead.get('shape')} at "
                         f"{lead.get('option')!r}, but it is a {info['kind']} {info['shape']} at {info['option']!r}: "
                         "tied layers share one weight; export it again")
    if "codes" in info or "params" in info:
        raise QsensError(f"{where}: tied to {tie!r} but names tensors of its own; export it again")


def _check_aliases(path: Path, manifest: dict[str, Any]) -> None:
    """QsensError (one line) unless `rest_aliases` is {tensor key: key of a tensor stored in
    rest.safetensors} for keys that are not stored themselves (what `_dedupe` writes)."""
    aliases = manifest.setdefault("rest_aliases", {})
    stored = (manifest.get("tensor_sha256") or {}).get(REST_FILE)
    if not isinstance(aliases, dict):
        raise QsensError(f"{path}: rest_aliases {type(aliases).__name__} is not an object "
                         "{tensor: tensor it shares}; export it again")
    for key, target in aliases.items():
        if not isinstance(target, str) or target == key:
            raise QsensError(f"{path}: rest tensor {key} aliases {target!r}, not another tensor's name; "
                             "export it again")
        if isinstance(stored, dict) and key in stored:
            raise QsensError(f"{path}: rest tensor {key} is stored and also aliases {target!r}; export it again")
        if isinstance(stored, dict) and target not in stored:
            raise QsensError(f"{path}: rest tensor {key} aliases {target!r}, which rest.safetensors does not "
                             "hold; export it again")


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own types for corrupt headers / short files
        raise QsensError(f"{file}: unreadable safetensors file ({str(exc).splitlines()[0][:120]}); "
                         "export it again") from None


@torch.no_grad()
def load_quantized(directory: str | Path, model: nn.Module | None = None, *, device: str | torch.device | None = None,
                   verify: bool = True, activations: bool = True) -> nn.Module:
    """A packed model from a quantized checkpoint, without the bank.

    model None: the architecture is rebuilt from the manifest (diffusers classes) with no FP
        weights allocated, and every tensor comes from the checkpoint (on CPU, or `device`).
    model given: its quantizable layers are swapped for the packed ones in place (on the
        device of each layer) and its other tensors are overwritten by the checkpoint's;
        `verify` first checks its weights against the checkpoint's fingerprint.
    activations: install the config's activation quantization (act_bits / act_options, dynamic)
        as `pack` does; False leaves it to the caller (e.g. `qsens generate --act-bits`, which
        installs one set of hooks of its own).
    Raises QsensError (one line) for a missing/truncated/corrupt checkpoint, another model's
    checkpoint, an architecture that does not match the manifest, or ties and aliases that are
    not the model's own (a layer would read another layer's codes).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    meta_skeleton = model is None
    if model is None:
        model = _build_skeleton(manifest, directory)
    elif verify:
        fp = combine_fingerprints(layer_fingerprints(model))
        if fp != manifest["fingerprint"]:
            raise QsensError(f"{directory} was exported from model {manifest['model']!r} with other weights "
                             f"(fingerprint {manifest['fingerprint']}, this model {fp}); export it again "
                             "from this model with `qsens export`")
    modules = quantizable_layers(model)
    layers = manifest["layers"]
    _refuse_mismatch(f"{directory}: the checkpoint's layers do not match this model",
                     [n for n in layers if n not in modules], "missing from the model",
                     [n for n in modules if n not in layers], "not in the checkpoint")
    _check_unpacked(modules, [n for n, l in layers.items() if l["format"] != "fp"])
    _check_ties(directory / MANIFEST, layers, modules)
    weights = _read_tensors(directory / WEIGHTS_FILE)
    rest = _read_tensors(directory / REST_FILE)
    digests = manifest.get("tensor_sha256") or {}
    _check_digests(directory / WEIGHTS_FILE, weights, digests.get(WEIGHTS_FILE))
    _check_digests(directory / REST_FILE, rest, digests.get(REST_FILE))
    own = {info[k] for info in layers.values() if info["format"] != "fp" and not info.get("tied_to")
           for k in ("codes", "params")}
    if set(weights) != own:
        odd = sorted(set(weights) ^ own)
        raise QsensError(f"{directory / WEIGHTS_FILE}: holds other tensors than the manifest's packed layers "
                         f"name ({len(odd)} differ; first: {odd[0]}); export it again")
    dtype = getattr(torch, str(manifest["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise QsensError(f"{directory / MANIFEST}: unknown dtype {manifest['dtype']!r}")
    # a rebuilt skeleton has meta weights: the packed layers take the checkpoint's dtype
    where = {"dtype": dtype, "device": device or "cpu"} if meta_skeleton else {}
    swaps: dict[str, nn.Module] = {}
    for name, info in layers.items():
        module = modules[name]
        if list(_shape(module)) != list(info["shape"]):
            raise QsensError(f"{directory}: layer {name} has shape {info['shape']} in the checkpoint, "
                             f"{list(_shape(module))} in this model")
        if info["format"] == "fp" or info.get("tied_to"):
            continue
        for key in ("codes", "params"):
            if info.get(key) not in weights:
                raise QsensError(f"{directory / WEIGHTS_FILE}: no tensor {info.get(key)!r} for layer {name}; "
                                 "export it again")
        swaps[name] = packed_module(module, info["option"], weights[info["codes"]], weights[info["params"]],
                                    **where)
    for name, info in layers.items():
        if info["format"] != "fp" and info.get("tied_to"):
            lead = swaps.get(info["tied_to"])
            if lead is None:
                raise QsensError(f"{directory / MANIFEST}: layer {name} is tied to {info['tied_to']!r}, "
                                 "which holds no packed tensors")
            swaps[name] = packed_module(modules[name], info["option"], None, None, tied_to=lead, **where)
    aliases = manifest["rest_aliases"]
    own_state = model.state_dict(keep_vars=True)
    for key, target in aliases.items():
        if target not in rest:
            raise QsensError(f"{directory / MANIFEST}: rest tensor {key} aliases {target!r}, which is missing")
        # an alias is a tie of the model (one tensor under two names): naming any other tensor,
        # even one of the same shape, would load a wrong model
        if key in own_state and target in own_state and alias_key(own_state[key]) != alias_key(own_state[target]):
            raise QsensError(f"{directory / MANIFEST}: rest tensor {key} aliases {target!r}, but this model does "
                             "not share one tensor between them; export it again (or pass the model to load "
                             "into: load_quantized(dir, model))")
    _replace(model, {id(modules[name]): new for name, new in swaps.items()})
    state = dict(rest)
    for key, target in aliases.items():
        state[key] = state[target]
    if device is not None:
        state = {k: v.to(device) for k, v in state.items()}
    packed_keys = _packed_state_keys(model)
    want = [k for k in model.state_dict(keep_vars=True) if k not in packed_keys]
    _refuse_mismatch(f"{directory / REST_FILE}: does not match this model",
                     [k for k in want if k not in state], "tensor(s) missing",
                     [k for k in state if k not in want], "unexpected")
    model.load_state_dict(state, strict=False, assign=meta_skeleton)
    if meta_skeleton:
        left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
        if left:
            raise QsensError(f"{directory}: no value for {len(left)} tensor(s) of the model (first: {left[0]})")
        if device is not None:
            model.to(device)
        model.eval().requires_grad_(False)
    if activations:
        from quant.activations import enable_config_activations

        enable_config_activations(model, QuantConfig.from_dict(manifest["config"], where=str(directory / MANIFEST)))
    return model


def _refuse_mismatch(what: str, missing: list[str], missing_words: str, extra: list[str], extra_words: str) -> None:
    """QsensError `"{what} (N {missing_words}, M {extra_words}; first: NAME)"` when either list is non-empty."""
    if missing or extra:
        raise QsensError(f"{what} ({len(missing)} {missing_words}, {len(extra)} {extra_words}; "
                         f"first: {(missing or extra)[0]})")


def _check_ties(path: Path, layers: dict[str, Any], modules: dict[str, nn.Module]) -> None:
    """QsensError (one line, naming the layer) unless the manifest's ties are the model's own
    (`tied_groups`: layers sharing one weight tensor, the first one leading): a tie the model
    does not have would make a layer read another layer's codes."""
    tied = tied_groups(modules)
    leader = {n: g[0] for g in tied for n in g[1:]}
    for name, info in layers.items():
        if info["format"] == "fp":
            continue
        want, have = leader.get(name), info.get("tied_to")
        if want != have:
            raise QsensError(f"{path}: layer {name} is " + (f"tied to {have!r}" if have else "not tied")
                             + " in the checkpoint, " + (f"tied to {want!r}" if want else "not tied")
                             + " in this model; export it again (or pass the model it was exported from: "
                             "load_quantized(dir, model))")
    try:
        check_tied({n: l["option"] for n, l in layers.items()}, tied, where=str(path))
    except QsensError as exc:
        raise QsensError(f"{exc}; export it again") from None


def _build_skeleton(manifest: dict[str, Any], directory: Path) -> nn.Module:
    arch = manifest.get("architecture")
    if not arch:
        raise QsensError(f"{directory}: the checkpoint records no diffusers architecture; "
                         "pass the model to load into (load_quantized(dir, model))")
    path = str(arch.get("class", ""))
    module_name, _, cls_name = path.rpartition(".")
    if not module_name.startswith("diffusers."):
        raise QsensError(f"{directory / MANIFEST}: architecture class {path!r} is not a diffusers class")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        raise QsensError(f"{directory / MANIFEST}: architecture class {path!r} not found in this "
                         "diffusers version") from None
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = cls.from_config(arch["config"])
    return model.eval()
