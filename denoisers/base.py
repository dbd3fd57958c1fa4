"""The one small interface every denoiser adapter implements.

A `Denoiser` owns one quantizable `torch.nn.Module` (`.model`: a diffusers UNet or transformer)
plus whatever it needs to turn that module into images (scheduler, conditioning, VAE...).
Downstream code only relies on this file:

- `layer_names()` / `quantizable_layers()` — the layers a QuantConfig may name;
- `example_inputs()` — `(args, kwargs)` for one forward of `.model` (graph export, MAC counts);
- `generate(n, seed)` — `n` uint8 images from fixed per-image seeds (see `image_seeds`), in a
  fixed batch size, so the images do not depend on how work is split across workers;
- `reference()` — where the data its metrics need lives (`sampling.scorers.make_scorer` reads it).

Quantization swaps the weights of `.model` in place (`quant.apply.quantized(denoiser.model, ...)`),
so a loaded denoiser is reused across many configs: load once, then apply → generate → restore.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import QsensError
from quant.layers import LayerInfo, count_macs, layer_infos, quantizable_layers

# Image i of seed set s is drawn from a generator seeded with s * SEED_STRIDE + i, so different
# seed sets never share an image seed as long as n <= SEED_STRIDE.
SEED_STRIDE = 1_000_000


def image_seeds(n: int, seed: int) -> np.ndarray:
    """Per-image seeds of seed set `seed`: `seed * SEED_STRIDE + arange(n)` (int64)."""
    if n < 0 or n > SEED_STRIDE:
        raise ValueError(f"n must be in 0..{SEED_STRIDE}, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.int64(seed) * SEED_STRIDE + np.arange(n, dtype=np.int64)


def to_uint8(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Float images in [-1, 1], (N, C, H, W) → (uint8 (N, H, W, C), bool (N,) non-finite mask).

    Images with any NaN/inf pixel are flagged and set to all-zero (black), never silently
    wrapped into uint8.
    """
    x = images.detach().to("cpu", torch.float32)
    bad = ~torch.isfinite(x).flatten(1).all(dim=1)
    x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype))
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x[bad] = 0
    return x.permute(0, 2, 3, 1).contiguous().numpy(), bad.numpy()


@dataclass
class Generation:
    """The output of `Denoiser.generate`."""

    images: np.ndarray  # uint8 (N, H, W, C)
    seeds: np.ndarray  # int64 (N,) per-image seeds
    labels: np.ndarray | None = None  # int64 (N,) conditioning class (class-conditional models)
    prompts: list[str] | None = None  # conditioning text (text-to-image models)
    nonfinite: np.ndarray | None = None  # bool (N,): the float output had NaN/inf
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)  # steps, guidance, batch size, ...

    def __post_init__(self) -> None:
        if self.nonfinite is None:
            self.nonfinite = np.zeros(len(self.images), dtype=bool)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_nonfinite(self) -> int:
        """The number of images with a NaN or inf value (dropped before scoring)."""
        return int(np.count_nonzero(self.nonfinite))


@dataclass(frozen=True)
class ReferenceData:
    """What a denoiser's metrics need. `kind` selects the scorer in `sampling.scoring`.

    - `digits`: `path` holds `classifier.safetensors` + `classifier.json` + `stats.safetensors`.
    - `inception`: `path` holds `stats.safetensors` (mu, sigma of Inception pool features of the
      real images) and optionally `prompts.txt` for the content (CLIP) score.
    """

    kind: str
    path: Path
    info: dict[str, Any] = field(default_factory=dict)


REFERENCE_FORMAT = 1
REFERENCE_JSON = "reference.json"


def _read_lines(path: Path, n: int, what: str) -> list[str]:
    if not path.is_file():
        raise QsensError(f"reference {path.parent}: {path.name} is missing")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != n:
        raise QsensError(f"reference {path.parent}: {path.name} has {len(lines)} {what}, "
                         f"reference.json says {n} images")
    return lines


def read_reference_info(directory: str | Path) -> tuple[dict[str, Any], list[str] | None, list[str] | None]:
    """`reference.json`, prompts and image names of a dir written by `qsens reference build`
    (the statistics are read by `sampling.reference.load_reference`). Raises QsensError (one
    line) when it is missing, of another format or kind, or its files disagree."""
    import json

    d = Path(directory)
    if not d.is_dir():
        raise QsensError(f"reference dir {d} not found: build one with `qsens reference build`")
    meta = d / REFERENCE_JSON
    if not meta.is_file():
        raise QsensError(f"{d} is not a reference dir (no {REFERENCE_JSON}): "
                         "build one with `qsens reference build`")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QsensError(f"reference {meta} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict) or info.get("format") != REFERENCE_FORMAT:
        got = info.get("format") if isinstance(info, dict) else None
        raise QsensError(f"reference {meta}: format {got!r}, this qsens reads format {REFERENCE_FORMAT}")
    if info.get("kind") != "inception":
        raise QsensError(f"reference {meta}: kind {info.get('kind')!r}, expected 'inception'")
    for key in ("resolution", "n_images", "feature_network"):
        if key not in info:
            raise QsensError(f"reference {meta} has no {key!r}")
    n = int(info["n_images"])
    prompts = _read_lines(d / info["prompts_file"], n, "prompts") if info.get("prompts_file") else None
    images = (_read_lines(d / info["images_file"], n, "image names")
              if info.get("images_file") and (d / info["images_file"]).is_file() else None)
    return info, prompts, images


class Denoiser(abc.ABC):
    """Base class of the adapters (`denoisers.digits.DigitsDenoiser`, pipeline adapters)."""

    name: str  # e.g. "digits", "digits-dit", or a directory / hub id
    model: nn.Module  # the quantizable denoiser (UNet / transformer)
    num_classes: int | None = None  # class-conditional models: labels 0..num_classes-1; else None
    device: torch.device = torch.device("cpu")

    # --- layers -----------------------------------------------------------------------------
    def quantizable_layers(self) -> dict[str, nn.Module]:
        """Every Conv1d/Conv2d/Linear of `.model`, by qualified name, in module order."""
        return quantizable_layers(self.model)

    def layer_names(self) -> list[str]:
        """The quantizable layers' module paths, in module order (`quant.layers.quantizable_layers`)."""
        return list(self.quantizable_layers())

    def layer_infos(self, with_macs: bool = True) -> list[LayerInfo]:
        """Shapes (and MACs of one forward at `example_inputs()`) of the quantizable layers."""
        macs = None
        if with_macs:
            args, kwargs = self.example_inputs(batch_size=1)
            macs = count_macs(self.model, *args, **kwargs)
        return layer_infos(self.model, macs)

    # --- what adapters implement ---------------------------------------------------------
    @abc.abstractmethod
    def example_inputs(self, batch_size: int = 1) -> tuple[tuple, dict]:
        """`(args, kwargs)` such that `self.model(*args, **kwargs)` runs one denoising step."""

    @abc.abstractmethod
    def generate(self, n: int, seed: int = 0, *, steps: int | None = None,
                 guidance: float | None = None, batch_size: int | None = None,
                 progress: bool = False) -> Generation:
        """`n` images; image i uses seed `image_seeds(n, seed)[i]`; deterministic on CPU."""

    @abc.abstractmethod
    def configure_generation(self, steps: int | None = None, guidance: float | None = None,
                             batch_size: int | None = None) -> None:
        """Change the defaults `generate` uses (None keeps the current value)."""

    @abc.abstractmethod
    def reference(self) -> ReferenceData:
        """Where the metric reference data of this model lives."""

    # --- conveniences -----------------------------------------------------------------------
    def to(self, device: str | torch.device) -> "Denoiser":
        """Move the model to `device`; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def num_parameters(self) -> int:
        """The number of parameters of the denoiser (trainable or not)."""
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, layers={len(self.layer_names())}, "
                f"params={self.num_parameters():,})")


def configure_torch(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: all CPU cores of this process, at most 8); returns it.

    Determinism on CPU holds for a fixed thread count; workers should all use the same count.
    """
    import os

    if not threads:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            threads = os.cpu_count() or 1
        threads = min(int(threads), 8)
    torch.set_num_threads(int(threads))
    return int(threads)
