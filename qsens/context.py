"""What every command shares: the params file, the model spec and the data layout.

Commands add the same model flags (`add_model_args`) and turn the parsed arguments into one
`Context` (`context(args)`); none of them imports another command or defaults to `digits` on
its own: the model is params.yaml's `model:` section unless `--model` says otherwise.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from denoisers.spec import ModelSpec, classify_source, resolve_spec
from qsens.argtypes import non_negative_float, positive_int
from core.errors import QsensError
from core.layout import Layout


def add_model_args(p: argparse.ArgumentParser, generation: bool = True) -> None:
    """--model/--name/--params/--data-dir, and (generation=True) the generation overrides."""
    p.add_argument("--model", default=None, metavar="NAME|SOURCE",
                   help="an entry of params `models:` (default: the first), or a source: digits, "
                   "digits-dit, a diffusers pipeline dir or a hub id")
    p.add_argument("--name", default=None,
                   help="short name for the data paths (default: the `models:` entry's name, or the "
                   "--model source's own name)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="params file (default: params.yaml)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="data root (default: data)")
    if generation:
        g = p.add_argument_group("generation (override params model.*)")
        g.add_argument("--reference", default=None, metavar="DIR",
                       help="reference dir from `qsens reference build` (real models)")
        g.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
        g.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
        g.add_argument("--steps", type=positive_int, default=None, help="sampling steps")
        g.add_argument("--guidance", type=non_negative_float, default=None,
                       help="classifier-free guidance scale (1 = off)")
        g.add_argument("--batch-size", type=positive_int, default=None,
                       help="images per pipeline call")
        g.add_argument("--negative-prompt", default=None, metavar="TEXT",
                       help="negative prompt for classifier-free guidance, wherever the pipeline "
                       "takes one (SD, SDXL, PixArt, SD3, Hunyuan-DiT, Sana...); a pipeline that "
                       "cannot use it (LCM, DiT, guidance 1) says so on stderr (\"\" = none)")


@dataclass
class Context:
    """params path + model spec + data layout + the generation flags given on the command line."""

    params: Path
    spec: ModelSpec
    layout: Layout
    generation: dict[str, Any] = field(default_factory=dict)  # explicit --steps/--guidance/--batch-size

    def evaluator(self, bank, steps: int | None = None):
        """The one `sampling.evaluator.Evaluator` of this model: its denoiser (`load_denoiser`),
        `bank` (a `Bank` or its directory; None: FP only), the scorer of its family and the FP cache
        under DATA/fp_cache/NAME; `steps` (if given) overrides every generation's sampling steps."""
        from sampling.evaluator import Evaluator

        return Evaluator.for_denoiser(self.load_denoiser(), bank, fp_cache=self.layout.fp_cache,
                                      device=self.spec.device,
                                      generate_kw=None if steps is None else {"steps": steps})

    def load_denoiser(self):
        """The spec's denoiser with the command line's generation overrides applied."""
        from quant.layers import check_finite_weights

        if self.spec.reference and Path(self.spec.reference).is_dir():
            # a reference.json of the wrong types, or naming files outside its dir: one line here,
            # before the model's adapter reads it (and statistics of the wrong shape when scored)
            from core.atomicdir import recover
            from sampling.reference import validate_reference_json

            recover(Path(self.spec.reference))
            validate_reference_json(Path(self.spec.reference))
        from denoisers.registry import load_denoiser

        den = load_denoiser(self.spec, self.layout.root)
        # A damaged checkpoint (NaN/inf weights) is refused here, naming its layers, before any
        # command does work with it (bank, score, sample, analyze, export, generate...).
        check_finite_weights(den.model, what=f"model {self.spec.name!r}")
        if self.generation:
            den.configure_generation(**self.generation)
        return den


def context(args: argparse.Namespace, installed_reference: bool = True,
            loads_model: bool = True) -> Context:
    """The Context of parsed arguments from a parser that had `add_model_args`.

    A real model's reference is the copy `qsens prepare` installed under DATA/reference/NAME
    when it exists (what the DVC stages depend on) unless --reference names one; `prepare`
    itself passes `installed_reference=False` and reads model.reference. Commands that only
    read data products (`loads_model=False`: predictor train/inspect) also take `--model NAME`.
    """
    params = Path(getattr(args, "params", "params.yaml"))
    gen = {k: getattr(args, k, None) for k in ("steps", "guidance", "batch_size")}
    gen = {k: v for k, v in gen.items() if v is not None}
    overrides = {k: getattr(args, k, None) for k in ("reference", "device", "dtype", "negative_prompt")}
    model, name = getattr(args, "model", None), getattr(args, "name", None)
    if not loads_model and model is not None and name is None:
        try:
            classify_source(model)
        except QsensError:  # not a source: the short name of a model whose data exists
            model, name = None, model
    spec = resolve_spec(params, model=model, name=name, **overrides, **gen)
    data_dir = Path(getattr(args, "data_dir", "data"))
    if data_dir.exists() and not data_dir.is_dir():
        raise QsensError(f"--data-dir {data_dir} is a file, not a directory")
    installed = Layout(data_dir, spec.name).reference
    if (installed_reference and not spec.is_builtin and overrides["reference"] is None
            and (installed / "reference.json").is_file()):
        # `qsens prepare` installed the reference here: what the DVC stages depend on.
        spec = replace(spec, reference=str(installed))
    return Context(params, spec, Layout(data_dir, spec.name), gen)



def add_cost_arg(p: argparse.ArgumentParser) -> None:
    """--cost FILE: where a command that generates images states what it spent."""
    p.add_argument("--cost", type=Path, default=None, metavar="FILE",
                   help="write what this run generated to FILE (JSON: images, denoiser forward calls "
                   "and samples, seconds; the pipeline sums them into metrics/NAME/cost.json)")


def write_cost(path: Path | None, stage: str, spent: dict[str, Any] | None = None, **extra: Any) -> None:
    """Write a stage's spend (`sampling.evaluator.METER` unless `spent` is given) to `path`."""
    if path is None:
        return
    from core.jsonio import write_json
    from sampling.evaluator import METER

    write_json(path, {"stage": stage, **(spent if spent is not None else METER.as_dict()), **extra},
               sort_keys=True)


def with_cost(run: Any, args: argparse.Namespace, stage: str) -> int | None:
    """`run(args)`, then its spend to `args.cost` (see `write_cost`)."""
    rc = run(args)
    write_cost(getattr(args, "cost", None), stage)
    return rc


def refuse_foreign_out(out: Path, own: Any, what: str) -> None:
    """QsensError (one line) when `out` is a non-empty directory holding an entry that `own(name)`
    does not claim: the command writes (or swaps in) its own files there, and a directory it did
    not write (a home dir, another tool's output) must not be mixed with them or moved aside.
    An absent or empty directory, or the command's own previous output, passes.
    `what` names the command's output in the message ("a `qsens export` output")."""
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if not own(p.name))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise QsensError(f"--out {out}: not empty and not {what} (holds {foreign[0]!r}{more}); give a new or "
                         "empty directory, or the same command's previous --out")
