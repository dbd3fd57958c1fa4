"""`load_denoiser(spec)`: the one way to get a `Denoiser` from a model spec.

The spec's source (see `denoisers.spec.classify_source`) decides the adapter:

- `digits`, `digits-dit` → the built-in models trained by `qsens prepare` under `DATA/models/<name>/`;
- a directory with `qsens_digits.json` → a digits model saved elsewhere;
- a local diffusers pipeline directory (`model_index.json`) or a hub id → `DiffusersPipelineDenoiser`
  (SD 1.x/2.x, SDXL, PixArt-α/Σ, DiT, ... whatever `DiffusionPipeline.from_pretrained` loads).
"""
from __future__ import annotations

from pathlib import Path

from denoisers.base import Denoiser
from denoisers.digits import ARCHS, META_FILE, DigitsDenoiser
from denoisers.pipeline import DiffusersPipelineDenoiser
from denoisers.spec import ModelSpec, classify_source, default_name
from core.errors import QsensError

KNOWN = tuple(ARCHS)  # ("digits", "digits-dit")


def known_models() -> tuple[str, ...]:
    """The model names `load_denoiser` knows without a directory."""
    return KNOWN


def check_model_spec(source: str | Path) -> None:
    """Fail fast, naming the model, when `source` cannot be a model (nothing is loaded)."""
    kind = classify_source(source)
    if kind not in ("builtin", "digits-dir", "pipeline-dir", "hub-id"):
        raise QsensError(f"{source} is a diffusers model without a pipeline ({kind}): images "
                         "need a whole pipeline dir (model_index.json) or a hub id")


def load_denoiser(spec: ModelSpec | str | Path, data_dir: str | Path = "data") -> Denoiser:
    """The denoiser a spec names (a bare source string gets the default settings), on the
    spec's device. Raises QsensError (one line) for anything that cannot be loaded."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec(source=str(spec), name=default_name(spec))
    spec.check_device()
    den = _load(spec, Path(data_dir))
    if spec.layers or spec.max_layers:
        from quant.layers import restrict_layers

        restrict_layers(den.model, spec.layers, spec.max_layers)
    return den


def _load(spec: ModelSpec, data_dir: Path) -> Denoiser:
    kind = classify_source(spec.source)
    if kind in ("builtin", "digits-dir"):
        _digits_only(spec)
    if kind == "builtin":
        model_dir = data_dir / "models" / spec.name
        if not (model_dir / META_FILE).exists():
            raise QsensError(f"model {spec.name!r} is not trained yet ({model_dir} missing): run "
                             f"`qsens prepare` (or `dvc repro prepare`)")
        den: Denoiser = DigitsDenoiser.load(model_dir)
        if den.arch != ARCHS[spec.source]:
            raise QsensError(f"{model_dir} holds a digits {den.arch} model but model.source is "
                             f"{spec.source}: give it its own model.name (e.g. {spec.source})")
        return den.to(spec.device)
    if kind == "digits-dir":
        return DigitsDenoiser.load(spec.source).to(spec.device)
    check_model_spec(spec.source)
    return DiffusersPipelineDenoiser.from_spec(spec)


def _digits_only(spec: ModelSpec) -> None:
    if spec.dtype != "fp32":
        raise QsensError(f"the digits models run in fp32 (model.dtype is {spec.dtype})")
    if spec.negative_prompt:  # a line, not an error: see DiffusersPipelineDenoiser._note_unused_negative
        import sys

        print(f"warning: {spec.name}: the negative prompt (model.negative_prompt / --negative-prompt) "
              "is not used: the digits models are class-conditional and take no prompt",
              file=sys.stderr)
