"""Gradient-sensitivity (Fisher) scores per (layer, option), for the `fisher` search strategy.

NVIDIA ModelOpt's AutoQuantize (`modelopt.torch.quantization.algorithms.AutoQuantizeSearcher`,
"gradient" score) scores quantizing layer l with option o by a diagonal second-order Taylor /
Fisher estimate of the loss increase,

    S(l, o) = Σ_samples Σ_elements (∂L/∂Y_l)² · (Y_l(W_q) − Y_l(W))²

with Y_l the layer's output, W its FP weight and W_q the option's dequantized weight; a search
then solves an integer program under a bit budget (here: search.ip, driven by the strategy).

The loss. Calibration inputs are the denoiser's own inputs along the FP sampling trajectory
(seed 003, `sampling.calibration.collect_calibration`), where the true noise ε is unknown. So the
gradient is that of the Gaussian denoising likelihood with *sampled* targets (the "true Fisher",
not the empirical one; Kunstner, Balles & Hennig 2019, "Limitations of the empirical Fisher
approximation for natural gradient descent", NeurIPS):

    L = ½ Σ ‖ε_θ(x_t, t) − y‖²,   y = sg(ε_θ(x_t, t)) + n,   n ~ N(0, I)

(sg = stop-gradient), so ∂L/∂ε_θ = −n and g_l = ∂L/∂Y_l = −J_lᵀ n, whose square has expectation
diag(J_lᵀ J_l): the Gauss-Newton diagonal of the output-space MSE, without needing ε.

Prediction types: the loss is always this ε-space denoising loss. A v- or flow-matching model
outputs o with ε̂ = c_t·o + (terms in x_t), c_t = `calib.eps_scale` (√ᾱ_t for v, 1 − σ for
flow; `denoisers.traits.eps_scale`), so ∂L/∂o = −c_t·n per sample; for ε models c_t = 1 and the
arithmetic is exactly the ε one. The noise
comes from a seeded `torch.Generator` on the CPU, drawn for the whole calibration set at once,
so `chunk` changes scores only by the float32 rounding of differently batched kernels. With
`draws` > 1 each sample gets that many independent n and g_l² is averaged over them (one
backward each, same forward).

Computation: one forward and `draws` backwards per chunk of samples with FP weights (parameters
frozen, only activations carry gradients), hooks keeping each quantizable layer's input X and the
gradient of its output; then, per option, ΔY = f(X; W_q − W) without bias — Linear and Conv are
linear in the weight, so this equals f(X; W_q) − f(X; W) exactly and avoids the cancellation of
subtracting two nearly equal outputs — and S += Σ g²·ΔY² in float64. A layer called several times
per forward sums over its calls. Tied layers (one weight tensor, `bank.unit`) are scored per
layer name as the bank lists them: the loss increase of quantizing the group is, to this order,
the sum of its members' scores.
"""
from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import QsensError
from quant.layers import quantizable_layers
from quant.options import FP16

COLUMNS = ["layer", "option", "score", "n_samples"]


def _plain(obj: Any) -> Any:
    """A copy of (nested) inputs whose tensors are ordinary ones: calibration tensors are made
    under `torch.inference_mode` and autograd refuses to save inference tensors for backward."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.is_inference() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_plain(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _delta_output(module: nn.Module, x: torch.Tensor, delta_w: torch.Tensor) -> torch.Tensor:
    """f(x; W + ΔW) − f(x; W) = f(x; ΔW) without bias, in the module's own functional form."""
    if isinstance(module, nn.Linear):
        return F.linear(x, delta_w)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module._conv_forward(x, delta_w, None)
    raise TypeError(f"{type(module).__name__} is not a quantizable layer type")


class _Capture:
    """Forward hooks on the scored layers: per call, the layer's input X (detached) and a slot
    that a tensor hook on its output fills with ∂L/∂Y during backward."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.inputs: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
        self.grads: dict[str, list[torch.Tensor | None]] = {n: [] for n in modules}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str):
        def hook(_module, args, out):
            if not isinstance(out, torch.Tensor):
                raise QsensError(f"layer {name}: output is {type(out).__name__}, not a tensor; "
                                 "the fisher strategy cannot score it")
            replaced = None
            if not out.requires_grad:
                # Nothing upstream carries a gradient (parameters are frozen, inputs are data), so
                # start one here; a non-leaf copy so that later in-place ops stay legal.
                replaced = out.detach().requires_grad_(True).clone()
                out = replaced
            k = len(self.grads[name])
            self.inputs[name].append(args[0].detach())
            self.grads[name].append(None)

            def store(g: torch.Tensor) -> None:
                self.grads[name][k] = g.detach()

            out.register_hook(store)
            return replaced  # None keeps the module's own output

        return hook

    def clear(self) -> None:
        for n in self.inputs:
            self.inputs[n].clear()
            self.grads[n].clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.clear()


def fisher_sensitivity(denoiser, bank, *, samples: int = 64, trajectories: int = 32, seed: int = 3,
                       timesteps: str = "uniform", mean: float = 0.5, std: float = 0.25,
                       steps: int | None = None, chunk: int = 16, draws: int = 1,
                       noise_seed: int = 0, layers: list[str] | None = None,
                       progress: bool = True) -> pd.DataFrame:
    """Fisher (AutoQuantize gradient) score of every (layer, option) of `bank` on `denoiser`.

    Calibration: `samples` inputs drawn from the FP sampling trajectories of `trajectories`
    images (generation seed `seed`, time steps `timesteps` = uniform | normal with `mean`/`std`
    as fractions of the trajectory, `steps` sampler steps or the denoiser's default); see
    `sampling.calibration.collect_calibration`. `chunk` samples per forward/backward (memory
    only: scores change by float32 rounding, ~1e-6 relative). `draws` target draws per
    sample, averaged; `noise_seed` seeds them. `layers`: a subset of the bank's layers (default
    all), in the bank's order.

    Returns a DataFrame with columns exactly `layer, option, score, n_samples`, one row per
    (layer, option) in bank order: score is float64 ≥ 0, summed over samples and output elements
    (averaged over draws), in units of squared model output; n_samples = `samples`.
    `df.attrs = {"seconds": wall seconds, "calibration": {the arguments above}}`.
    Raises QsensError for bad arguments or unknown layers, BankMismatchError when the model's
    weights are not the bank's. The model is left as it was (weights, requires_grad, hooks).
    """
    from sampling.calibration import collect_calibration, model_output, to_eps_space
    from core.progress import progress_bar

    t_start = time.perf_counter()
    for name, value in (("samples", samples), ("trajectories", trajectories), ("chunk", chunk),
                        ("draws", draws)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise QsensError(f"fisher: {name} must be a positive integer, got {value!r}")
    if timesteps not in ("uniform", "normal"):
        raise QsensError(f"fisher: timesteps must be uniform or normal, got {timesteps!r}")
    names = list(bank.layer_names) if layers is None else list(layers)
    unknown = [n for n in names if n not in bank.layers]
    if unknown:
        raise QsensError(f"fisher: layer {unknown[0]!r} is not in the bank for {bank.model!r}")
    wanted = set(names)
    names = [n for n in bank.layer_names if n in wanted]  # bank order, no duplicates
    model = denoiser.model
    bank.check_model(model)
    modules = quantizable_layers(model)
    options = list(bank.options)

    calib = collect_calibration(denoiser, samples, trajectories=trajectories, seed=seed, how=timesteps,
                                mean=mean, std=std, steps=steps)
    n = len(calib)
    scores = {(l, o): 0.0 for l in names for o in options}
    gen = torch.Generator(device="cpu").manual_seed(int(noise_seed))
    noise: torch.Tensor | None = None  # (draws, n, *output shape), drawn on the first chunk

    flags = [(p, p.requires_grad) for p in model.parameters()]
    capture = None
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        capture = _Capture({l: modules[l] for l in names})
        n_chunks = -(-n // chunk)
        bar = progress_bar(total=n_chunks * len(names), desc="fisher", unit="layer×chunk", disable=not progress)
        with bar, torch.inference_mode(False), torch.enable_grad():
            for c, (args, kwargs) in enumerate(calib.chunks(chunk)):
                capture.clear()
                out = model_output(model(*_plain(args), **_plain(kwargs)))
                if not out.requires_grad:
                    raise QsensError("fisher: the model output does not depend on any scored layer")
                if noise is None:
                    noise = torch.randn((draws, n, *out.shape[1:]), generator=gen, dtype=torch.float32)
                b0 = c * chunk
                sq: dict[str, list[torch.Tensor | None]] = {l: [None] * len(capture.grads[l]) for l in names}
                for d in range(draws):
                    # ∂L/∂ε_θ = ε_θ − y = −n for the sampled target y = sg(ε_θ) + n
                    grad_out = -noise[d, b0:b0 + out.shape[0]].to(device=out.device, dtype=out.dtype)
                    if calib.eps_scale is not None:  # v / flow: ∂ε̂/∂output = c_t per sample
                        grad_out = to_eps_space(grad_out, calib.eps_scale[b0:b0 + out.shape[0]])
                    out.backward(grad_out, retain_graph=d + 1 < draws)
                    for l in names:
                        for k, g in enumerate(capture.grads[l]):
                            if g is None:  # this call's output does not reach the model output
                                continue
                            g2 = g.to(torch.float64) ** 2
                            sq[l][k] = g2 if sq[l][k] is None else sq[l][k] + g2
                            capture.grads[l][k] = None
                del out
                for l in names:
                    module = modules[l]
                    w = module.weight.detach()
                    calls = [(x, s / draws) for x, s in zip(capture.inputs[l], sq[l]) if s is not None]
                    if calls:
                        # float32 at least: half-precision models would lose ΔY's small differences
                        cdtype = torch.promote_types(w.dtype, torch.float32)
                        for o in options:
                            if o == FP16:
                                continue
                            dw = bank.dequantize(l, o, dtype=cdtype, device=w.device) - w.to(cdtype)
                            total = 0.0
                            for x, g2 in calls:
                                dy = _delta_output(module, x.to(cdtype), dw).to(torch.float64)
                                total += float((g2 * dy * dy).sum())
                            scores[(l, o)] += total
                    bar.update(1)
                capture.clear()
    finally:
        if capture is not None:
            capture.remove()
        for p, flag in flags:
            p.requires_grad_(flag)

    df = pd.DataFrame({"layer": [l for l, _ in scores], "option": [o for _, o in scores],
                       "score": pd.Series(list(scores.values()), dtype="float64"),
                       "n_samples": n}, columns=COLUMNS)
    df.attrs = {"seconds": time.perf_counter() - t_start,
                "calibration": {"samples": samples, "trajectories": trajectories, "seed": seed,
                                "timesteps": timesteps, "mean": mean, "std": std, "steps": steps,
                                "chunk": chunk, "draws": draws, "noise_seed": noise_seed}}
    return df


def fisher_table_scores(table: pd.DataFrame, bank) -> dict[tuple[str, str], float]:
    """IP scores to maximise, {(layer, option): −score}, for every (layer, option) of `bank`
    from a `fisher_sensitivity` table (extra rows are ignored). Raises QsensError (one line) when
    a column is missing, a pair is missing (naming the first), repeated, or not finite and ≥ 0."""
    missing_cols = [c for c in ("layer", "option", "score") if c not in table.columns]
    if missing_cols:
        have_cols = ", ".join(map(str, table.columns))
        raise QsensError(f"fisher table: column {missing_cols[0]!r} missing (has: {have_cols})")
    keys = list(zip(table["layer"].astype(str), table["option"].astype(str)))
    values = table["score"].to_numpy(dtype="float64")
    have: dict[tuple[str, str], float] = {}
    for key, v in zip(keys, values):
        if key in have:
            raise QsensError(f"fisher table: (layer {key[0]!r}, option {key[1]!r}) appears more than once")
        have[key] = float(v)
    out: dict[tuple[str, str], float] = {}
    for l in bank.layer_names:
        for o in bank.options:
            if (l, o) not in have:
                raise QsensError(f"fisher table lacks (layer {l!r}, option {o!r}) of bank {bank.model!r}; "
                                 "recompute it for this bank")
            v = have[(l, o)]
            if not (v >= 0 and v < float("inf")):
                raise QsensError(f"fisher table: score of (layer {l!r}, option {o!r}) is {v!r}, "
                                 "not a finite value >= 0")
            out[(l, o)] = -v
    return out
