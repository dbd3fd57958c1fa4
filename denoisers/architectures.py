"""Exact architectures of real denoisers, built from their diffusers `config.json` without weights.

The shipped configs (`denoisers/configs/<name>.json`) are the hub `config.json` values of each
model's denoiser, with `_class_name` set to the class diffusers' current loader instantiates.
`build_from_config` builds any diffusers model class from such a dict, by default on the `meta`
device: full-size models then cost no memory and need no weights, which is all a graph or a
MAC count needs.

Model specs on the command line (`qsens graph SPEC`) go through `resolve_model_source`: a known
architecture name, a registered name (see `register_model_name`), a diffusers directory (model or
pipeline) or a config JSON.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.errors import QsensError
from core.jsonio import read_json

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

KNOWN_ARCHITECTURES: dict[str, Path] = {
    "sd15": CONFIG_DIR / "sd15.json",  # UNet2DConditionModel, SD v1.5
    "sdxl": CONFIG_DIR / "sdxl.json",  # UNet2DConditionModel, SDXL base 1.0
    "pixart-alpha": CONFIG_DIR / "pixart-alpha.json",  # PixArtTransformer2DModel, 1024-MS
    "pixart-sigma": CONFIG_DIR / "pixart-sigma.json",  # PixArtTransformer2DModel, 1024-MS
    "hunyuan-dit": CONFIG_DIR / "hunyuan-dit.json",  # HunyuanDiT2DModel, v1.2
    "dit-xl-2": CONFIG_DIR / "dit-xl-2.json",  # DiTTransformer2DModel, 256x256
}

# Subfolders of a diffusers pipeline directory that hold the denoiser, in lookup order.
DENOISER_SUBFOLDERS: tuple[str, ...] = ("unet", "transformer", "prior", "decoder")


@dataclass
class ModelSource:
    """Where a model spec points: enough to build the module (and, for a directory, its weights)."""

    spec: str  # what the user typed
    name: str  # short name for reports and output files
    config: dict | None = None  # diffusers config dict with `_class_name`
    path: Path | None = None  # model directory (holds config.json, maybe weights), if any
    builder: Callable[[str], nn.Module] | None = field(default=None, repr=False)  # device -> model

    def build(self, device: str = "meta") -> nn.Module:
        """The module on `device` (`meta` by default: shapes, no storage), from the builder or the config."""
        if self.builder is not None:
            return self.builder(device)
        assert self.config is not None
        return build_from_config(self.config, device=device)


# Extra names registered by other packages (e.g. `digits`); checked before the shipped configs.
_REGISTERED: dict[str, Callable[[], ModelSource]] = {}


def register_model_name(name: str, resolve: Callable[[], ModelSource] | str | Path) -> None:
    """Make `name` a valid model spec. `resolve` is a path (config JSON or diffusers directory)
    or a zero-argument function returning a ModelSource (called lazily, e.g. after training)."""
    if isinstance(resolve, (str, Path)):
        target = Path(resolve)
        _REGISTERED[name] = lambda: _source_from_path(name, target)
    else:
        _REGISTERED[name] = resolve


def known_names() -> list[str]:
    """Every architecture name a spec may use (registered builders and shipped configs), sorted."""
    return sorted(set(_REGISTERED) | set(KNOWN_ARCHITECTURES))


def _read_json(path: Path) -> dict:
    return read_json(path, "a JSON object with `_class_name`")


def find_denoiser_dir(path: Path) -> Path | None:
    """The folder holding the denoiser's config.json: `path` itself, or a pipeline's subfolder."""
    if (path / "config.json").is_file() and "_class_name" in _read_json(path / "config.json"):
        return path
    for sub in DENOISER_SUBFOLDERS:
        if (path / sub / "config.json").is_file():
            return path / sub
    return None


def load_architecture_config(name_or_path: str | Path) -> dict:
    """Config dict of a known architecture name, a config JSON, or a diffusers directory."""
    key = str(name_or_path)
    if key in KNOWN_ARCHITECTURES:
        return _read_json(KNOWN_ARCHITECTURES[key])
    path = Path(name_or_path)
    if path.is_dir():
        found = find_denoiser_dir(path)
        if found is None:
            raise QsensError(f"{path}: no config.json with `_class_name` (nor a unet/ or "
                             f"transformer/ subfolder with one)")
        return _read_json(found / "config.json")
    if path.is_file():
        config = _read_json(path)
        if "_class_name" not in config:
            raise QsensError(f"{path}: no `_class_name` key; is this a diffusers config.json?")
        return config
    raise QsensError(f"unknown model {key!r}: not a file or directory, and not one of "
                     f"{', '.join(known_names())}")


def model_class(class_name: str) -> type[nn.Module]:
    """The diffusers model class called `class_name` (a ModelMixin subclass)."""
    import diffusers

    cls = getattr(diffusers, str(class_name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise QsensError(f"unknown model class {class_name!r}: not a diffusers model class "
                         f"(diffusers {diffusers.__version__})")
    return cls


def build_from_config(config_or_path: dict | str | Path, device: str = "meta") -> nn.Module:
    """Instantiate the diffusers class named by `_class_name` from a config, on `device`.

    On `meta` no memory is allocated and no weights are read; every buffer is moved there too
    (some modules create CPU buffers with numpy even under a device context).
    """
    config = (dict(config_or_path) if isinstance(config_or_path, dict)
              else load_architecture_config(config_or_path))
    if "_class_name" not in config:
        raise QsensError("model config has no `_class_name` key")
    cls = model_class(config["_class_name"])
    # Keys the class does not take (hub leftovers) are dropped with an info-level log; keep quiet.
    log = logging.getLogger("diffusers.configuration_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with torch.device(device):
            model = cls.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise QsensError(f"cannot build {config['_class_name']} from its config: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        log.setLevel(level)
    return model.to(device).eval()


_DENOISER_MARKS = ("UNet", "Transformer", "DiT", "UVit")
_NOT_DENOISER_MARKS = ("Autoencoder", "VQModel", "ControlNet", "TextModel", "EncoderModel")


def check_denoiser_class(class_name: str, where: str) -> None:
    """QsensError unless `class_name` is a diffusion denoiser class (a UNet or a diffusion
    transformer), e.g. for a VAE or text-encoder dir given by mistake."""
    if not any(m in class_name for m in _DENOISER_MARKS) or any(m in class_name for m in _NOT_DENOISER_MARKS):
        raise QsensError(f"{where}: {class_name} is not a denoiser (a UNet or a diffusion transformer); "
                         "point at the pipeline dir or its unet/ or transformer/ folder")


def _source_from_path(name: str, path: Path) -> ModelSource:
    if path.is_dir():
        found = find_denoiser_dir(path)
        if found is None:
            raise QsensError(f"{path}: no config.json with `_class_name` (nor a unet/ or "
                             f"transformer/ subfolder with one)")
        config = _read_json(found / "config.json")
        check_denoiser_class(str(config.get("_class_name")), str(found))
        return ModelSource(spec=str(path), name=name, config=config, path=found)
    config = load_architecture_config(path)
    check_denoiser_class(str(config.get("_class_name")), str(path))
    return ModelSource(spec=str(path), name=name, config=config)


def resolve_model_source(spec: str | Path) -> ModelSource:
    """Turn a model spec (registered name, known architecture, directory, config JSON or hub id
    in the local hub cache) into a ModelSource. The kinds of source are told apart by
    `denoisers.spec.classify_source`, the one lookup `load_denoiser` uses too."""
    from denoisers.spec import classify_source

    key = str(spec)
    if key in _REGISTERED:
        return _REGISTERED[key]()
    kind = classify_source(key, architectures=tuple(known_names()))
    if kind == "architecture":
        return ModelSource(spec=key, name=key, config=load_architecture_config(key))
    if kind == "hub-id":
        return _source_from_path(key.split("/")[-1], _local_snapshot(key))
    path = Path(spec)
    name = path.stem if path.is_file() else path.resolve().name
    return _source_from_path(name, path)


def _local_snapshot(repo_id: str) -> Path:
    """The hub cache's snapshot dir of `repo_id` (configs only; nothing is downloaded offline)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json"], local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any hub failure is one line for the user
        raise QsensError(f"hub id {repo_id}: not in the local hub cache and nothing can be "
                         f"downloaded here ({type(exc).__name__}); pass a local directory") from None
