"""The `analysis:` section of params.yaml (measured sensitivity), read into a dataclass."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import QsensError
from core.params import load_section, defaults_from

# MixDQ's split (cross-attention `attn2`, FFN `ff`) plus where a class-conditional model's label
# enters (UNet ResNet `time_emb_proj`, DiT AdaLN `norm1.linear`): the analogue of cross-attention.
DEFAULT_CONTENT_PATTERNS = (r"(^|\.)attn2\.", r"(^|\.)ff\.", r"time_emb_proj$", r"norm1\.linear$")


@dataclass(frozen=True)
@defaults_from("analysis", calibration={
    "calib_samples": "samples", "calib_trajectories": "trajectories",
    "calib_timesteps": "timesteps", "calib_normal_mean": "normal_mean",
    "calib_normal_std": "normal_std", "calib_seed": "seed"
})
class AnalysisParams:
    """The `analysis:` section of params.yaml: the layerwise (images, seeds, score weights, metric) and
    MixDQ (calibration, content patterns) sensitivity measurements.
    """

    # layerwise (seed 000): one layer quantized at a time, every option, FID + content
    images: int  # images per measurement (cheap: layers × options generations)
    image_seed: int  # seed set of the measurement images (disjoint from evaluate.image_seed)
    steps: int | None  # sampler steps (None: the model's default)
    fid_weight: float  # score = 0.6·norm(ΔFID) + 0.4·norm(Δcontent)
    metric: str  # the quality measure: fid (vs real, minus the FP model's) or a paired score
    # of sampling.paired against the FP images of the same seeds (fd_fp, feat_dist, ...: FP = 0)
    # mixdq (seed 001) + calibration (seed 003)
    calib_samples: int  # denoiser inputs drawn from the FP sampling trajectory
    calib_trajectories: int  # FP images whose trajectories are recorded
    calib_timesteps: str  # uniform | normal (PTQ4DM) over the trajectory's steps
    calib_normal_mean: float  # normal: mean, as a fraction of the trajectory (0 = noisiest)
    calib_normal_std: float  # normal: std, same units
    calib_seed: int  # image seed set of the calibration trajectories; also the draw's RNG seed
    ssim_images: int  # images per SSIM measurement (content group; 2 per class)
    ssim_seed: int
    content_patterns: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.calib_timesteps not in ("uniform", "normal"):
            raise QsensError(f"analysis.calib_timesteps must be uniform or normal, got {self.calib_timesteps!r}")
        if not 0 <= self.fid_weight <= 1:
            raise QsensError(f"analysis.fid_weight must be in [0, 1], got {self.fid_weight}")
        from sampling.paired import LABEL_METRICS

        if self.metric not in LABEL_METRICS or self.metric == "content_drop":
            raise QsensError(f"analysis.metric must be one of {[m for m in LABEL_METRICS if m != 'content_drop']}, "
                             f"got {self.metric!r}")
        if self.images < 2 or self.ssim_images < 1 or self.calib_samples < 1:
            raise QsensError("analysis.images must be >= 2, ssim_images and calib_samples >= 1")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml", section: str = "analysis") -> "AnalysisParams":
        """The `analysis:` section of a params file, lists as tuples (QsensError when malformed)."""
        return load_section(AnalysisParams, path, section, lists_as_tuples=True)
