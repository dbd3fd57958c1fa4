"""Activation bits a search can allocate: per-layer sensitivity + an integer program (issue 14).

Sensitivity (MixDQ, seed 001): for every quantizable layer and every candidate bit-width b, the
SQNR (dB) of the denoiser output with only that layer's input activations quantized at b bits,
on calibration inputs drawn from the FP sampling trajectory (`sampling.calibration`). Measured
once with FP weights (as MixDQ measures its activation sensitivity), dynamic quantization (per
token / per sample-channel, as the evaluation's W/A rows and Qua2SeDiMo's A6 use it).

Allocation (`allocate_activation_bits`), solved after the weight config (its layers fixed):

    minimise   Σ_l Σ_b noise[l,b]·x[l,b]          noise[l,b] = 10^(−SQNR[l,b]/10)
    subject to Σ_b x[l,b] = 1                      (one bit-width per layer)
               Σ_l Σ_b MACs_l·b·x[l,b] ≤ budget · Σ_l MACs_l

*Size* is each layer's MACs (multiply-accumulates of one forward, `LayerInfo.macs`): the average
activation bits are weighted by compute, so the budget is the activation factor of BOPs
(Σ MACs·w·a) with the weights fixed. *Objective*: the summed relative noise power, not MixDQ's
summed dB — independent per-layer output errors add as powers, so Σ noise is the first-order
model of the output's total noise (−10·log10 Σ noise is its predicted SQNR), while a sum of dB
is a log of a product and has no such meaning (REFERENCE.md lists it as a MixDQ flaw). The
summed-SQNR objective is available (`objective="sqnr"`) for comparison.

The program is `search.ip.solve` (OR-Tools CP-SAT) with bits[l,b] = MACs_l·b, N = Σ MACs_l.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from quant.config import MAX_ACT_BITS, MIN_ACT_BITS
from core.errors import QsensError
from core.params import defaults_from, load_section
from search.ip import BudgetError, solve
from search.params import EvaluateParams

OBJECTIVES = ("noise", "sqnr")
SQNR_CAP_DB = 1000.0  # an unchanged output (inf dB) scores this under the summed-SQNR objective


@dataclass
class ActAllocation:
    """The IP's answer: {layer: bits}, MAC-weighted average bits, predicted output SQNR."""
    bits: dict[str, int]
    avg_bits: float  # Σ MACs·bits / Σ MACs
    predicted_sqnr_db: float  # −10·log10 Σ_l noise[l, bits_l] (additive-noise model; inf: no noise)
    objective: str
    status: str  # "optimal" | "feasible"
    seconds: float
    extra: dict = field(default_factory=dict)


def noise_power(sqnr_db: float) -> float:
    """Relative noise power 10^(−SQNR/10) of one output (inf dB → 0; NaN / −inf → inf)."""
    if math.isnan(sqnr_db) or sqnr_db == -math.inf:
        return math.inf
    return 0.0 if sqnr_db == math.inf else 10.0 ** (-sqnr_db / 10.0)


def predicted_sqnr(sensitivity: Mapping[str, Mapping[int, float]], bits: Mapping[str, int]) -> float:
    """−10·log10 Σ_l 10^(−SQNR[l, bits_l]/10) dB: the output SQNR if the layers' errors add as
    independent noise powers (inf when every chosen entry is noise-free)."""
    total = sum(noise_power(float(sensitivity[l][int(b)])) for l, b in bits.items())
    if total == 0:
        return math.inf
    return -10.0 * math.log10(total) if math.isfinite(total) else -math.inf


def allocate_activation_bits(sensitivity: Mapping[str, Mapping[int, float]], sizes: Mapping[str, int],
                             budget_bits: float, choices: Sequence[int] = (8, 6, 4), *,
                             objective: str = "noise", time_limit_s: float = 10.0) -> ActAllocation:
    """Per-layer activation bits with MAC-weighted average ≤ `budget_bits` (see the module doc).

    sensitivity: {layer: {bits: SQNR dB}} for every layer of `sizes` (a missing or NaN / −inf
        entry means that bit-width is not allowed for that layer).
    sizes: {layer: MACs} (positive integers), the layers allocated, in order.
    choices: candidate bit-widths (each 2–8).
    objective: "noise" (minimise Σ 10^(−SQNR/10), default) or "sqnr" (maximise Σ SQNR, MixDQ).
    Raises QsensError for an unknown objective, bad choices, sizes or a layer without any allowed
    choice; BudgetError when the budget is below every layer at its smallest allowed choice.
    """
    if objective not in OBJECTIVES:
        raise QsensError(f"activation objective {objective!r}: choose noise or sqnr")
    choices = [int(b) for b in choices]
    if not choices or len(set(choices)) != len(choices) or any(not MIN_ACT_BITS <= b <= MAX_ACT_BITS for b in choices):
        raise QsensError(f"activation choices {choices}: give distinct bit-widths in {MIN_ACT_BITS}-{MAX_ACT_BITS}")
    layers = list(sizes)
    if not layers:
        raise QsensError("activation allocation: no layers")
    bad = [f"{l}={sizes[l]!r}" for l in layers if isinstance(sizes[l], bool) or int(sizes[l]) != sizes[l]
           or int(sizes[l]) <= 0]
    if bad:
        raise QsensError(f"activation allocation: sizes must be positive integers (MACs); got {', '.join(bad[:5])}"
                         " — a bank built before MAC counts existed has 0: rebuild it")
    missing = [l for l in layers if l not in sensitivity]
    if missing:
        raise QsensError(f"activation allocation: no sensitivity for {len(missing)} layer(s) (first: {missing[0]})")
    sqnr = np.array([[float(sensitivity[l].get(b, math.nan)) for b in choices] for l in layers])
    if objective == "noise":
        noise = np.vectorize(noise_power)(sqnr) if sqnr.size else sqnr
        scores = np.where(np.isfinite(noise), -noise, np.nan)
    else:
        scores = np.where(np.isnan(sqnr) | (sqnr == -np.inf), np.nan, np.minimum(sqnr, SQNR_CAP_DB))
    allowed = np.isfinite(scores)
    dead = [l for l, ok in zip(layers, allowed.any(axis=1)) if not ok]
    if dead:
        raise QsensError(f"activation allocation: layer {dead[0]} has no usable sensitivity at any of {choices}")
    size = np.array([int(sizes[l]) for l in layers], dtype=np.int64)
    g = reduce(math.gcd, size.tolist())  # smaller coefficients, the same constraint
    size //= g
    bits = size[:, None] * np.array(choices, dtype=np.int64)[None, :]
    lo = float(np.where(allowed, bits, np.iinfo(np.int64).max).min(axis=1).sum() / size.sum())
    if budget_bits < lo - 1e-12:
        raise BudgetError(f"activation budget {budget_bits:g} bits is below the smallest allocation "
                          f"({lo:.4f}: every layer at its smallest allowed choice of {sorted(choices)})")
    t0 = time.perf_counter()
    # above the largest allocation the budget does not bind: every layer at its best choice
    budget = min(float(budget_bits), float(np.where(allowed, bits, 0).max(axis=1).sum() / size.sum()))
    res = solve(scores, bits, int(size.sum()), budget, None, time_limit_s=time_limit_s, what="activation bits")
    chosen = {l: choices[k] for l, k in zip(layers, res.choice)}
    return ActAllocation(bits=chosen, avg_bits=float(res.total_bits / size.sum()),
                         predicted_sqnr_db=predicted_sqnr(sensitivity, chosen), objective=objective,
                         status=res.status, seconds=time.perf_counter() - t0,
                         extra={"ip_objective": res.objective, "ip_bound": res.bound,
                                "ip_resolution": res.resolution, "size": "MACs"})


def mac_sizes(bank, denoiser=None, layers: Sequence[str] | None = None) -> dict[str, int]:
    """{layer: MACs} from a bank's layer infos (every layer listed, tied ones included: each module
    computes with its own input activations). A bank built without MAC counts (0) takes them from
    `denoiser.layer_infos()` (one forward at its example inputs) when given."""
    layers = list(layers if layers is not None else bank.layer_names)
    out = {l: int(bank.layers[l].macs) for l in layers}
    if denoiser is not None and any(v <= 0 for v in out.values()):
        counted = {i.name: int(i.macs) for i in denoiser.layer_infos()}
        out = {l: counted.get(l, 0) if v <= 0 else v for l, v in out.items()}
    return out


def activation_sensitivity(model, calib, layers: Sequence[str], choices: Sequence[int], *,
                           ranges: Mapping[str, tuple[float, float]] | None = None,
                           chunk: int = 256) -> dict[str, dict[int, float]]:
    """{layer: {bits: SQNR dB}}: MixDQ's per-layer activation sensitivity
    (`sampling.calibration.activation_sqnr`) at every choice, against one FP output on `calib`.
    Dynamic quantization, static when `ranges` is given. Cost: len(layers)·len(choices) forwards
    of the calibration set."""
    from sampling.calibration import activation_sqnr, run_model

    y_fp = run_model(model, calib, chunk)
    out: dict[str, dict[int, float]] = {l: {} for l in layers}
    for b in choices:
        for l, v in activation_sqnr(model, calib, list(layers), int(b), ranges=ranges, reference=y_fp,
                                    chunk=chunk).items():
            out[l][int(b)] = v
    return out


def measure_activation_sensitivity(denoiser, layers: Sequence[str], choices: Sequence[int], *,
                                   samples: int = 64, trajectories: int = 32, seed: int = 3,
                                   timesteps: str = "uniform", steps: int | None = None) -> dict[str, Any]:
    """Collect calibration inputs from the FP trajectory and measure `activation_sensitivity`
    with the denoiser's current (FP) weights. Returns {"sqnr": {layer: {bits: dB}}, "calibration":
    {...}, "seconds"}."""
    from sampling.calibration import collect_calibration

    t0 = time.perf_counter()
    calib = collect_calibration(denoiser, samples, trajectories=trajectories, seed=seed, how=timesteps, steps=steps)
    sens = activation_sensitivity(denoiser.model, calib, layers, choices)
    return {"sqnr": sens, "mode": "dynamic",
            "calibration": {"samples": len(calib), "trajectories": trajectories, "seed": seed,
                            "timesteps": timesteps, "trajectory_steps": calib.num_steps},
            "seconds": round(time.perf_counter() - t0, 3)}


# ------------------------------------------------------------------------------------------------
# the evaluation's W/A rows: params (the `act_*` keys of params.yaml `evaluate:`)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
@defaults_from("evaluate", prefix="act_", calibration={
    "act_calib_samples": "samples", "act_calib_trajectories": "trajectories",
    "act_calib_seed": "seed", "act_calib_timesteps": "timesteps"
})
class ActEvalParams:
    """Activation rows of `qsens evaluate`: each found weight config of `act_strategies` is scored
    again with every layer's activations at each of `act_bits` (dynamic), and the configs of
    `act_mixed_strategies` with IP-allocated per-layer bits averaging `act_mixed_bits` (MAC-weighted)."""
    act_strategies: tuple[str, ...]
    act_bits: tuple[int, ...]  # global A-settings (QuantConfig.act_bits: 8 or 6)
    act_mixed_bits: float | None  # null: no mixed row
    act_mixed_strategies: tuple[str, ...]
    act_choices: tuple[int, ...]  # per-layer candidates of the mixed allocation
    act_objective: str  # noise (Σ 10^(−SQNR/10)) | sqnr (Σ dB, MixDQ)
    act_calib_samples: int  # sensitivity: calibration inputs from the FP trajectory
    act_calib_trajectories: int
    act_calib_seed: int  # image seed set of the calibration trajectories (not the evaluation's)
    act_calib_timesteps: str  # uniform | normal

    def __post_init__(self) -> None:
        from search.params import strategy_names

        STRATEGIES = strategy_names()
        bad = [s for s in (*self.act_strategies, *self.act_mixed_strategies) if s not in STRATEGIES]
        if bad:
            raise QsensError(f"evaluate.act_strategies / act_mixed_strategies: unknown {bad}; known: {', '.join(STRATEGIES)}")
        if any(b not in (8, 6) for b in self.act_bits):
            raise QsensError(f"evaluate.act_bits {list(self.act_bits)}: each must be 8 or 6 (the global A-settings)")
        if self.act_objective not in OBJECTIVES:
            raise QsensError(f"evaluate.act_objective must be noise or sqnr, got {self.act_objective!r}")
        if self.act_calib_timesteps not in ("uniform", "normal"):
            raise QsensError(f"evaluate.act_calib_timesteps must be uniform or normal, got {self.act_calib_timesteps!r}")
        if any(not MIN_ACT_BITS <= b <= MAX_ACT_BITS for b in self.act_choices) or not self.act_choices:
            raise QsensError(f"evaluate.act_choices {list(self.act_choices)}: bit-widths in {MIN_ACT_BITS}-{MAX_ACT_BITS}")
        if self.act_mixed_bits is not None and not min(self.act_choices) <= self.act_mixed_bits <= max(self.act_choices):
            raise QsensError(f"evaluate.act_mixed_bits {self.act_mixed_bits:g} outside the choices' range "
                             f"{min(self.act_choices)}-{max(self.act_choices)}")
        if self.act_calib_samples < 1 or self.act_calib_trajectories < 1:
            raise QsensError("evaluate.act_calib_samples and act_calib_trajectories must be >= 1")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "ActEvalParams":
        """The `act_*` keys of a params file's `evaluate:` section (QsensError when malformed)."""
        return evaluate_params(path)[1]

    def mixed_label(self) -> str:
        """The label of the mixed activation-bits series, e.g. `A6-mixed`."""
        return f"A{self.act_mixed_bits:g}-mixed"


def evaluate_params(path: str | Path = "params.yaml") -> tuple[EvaluateParams, ActEvalParams]:
    """The `evaluate:` section as (EvaluateParams, ActEvalParams): keys starting with `act_` go to
    the second. Unknown keys and ill-typed values are one QsensError, as for every section."""
    return EvaluateParams.from_yaml(path), load_section(ActEvalParams, path, "evaluate")
