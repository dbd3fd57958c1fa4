"""Calibration inputs for the denoiser, collected along the FP sampling trajectory (seed 003).

PTQ4DM / Q-Diffusion / DI2N calibrate on the denoiser's own intermediate inputs: run the FP
sampler, record every call of the denoiser (x_t, t, conditioning), then draw calibration samples
from those calls. Which time steps are drawn matters: PTQ4DM draws them from a normal
distribution over the trajectory, Q-Diffusion and DI2N found uniform sampling better. Both are
offered (`uniform` | `normal`), so the choice is a param that can be compared.

Works with any `Denoiser` whose `generate` calls `.model(...)` once per sampler step: a forward
pre-hook records the calls, whatever the argument layout (digits: `(x, t), class_labels=y`;
SD: `encoder_hidden_states=...`; SDXL: `added_cond_kwargs={...}`).

Prediction types. Losses and output errors are stated in one space, the noise prediction ε, so
they mean the same for ε-, v- and flow-matching models: each sample carries `eps_scale`, the
factor dε̂/d(model output) at its time step (`denoisers.traits.eps_scale`: 1 for ε models, then
`eps_scale` is None and nothing is multiplied; √ᾱ_t for v-prediction; 1 − σ for flow matching).
`run_model` returns ε-space outputs (output × eps_scale), so SQNR-style proxies compare like
with like; the fisher strategy scales its sampled ε-space loss gradient the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class CalibrationSet:
    """`n` denoiser inputs: `args`/`kwargs` batched on dim 0, with where each came from."""
    args: tuple
    kwargs: dict
    step_index: np.ndarray  # (n,) position in the trajectory (0 = first = noisiest call)
    row: np.ndarray  # (n,) row of the recorded call's batch
    num_steps: int
    eps_scale: torch.Tensor | None = None  # (n,) float64 dε̂/d(output); None: an ε model (1)
    prediction: str = "epsilon"

    def __len__(self) -> int:
        return len(self.step_index)

    def chunks(self, size: int):
        """(args, kwargs) slices of at most `size` samples."""
        for b0 in range(0, len(self), size):
            idx = torch.arange(b0, min(len(self), b0 + size))
            yield _take(self.args, idx, len(self)), _take(self.kwargs, idx, len(self))


# keyword inputs that are one tensor per call whatever their shape (Hunyuan-DiT's rotary
# embedding is (1, D) on a small model, FLUX's ids (N, 3)): never split into samples
STATIC_KWARGS = frozenset({"image_rotary_emb", "img_ids", "txt_ids"})


class _Static:
    """A denoiser input that is one tensor for the whole call, not one row per sample (rotary
    embeddings, position ids: Hunyuan-DiT's `image_rotary_emb`, FLUX's `img_ids`/`txt_ids`):
    kept once and passed as it is to every chunk."""

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor):
        self.value = value


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj


def _take(obj: Any, idx: torch.Tensor, batch: int) -> Any:
    """Rows `idx` of every tensor whose first dim is the batch; others pass through."""
    if isinstance(obj, _Static):
        return obj.value
    if isinstance(obj, torch.Tensor):
        if obj.ndim >= 1 and obj.shape[0] == batch:
            return obj.index_select(0, idx.to(obj.device))
        return obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_take(o, idx, batch) for o in obj)
    if isinstance(obj, dict):
        return {k: _take(v, idx, batch) for k, v in obj.items()}
    return obj


def _gather(calls: list[tuple[tuple, dict]], picks: list[tuple[int, int]], batch: int) -> tuple[tuple, dict]:
    """Stack row r of call s for every (s, r) in picks into one batch (0-dim tensors expand)."""

    def one(objs: list[Any], rows: list[int], static: bool = False) -> Any:
        first = objs[0]
        if static or (isinstance(first, torch.Tensor) and first.ndim >= 1
                      and first.shape[0] not in (batch, 1)):
            return _Static(first)  # one tensor per call (positions, rotary embeddings)
        if isinstance(first, torch.Tensor):
            parts = []
            for o, r in zip(objs, rows):
                if o.ndim >= 1 and o.shape[0] == batch:
                    parts.append(o[r:r + 1])
                else:  # scalar time step etc.: one value per sample
                    parts.append(o.reshape(1, *o.shape[1:]) if o.ndim >= 1 else o.reshape(1))
            return torch.cat(parts)
        if isinstance(first, (tuple, list)):
            return type(first)(one([o[i] for o in objs], rows) for i in range(len(first)))
        if isinstance(first, dict):
            return {k: one([o[k] for o in objs], rows, k in STATIC_KWARGS) for k in first}
        return first

    args = one([calls[s][0] for s, _ in picks], [r for _, r in picks])
    kwargs = one([calls[s][1] for s, _ in picks], [r for _, r in picks])
    return args, kwargs


def draw_steps(num_steps: int, n: int, how: str, rng: np.random.Generator,
               mean: float = 0.5, std: float = 0.25) -> np.ndarray:
    """`n` trajectory positions in [0, num_steps): uniform (balanced: every step equally often,
    remainder at random) or normal (PTQ4DM) centred at `mean`·(num_steps − 1), clipped."""
    if how == "uniform":
        reps = np.tile(np.arange(num_steps), n // num_steps)
        rest = rng.choice(num_steps, size=n - len(reps), replace=False) if n % num_steps else []
        steps = np.concatenate([reps, np.asarray(rest, dtype=np.int64)]).astype(np.int64)
        return rng.permutation(steps)
    if how == "normal":
        x = rng.normal(mean * (num_steps - 1), std * max(num_steps - 1, 1), size=n)
        return np.clip(np.rint(x), 0, num_steps - 1).astype(np.int64)
    raise ValueError(f"time-step sampling must be uniform or normal, got {how!r}")


@torch.inference_mode()
def collect_calibration(denoiser, n_samples: int, *, trajectories: int = 32, seed: int = 0,
                        how: str = "uniform", mean: float = 0.5, std: float = 0.25,
                        steps: int | None = None) -> CalibrationSet:
    """Run the FP sampler for `trajectories` images (one batch), record every denoiser call and
    draw `n_samples` (call, row) pairs: the call by `how`, the row uniformly."""
    calls: list[tuple[tuple, dict]] = []

    def hook(_module, args, kwargs):
        calls.append((_clone(args), _clone(kwargs)))

    from sampling.evaluator import Evaluator

    handle = denoiser.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        kw: dict[str, Any] = {"batch_size": trajectories}
        if steps is not None:
            kw["steps"] = steps
        Evaluator(denoiser).generate(None, trajectories, seed, **kw)  # counted like every generation
    finally:
        handle.remove()
    if not calls:
        raise RuntimeError(f"{type(denoiser).__name__}.generate never called its model")
    first = calls[0][0][0] if calls[0][0] else next(v for v in calls[0][1].values() if isinstance(v, torch.Tensor))
    batch = int(first.shape[0])
    rng = np.random.default_rng(seed)
    step_index = draw_steps(len(calls), n_samples, how, rng, mean, std)
    rows = rng.integers(0, batch, size=n_samples)
    args, kwargs = _gather(calls, list(zip(step_index.tolist(), rows.tolist())), batch)
    prediction = getattr(denoiser, "prediction_type", "epsilon")
    scale = denoiser.eps_scale(sample_timesteps(args, kwargs)) if hasattr(denoiser, "eps_scale") else None
    return CalibrationSet(args, kwargs, step_index, rows, len(calls), scale, prediction)


def sample_timesteps(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The per-sample time step of gathered denoiser inputs: the `timestep`/`timesteps`/`t`
    keyword, else the second positional argument (diffusers UNets: `unet(x, t, ...)`)."""
    for key in ("timestep", "timesteps", "t"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value
    if len(args) > 1 and isinstance(args[1], torch.Tensor):
        return args[1]
    return None


def to_eps_space(out: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Model outputs (B, ...) times their per-sample dε̂/d(output) (None: unchanged)."""
    if scale is None:
        return out
    return out * scale.to(device=out.device, dtype=out.dtype).reshape(-1, *([1] * (out.ndim - 1)))


def model_output(out: Any) -> torch.Tensor:
    """The prediction tensor of a diffusers forward (tuple, output object or tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "sample")


@torch.inference_mode()
def run_model(model: torch.nn.Module, calib: CalibrationSet, chunk: int = 256) -> torch.Tensor:
    """The model's outputs on the whole calibration set, float64 on CPU, in ε space (times
    `calib.eps_scale` for v- and flow-matching models; ε models' outputs as they are)."""
    outs = []
    for b0, (a, k) in zip(range(0, len(calib), chunk), calib.chunks(chunk)):
        y = model_output(model(*a, **k)).to("cpu", torch.float64)
        if calib.eps_scale is not None:
            y = to_eps_space(y, calib.eps_scale[b0:b0 + y.shape[0]])
        outs.append(y)
    return torch.cat(outs)


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """10·log10(Σ y² / Σ (ŷ − y)²) in dB (MixDQ's metric); inf when identical, -inf/NaN guarded."""
    num = float((reference.double() ** 2).sum())
    den = float(((test.double() - reference.double()) ** 2).sum())
    if not np.isfinite(den):
        return float("-inf")
    if den == 0:
        return float("inf")
    return 10.0 * float(np.log10(num / den))


def activation_ranges(model: torch.nn.Module, calib: CalibrationSet, chunk: int = 256,
                      layers: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Static activation ranges {layer: (min, max)} of each quantizable layer's input over the
    whole calibration set (`quant.activations.calibrate_ranges`), with the model as it is now
    (call it on the FP model)."""
    from quant.activations import calibrate_ranges

    return calibrate_ranges(model, calib.chunks(chunk), layers)


UNOBSERVED = ("its forward hook never ran on the calibration inputs: the model uses the layer's weight "
              "without calling the module (e.g. F.multi_head_attention_forward in Hunyuan-DiT's attention "
              "pooler), so its input can be neither observed nor fake-quantized; its activations stay in "
              "full precision")


def observed_layers(layers: list[str], *ranges: dict[str, tuple[float, float]],
                    what: str = "activation quantization") -> tuple[list[str], dict[str, str]]:
    """(the layers every `ranges` has a calibrated input range for, {left-out layer: reason}).

    Activation quantization acts through forward pre-hooks, so a layer whose module forward never
    runs (its weight used directly by a functional call) cannot take part: it is left out of
    `what` with a stated reason, and one `warning:` line on stderr names the first of them."""
    import sys

    kept = [l for l in layers if all(l in r for r in ranges)]
    left = {l: UNOBSERVED for l in layers if l not in kept}
    if left:
        print(f"warning: {what} leaves out {len(left)} layer(s) whose forward never runs (first: "
              f"{next(iter(left))}): {UNOBSERVED}", file=sys.stderr)
    return kept, left


@torch.inference_mode()
def activation_sqnr(model: torch.nn.Module, calib: CalibrationSet, layers: list[str], bits: int, *,
                    ranges: dict[str, tuple[float, float]] | None = None, reference: torch.Tensor | None = None,
                    chunk: int = 256) -> dict[str, float]:
    """MixDQ's activation sensitivity: {layer: SQNR (dB) of the denoiser output with only that
    layer's input quantized at `bits`} on the calibration set, against the FP output (`reference`,
    computed when None). Dynamic quantization, or static when `ranges` is given. Higher = less
    sensitive; inf = no change."""
    from quant.activations import activation_quant

    y_fp = run_model(model, calib, chunk) if reference is None else reference
    out = {}
    for layer in layers:
        with activation_quant(model, {layer: bits}, ranges=None if ranges is None else {layer: ranges[layer]}):
            out[layer] = sqnr_db(y_fp, run_model(model, calib, chunk))
    return out
