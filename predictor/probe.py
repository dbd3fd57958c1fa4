"""Feature-shift probes: what each (layer, option) alone does to the generated images.

FID is a Fréchet distance between feature distributions; its mean term is ‖μ_q − μ_ref‖². Quantize
one layer at a time with each option, generate the same seeded images as the FP model, and record
the shift of the mean feature (the scorer's feature space: the digits classifier's penultimate
layer, Inception for real models):

    shift[l, o] = mean_i f(image_i | layer l at option o) − mean_i f(image_i | FP)        (D,)

To first order the shifts of a config's layers add, so a config's mean term is linearised as

    ‖(μ_fp − μ_ref) + Σ_l shift[l, o_l]‖²

With no training at all this ranks the digits cache with Spearman ≈ 0.93 against measured FID,
where summed weight error reaches 0.29 (README, "Predictor"). The GNN uses it as its propagation
readout: message passing predicts a per-layer gain on each shift (how the rest of the config
amplifies or damps that layer's error), and the gained sum enters the head (predictor.model).

Cost: one generation of `images` images per (layer, option), the same work as the layerwise
analysis of seed 000 and far less than scoring random configs. Format (no pickles):

    probe.safetensors   shift (L, O, D) float32, fp_mean (D,) float64, ref_mean (D,) float64
                        metadata "probe": JSON {format_version, model, bank_fingerprint, layers,
                        options, images, seed, nonfinite: {"layer|option": count}}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from core.params import defaults_from
from core.errors import QsensError

FORMAT_VERSION = 1


@dataclass
@defaults_from("probe")
class ProbeParams:
    """The `probe:` section of params.yaml."""

    images: int  # images generated per (layer, option)
    seed: int  # image seed set: disjoint from the cache's, the selection's and evaluation's


@dataclass
class Probe:
    """Mean feature shifts of every (layer, option), plus the FP and reference feature means."""

    model: str
    bank_fingerprint: str
    layers: list[str]
    options: list[str]
    shift: np.ndarray  # (L, O, D) float32
    fp_mean: np.ndarray  # (D,) float64, FP images of the probe seeds
    ref_mean: np.ndarray  # (D,) float64, the scorer's reference statistics
    images: int
    seed: int
    nonfinite: dict[str, int] = field(default_factory=dict)  # "layer|option" -> images dropped

    @property
    def offset(self) -> np.ndarray:
        """μ_fp − μ_ref (D,): where the FP model already sits relative to the reference."""
        return self.fp_mean - self.ref_mean

    def rows(self, layers: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """(len(layers), len(options), D) shifts in the caller's order; `fp16` rows are zero.

        Raises QsensError naming a layer or option the probe does not have."""
        lpos = {n: i for i, n in enumerate(self.layers)}
        opos = {o: i for i, o in enumerate(self.options)}
        missing = [n for n in layers if n not in lpos]
        if missing:
            raise QsensError(f"the probe has no layer(s) {missing[:3]} ({len(missing)} missing): "
                             f"it was measured on another model; re-run `qsens predictor probe`")
        bad = [o for o in options if o not in opos and o != "fp16"]
        if bad:
            raise QsensError(f"the probe has no option(s) {bad} (measured: {', '.join(self.options)}); "
                             f"re-run `qsens predictor probe` with the bank's options")
        out = np.zeros((len(layers), len(options), self.shift.shape[2]), dtype=np.float32)
        for j, o in enumerate(options):
            if o in opos:
                out[:, j] = self.shift[[lpos[n] for n in layers], opos[o]]
        return out

    def linearised_mean_term(self, configs: Sequence[dict[str, str]]) -> np.ndarray:
        """‖offset + Σ_l shift[l, o_l]‖² for each config ({layer: option}, absent = fp16). (B,)"""
        lpos = {n: i for i, n in enumerate(self.layers)}
        opos = {o: i for i, o in enumerate(self.options)}
        out = np.empty(len(configs))
        for b, cfg in enumerate(configs):
            total = self.offset.copy()
            for layer, option in cfg.items():
                if option != "fp16":
                    total += self.shift[lpos[layer], opos[option]]
            out[b] = float(total @ total)
        return out

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the probe as one safetensors file (shift, fp_mean, ref_mean; JSON metadata); returns `path`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "model": self.model, "bank_fingerprint": self.bank_fingerprint,
                "layers": self.layers, "options": self.options, "images": self.images, "seed": self.seed,
                "nonfinite": self.nonfinite}
        save_file({"shift": torch.from_numpy(np.ascontiguousarray(self.shift, dtype=np.float32)),
                   "fp_mean": torch.from_numpy(np.asarray(self.fp_mean, dtype=np.float64)),
                   "ref_mean": torch.from_numpy(np.asarray(self.ref_mean, dtype=np.float64))},
                  str(path), metadata={"probe": json.dumps(meta, sort_keys=True)})
        return path

    @staticmethod
    def load(path: str | Path) -> "Probe":
        """Load a probe written by `save`.

        Raises QsensError when the file is missing, unreadable or of another format version.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise QsensError(f"{path}: no probe file; run `qsens predictor probe` (the `probe` stage) first")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["probe"])
                t = {k: f.get_tensor(k).numpy() for k in ("shift", "fp_mean", "ref_mean")}
        except (KeyError, ValueError, OSError, SafetensorError) as e:
            raise QsensError(f"{path}: not a readable qsens probe ({type(e).__name__}: {e})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise QsensError(f"{path}: probe format {meta.get('format_version')} (this qsens reads "
                             f"{FORMAT_VERSION}); re-run `qsens predictor probe`")
        shift = t["shift"]
        if shift.shape[:2] != (len(meta["layers"]), len(meta["options"])):
            raise QsensError(f"{path}: shift tensor {tuple(shift.shape)} does not match "
                             f"{len(meta['layers'])} layers × {len(meta['options'])} options")
        return Probe(meta["model"], meta["bank_fingerprint"], list(meta["layers"]), list(meta["options"]),
                     shift, t["fp_mean"], t["ref_mean"], int(meta["images"]), int(meta["seed"]),
                     dict(meta.get("nonfinite", {})))


def _mean_features(scorer: Any, generation: Any, where: str) -> tuple[np.ndarray, int]:
    keep = ~np.asarray(generation.nonfinite, dtype=bool)
    if not keep.any():
        raise QsensError(f"{where}: every probe image was non-finite (NaN/inf); this option breaks the "
                         f"model outright, drop it from bank.options or check the bank")
    feats = np.asarray(scorer.features(generation.images[keep]), dtype=np.float64)  # (n, D)
    return feats.mean(0), int((~keep).sum())


def measure_probe(denoiser: Any, bank: Any, scorer: Any, images: int, seed: int,
                  layers: Sequence[str] | None = None, options: Sequence[str] | None = None,
                  progress: bool = True) -> Probe:
    """One generation per (layer, option) with only that layer quantized; see the module docstring.

    Non-finite images are left out of that pair's mean and counted in `nonfinite`."""
    from core.progress import progress_bar

    from core.provenance import bank_digest
    from quant.config import QuantConfig
    from sampling.evaluator import Evaluator

    if images < 2:
        raise QsensError(f"probe images must be >= 2, got {images}")
    layers = list(layers or bank.layer_names)
    options = list(options or bank.options)
    ev = Evaluator(denoiser, bank, scorer)
    ev.bank.check_model(denoiser.model)
    ev._checked = True
    fp_mean, n_bad = _mean_features(scorer, ev.generate(None, images, seed), "the FP model")
    if n_bad:
        raise QsensError(f"the FP model produced {n_bad} non-finite probe image(s); check the model")
    shift = np.zeros((len(layers), len(options), fp_mean.shape[0]), dtype=np.float32)
    nonfinite: dict[str, int] = {}
    bar = progress_bar(total=len(layers) * len(options), desc="probe", unit="pair", disable=not progress)
    for i, layer in enumerate(layers):
        for j, option in enumerate(options):
            cfg = QuantConfig(model=bank.model, options={layer: option})
            mean, n_bad = _mean_features(scorer, ev.generate(cfg, images, seed), f"{layer}={option}")
            shift[i, j] = mean - fp_mean
            if n_bad:
                nonfinite[f"{layer}|{option}"] = n_bad
            bar.update(1)
    bar.close()
    return Probe(bank.model, bank_digest(bank), layers, options, shift, fp_mean,
                 np.asarray(scorer.ref_mu, dtype=np.float64), int(images), int(seed), nonfinite)
