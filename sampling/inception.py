"""Real-model scoring: clean-fid Inception FID + CLIP score, from local files only.

- `load_inception(path)`: clean-fid's feature network (`inception-2015-12-05.pt`, TorchScript)
  from a LOCAL file, called exactly as clean-fid's "clean" mode calls it (its own `InceptionV3W`
  forward: `(x - 128) / 128` then `layers`, on (N, 3, 299, 299) float input in [0, 255]).
  Never downloads; a missing file is one `QsensError` line saying where to get it.
- `inception_features(net, images)`: uint8 (N, H, W, 3) images → (N, 2048) features through
  clean-fid's "clean" resize (`cleanfid.resize.build_resizer("clean")`: PIL bicubic to 299×299
  per channel in float, no quantization). The reference build and the scorer both use it, so the
  same pixels give the same features.
- `ClipEmbedder`: `transformers.CLIPModel` + `CLIPProcessor` from a local directory.
- `InceptionClipScorer`: the `Scorer` for real models (`sampling.scorers.make_scorer` builds it
  for reference kind "inception"). It refuses a reference built at another resolution or with
  another feature network (sha256 of the file).

Content score conventions:
- text-to-image: CLIP score = mean over images of 100 · max(cos(E_img, E_txt), 0), i.e.
  CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
  Captioning", w · max(cos, 0)) with w = 100 instead of their 2.5, the convention of
  torchmetrics' `CLIPScore` and of most text-to-image quantization papers.
- class-conditional (labels, no prompts; DiT): CLIP zero-shot accuracy in [0, 1] of the
  conditioning class among all label names, prompt "a photo of a {name}" (Radford et al. 2021),
  when a CLIP model and label names are given; otherwise content = NaN, metric "none".
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from denoisers.base import Generation
from core.errors import QsensError
from core.provenance import file_sha256
from sampling.scoring import Score, Scorer

FEATURE_NETWORK_NAME = "clean-fid inception-2015-12-05 pool3 (2048-d)"
FEATURE_DIM = 2048
# Where clean-fid itself fetches the file (cleanfid.downloads_helper.inception_url).
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 "inception-2015-12-05.pt")
ZERO_SHOT_TEMPLATE = "a photo of a {}"


# ----------------------------------------------------------------------------------------------
# clean-fid's Inception, from a local file
# ----------------------------------------------------------------------------------------------
def _clean_fid_wrapper() -> type[nn.Module]:
    from cleanfid.inception_torchscript import InceptionV3W

    class LocalInceptionV3W(InceptionV3W):
        """clean-fid's `InceptionV3W` (its forward, resize_inside=False) loaded from a file path.

        clean-fid's own constructor only takes a directory holding a file of the exact name
        `inception-2015-12-05.pt` (and downloads it when missing), so only loading is replaced.
        """

        def __init__(self, path: str):
            nn.Module.__init__(self)
            with warnings.catch_warnings():  # torch 2.x deprecates torch.jit; the file is TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                self.base = torch.jit.load(path, map_location="cpu").eval()
            self.layers = self.base.layers
            self.resize_inside = False

    return LocalInceptionV3W


class InceptionNetwork(nn.Module):
    """The loaded feature network plus its identity: `path` (as given) and `sha256` of the file.

    forward: float (N, 3, 299, 299) in [0, 255] → float32 (N, 2048).
    """

    def __init__(self, net: nn.Module, path: str, sha256: str):
        super().__init__()
        self.net = net
        self.path = path
        self.sha256 = sha256
        self.name = FEATURE_NETWORK_NAME

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float `(N, 3, 299, 299)` in [0, 255] -> Inception pool features float32 `(N, 2048)`."""
        return self.net(x)


def missing_inception_message(path: str | Path) -> str:
    """The one-line error for a missing Inception file: where to download it and which flag to pass."""
    return (f"Inception network {path} not found: download clean-fid's feature network "
            f"inception-2015-12-05.pt from {INCEPTION_URL} and pass --inception PATH")


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> InceptionNetwork:
    """clean-fid's Inception (TorchScript file `inception-2015-12-05.pt`) from a local file.

    Raises `QsensError` (one line) when the file is missing, not TorchScript, or lacks clean-fid's
    interface (a `layers` submodule giving 2048 features at 299×299).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise QsensError(missing_inception_message(path))
    try:
        net = _clean_fid_wrapper()(path)
    except AttributeError as exc:
        raise QsensError(f"Inception network {path} does not have clean-fid's interface "
                         f"(a TorchScript module with `layers`): {exc}") from exc
    except (RuntimeError, ValueError) as exc:  # not a TorchScript archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QsensError(f"Inception network {path} is not a TorchScript file: {first}") from exc
    try:  # one probe forward: a wrong network fails here, in one line, not mid-build
        with torch.no_grad(), full_fp32():
            dim = net(torch.zeros(1, 3, 299, 299)).reshape(1, -1).shape[1]
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QsensError(f"Inception network {path} does not map (1, 3, 299, 299) images to "
                         f"{FEATURE_DIM} features: {first}") from exc
    if dim != FEATURE_DIM:
        raise QsensError(f"Inception network {path} gives {dim} features, expected {FEATURE_DIM}")
    return InceptionNetwork(net, path, file_sha256(path)).eval().to(device)


@contextlib.contextmanager
def full_fp32():
    """TF32 off for cuDNN convolutions (on by default) and cuBLAS matmuls, then restored.

    The feature networks then run in IEEE fp32 on every device, so a reference built on one
    GPU / the CPU and features scored on another agree to fp32 rounding (with TF32 the stand-in's
    features moved by ~2e-4 relative on an H200).
    """
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def clean_resize(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, 299, 299) in [0, 255], clean-fid "clean" resize."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    return torch.from_numpy(np.stack([resize(img) for img in images]).transpose(0, 3, 1, 2).copy())


def as_rgb_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W[, 1 | 3]) → uint8 (N, H, W, 3) (grey repeated); anything else is refused."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise QsensError(f"images must be (N, H, W, 3) or (N, H, W, 1), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise QsensError(f"images must be uint8, got {a.dtype}")
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def inception_features(net: nn.Module, images: np.ndarray, *, batch_size: int = 32,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """uint8 (N, H, W, 3|1) → float32 (N, 2048) clean-fid "clean" features (resize + network).

    The one images → features function of the reference build and the scorer.
    """
    from cleanfid.fid import get_batch_features

    images = as_rgb_uint8(images)
    if len(images) == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    with full_fp32():
        out = [get_batch_features(clean_resize(images[b0:b0 + batch_size]), net, torch.device(device))
               for b0 in range(0, len(images), batch_size)]
    feats = np.concatenate(out).reshape(len(images), -1)
    if feats.shape[1] != FEATURE_DIM:
        raise QsensError(f"the feature network gives {feats.shape[1]} features, expected {FEATURE_DIM}")
    return feats


# ----------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------
def _pooled(out: Any) -> torch.Tensor:
    """`get_*_features` returns a tensor (transformers 4) or an output whose `pooler_output`
    holds the projected embedding (transformers 5)."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


class ClipEmbedder:
    """L2-normalised CLIP image / text embeddings from a local CLIP directory (or cached hub id).

    Loaded with `local_files_only=True`: never downloads. Raises `QsensError` when it cannot load.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
        try:
            from transformers import CLIPModel, CLIPProcessor
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise QsensError("the CLIP score needs `transformers` installed") from exc
        self.path = str(path)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        hf_logging.disable_progress_bar()
        try:
            self.model = CLIPModel.from_pretrained(self.path, local_files_only=True)
            self.processor = CLIPProcessor.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QsensError(f"cannot load CLIP model {self.path}: {first}") from exc
        self.model = self.model.eval().requires_grad_(False).to(self.device)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.inference_mode()
    @full_fp32()
    def image_embeds(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3|1) → float32 (N, D) unit vectors (CPU)."""
        images = as_rgb_uint8(images)
        out = []
        for b0 in range(0, len(images), self.batch_size):
            px = self.processor.image_processor(images=list(images[b0:b0 + self.batch_size]),
                                                return_tensors="pt")["pixel_values"]
            out.append(_pooled(self.model.get_image_features(pixel_values=px.to(self.device))))
        return nn.functional.normalize(torch.cat(out).float(), dim=-1).cpu()

    @torch.inference_mode()
    @full_fp32()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """N strings → float32 (N, D) unit vectors (CPU); texts past 77 tokens are truncated."""
        out = []
        for b0 in range(0, len(texts), self.batch_size):
            tok = self.processor.tokenizer(list(texts[b0:b0 + self.batch_size]), padding=True,
                                           truncation=True, max_length=self.max_length,
                                           return_tensors="pt")
            out.append(_pooled(self.model.get_text_features(
                input_ids=tok["input_ids"].to(self.device),
                attention_mask=tok["attention_mask"].to(self.device))))
        return nn.functional.normalize(torch.cat(out).float(), dim=-1).cpu()

    def label_embeds(self, names: Sequence[str]) -> torch.Tensor:
        """Text embeddings `(K, D)` of "a photo of a {name}" for K class names, cached per name list."""
        key = tuple(names)
        if key not in self._text_cache:
            self._text_cache[key] = self.text_embeds([ZERO_SHOT_TEMPLATE.format(n) for n in names])
        return self._text_cache[key]


def clip_scores(embedder: ClipEmbedder, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """Per image 100 · max(cos(image, prompt), 0), float64 (N,) (module docstring: convention)."""
    if len(prompts) != len(images):
        raise QsensError(f"{len(images)} images but {len(prompts)} prompts for the CLIP score")
    cos = (embedder.image_embeds(images) * embedder.text_embeds(prompts)).sum(-1)
    return (100.0 * cos.clamp(min=0)).double().numpy()


def zero_shot_accuracy(embedder: ClipEmbedder, images: np.ndarray, labels: np.ndarray,
                       names: Sequence[str]) -> float:
    """Fraction of images whose most similar "a photo of a {name}" is their own class."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise QsensError(f"{len(images)} images but {len(labels)} labels")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(names):
        raise QsensError(f"class labels outside 0..{len(names) - 1} (the label names given)")
    pred = (embedder.image_embeds(images) @ embedder.label_embeds(names).T).argmax(1).numpy()
    return float(np.mean(pred == labels))


def label_name_list(label_names: Any) -> list[str] | None:
    """{id: name} or [name, ...] → names in id order; a name "tench, Tinca tinca" (ImageNet /
    DiT `id2label`) keeps its first synonym."""
    if not label_names:
        return None
    if isinstance(label_names, dict):
        items = {int(k): str(v) for k, v in label_names.items()}
        if sorted(items) != list(range(len(items))):
            raise QsensError("label names must cover class ids 0..N-1 without gaps")
        names = [items[i] for i in range(len(items))]
    else:
        names = [str(v) for v in label_names]
    return [n.split(",")[0].strip() for n in names]


# ----------------------------------------------------------------------------------------------
# the scorer
# ----------------------------------------------------------------------------------------------
class InceptionClipScorer(Scorer):
    """clean-fid Inception FID against a reference dir (`qsens reference build`) + content score.

    Args:
        reference_dir: holds `stats.safetensors`, `reference.json` (and `prompts.txt`).
        device: where the networks run.
        clip_model: local CLIP dir for the content score; default: the reference's `clip_model`.
            None → content = NaN, `content_metric` "none".
        batch_size: images per network call.
        inception_path: use this Inception file instead of the one recorded in the reference;
            its sha256 must equal the recorded one.
        label_names: class names ({id: name} or a list) for class-conditional models (CLIP
            zero-shot accuracy); default: the reference's `label_names`, if any.

    Raises `QsensError` (one line) when the reference is missing/corrupt, the Inception file is
    missing or is another network than the reference's, and (in `features`/`score`) when the
    images are not at the reference's resolution.
    """

    name = "inception"
    content_metric = "clip"

    def __init__(self, reference_dir: str | Path, device: str | torch.device = "cpu",
                 clip_model: str | Path | None = None, batch_size: int = 32,
                 inception_path: str | Path | None = None, label_names: Any = None):
        from sampling.reference import check_reference, load_reference, recorded_inception_path

        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        ref = load_reference(reference_dir)
        self.reference_dir = ref.path
        self.ref_mu, self.ref_sigma, self.info, self.prompts = ref.mu, ref.sigma, ref.info, ref.prompts
        self.resolution = int(self.info["resolution"])
        path = inception_path if inception_path is not None else recorded_inception_path(ref)
        self.inception = load_inception(path, self.device)
        check_reference(self.info, feature_sha256=self.inception.sha256,
                        feature_file=self.inception.path)
        clip_model = clip_model or self.info.get("clip_model")
        self.clip = ClipEmbedder(clip_model, self.device, batch_size) if clip_model else None
        self.label_names = label_name_list(label_names or self.info.get("label_names"))
        self._frechet = None

    def check_resolution(self, images: np.ndarray) -> None:
        """Raise QsensError (via `check_reference`) when the images' size differs from the
        reference's."""
        h, w = np.asarray(images).shape[1:3]
        if (h, w) != (self.resolution, self.resolution):
            from sampling.reference import check_reference

            check_reference(self.info, resolution=(int(h), int(w)))

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 images `(N, H, W, 3)` at the reference resolution -> Inception features `(N, 2048)`."""
        self.check_resolution(images)
        return inception_features(self.inception, images, batch_size=self.batch_size,
                                  device=self.device)

    def fid_from_features(self, feats: np.ndarray) -> float:
        """FID of features `(N, 2048)` by the exact symmetric route (`sampling.fid.FrechetReference`, the
        reference's matrix square root computed once).
        """
        # exact symmetric route, reference sqrt computed once (scipy's sqrtm: ~20 s at d = 2048)
        from sampling.fid import FrechetReference

        if self._frechet is None:
            self._frechet = FrechetReference(self.ref_mu, self.ref_sigma)
        return self._frechet.distance_from_features(feats)

    def content_metric_for(self, generation: Generation) -> str:
        """"clip" (prompts), "clip_zeroshot_accuracy" (labels + names), else "none"."""
        if self.clip is None:
            return "none"
        if generation.prompts:
            return "clip"
        if generation.labels is not None and self.label_names:
            return "clip_zeroshot_accuracy"
        return "none"

    def content_score(self, generation: Generation) -> float:
        """CLIP score (Hessel et al., EMNLP 2021) with prompts, CLIP zero-shot accuracy with class
        labels, else NaN."""
        metric = self.content_metric_for(generation)
        if metric == "clip":
            return float(clip_scores(self.clip, generation.images, generation.prompts).mean())
        if metric == "clip_zeroshot_accuracy":
            return zero_shot_accuracy(self.clip, generation.images, generation.labels,
                                      self.label_names)
        return math.nan

    def score(self, generation: Generation) -> Score:
        """Score a generation (`Scorer.score`); a resolution mismatch raises QsensError instead of
        failing."""
        self.check_resolution(generation.images)  # a setup error: raised, not a failed score
        self.content_metric = self.content_metric_for(generation)  # read by Scorer.score
        return super().score(generation)

