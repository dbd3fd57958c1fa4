"""`load_denoiser(spec)`: the one way to get a `Denoiser` from a model spec.

The spec's source (see `denoisers.spec.classify_source`) decides the adapter:

- `digits`, `digits-dit` → the built-in models trained by `qsens prepare` under `DATA/models/<name>/`;
- a directory with `qsens_digits.json` → a digits model saved elsewhere;
- a local diffusers pipeline directory (`model_index.json`) or a hub id → `DiffusersPipelineDenoiser`
  (SD 1.x/2.x, SDXL, PixArt-α/Σ, DiT, ... whatever `DiffusionPipeline.from_pretrained` loads);
- a directory with a registered adapter's marker file → that adapter (`denoisers.adapters`).

Each is a `ModelAdapter` registered below for its source kind; `_load` is one registry lookup.
"""
from __future__ import annotations

from pathlib import Path

from denoisers.adapters import ModelAdapter, adapter_for, register_adapter
from denoisers.base import Denoiser
from denoisers.digits import ARCHS, META_FILE, DigitsDenoiser
from denoisers.pipeline import DiffusersPipelineDenoiser
from denoisers.spec import ModelSpec, classify_source, default_name
from core.layout import Layout
from core.errors import QsensError

KNOWN = tuple(ARCHS)  # ("digits", "digits-dit")


def known_models() -> tuple[str, ...]:
    """The model names `load_denoiser` knows without a directory."""
    return KNOWN


def check_model_spec(source: str | Path) -> None:
    """Fail fast, naming the model, when `source` cannot be a model (nothing is loaded)."""
    kind = classify_source(source)
    if adapter_for(kind) is None:
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
    check_model_spec(spec.source)
    return adapter_for(classify_source(spec.source)).load(spec, data_dir)


def _load_builtin(spec: ModelSpec, data_dir: Path) -> Denoiser:
    _digits_only(spec)
    model_dir = Layout(data_dir, spec.name).models
    if not (model_dir / META_FILE).exists():
        raise QsensError(f"model {spec.name!r} is not trained yet ({model_dir} missing): run "
                         f"`qsens prepare` (or `dvc repro prepare`)")
    den: Denoiser = DigitsDenoiser.load(model_dir)
    if den.arch != ARCHS[spec.source]:
        raise QsensError(f"{model_dir} holds a digits {den.arch} model but model.source is "
                         f"{spec.source}: give it its own model.name (e.g. {spec.source})")
    return den.to(spec.device)


def _load_digits_dir(spec: ModelSpec, data_dir: Path) -> Denoiser:
    _digits_only(spec)
    return DigitsDenoiser.load(spec.source).to(spec.device)


def _load_pipeline(spec: ModelSpec, data_dir: Path) -> Denoiser:
    return DiffusersPipelineDenoiser.from_spec(spec)


register_adapter(ModelAdapter("builtin", _load_builtin, "digits / digits-dit, trained by `qsens prepare`"))
register_adapter(ModelAdapter("digits-dir", _load_digits_dir, "a digits model dir (qsens_digits.json)"))
register_adapter(ModelAdapter("pipeline-dir", _load_pipeline, "a diffusers pipeline dir (model_index.json)"))
register_adapter(ModelAdapter("hub-id", _load_pipeline, "a diffusers pipeline by hub id (local hub cache)"))


def _digits_only(spec: ModelSpec) -> None:
    if spec.dtype != "fp32":
        raise QsensError(f"the digits models run in fp32 (model.dtype is {spec.dtype})")
    if spec.negative_prompt:  # a line, not an error: see DiffusersPipelineDenoiser._note_unused_negative
        import sys

        print(f"warning: {spec.name}: the negative prompt (model.negative_prompt / --negative-prompt) "
              "is not used: the digits models are class-conditional and take no prompt",
              file=sys.stderr)
