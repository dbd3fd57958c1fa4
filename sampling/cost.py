"""A run's generation cost per stage, and what the same counts cost on a real model's GPU.

Each stage writes what it generated (`qsens ... --cost FILE`: `sampling.evaluator.CostMeter`
counts). This sums them. The GPU-hours are arithmetic, not a measurement of this run:

    SD v1.5 hours = image-equivalents × L / (SD v1.5 images per second measured by `bench/gpu.py`) / 3600
    SDXL hours    = image-equivalents × L' / (the same rate / sdxl_macs_ratio) / 3600

where L (L') is 1 for stages whose image count does not depend on the model, and for the stages
that score one layer-option at a time (`per_layer_stages`: probe, layerwise/MixDQ) the ratio of
SD v1.5's (SDXL's) quantizable layers to this run's model's (282 and 794 vs 51 for `digits`).

An image-equivalent is one generated image, or `forwards_per_image` denoiser samples of work that
made no image (calibration inputs, output-error proxies). The SDXL factor is the ratio of the two
U-Nets' multiply-accumulates per image at their native resolution with the same steps and
guidance (8.83 = 2,988.7 / 338.6 GMACs per forward at 128² vs 64² latents, `quant.layers.count_macs`
on the shipped configs): it assumes time scales with MACs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.params import defaults_from
from core.errors import QsensError


@dataclass(frozen=True)
@defaults_from("cost")
class CostParams:
    """The `cost:` section of params.yaml."""

    gpu_result: str  # bench/gpu.py's stored run (sd15.fp.img_s)
    sdxl_macs_ratio: float
    forwards_per_image: float  # 0: the run's own ratio (the sample stage's samples per image)
    per_layer_stages: tuple[str, ...]  # image counts ∝ the model's layer count
    layers_sd15: int  # quantizable layers of SD v1.5's U-Net (shipped config)
    layers_sdxl: int  # and of SDXL's

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> "CostParams":
        """The `cost:` section as read from params.yaml -> validated params (QsensError on a bad key
        or value)."""
        from core.params import reject_unknown

        d = dict(d or {})
        reject_unknown(CostParams, d, "cost")
        if isinstance(d.get("per_layer_stages"), list):
            d["per_layer_stages"] = tuple(d["per_layer_stages"])
        p = CostParams(**d)
        if p.sdxl_macs_ratio <= 0 or p.forwards_per_image < 0:
            raise QsensError("cost.sdxl_macs_ratio must be > 0 and cost.forwards_per_image >= 0")
        return p


def gpu_rate(path: str | Path) -> tuple[float, dict[str, Any]]:
    """SD v1.5 FP images per second and its conditions from a stored `bench/gpu.py` result."""
    p = Path(path)
    if not p.is_file():
        raise QsensError(f"cost.gpu_result {p}: file not found (relative paths are read from {Path.cwd()}); "
                         "it is bench/gpu.py's stored result")
    try:
        d = json.loads(p.read_text())
        rate = float(d["sd15"]["fp"]["img_s"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QsensError(f"cost.gpu_result {p}: no SD v1.5 images/s in it ({type(exc).__name__}: {exc})") from None
    sd = d["sd15"]
    return rate, {"device": (d.get("env") or {}).get("device"), "dtype": sd.get("dtype"),
                  "resolution": sd.get("resolution"), "steps": sd.get("steps"), "guidance": sd.get("guidance"),
                  "batch_size": sd.get("batch_size"), "img_s": rate, "file": str(p)}


def summarize_costs(directory: str | Path, params: CostParams, layers: int | None = None) -> dict[str, Any]:
    """{stages: {name: {images, forwards, forward_samples, seconds, image_equivalents, gpu_hours}},
    total, label_images, gpu, assumptions} from the `<stage>.json` files in `directory`;
    `layers`: this run's model's quantizable layers (None: per-layer stages are not rescaled)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QsensError(f"{directory}: no such directory of stage cost files")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise QsensError(f"{directory}: no stage cost files (the stages write them with --cost)")
    rows: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            d = json.loads(f.read_text())
            rows[f.stem] = {k: d[k] for k in ("images", "forwards", "forward_samples", "seconds")}
            if "label_images" in d:
                rows[f.stem]["label_images"] = int(d["label_images"])
        except (ValueError, KeyError, TypeError) as exc:
            raise QsensError(f"{f}: not a stage cost file ({type(exc).__name__}: {exc})") from None
    rate, gpu = gpu_rate(params.gpu_result)
    fpi = params.forwards_per_image
    if not fpi:
        s = rows.get("sample") or max(rows.values(), key=lambda r: r["images"])
        fpi = s["forward_samples"] / s["images"] if s["images"] else 1.0
    total = {"images": 0, "forwards": 0, "forward_samples": 0, "seconds": 0.0, "image_equivalents": 0.0}
    for r in rows.values():
        # work that made no image (forward passes beyond the images' own) in image-equivalents
        extra = max(0.0, r["forward_samples"] - r["images"] * fpi) / fpi if fpi else 0.0
        r["image_equivalents"] = round(r["images"] + extra, 1)
    total["gpu_hours"] = {"sd15": 0.0, "sdxl": 0.0}
    for name, r in rows.items():
        per_layer = layers and name in params.per_layer_stages
        h = r["image_equivalents"] / rate / 3600
        r["gpu_hours"] = {"sd15": round(h * (params.layers_sd15 / layers if per_layer else 1), 3),
                          "sdxl": round(h * params.sdxl_macs_ratio * (params.layers_sdxl / layers if per_layer else 1), 3)}
        for k in ("images", "forwards", "forward_samples", "seconds", "image_equivalents"):
            total[k] += r[k]
        for k in ("sd15", "sdxl"):
            total["gpu_hours"][k] += r["gpu_hours"][k]
    total["gpu_hours"] = {k: round(v, 2) for k, v in total["gpu_hours"].items()}
    total["seconds"] = round(total["seconds"], 1)
    return {"stages": rows, "total": total, "forwards_per_image": round(fpi, 3),
            "label_images": {k: r.get("label_images", r["images"]) for k, r in rows.items()
                             if k in ("sample", "probe", "search")},
            "gpu": gpu, "sdxl_macs_ratio": params.sdxl_macs_ratio, "layers": layers,
            "per_layer_stages": list(params.per_layer_stages),
            "layers_scaled_to": {"sd15": params.layers_sd15, "sdxl": params.layers_sdxl},
            "assumptions": "GPU-hours = image-equivalents / measured SD v1.5 images/s (bench/gpu.py, "
                           "fp16, its steps and guidance) / 3600; SDXL = SD v1.5 × the U-Nets' MACs ratio "
                           "per image at native resolution; per-layer stages scaled by the layer-count ratio; scoring (Inception/CLIP) and training not included; "
                           "stages that resumed count only what this run generated (sample counts its records)"}
