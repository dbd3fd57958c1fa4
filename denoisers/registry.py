"""`load_denoiser(name_or_dir)`: the one way to get a `Denoiser`.

- `digits`, `digits-dit` → the built-in models trained by `qsens prepare` under `DATA/models/`;
- a directory with `qsens_digits.json` → a digits model saved elsewhere;
- a local diffusers pipeline directory (`model_index.json`) or a hub id → `DiffusersPipelineDenoiser`
  (SD 1.x/2.x, SDXL, PixArt-α/Σ, DiT, ... whatever `DiffusionPipeline.from_pretrained` loads).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from denoisers.base import Denoiser
from denoisers.digits import ARCHS, META_FILE, REFERENCE_NAME, DigitsDenoiser
from denoisers.pipeline import DiffusersPipelineDenoiser
from quant.errors import QsensError

KNOWN = tuple(ARCHS)  # ("digits", "digits-dit")


def known_models() -> tuple[str, ...]:
    return KNOWN


def check_model_spec(name_or_dir: str | Path) -> None:
    """Fail fast, naming the model, when `name_or_dir` cannot be a model (nothing is loaded)."""
    name = str(name_or_dir)
    if name in KNOWN or Path(name).is_dir() or _looks_like_hub_id(name):
        return
    raise QsensError(f"unknown model {name!r}: expected one of {', '.join(KNOWN)}, a diffusers "
                     "pipeline directory, or a hub id (owner/name)")


def _looks_like_hub_id(name: str) -> bool:
    return "/" in name and not name.startswith((".", "/")) and name.count("/") == 1


def load_denoiser(name_or_dir: str | Path, data_dir: str | Path = "data",
                  device: str | torch.device = "cpu", **kwargs: Any) -> Denoiser:
    """Load a denoiser by built-in name, local directory or hub id (see module doc).

    Extra keyword arguments go to `DiffusersPipelineDenoiser.from_pretrained` for real models.
    """
    name = str(name_or_dir)
    data_dir = Path(data_dir)
    if name in KNOWN:
        model_dir = data_dir / "models" / name
        if not (model_dir / META_FILE).exists():
            raise QsensError(f"model {name!r} is not trained yet ({model_dir} missing): run "
                             f"`qsens prepare --model {name}` (or `dvc repro prepare`)")
        den: Denoiser = DigitsDenoiser.load(model_dir, data_dir / "reference" / REFERENCE_NAME)
        return den.to(device)
    path = Path(name)
    if path.is_dir():
        if (path / META_FILE).exists():
            return DigitsDenoiser.load(path).to(device)
        if (path / "model_index.json").exists():
            return DiffusersPipelineDenoiser.from_pretrained(path, device=device, **kwargs)
        raise QsensError(f"{path} is neither a digits model dir ({META_FILE}) nor a diffusers "
                         "pipeline dir (model_index.json)")
    check_model_spec(name)  # neither a built-in name nor a directory: a hub id, or an error
    return DiffusersPipelineDenoiser.from_pretrained(name, device=device, **kwargs)
