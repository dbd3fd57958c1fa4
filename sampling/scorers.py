"""Which scorer scores a model: a registry from reference kind to scorer factory.

A denoiser's `reference()` says what kind of data its metrics need ("digits": the classifier
features of `sampling.scoring.DigitsScorer`; "inception": clean-fid Inception + CLIP of
`sampling.inception.InceptionClipScorer`). A new scorer is one factory registered here
(`register_scorer`), not another branch in the commands.
"""
from __future__ import annotations

from typing import Callable

import torch

from denoisers.base import Denoiser, ReferenceData
from core.registry import Registry
from sampling.scoring import DigitsScorer, Scorer

# kind -> factory(reference, device, source) -> Scorer
ScorerFactory = Callable[[ReferenceData, "str | torch.device", "Denoiser | ReferenceData"], Scorer]
SCORERS: Registry[ScorerFactory] = Registry("scorer for reference kind")


def register_scorer(kind: str, factory: ScorerFactory, replace: bool = False) -> None:
    """Make `make_scorer` build `factory(reference, device, source)` for references of `kind`
    (QsensError when `kind` has one already, unless `replace`)."""
    SCORERS.register(kind, factory, replace)


def _digits(ref: ReferenceData, device, source) -> Scorer:
    return DigitsScorer.load(ref.path, device=device)


def _inception(ref: ReferenceData, device, source) -> Scorer:
    from sampling.inception import InceptionClipScorer  # lazy: needs transformers / the network

    names = getattr(source, "class_names", None) if isinstance(source, Denoiser) else None
    return InceptionClipScorer(ref.path, device=device, clip_model=ref.info.get("clip_model"), label_names=names)


register_scorer("digits", _digits)
register_scorer("inception", _inception)


def make_scorer(source: Denoiser | ReferenceData, device: str | torch.device = "cpu") -> Scorer:
    """The scorer for a denoiser or a reference (its `kind` picks the registered factory).
    Raises QsensError for a kind nothing is registered for."""
    ref = source.reference() if isinstance(source, Denoiser) else source
    return SCORERS.get(ref.kind)(ref, device, source)
