"""Derived checkpoints of the digits models: what users actually quantize (issue #24).

Most people quantize a fine-tune, a LoRA merged into a base model, or a few-step variant, not
the base model itself. These three kinds are built here from a prepared base model and the
`derive:` section of params.yaml, offline and deterministically, so that reusing the base
model's sensitivity (`qsens transfer`) can be measured on them:

| kind       | what changes                                                                          |
|------------|---------------------------------------------------------------------------------------|
| `finetune` | every weight: `steps` more training steps from the base weights on a shifted data set |
|            | (stroke-thickened digits, `classes` drawn `class_weight` times more often), new EMA   |
| `lora`     | a rank-`rank` update B·A added to every Linear/Conv2d weight (A: rank × fan-in,       |
|            | B: out × rank, B = 0 at the start as in LoRA, Hu et al. 2021, arXiv:2106.09685),      |
|            | trained on the same shifted data with the base weights frozen, then merged            |
| `fewstep`  | nothing in the weights: the sampler runs `sampler_steps` steps instead of the base's  |

Each is saved as a digits model dir `DATA/models/<base>-<kind>/` (its `qsens_digits.json`
records the base, the kind and these params) with a reference `DATA/reference/<base>-<kind>/`:
the base's classifier, and FID statistics of the data the checkpoint was tuned to
(`reference_images`: the stroke-thickened digits for `finetune` and `lora`, the real digits for
`fewstep`), as a user measures a fine-tune against its own data set rather than the base's.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.params import defaults_from
from core.errors import QsensError

KINDS = ("finetune", "lora", "fewstep")


@dataclass(frozen=True)
@defaults_from("derive")
class DeriveParams:
    """The `derive:` section of params.yaml (each kind reads the fields it needs)."""

    steps: int  # finetune / lora: training steps on the shifted data
    lr: float  # finetune: peak learning rate (cosine decay); lora uses lora_lr
    classes: list[int]  # drawn class_weight times more often
    class_weight: float
    thicken: float  # 0..1: blend of each digit with its 3×3 max-filtered (thicker) strokes
    rank: int  # lora
    lora_lr: float  # lora: Adam learning rate of the low-rank factors
    sampler_steps: int  # fewstep
    seed: int

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.lora_lr <= 0:
            raise QsensError("derive.steps must be >= 1 and derive.lr / derive.lora_lr > 0")
        if not 0.0 <= self.thicken <= 1.0:
            raise QsensError(f"derive.thicken must be in [0, 1], got {self.thicken}")
        if self.class_weight <= 0 or any(not 0 <= int(c) <= 9 for c in self.classes):
            raise QsensError("derive.class_weight must be > 0 and derive.classes digits 0-9")
        if self.rank < 1 or self.sampler_steps < 1:
            raise QsensError("derive.rank and derive.sampler_steps must be >= 1")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "DeriveParams":
        """The `derive:` section of `path`, checked (QsensError for unknown keys or bad values)."""
        from core.params import load_section

        return load_section(DeriveParams, path, "derive")


def shifted_data(images_u8: np.ndarray, labels: np.ndarray, p: DeriveParams
                 ) -> tuple[np.ndarray, torch.Tensor]:
    """The fine-tuning distribution: (N, 8, 8) uint8 digits with thickened strokes and the
    per-image sampling weights (N,) that over-draw `p.classes`."""
    x = images_u8.astype(np.float32)
    if p.thicken > 0:
        t = torch.from_numpy(x)[:, None]
        thick = torch.nn.functional.max_pool2d(t, 3, stride=1, padding=1)[:, 0].numpy()
        x = (1 - p.thicken) * x + p.thicken * thick
    w = np.where(np.isin(labels, np.asarray(p.classes, dtype=labels.dtype)), p.class_weight, 1.0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), torch.as_tensor(w, dtype=torch.float64)


class LowRankDelta(nn.Module):
    """W + B·A (reshaped to W's shape), B zero-initialised: a LoRA update as a parametrization."""

    def __init__(self, weight: torch.Tensor, rank: int, gen: torch.Generator) -> None:
        super().__init__()
        out, fan_in = weight.shape[0], int(weight[0].numel())
        r = min(rank, out, fan_in)
        self.a = nn.Parameter(torch.randn(r, fan_in, generator=gen) / math.sqrt(fan_in))
        self.b = nn.Parameter(torch.zeros(out, r))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """W + B·A, reshaped to W's shape (out, in[, kh, kw])."""
        return w + (self.b @ self.a).view_as(w)


def _lora_finetune(model: nn.Module, x0: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                   params: Any, p: DeriveParams, gen: torch.Generator, progress: bool) -> tuple[nn.Module, list[float]]:
    from torch.nn.utils import parametrize

    from denoisers.digits import train_steps

    model.requires_grad_(False)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for _, m in targets:
        parametrize.register_parametrization(m, "weight", LowRankDelta(m.weight, p.rank, gen))
    # train_steps optimises model.parameters(): only the factors require grad, the EMA is off
    # (decay 0: the merged update is the last step's, as a LoRA checkpoint is)
    assert sum(q.requires_grad for q in model.parameters()) == 2 * len(targets)
    _, losses = train_steps(_TrainableOnly(model), x0, y, params,
                            p.steps, p.lora_lr, lambda s: 1.0, gen, weights=weights, ema_decay=0.0,
                            desc="train lora", progress=progress)
    for _, m in targets:
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model.eval().requires_grad_(False), losses


class _TrainableOnly(nn.Module):
    """`model` whose .parameters() are only those that require grad (the LoRA factors), so the
    optimiser and the EMA copy in `train_steps` see just them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def parameters(self, recurse: bool = True):  # noqa: D102 - see class doc
        return (q for q in self.inner.parameters(recurse) if q.requires_grad)

    def forward(self, *args, **kw):
        return self.inner(*args, **kw)


def reference_images(kind: str, p: DeriveParams) -> np.ndarray | None:
    """The (N, 8, 8) uint8 images whose classifier features are the FID reference of a derived
    checkpoint: all 1,797 digits as the fine-tuning data draws them (thickened strokes; the class
    over-weighting is left out because generation asks for every class equally often). None for
    `fewstep`, which keeps the base's reference (same weights, same data)."""
    from denoisers.digits import load_digit_images

    if kind not in KINDS:
        raise QsensError(f"unknown derived checkpoint kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "fewstep":
        return None
    images, labels = load_digit_images()
    return shifted_data(images, labels, p)[0]


def derive_checkpoint(base_dir: str | Path, kind: str, p: DeriveParams, out_dir: str | Path,
                      reference_dir: str | Path, name: str, progress: bool = False) -> dict[str, Any]:
    """Build the derived checkpoint `kind` of the digits model in `base_dir` (module table) into
    `out_dir` (a digits model dir) with `reference_dir` (its reference, written there by the
    caller: the base's classifier and the statistics of `reference_images`) -> a summary dict (kind, steps, final loss, mean |ΔW| / |W| over the quantizable layers).
    Deterministic on CPU for the same base and params. Raises QsensError for an unknown kind or a
    base dir that is not a digits model."""
    from denoisers.digits import DigitsDenoiser, flush_denormal, images_to_model_space, load_digit_images, \
        split_indices
    from quant.layers import quantizable_layers

    if kind not in KINDS:
        raise QsensError(f"unknown derived checkpoint kind {kind!r}: expected one of {', '.join(KINDS)}")
    base = DigitsDenoiser.load(base_dir)
    params = base.params
    before = {n: m.weight.detach().clone() for n, m in quantizable_layers(base.model).items()}
    losses: list[float] = []
    if kind == "fewstep":
        if p.sampler_steps >= params.steps:
            raise QsensError(f"derive.sampler_steps ({p.sampler_steps}) must be below the base model's "
                             f"sampler steps ({params.steps}) for a few-step variant")
        model = base.model
        params = replace(params, steps=p.sampler_steps)
    else:
        images, labels = load_digit_images()
        train_idx, _ = split_indices(labels, params.test_fraction, params.seed)
        imgs, weights = shifted_data(images[train_idx], labels[train_idx], p)
        x0 = images_to_model_space(imgs, params.resolution)
        y = torch.from_numpy(labels[train_idx])
        torch.manual_seed(p.seed)
        gen = torch.Generator().manual_seed(p.seed + 11)
        with flush_denormal():
            if kind == "finetune":
                from denoisers.digits import train_steps

                model = base.model.requires_grad_(True)  # loaded frozen for inference
                cos = lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / p.steps))  # noqa: E731
                model, losses = train_steps(model, x0, y, params, p.steps, p.lr, cos, gen, weights=weights,
                                            desc="fine-tune", progress=progress)
            else:
                model, losses = _lora_finetune(base.model, x0, y, weights, params, p, gen, progress)
    after = quantizable_layers(model)
    rel = [float((after[n].weight - w).norm() / w.norm().clamp_min(1e-12)) for n, w in before.items()]
    info = {"base": str(base_dir), "kind": kind, "derive": asdict(p),
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "mean_relative_weight_change": float(np.mean(rel)),
            "sampler_steps": params.steps}
    den = DigitsDenoiser(model.eval(), base.arch, params, name=name, reference_dir=reference_dir,
                         info={**(base.info or {}), "derived": info})
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    den.save(out_dir, reference_dir)
    return info
