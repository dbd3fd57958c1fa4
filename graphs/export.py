"""Trace a denoiser into an ATen graph with `torch.export` (non-strict).

`torch.fx.symbolic_trace` cannot follow diffusers' data-dependent Python; non-strict export runs
the real forward under fake tensors, so on a `meta` model it costs no memory and needs no weights.
The exported graph keeps `nn_module_stack` on every op (which module called it) and names every
parameter placeholder by its fully qualified name, which is what `graphs.dag` collapses.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from denoisers.inputs import MAX_LATENT, InputSpec, example_input_spec
from core.errors import QsensError


@dataclass
class Traced:
    """A denoiser exported with `torch.export`: the program, the example inputs, the export time (s)."""

    program: torch.export.ExportedProgram
    inputs: InputSpec
    seconds: float  # wall time of torch.export alone


def export_denoiser(model: nn.Module, inputs: InputSpec | None = None) -> Traced:
    """Export `model` (any device; `meta` recommended) at example inputs derived from its config
    (latent side capped at `MAX_LATENT` unless `inputs` says otherwise)."""
    model = model.eval()
    inputs = inputs or example_input_spec(model, MAX_LATENT)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, inputs.args, inputs.kwargs, strict=False)
    except Exception as exc:  # noqa: BLE001 - report one line, keep the cause chained
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QsensError(f"torch.export failed on {type(model).__name__}: {first}") from exc
    return Traced(program, inputs, time.perf_counter() - start)
