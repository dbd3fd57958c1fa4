"""Scoring generated images: FID (through clean-fid) plus a content score.

One interface, `Scorer.score(generation) -> Score`, for every model family:

- `DigitsScorer` (the `digits` default): FID on the digits classifier's 64-d penultimate features,
  passed to clean-fid as a custom feature extractor (no Inception download), against reference
  statistics of the real digits computed once by `prepare`; content score = the classifier's
  accuracy on the generated images against their conditioning class (the analogue of CLIP score).
- `sampling.inception.InceptionClipScorer` (real models): clean-fid's Inception features against
  a reference dir built by `qsens reference build`, content = CLIP score of image vs prompt.

A scorer is loaded once and scores many generations (the sampling loop: apply config →
generate → score → restore). Images with NaN/inf pixels give a `Score` with status "failed" and
a reason, never an exception. Reference statistics are stored as safetensors (no pickles).
"""
from __future__ import annotations

import abc
import contextlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from denoisers.base import Generation
from core.errors import QsensError
from core.jsonio import write_json

STATS_FILE = "stats.safetensors"
STATS_INFO_FILE = "stats.json"


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
@dataclass
class Score:
    """One scored generation. `fid`/`content` are NaN when `status == "failed"`."""

    status: str  # "ok" | "failed"
    fid: float = math.nan
    content: float = math.nan
    content_metric: str = "accuracy"  # "accuracy" (digits) | "clip" | "clip_zeroshot_accuracy" | "none"
    n_images: int = 0
    n_nonfinite: int = 0
    reason: str | None = None
    seconds: float = 0.0  # scoring only
    generate_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # (N, D) FID features of the scored images, for paired scores; not serialised
    features: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when the config was scored (`status == "ok"`)."""
        return self.status == "ok"

    # mapping-style access (`score["fid"]`, `score.get("content")`) for record-building code
    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__ or key == "features":
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """A field by name, `default` for a name that is not a field (dict-like access for callers)."""
        return getattr(self, key) if key in self.__dataclass_fields__ else default

    def to_dict(self) -> dict[str, Any]:
        """The score as a JSON-able dict: features left out, a non-finite FID / content as None."""
        d = asdict(self)
        d.pop("features", None)
        for k in ("fid", "content"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = None  # JSON has no NaN
        return d

    @staticmethod
    def failed(reason: str, **kw: Any) -> "Score":
        """A failed score carrying `reason` (and any other fields given)."""
        return Score(status="failed", reason=reason, **kw)


# ----------------------------------------------------------------------------------------------
# reference statistics (safetensors, float64)
# ----------------------------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) as clean-fid computes them (mean, unbiased covariance), float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def save_reference_stats(directory: str | Path, mu: np.ndarray, sigma: np.ndarray,
                         info: dict[str, Any] | None = None) -> Path:
    """Write the reference feature statistics mu `(D,)` and sigma `(D, D)` (float64, safetensors) and
    `info` as JSON into `directory`; returns the stats file's path.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"mu": np.ascontiguousarray(mu, dtype=np.float64),
               "sigma": np.ascontiguousarray(sigma, dtype=np.float64)}, str(directory / STATS_FILE))
    write_json(directory / STATS_INFO_FILE, info or {}, sort_keys=True)
    return directory / STATS_FILE


def load_reference_stats(directory: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read (mu, sigma, info) written by `save_reference_stats`; QsensError when there are none."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    path = directory / STATS_FILE
    if not path.exists():
        raise QsensError(f"no reference statistics {path}: run `qsens prepare`")
    t = load_file(str(path))
    info_path = directory / STATS_INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    return t["mu"], t["sigma"], info


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's Fréchet distance, with its singular-product notice kept off stdout."""
    import warnings

    from cleanfid.fid import frechet_distance as _fd

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy sqrtm notices (deprecated disp=, singular)
        return float(_fd(mu1, sigma1, mu2, sigma2))


# ----------------------------------------------------------------------------------------------
# the interface
# ----------------------------------------------------------------------------------------------
class Scorer(abc.ABC):
    """Scores a `Generation` against fixed reference data. Load once, call `score` many times."""

    name: str = "scorer"
    content_metric: str = "content"
    ref_mu: np.ndarray
    ref_sigma: np.ndarray

    @abc.abstractmethod
    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) → float (N, D) FID features."""

    @abc.abstractmethod
    def content_score(self, generation: Generation) -> float:
        """Higher is better (accuracy against the conditioning class, or CLIP score)."""

    def fid(self, images: np.ndarray) -> float:
        """FID (Heusel et al., NeurIPS 2017) of uint8 images `(N, H, W, C)` against the reference
        statistics."""
        feats = self.features(images)
        return self.fid_from_features(feats)

    def fid_from_features(self, feats: np.ndarray) -> float:
        """FID of features `(N, D)` against the reference: the Fréchet distance of the two Gaussians."""
        mu, sigma = feature_stats(feats)
        return frechet_distance(mu, sigma, self.ref_mu, self.ref_sigma)

    def score(self, generation: Generation) -> Score:
        """FID + content score of one generation; failures are recorded, not raised."""
        t0 = time.perf_counter()
        n = len(generation)
        common = dict(content_metric=self.content_metric, n_images=n,
                      n_nonfinite=generation.n_nonfinite,
                      generate_seconds=float(generation.seconds))
        if generation.n_nonfinite:
            return Score.failed(f"{generation.n_nonfinite} of {n} generated images contain "
                                "NaN/inf values", **common)
        if n < 2:
            return Score.failed(f"FID needs at least 2 images, got {n}", **common)
        try:
            feats = self.features(generation.images)
            if not np.isfinite(feats).all():
                return Score.failed("non-finite features from the feature extractor", **common)
            fid = self.fid_from_features(feats)
            if not math.isfinite(fid):
                return Score.failed(f"FID is not finite ({fid})", **common)
            content = float(self.content_score(generation))
        except (ValueError, np.linalg.LinAlgError) as exc:  # e.g. imaginary sqrtm component
            return Score.failed(f"scoring failed: {exc}", **common)
        return Score(status="ok", fid=fid, content=content,
                     seconds=time.perf_counter() - t0, features=feats, **common)


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------
class ClassifierFeatureExtractor(nn.Module):
    """clean-fid `custom_feat_extractor`: float (N, C, H, W) in [0, 255] → (N, 64) features.

    Accepts clean-fid's RGB batches of any size (grey-averaged, area-downsampled to 8×8), so the
    same module works with `cleanfid.fid.compute_fid(fdir1, fdir2, custom_feat_extractor=...)`.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images as clean-fid batches them -> the classifier's penultimate features `(B, D)`."""
        x = self.classifier.prepare_input(images)
        return self.classifier.features(x)


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) or (N, H, W) → float (N, C, H, W) in [0, 255]."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"images must be (N, H, W[, C]), got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()


class DigitsScorer(Scorer):
    """FID on classifier features (clean-fid) + classification accuracy vs conditioning label."""

    name = "digits"
    content_metric = "accuracy"

    def __init__(self, classifier: nn.Module, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                 batch_size: int = 500, device: str | torch.device = "cpu",
                 info: dict[str, Any] | None = None):
        self.classifier = classifier.eval().requires_grad_(False).to(device)
        self.extractor = ClassifierFeatureExtractor(self.classifier)
        self.ref_mu = np.asarray(ref_mu, dtype=np.float64)
        self.ref_sigma = np.asarray(ref_sigma, dtype=np.float64)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.info = dict(info or {})

    @staticmethod
    def load(reference_dir: str | Path, device: str | torch.device = "cpu") -> "DigitsScorer":
        """The digits scorer of a reference dir (classifier + reference statistics written by `qsens
        prepare`)."""
        from denoisers.digits import DigitsClassifier

        classifier, cls_info = DigitsClassifier.load(reference_dir)
        mu, sigma, stats_info = load_reference_stats(reference_dir)
        return DigitsScorer(classifier, mu, sigma, device=device,
                            info={"classifier": cls_info, "stats": stats_info})

    def _batches(self, images: np.ndarray):
        for b0 in range(0, len(images), self.batch_size):
            yield _to_nchw(images[b0:b0 + self.batch_size])

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 images `(N, H, W, 1)` -> classifier features `(N, D)` float32, through clean-fid's
        batching."""
        from cleanfid.fid import get_batch_features

        if len(images) == 0:
            return np.zeros((0, self.classifier.feature_dim), dtype=np.float32)
        return np.concatenate([get_batch_features(b, self.extractor, self.device)
                               for b in self._batches(images)])

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted class per image (int64)."""
        out = []
        for b in self._batches(images):
            x = self.classifier.prepare_input(b.to(self.device))
            out.append(self.classifier(x).argmax(1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of images the classifier labels as `labels`; NaN for none, ValueError on a
        length mismatch."""
        labels = np.asarray(labels)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(labels) == 0:
            return math.nan
        return float(np.mean(self.predict(images) == labels))

    def content_score(self, generation: Generation) -> float:
        """The content score: classifier accuracy on the generation's class labels (QsensError
        without labels)."""
        if generation.labels is None:
            raise QsensError("the digits scorer needs class labels for the content score")
        return self.accuracy(generation.images, generation.labels)

    def compute_fid_folders(self, fdir1: str | Path, fdir2: str | Path) -> float:
        """FID between two image folders through `cleanfid.fid.compute_fid` (same features)."""
        from cleanfid import fid as cfid

        def identity(x):  # clean-fid resizes to 299×299 by default; our extractor pools itself
            return x

        return float(cfid.compute_fid(str(fdir1), str(fdir2), mode="clean",
                                      custom_feat_extractor=self.extractor,
                                      custom_fn_resize=identity, num_workers=0,
                                      batch_size=self.batch_size, device=self.device,
                                      verbose=False))


def compute_digits_reference(classifier: nn.Module, images_u8: np.ndarray | None = None,
                             reference_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Reference (mu, sigma) of the real digits' classifier features; saved if a dir is given.

    Default reference set: all 1,797 digits (the data distribution the model is asked to match).
    """
    from denoisers.digits import load_digit_images

    if images_u8 is None:
        images_u8, _ = load_digit_images()
    scorer = DigitsScorer(classifier, np.zeros(1), np.zeros((1, 1)))
    feats = scorer.features(np.asarray(images_u8)[..., None] if np.asarray(images_u8).ndim == 3
                            else images_u8)
    mu, sigma = feature_stats(feats)
    info = {"source": "sklearn.datasets.load_digits (all images)", "n_images": int(len(feats)),
            "feature_dim": int(feats.shape[1]),
            "features": "digits classifier penultimate layer (fc1, pre-activation)"}
    if reference_dir is not None:
        save_reference_stats(reference_dir, mu, sigma, info)
    return mu, sigma, info
