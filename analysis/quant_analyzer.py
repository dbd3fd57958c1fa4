"""AIMET's QuantAnalyzer (seed 004) for diffusion denoisers: where is a model sensitive,
weights versus activations, layer by layer.

Quantizers: each quantizable layer (Conv/Linear) has a *weight* quantizer (the option
`weight_option`, e.g. `uaq4`, applied from the bank) and an *activation* quantizer on its input
(`act_bits`, dynamic or static — `quant.activations`). Scores are the model's own metric on a
fixed seed set (`images` images from seed set `image_seed`): FID (lower is better) and the content
score (digits: classifier accuracy; real models: CLIP score; higher is better). Analyses and
outputs (names as AIMET writes them), under `out_dir`:

    weight_activation_sensitivity.{json,html}  FP vs weight-only vs activation-only vs both
    per_layer_quant_enabled.{json,html}   all quantizers off, one layer's on (weight / activation)
    per_layer_quant_disabled.{json,html}  all quantizers on, one layer's off (weight / activation)
    min_max_ranges/weights.{json,html}     per output channel: FP min/max and the encoding's
                                           (the quantized weight's) min/max
    min_max_ranges/activations.{json,html} per layer input: min/max over the calibration set
                                           (= the static ranges)
    weights_pdf/weights_pdf.{json,html}    histogram of each layer's weights
    activations_pdf/activations_pdf.{json,html}  histogram of each layer's inputs (calibration set)
    per_layer_mse_loss.{json,html}         MSE of each layer's output vs FP on the calibration set,
                                           with weights / activations / both quantized
    per_layer_act_sqnr.{json,html}         MixDQ's activation sensitivity: SQNR (dB) of the
                                           denoiser output with one layer's input quantized
    index.html                             links, the FP/W/A/W+A table and a reading of the results
    run.json                               timings (the only file that differs between re-runs)
    *.progress.jsonl                       resumable progress of the sweeps (analysis.common)

Calibration inputs are the denoiser's own inputs recorded along the FP sampling trajectory, time
steps drawn uniformly or normally (`sampling.calibration`, seed 003). The sweeps cost one
generation + score each (4 per swept layer); `layers` (a regex) and `max_layers` (evenly spaced
over the model's module order) choose the swept layers; a killed run resumes where it stopped.
"""
from __future__ import annotations

import math
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from core.params import defaults_from
from analysis.common import Progress, settings_key, write_json
from core.errors import QsensError

SECTION = "quant_analyzer"
SWEEPS = ("w_enabled", "a_enabled", "w_disabled", "a_disabled")
BASELINES = {"fp": "FP", "w": "weights only", "a": "activations only", "wa": "weights + activations"}
METRICS = (("fid", "FID (lower is better)"), ("content", "content score (higher is better)"))


@dataclass(frozen=True)
@defaults_from("quant_analyzer", calibration={
    "calib_samples": "samples", "calib_trajectories": "trajectories",
    "calib_timesteps": "timesteps", "calib_normal_mean": "normal_mean",
    "calib_normal_std": "normal_std", "calib_seed": "seed", "chunk": "chunk"
})
class QuantAnalyzerParams:
    """The `quant_analyzer:` section of params.yaml."""
    weight_option: str  # the W setting: a bank option (built in memory if the bank lacks it)
    act_bits: int  # the A setting: 2-8 bits on every layer's input
    act_mode: str  # static (calibrated ranges, seed 003) | dynamic (per token / channel)
    images: int  # images per scored setting
    image_seed: int  # disjoint from the other stages' seed sets
    steps: int | None  # sampler steps (None: the model's default)
    max_layers: int  # layers swept (evenly spaced in module order); 0 = every layer
    layers: str | None  # regex: only layers whose name matches are swept
    sqnr_bits: tuple[int, ...]  # activation SQNR per layer at these bit-widths
    sqnr_max_layers: int  # layers in the SQNR sweep (evenly spaced); 0 = every matching layer
    calib_samples: int
    calib_trajectories: int
    calib_timesteps: str  # uniform | normal (PTQ4DM)
    calib_normal_mean: float
    calib_normal_std: float
    calib_seed: int
    hist_bins: int
    chunk: int  # calibration samples per forward

    def __post_init__(self) -> None:
        from quant.activations import ACT_MODES
        from quant.config import MAX_ACT_BITS, MIN_ACT_BITS
        from quant.options import parse_option

        where = f"{SECTION}."
        if parse_option(self.weight_option).is_fp:
            raise QsensError(f"{where}weight_option must be a quantized option such as uaq4, got fp16")
        for b in (self.act_bits, *self.sqnr_bits):
            if not MIN_ACT_BITS <= b <= MAX_ACT_BITS:
                raise QsensError(f"{where}act_bits / sqnr_bits must be in {MIN_ACT_BITS}-{MAX_ACT_BITS}, got {b}")
        if self.act_mode not in ACT_MODES:
            raise QsensError(f"{where}act_mode must be one of {', '.join(ACT_MODES)}, got {self.act_mode!r}")
        if self.calib_timesteps not in ("uniform", "normal"):
            raise QsensError(f"{where}calib_timesteps must be uniform or normal, got {self.calib_timesteps!r}")
        if self.images < 2 or self.calib_samples < 1 or self.calib_trajectories < 1 or self.chunk < 1:
            raise QsensError(f"{where}images must be >= 2; calib_samples, calib_trajectories, chunk >= 1")
        if self.max_layers < 0 or self.sqnr_max_layers < 0 or self.hist_bins < 2:
            raise QsensError(f"{where}max_layers and sqnr_max_layers must be >= 0, hist_bins >= 2")
        if self.layers is not None:
            try:
                re.compile(self.layers)
            except re.error as exc:
                raise QsensError(f"{where}layers {self.layers!r} is not a regular expression ({exc})") from None

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml", section: str = SECTION) -> "QuantAnalyzerParams":
        """The `quant_analyzer:` section of a params file (QsensError when malformed)."""
        from core.params import load_section

        return load_section(QuantAnalyzerParams, path, section)

    @property
    def act_label(self) -> str:
        """The activation setting as a label, e.g. `A8 dynamic`."""
        return f"A{self.act_bits} {self.act_mode}"


def select_layers(layers: Sequence[str], pattern: str | None = None, max_layers: int = 0) -> list[str]:
    """The layers a sweep covers (`quant.layers.select_layers`, errors named `quant_analyzer.layers`)."""
    from quant.layers import select_layers as select

    return select(layers, pattern, max_layers, what=f"{SECTION}.layers")


# ----------------------------------------------------------------------------------------------
# quantizer settings
# ----------------------------------------------------------------------------------------------
class Quantizers:
    """Switch weight and activation quantizers of `model` on for chosen layers (a context manager
    per setting; the model is FP again after each). Tied layers (one shared weight tensor) form one
    weight quantizer, named by the group's first layer."""

    def __init__(self, model: torch.nn.Module, wbank, weight_option: str, act_bits: int,
                 ranges: dict[str, tuple[float, float]] | None, evaluator=None):
        from quant.layers import quantizable_layers, tied_groups

        self.model, self.wbank, self.weight_option, self.act_bits = model, wbank, weight_option, act_bits
        self.evaluator = evaluator  # sampling.evaluator.Evaluator over `model` and `wbank`
        self.ranges = ranges
        self.layers = list(quantizable_layers(model))
        self.act_layers = list(self.layers)  # `observe`: the layers activation quantization reaches
        self.group = {name: [name] for name in self.layers}
        for g in tied_groups(quantizable_layers(model)):
            for name in g:
                self.group[name] = list(g)

    def observe(self, ranges: dict[str, tuple[float, float]]) -> dict[str, str]:
        """Keep activation quantization to the layers the calibration pass reached (`ranges`:
        their input ranges); returns {left-out layer: reason} (`sampling.calibration.observed_layers`)."""
        from sampling.calibration import observed_layers

        self.act_layers, left = observed_layers(self.layers, ranges, what="QuantAnalyzer (activation quantizers)")
        return left

    def reachable(self, layers: Sequence[str]) -> list[str]:
        """Those of `layers` activation quantization reaches (`observe`), in order."""
        acts = set(self.act_layers)
        return [l for l in layers if l in acts]

    def leader(self, layer: str) -> str:
        """The weight quantizer `layer` belongs to: the first layer of its tied group (itself when
        untied)."""
        return self.group[layer][0]

    def weight_units(self, layers: Sequence[str]) -> list[str]:
        """One name per weight quantizer among `layers` (a tied group's first layer), in order."""
        return list(dict.fromkeys(self.leader(l) for l in layers))

    def weight_set(self, enabled: Sequence[str]) -> list[str]:
        """Every layer whose weight is quantized when the units `enabled` are on."""
        return [m for l in enabled for m in self.group[l]]

    @contextmanager
    def on(self, w_layers: Sequence[str] = (), a_layers: Sequence[str] = ()) -> Iterator[None]:
        """Context manager: weights of `w_layers` quantized (the weight option, from the bank) and
        activations of `a_layers` at the activation bits; the model is FP again on exit.
        """
        from quant.activations import activation_quant
        from quant.config import QuantConfig
        from sampling.evaluator import Evaluator

        if self.evaluator is None:
            self.evaluator = Evaluator(_ModelOnly(self.model), self.wbank, None)
        with ExitStack() as stack:
            if w_layers:
                config = QuantConfig(self.wbank.model, {l: self.weight_option for l in w_layers})
                stack.enter_context(self.evaluator.applied(config))
            if a_layers:
                ranges = None if self.ranges is None else {l: self.ranges[l] for l in a_layers}
                stack.enter_context(activation_quant(self.model, {l: self.act_bits for l in a_layers},
                                                     ranges=ranges))
            yield

    def setting(self, kind: str, layer: str = "") -> tuple[list[str], list[str]]:
        """(weight layers, activation layers) on for a baseline (`fp`, `w`, `a`, `wa`; layer "")
        or a sweep row (`w_enabled`... of `layer`)."""
        all_, acts = self.layers, self.act_layers
        if kind == "fp":
            return [], []
        if kind == "w":
            return all_, []
        if kind == "a":
            return [], acts
        if kind == "wa":
            return all_, acts
        if kind == "w_enabled":
            return self.group[layer], []
        if kind == "w_disabled":
            return [l for l in all_ if l not in self.group[layer]], []
        if kind == "a_enabled":
            return [], [layer]
        if kind == "a_disabled":
            return [], [l for l in acts if l != layer]
        raise ValueError(kind)


class _ModelOnly:
    """The part of a denoiser `Evaluator.applied` needs, for a bare model (calibration sweeps)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model


def weight_bank(denoiser, bank, option: str, progress: bool = False):
    """`bank` when it holds `option`, else a one-option bank built in memory from the model."""
    if bank is not None and option in bank.options:
        return bank
    from quant.bank import build_bank

    name = bank.model if bank is not None else getattr(denoiser, "name", "model")
    return build_bank(denoiser.model, [option], model_name=name, progress=progress)


# ----------------------------------------------------------------------------------------------
# scored analyses (resumable)
# ----------------------------------------------------------------------------------------------
def scored_sweeps(denoiser, scorer, quantizers: Quantizers, params: QuantAnalyzerParams, swept: Sequence[str],
                  progress_path: Path, key: str, progress: bool = True) -> dict[tuple[str, str], dict]:
    """Score the four baselines and the four per-layer sweeps over `swept`; {(layer, kind): row}
    with row = {fid, content, status, reason, seconds}. Rows already in the progress file with the
    same settings key are kept, not redone."""
    from core.progress import progress_bar

    gen_kw: dict[str, Any] = {} if params.steps is None else {"steps": params.steps}
    units = quantizers.weight_units(swept)
    todo = [("", k) for k in BASELINES]
    acts = quantizers.reachable(swept)  # activation sweeps: layers hooks can reach
    todo += [(l, k) for k in SWEEPS for l in (units if k.startswith("w") else acts)]
    with Progress(progress_path, key, nonneg=("fid", "seconds"), required=("fid", "content", "status", "seconds")) \
            as prog:
        pending = [(l, k) for l, k in todo if not prog.done(l, k)]
        for layer, kind in progress_bar(pending, desc="quant-analyzer", unit="setting", disable=not progress):
            t0 = time.perf_counter()
            w_layers, a_layers = quantizers.setting(kind, layer)
            sc = scorer.score(quantizers.evaluator.generate(None, params.images, params.image_seed,
                                                            hooks=quantizers.on(w_layers, a_layers), **gen_kw))
            prog.add({"layer": layer, "option": kind,
                      "fid": float(sc.fid) if sc.ok else None,
                      "content": float(sc.content) if sc.ok else None,
                      "status": sc.status, "reason": sc.reason or "",
                      "seconds": time.perf_counter() - t0})
        return {(l, k): prog.rows[(l, k)] for l, k in todo}


def act_sqnr_sweep(model, calib, quantizers: Quantizers, layers: Sequence[str], bits: Sequence[int],
                   chunk: int, progress_path: Path, key: str, progress: bool = True) -> dict[str, dict[int, float]]:
    """{layer: {bits: SQNR dB}} (MixDQ's activation sensitivity, `sampling.calibration.activation_sqnr`),
    static ranges when the analyzer runs static; resumable. ±inf is stored as ±1000 dB."""
    from sampling.calibration import activation_sqnr, run_model
    from core.progress import progress_bar

    y_fp = run_model(model, calib, chunk)
    todo = [(l, f"a{b}") for b in bits for l in layers]
    with Progress(progress_path, key, required=("sqnr_db", "seconds"),
                  check=lambda r: "no sqnr_db" if r["sqnr_db"] is None else None) as prog:
        pending = [(l, o) for l, o in todo if not prog.done(l, o)]
        for layer, opt in progress_bar(pending, desc="activation sqnr", unit="layer", disable=not progress):
            t0 = time.perf_counter()
            q = activation_sqnr(model, calib, [layer], int(opt[1:]), ranges=quantizers.ranges,
                                reference=y_fp, chunk=chunk)[layer]
            q = q if math.isfinite(q) else (1e3 if q > 0 else -1e3)
            prog.add({"layer": layer, "option": opt, "sqnr_db": q, "seconds": time.perf_counter() - t0})
        return {l: {b: prog.rows[(l, f"a{b}")]["sqnr_db"] for b in bits} for l in layers}


# ----------------------------------------------------------------------------------------------
# calibration-set analyses (one or two passes; recomputed every run)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def weight_ranges(quantizers: Quantizers) -> dict[str, dict[str, list[float]]]:
    """Per layer, per output channel: FP min/max and the min/max of the quantized weight (the
    encoding's range as the option's clipping and grid leave it)."""
    from quant.layers import quantizable_layers

    out = {}
    modules = quantizable_layers(quantizers.model)
    for name, module in modules.items():
        w = module.weight.detach().to("cpu", torch.float32).reshape(module.weight.shape[0], -1)
        q = quantizers.wbank.dequantize(name, quantizers.weight_option).reshape(w.shape)
        out[name] = {"min": w.amin(1).tolist(), "max": w.amax(1).tolist(),
                     "encoding_min": q.amin(1).tolist(), "encoding_max": q.amax(1).tolist()}
    return out


def _histogram(x: torch.Tensor, lo: float, hi: float, bins: int) -> list[int]:
    if hi <= lo:  # a constant tensor: everything in the middle bin
        counts = [0] * bins
        counts[bins // 2] = int(x.numel())
        return counts
    return torch.histc(x.detach().double().flatten(), bins=bins, min=lo, max=hi).round().long().tolist()


def _edges(lo: float, hi: float, bins: int) -> list[float]:
    return np.linspace(lo, hi, bins + 1).tolist() if hi > lo else np.linspace(lo - 0.5, lo + 0.5, bins + 1).tolist()


@torch.no_grad()
def weight_histograms(model, bins: int) -> dict[str, dict[str, list]]:
    """{layer: {edges, counts}} of each layer's FP weight values over [min, max]."""
    from quant.layers import quantizable_layers

    out = {}
    for name, module in quantizable_layers(model).items():
        w = module.weight.detach().to("cpu", torch.float64)
        lo, hi = float(w.min()), float(w.max())
        out[name] = {"edges": _edges(lo, hi, bins), "counts": _histogram(w, lo, hi, bins)}
    return out


@torch.no_grad()
def activation_histograms(model, calib, ranges: dict[str, tuple[float, float]], bins: int,
                          chunk: int) -> dict[str, dict[str, list]]:
    """{layer: {edges, counts}} of each layer's FP input values over the calibration set, on the
    layer's calibrated [min, max]."""
    from sampling.calibration import model_output
    from quant.layers import quantizable_layers

    modules = quantizable_layers(model)
    counts = {n: np.zeros(bins, dtype=np.int64) for n in ranges}

    def make_hook(name: str):
        lo, hi = ranges[name]

        def hook(_module, args):
            counts[name] += np.asarray(_histogram(args[0], lo, hi, bins), dtype=np.int64)
        return hook

    hooks = [modules[n].register_forward_pre_hook(make_hook(n)) for n in ranges]
    try:
        for args, kwargs in calib.chunks(chunk):
            model_output(model(*args, **kwargs))
    finally:
        for h in hooks:
            h.remove()
    return {n: {"edges": _edges(*ranges[n], bins), "counts": counts[n].tolist()} for n in ranges}


@torch.no_grad()
def per_layer_mse(quantizers: Quantizers, calib, chunk: int) -> dict[str, dict[str, float]]:
    """{layer: {weight, activation, both, both_relative}}: mean squared error of each layer's
    output, the model with weights / activations / both quantized (errors accumulate through the
    model, as in AIMET) against the FP model, over the calibration set; `both_relative` divides
    by the FP output's mean square. Holds every layer's FP output for one chunk of calibration
    inputs at a time: lower `chunk` for large models."""
    from quant.layers import quantizable_layers

    model = quantizers.model
    modules = quantizable_layers(model)
    names = list(modules)
    settings = {"weight": ("w",), "activation": ("a",), "both": ("wa",)}
    sq = {s: {n: 0.0 for n in names} for s in settings}
    ref_sq = {n: 0.0 for n in names}
    count = {n: 0 for n in names}
    for args, kwargs in calib.chunks(chunk):
        fp_out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        calls: dict[str, int] = {}

        def record(name: str):
            def hook(_m, _a, out):
                fp_out[name].append(out.detach().double())
            return hook

        def compare(name: str, setting: str):
            def hook(_m, _a, out):
                i = calls.get(name, 0)
                calls[name] = i + 1
                if i < len(fp_out[name]):
                    sq[setting][name] += float(((out.detach().double() - fp_out[name][i]) ** 2).sum())
            return hook

        hooks = [modules[n].register_forward_hook(record(n)) for n in names]
        try:
            model(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        for n in names:
            ref_sq[n] += sum(float((t ** 2).sum()) for t in fp_out[n])
            count[n] += sum(t.numel() for t in fp_out[n])
        for setting, (kind,) in settings.items():
            calls.clear()
            hooks = [modules[n].register_forward_hook(compare(n, setting)) for n in names]
            try:
                with quantizers.on(*quantizers.setting(kind)):
                    model(*args, **kwargs)
            finally:
                for h in hooks:
                    h.remove()
    out = {}
    for n in names:
        c = max(count[n], 1)
        out[n] = {s: sq[s][n] / c for s in settings}
        out[n]["both_relative"] = sq["both"][n] / ref_sq[n] if ref_sq[n] > 0 else None
    return out


# ----------------------------------------------------------------------------------------------
# the whole report
# ----------------------------------------------------------------------------------------------
def _score(row: dict) -> dict:
    return {"fid": row["fid"], "content": row["content"], "status": row["status"]}


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def reading(model: str, params: QuantAnalyzerParams, base: dict[str, dict], enabled: dict, disabled: dict,
            mse: dict[str, dict], sqnr: dict[str, dict[int, float]], n_swept: int, n_layers: int) -> str:
    """One paragraph: which of weights / activations hurts more, and the hotspots of each analysis."""
    fp, w, a, wa = (base[k]["fid"] for k in ("fp", "w", "a", "wa"))
    parts = [f"On {model}, quantizing every layer's weights ({params.weight_option}) moves FID from "
             f"{_fmt(fp)} (FP) to {_fmt(w)}, every layer's input activations ({params.act_label}) to "
             f"{_fmt(a)}, and both to {_fmt(wa)}."]
    if None not in (fp, w, a):
        more = "weight" if (w - fp) > (a - fp) else "activation"
        parts.append(f"The model is more sensitive to {more} quantization at these settings "
                     f"(ΔFID {w - fp:+.2f} for weights vs {a - fp:+.2f} for activations; differences "
                     "smaller than the FP seed-to-seed noise, `qsens noise`, mean nothing).")

    def top(rows: dict[str, dict], sign: float, k: int = 3) -> list[tuple[str, float]]:
        vals = [(l, r["fid"]) for l, r in rows.items() if r["fid"] is not None]
        return sorted(vals, key=lambda t: (sign * t[1], t[0]))[:k]

    for q, label, all_on in (("weight", "weights", w), ("activation", "activations", a)):
        # only layers whose change has the stated sign: a "cost" raises FID, a "help" lowers it
        en = [(l, v) for l, v in top(enabled[q], -1.0) if fp is not None and v > fp]
        dis = [(l, v) for l, v in top(disabled[q], 1.0) if all_on is not None and v < all_on]
        if en:
            parts.append(f"Quantizing one layer's {label} alone costs most at "
                         + ", ".join(f"{l} (ΔFID {v - fp:+.2f})" for l, v in en) + ".")
        elif fp is not None and enabled[q]:
            parts.append(f"No single layer's {label} raises FID above FP when quantized alone.")
        if dis:
            parts.append(f"Keeping one layer's {label} in FP while all others are quantized helps most at "
                         + ", ".join(f"{l} (ΔFID {v - all_on:+.2f})" for l, v in dis) + ".")
        elif all_on is not None and disabled[q]:
            parts.append(f"Keeping no single layer's {label} in FP lowers FID below the all-quantized model.")
    rel = sorted(((l, r["both_relative"]) for l, r in mse.items() if r["both_relative"] is not None),
                 key=lambda t: (-t[1], t[0]))[:3]
    if rel:
        parts.append("Relative output MSE with both quantized is largest at "
                     + ", ".join(f"{l} ({v:.2g})" for l, v in rel) + ".")
    if sqnr:
        b = min(params.sqnr_bits)
        low = sorted(((l, v[b]) for l, v in sqnr.items()), key=lambda t: (t[1], t[0]))[:3]
        parts.append(f"Activation SQNR at A{b} is lowest (most sensitive) at "
                     + ", ".join(f"{l} ({v:.1f} dB)" for l, v in low) + ".")
    parts.append(f"Sweeps cover {n_swept} of {n_layers} layers ({params.images} images from seed set "
                 f"{params.image_seed}).")
    return " ".join(parts)


def run_quant_analyzer(denoiser, bank, scorer, params: QuantAnalyzerParams, out_dir: str | Path,
                       progress: bool = True) -> dict[str, Any]:
    """Run every analysis (module doc) and write the report under `out_dir`; returns the
    weight/activation sensitivity summary. `bank`: a Bank of the model (or None: the weight option
    is quantized in memory). Same params and seeds → the same JSON files."""
    from analysis import report_html as rh
    from sampling.calibration import activation_ranges, collect_calibration

    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    model = denoiser.model
    if bank is not None:
        bank.check_model(model)
    wbank = weight_bank(denoiser, bank, params.weight_option, progress=progress)
    model_name = wbank.model

    t0 = time.perf_counter()
    calib = collect_calibration(denoiser, params.calib_samples, trajectories=params.calib_trajectories,
                                seed=params.calib_seed, how=params.calib_timesteps,
                                mean=params.calib_normal_mean, std=params.calib_normal_std, steps=params.steps)
    ranges = activation_ranges(model, calib, params.chunk)
    timings["calibration"] = time.perf_counter() - t0
    from sampling.evaluator import Evaluator

    quantizers = Quantizers(model, wbank, params.weight_option, params.act_bits,
                            ranges if params.act_mode == "static" else None,
                            evaluator=Evaluator(denoiser, wbank, scorer))
    all_layers = quantizers.layers
    excluded = quantizers.observe(ranges)  # layers forward hooks never see: weights only
    swept = select_layers(all_layers, params.layers, params.max_layers)
    act_swept = quantizers.reachable(swept)
    sqnr_layers = quantizers.reachable(select_layers(all_layers, params.layers, params.sqnr_max_layers))
    calib_settings = [params.calib_samples, params.calib_trajectories, params.calib_timesteps,
                      params.calib_normal_mean, params.calib_normal_std, params.calib_seed, params.steps]
    common = {"model": model_name, "fingerprint": wbank.fingerprint, "w": params.weight_option,
              "a": [params.act_bits, params.act_mode], "calib": calib_settings}
    settings = {"weight_option": params.weight_option, "act_bits": params.act_bits, "act_mode": params.act_mode,
                "images": params.images, "image_seed": params.image_seed, "steps": params.steps}
    calib_info = {"samples": len(calib), "trajectories": params.calib_trajectories,
                  "timesteps": params.calib_timesteps, "trajectory_steps": calib.num_steps,
                  "step_histogram": np.bincount(calib.step_index, minlength=calib.num_steps).tolist(),
                  "seed": params.calib_seed}
    if params.calib_timesteps == "normal":
        calib_info.update(normal_mean=params.calib_normal_mean, normal_std=params.calib_normal_std)

    # --- scored: FP / W / A / W+A and the per-layer sweeps
    t0 = time.perf_counter()
    # the evaluator's identity covers the weights, generation settings, reference statistics and code
    key = settings_key({**common, "images": params.images, "seed": params.image_seed,
                        "scorer": type(scorer).__name__, "evaluator": quantizers.evaluator.identity()})
    rows = scored_sweeps(denoiser, scorer, quantizers, params, swept, out_dir / "sweeps.progress.jsonl", key,
                         progress)
    timings["sweeps"] = time.perf_counter() - t0
    base = {k: _score(rows[("", k)]) for k in BASELINES}
    if base["fp"]["status"] != "ok":
        raise QsensError("the FP model's own images failed to score; nothing to compare against")
    units = quantizers.weight_units(swept)
    enabled = {"weight": {l: _score(rows[(l, "w_enabled")]) for l in units},
               "activation": {l: _score(rows[(l, "a_enabled")]) for l in act_swept}}
    disabled = {"weight": {l: _score(rows[(l, "w_disabled")]) for l in units},
                "activation": {l: _score(rows[(l, "a_disabled")]) for l in act_swept}}
    tied = {l: quantizers.leader(l) for l in all_layers if quantizers.leader(l) != l}

    # --- calibration-set analyses
    t0 = time.perf_counter()
    sqnr = act_sqnr_sweep(model, calib, quantizers, sqnr_layers, params.sqnr_bits, params.chunk,
                          out_dir / "act_sqnr.progress.jsonl", settings_key(common), progress)
    timings["act_sqnr"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mse = per_layer_mse(quantizers, calib, params.chunk)
    w_ranges = weight_ranges(quantizers)
    w_hist = weight_histograms(model, params.hist_bins)
    a_hist = activation_histograms(model, calib, ranges, params.hist_bins, params.chunk)
    timings["calibration_analyses"] = time.perf_counter() - t0

    # --- JSON
    t0 = time.perf_counter()
    head = {"model": model_name, "settings": settings}
    summary = {**head, "source": "AIMET QuantAnalyzer (seed 004): FP vs weight-only vs activation-only vs both",
               "calibration": calib_info if params.act_mode == "static" else None,
               **({"excluded_from_activations": excluded} if excluded else {}),
               **{BASELINES[k].replace(" + ", "_and_").replace(" ", "_"): base[k] for k in BASELINES}}
    write_json(out_dir / "weight_activation_sensitivity.json", summary)
    sweep_meta = {**head, "swept_layers": len(swept), "layers": len(all_layers),
                  "activation_swept_layers": len(act_swept),
                  "layer_filter": {"pattern": params.layers, "max_layers": params.max_layers},
                  "tied": tied, "fp": base["fp"]}
    write_json(out_dir / "per_layer_quant_enabled.json", {
        **sweep_meta, "description": "all quantizers off; one layer's weight (or activation) quantizer on",
        "all_off": base["fp"], **enabled})
    write_json(out_dir / "per_layer_quant_disabled.json", {
        **sweep_meta, "description": "all weight (or activation) quantizers on; one layer's off",
        "all_on": {"weight": base["w"], "activation": base["a"]}, **disabled})
    write_json(out_dir / "min_max_ranges" / "weights.json", {
        **head, "description": "per output channel: FP min/max and the quantized weight's (encoding) min/max",
        "ranges": w_ranges})
    write_json(out_dir / "min_max_ranges" / "activations.json", {
        **head, "description": "per layer input: min/max over the calibration set (the static ranges)",
        "calibration": calib_info, "ranges": {l: {"min": lo, "max": hi} for l, (lo, hi) in ranges.items()}})
    write_json(out_dir / "weights_pdf" / "weights_pdf.json", {**head, "bins": params.hist_bins,
                                                               "histograms": w_hist})
    write_json(out_dir / "activations_pdf" / "activations_pdf.json", {
        **head, "bins": params.hist_bins, "calibration": calib_info, "histograms": a_hist})
    write_json(out_dir / "per_layer_mse_loss.json", {
        **head, "description": "MSE of each layer's output vs FP on the calibration set (errors accumulate "
        "through the model); both_relative = MSE / mean square of the FP output",
        "calibration": calib_info, "mse": mse})
    write_json(out_dir / "per_layer_act_sqnr.json", {
        **head, "description": "MixDQ activation sensitivity: SQNR (dB) of the denoiser output with only "
        "this layer's input quantized (static ranges when act_mode is static); 1000 = no change",
        "calibration": calib_info, "bits": list(params.sqnr_bits),
        "sqnr_db": {l: {str(b): v for b, v in s.items()} for l, s in sqnr.items()}})

    # --- HTML
    refs = {"FP": base["fp"]}
    rh.write_figure(rh.bars_figure(
        f"{model_name}: sensitivity to weight ({params.weight_option}) and activation ({params.act_label}) "
        "quantization", [BASELINES[k] for k in BASELINES],
        {"FID": [base[k]["fid"] for k in BASELINES]}, "FID (lower is better)"),
        out_dir / "weight_activation_sensitivity.html")
    for name, data, extra in (("per_layer_quant_enabled", enabled, {}),
                              ("per_layer_quant_disabled", disabled,
                               {"all weights": base["w"], "all activations": base["a"]})):
        series = {f"weight ({params.weight_option})": data["weight"],
                  f"activation ({params.act_label})": data["activation"]}
        layers = list(dict.fromkeys([*swept, *units]))
        what = "one quantizer on, all others off" if name.endswith("enabled") else "one quantizer off, all others on"
        rh.write_figure(rh.sweep_figure(f"{model_name}: {what}", layers, series, {**refs, **extra}, METRICS),
                        out_dir / f"{name}.html")
    rh.write_figure(rh.bars_figure(f"{model_name}: per-layer output MSE vs FP (calibration set)", all_layers,
                                   {k: [mse[l][k] for l in all_layers] for k in ("weight", "activation", "both")},
                                   "MSE", log_y=True), out_dir / "per_layer_mse_loss.html")
    rh.write_figure(rh.bars_figure(f"{model_name}: activation sensitivity (SQNR of the output, one layer's "
                                   f"input quantized, {params.act_mode})", sqnr_layers,
                                   {f"A{b}": [sqnr[l][b] for l in sqnr_layers] for b in params.sqnr_bits},
                                   "SQNR (dB, higher is less sensitive)"), out_dir / "per_layer_act_sqnr.html")
    rh.write_figure(rh.range_figure(f"{model_name}: activation min/max ranges (layer inputs, calibration set)",
                                    list(ranges), [r[0] for r in ranges.values()], [r[1] for r in ranges.values()]),
                    out_dir / "min_max_ranges" / "activations.html")
    w_views = {"all layers (per tensor)": {
        "x": all_layers, "base": [min(w_ranges[l]["min"]) for l in all_layers],
        "y": [max(w_ranges[l]["max"]) - min(w_ranges[l]["min"]) for l in all_layers]}}
    for l in all_layers:
        r = w_ranges[l]
        w_views[l] = {"x": list(range(len(r["min"]))), "base": r["min"],
                      "y": [hi - lo for lo, hi in zip(r["min"], r["max"])]}
    rh.write_figure(rh.dropdown_figure(f"{model_name}: weight min/max ranges (per output channel; pick a layer)",
                                       w_views, "bar", "layer / output channel", "value"),
                    out_dir / "min_max_ranges" / "weights.html")
    for sub, hist, what in (("weights_pdf", w_hist, "weight"), ("activations_pdf", a_hist, "activation (layer input)")):
        views = {l: {"x": ((np.asarray(h["edges"][:-1]) + np.asarray(h["edges"][1:])) / 2).tolist(),
                     "y": h["counts"]} for l, h in hist.items()}
        rh.write_figure(rh.dropdown_figure(f"{model_name}: {what} histogram (pick a layer)", views, "bar",
                                           "value", "count"), out_dir / sub / f"{sub}.html")

    text = reading(model_name, params, base, enabled, disabled, mse, sqnr, len(swept), len(all_layers))
    table = [{"setting": f"{BASELINES[k]}" + {"fp": "", "w": f" ({params.weight_option})",
                                              "a": f" ({params.act_label})",
                                              "wa": f" ({params.weight_option}, {params.act_label})"}[k],
              **base[k]} for k in BASELINES]
    links = [("weight_activation_sensitivity.html", "weight_activation_sensitivity", "FP vs W vs A vs W+A"),
             ("per_layer_quant_enabled.html", "per_layer_quant_enabled", "one layer's quantizer on, all others off"),
             ("per_layer_quant_disabled.html", "per_layer_quant_disabled", "one layer's quantizer off, all others on"),
             ("min_max_ranges/weights.html", "min_max_ranges/weights", "per-channel weight ranges"),
             ("min_max_ranges/activations.html", "min_max_ranges/activations", "calibrated activation ranges"),
             ("weights_pdf/weights_pdf.html", "weights_pdf", "weight histograms"),
             ("activations_pdf/activations_pdf.html", "activations_pdf", "activation histograms"),
             ("per_layer_mse_loss.html", "per_layer_mse_loss", "per-layer output MSE vs FP"),
             ("per_layer_act_sqnr.html", "per_layer_act_sqnr", "MixDQ activation SQNR per layer")]
    (out_dir / "index.html").write_text(rh.index_page(f"QuantAnalyzer — {model_name}", text, table, links),
                                        encoding="utf-8")
    timings["write"] = time.perf_counter() - t0
    timings["wall_this_run"] = time.perf_counter() - t_start
    timings["measure_seconds"] = sum(r["seconds"] for r in rows.values())
    write_json(out_dir / "run.json", {"params": asdict(params), "seconds": {k: round(v, 2) for k, v in timings.items()}})
    return {**summary, "reading": text, "swept": swept, "seconds": timings}
