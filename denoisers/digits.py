"""The `digits` default: a class-conditional diffusers model trained on the spot.

Data: scikit-learn's bundled digits (1,797 grey 8×8 images, values 0–16, shipped with sklearn,
no download). Two architectures, both real diffusers classes so downstream graph/bank code sees
the same module types as on real models:

- `digits`     — `UNet2DModel` (class embedding table, ResNet blocks, attention at the low level);
- `digits-dit` — `DiTTransformer2DModel` (patchify, AdaLN-Zero blocks with class labels).

Both predict the noise (epsilon), are trained with class dropout (label 10 = "no class", so
classifier-free guidance is available but off by default: it doubles the batch), and sample with
DPM-Solver++ (or DDIM) in a few steps. A small CNN classifier, trained on the same train split,
provides the penultimate features for FID and the accuracy of generated digits (content score).

On-disk layout written by `prepare` (all safetensors + JSON, no pickles):

    data/models/<name>/qsens_digits.json     arch, params, training figures, reference dir
    data/models/<name>/unet|transformer/     diffusers save_pretrained (EMA weights)
    data/models/<name>/scheduler/            sampling scheduler config
    data/reference/digits/classifier.safetensors + classifier.json
    data/reference/digits/stats.safetensors  (written by sampling.scoring.save_reference_stats)
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from denoisers.base import Denoiser, Generation, ReferenceData, image_seeds, to_uint8
from core.layout import Layout
from core.errors import QsensError
from core.params import read_section, reject_unknown, defaults_from
from core.jsonio import write_json

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # label used for "unconditional" (class dropout / guidance)
NATIVE_RES = 8
ARCHS = {"digits": "unet", "digits-dit": "dit"}
SUBFOLDER = {"unet": "unet", "dit": "transformer"}
META_FILE = "qsens_digits.json"
REFERENCE_NAME = "digits"


# ----------------------------------------------------------------------------------------------
# params
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
@defaults_from("digits")
class DigitsParams:
    """The `digits:` section of params.yaml (every knob of the digits models and sampling)."""

    resolution: int  # 8 = native; 16 = digits upsampled ×2 (4× the compute)
    # UNet2DModel (`digits`)
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    unet_head_dim: int
    # DiTTransformer2DModel (`digits-dit`)
    dit_layers: int
    dit_heads: int
    dit_head_dim: int
    dit_patch: int
    # denoiser training
    seed: int
    train_steps: int
    train_batch: int
    lr: float
    ema_decay: float
    class_dropout: float
    num_train_timesteps: int
    beta_schedule: str
    # classifier training
    test_fraction: float
    classifier_epochs: int
    classifier_lr: float
    # sampling
    scheduler: str  # or "ddim"
    steps: int  # DPM-Solver++ steps (FID 1.5 vs 1.2 at 10 steps, 40% cheaper)
    guidance: float  # 1.0 = no classifier-free guidance (no doubled batch)
    gen_batch_size: int  # fixed: results never depend on how work is split

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> "DigitsParams":
        """The `digits:` section as read from params.yaml -> validated params; QsensError on an unknown
        key or a bad value.
        """
        d = dict(d or {})
        reject_unknown(DigitsParams, d, "digits")
        if "unet_channels" in d:
            d["unet_channels"] = tuple(int(c) for c in d["unet_channels"])
        p = DigitsParams(**d)
        p.validate()
        return p

    def validate(self) -> None:
        """Check resolution (8, 16, 32), scheduler (dpmsolver++, ddim), steps and batch size; QsensError."""
        if self.resolution not in (8, 16, 32):
            raise QsensError(f"digits.resolution must be 8, 16 or 32, got {self.resolution}")
        if self.scheduler not in ("dpmsolver++", "ddim"):
            raise QsensError(f"digits.scheduler must be dpmsolver++ or ddim, got {self.scheduler!r}")
        if self.steps < 1 or self.gen_batch_size < 1:
            raise QsensError("digits.steps and digits.gen_batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The params as a JSON-able dict (`unet_channels` as a list)."""
        d = asdict(self)
        d["unet_channels"] = list(self.unet_channels)
        return d


def load_params(path: str | Path = "params.yaml", section: str = "digits") -> DigitsParams:
    """`DigitsParams` from a params.yaml section; defaults when the file or section is absent."""
    return DigitsParams.from_dict(read_section(path, section))


@contextlib.contextmanager
def flush_denormal():
    """Flush denormal floats to zero inside (CPU): without it, small diffusers models on x86
    can run 10-20× slower for stretches of training/sampling. Restores torch's default after."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, 8, 8) in 0–255 (value·255/16, rounded) and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test split of indices."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def images_to_model_space(images_u8: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (N, 8, 8) → float (N, 1, R, R) in [-1, 1] (bilinear upsampling when R > 8)."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float().div(127.5).sub(1.0)[:, None]
    if resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x


# ----------------------------------------------------------------------------------------------
# classifier (feature extractor for FID + content score)
# ----------------------------------------------------------------------------------------------
class DigitsClassifier(nn.Module):
    """2 conv + 2 linear. `features()` = the 64-d penultimate layer (pre-activation)."""

    def __init__(self, channels: tuple[int, int] = (32, 64), feature_dim: int = 64,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        self.channels = tuple(channels)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.fc1 = nn.Linear(channels[1] * (NATIVE_RES // 2) ** 2, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def prepare_input(images: torch.Tensor) -> torch.Tensor:
        """Any (N, C, H, W) float in [0, 255] → grey (N, 1, 8, 8) in [0, 1] (area downsampling)."""
        x = images.float()
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (NATIVE_RES, NATIVE_RES):
            x = F.adaptive_avg_pool2d(x, (NATIVE_RES, NATIVE_RES))
        return x / 255.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, 8, 8) in [0, 1] → (N, feature_dim)."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc1(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images `(B, 1, 8, 8)` in [-1, 1] -> class logits `(B, 10)`."""
        return self.fc2(F.relu(self.features(x)))

    def config(self) -> dict[str, Any]:
        """The constructor arguments (and native resolution) as saved in classifier.json."""
        return {"channels": list(self.channels), "feature_dim": self.feature_dim,
                "num_classes": self.num_classes, "resolution": NATIVE_RES}

    def save(self, directory: str | Path, info: dict[str, Any] | None = None) -> None:
        """Write classifier.safetensors and classifier.json (config + `info`) to `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "classifier.safetensors"))
        cfg = {"config": self.config(), "info": info or {}}
        write_json(directory / "classifier.json", cfg, sort_keys=True)

    @staticmethod
    def load(directory: str | Path) -> tuple["DigitsClassifier", dict[str, Any]]:
        """Load a classifier written by `save`: returns (classifier in eval mode, its `info`).

        Raises QsensError when `directory` holds no classifier (run `qsens prepare`).
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / "classifier.json", directory / "classifier.safetensors"
        if not cfg_path.exists() or not w_path.exists():
            raise QsensError(f"no digits classifier in {directory} (classifier.json + "
                             "classifier.safetensors): run `qsens prepare`")
        meta = json.loads(cfg_path.read_text())
        c = meta["config"]
        model = DigitsClassifier(tuple(c["channels"]), int(c["feature_dim"]), int(c["num_classes"]))
        model.load_state_dict(load_file(str(w_path)))
        model.eval()
        return model, meta.get("info", {})


def _shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random ±1 pixel translations (zero fill): makes the classifier robust to sample jitter."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=gen)
    dy = torch.randint(0, 3, (n,), generator=gen)
    out = torch.empty_like(x)
    for sx in range(3):
        for sy in range(3):
            m = (dx == sx) & (dy == sy)
            if m.any():
                out[m] = padded[m, :, sy:sy + NATIVE_RES, sx:sx + NATIVE_RES]
    return out


def train_classifier(images_u8: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                     test_idx: np.ndarray, params: DigitsParams,
                     progress: bool = False) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train on `train_idx`; report held-out accuracy on `test_idx`."""
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed + 1)
    x_all = torch.from_numpy(images_u8).float()[:, None] / 255.0
    y_all = torch.from_numpy(labels)
    x_tr, y_tr = x_all[train_idx], y_all[train_idx]
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=params.classifier_lr, weight_decay=1e-4)
    batch = 64
    steps_per_epoch = math.ceil(len(x_tr) / batch)
    total = params.classifier_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=params.classifier_lr, total_steps=total)
    model.train()
    with flush_denormal():
        _classifier_loop(model, opt, sched, x_tr, y_tr, gen, batch, steps_per_epoch, params, progress)
    model.eval()
    with torch.inference_mode():
        pred = model(x_all[test_idx]).argmax(1)
        acc = float((pred == y_all[test_idx]).float().mean())
        train_acc = float((model(x_tr).argmax(1) == y_tr).float().mean())
    # No timing here: this is saved with the classifier, and the same params must give the same
    # bytes (DVC would otherwise re-run every later stage). `prepare_digits` reports the times.
    info = {"test_accuracy": acc, "train_accuracy": train_acc, "n_train": int(len(train_idx)),
            "n_test": int(len(test_idx)), "epochs": params.classifier_epochs, "seed": params.seed,
            "test_fraction": params.test_fraction}
    return model, info


def _classifier_loop(model, opt, sched, x_tr, y_tr, gen, batch, steps_per_epoch, params, progress):
    from core.progress import progress_bar

    for _ in progress_bar(range(params.classifier_epochs), desc="classifier", disable=not progress):
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            xb = _shift_augment(x_tr[idx], gen)
            loss = F.cross_entropy(model(xb), y_tr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


# ----------------------------------------------------------------------------------------------
# denoiser models
# ----------------------------------------------------------------------------------------------
def build_model(arch: str, params: DigitsParams) -> nn.Module:
    """A freshly initialised diffusers model of the given arch (`unet` | `dit`)."""
    if arch == "unet":
        from diffusers import UNet2DModel

        n = len(params.unet_channels)
        down = ("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",)
        up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1)
        groups = math.gcd(8, *params.unet_channels)
        return UNet2DModel(
            sample_size=params.resolution, in_channels=1, out_channels=1,
            down_block_types=down, up_block_types=up,
            block_out_channels=tuple(params.unet_channels),
            layers_per_block=params.unet_layers_per_block,
            attention_head_dim=params.unet_head_dim, norm_num_groups=groups,
            num_class_embeds=NUM_CLASSES + 1,  # + the null class
        )
    if arch == "dit":
        from diffusers import DiTTransformer2DModel

        return DiTTransformer2DModel(
            num_attention_heads=params.dit_heads, attention_head_dim=params.dit_head_dim,
            in_channels=1, out_channels=1, num_layers=params.dit_layers,
            sample_size=params.resolution, patch_size=params.dit_patch,
            num_embeds_ada_norm=NUM_CLASSES,  # diffusers adds the null class itself
        )
    raise QsensError(f"unknown digits arch {arch!r}: expected unet or dit")


def make_train_scheduler(params: DigitsParams):
    """The DDPM training scheduler (Ho et al., NeurIPS 2020), epsilon prediction, the params' betas."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=params.num_train_timesteps,
                         beta_schedule=params.beta_schedule, prediction_type="epsilon")


def make_sampling_scheduler(params: DigitsParams):
    """The sampling scheduler: DPM-Solver++ (Lu et al., 2022) or DDIM (Song et al., ICLR 2021), with
    the predicted clean image clipped to [-1, 1] at every step (see the comment in the body).
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    # The predicted clean image is clipped to the data range [-1, 1] at every step (DDIM
    # clip_sample; DPM-Solver++ thresholding with sample_max_value 1 is exactly that clip).
    # Without it the first step's x0 = (x - sqrt(1-ᾱ)·ε)/sqrt(ᾱ) explodes where ᾱ_T ≈ 0
    # (cosine schedule): FID 94 and 0.67 accuracy instead of ≈1 and 0.99 in our runs.
    common = dict(num_train_timesteps=params.num_train_timesteps,
                  beta_schedule=params.beta_schedule, prediction_type="epsilon")
    if params.scheduler == "ddim":
        return DDIMScheduler(**common, clip_sample=True, clip_sample_range=1.0,
                             set_alpha_to_one=True)
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                       lower_order_final=True, thresholding=True,
                                       dynamic_thresholding_ratio=0.995, sample_max_value=1.0)


def scheduler_config_of(scheduler) -> dict[str, Any]:
    """A scheduler's config as a plain dict that remembers its class."""
    return {**dict(scheduler.config), "_class_name": type(scheduler).__name__}


def train_denoiser(arch: str, images_u8: np.ndarray, labels: np.ndarray, params: DigitsParams,
                   progress: bool = False, log_every: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Epsilon-prediction training with class dropout and an EMA; returns the EMA model."""
    with flush_denormal():
        return _train_denoiser(arch, images_u8, labels, params, progress, log_every)


def _train_denoiser(arch, images_u8, labels, params, progress, log_every):
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed + 7)
    model = build_model(arch, params)
    if arch == "dit":
        _disable_dit_random_label_dropout(model)  # we drop labels ourselves (deterministic)
    warmup = min(200, params.train_steps // 10 + 1)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, params.train_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    ema, losses = train_steps(model, images_to_model_space(images_u8, params.resolution),
                              torch.from_numpy(labels), params, params.train_steps, params.lr, lr_at, gen,
                              desc=f"train {arch}", progress=progress, log_every=log_every)
    info = {"arch": arch, "train_steps": params.train_steps, "train_batch": params.train_batch,
            "final_loss": float(np.mean(losses[-100:])) if losses else None, "n_train": int(len(labels)),
            "parameters": int(sum(p.numel() for p in ema.parameters()))}
    return ema, info


def train_steps(model: nn.Module, x0_all: torch.Tensor, y_all: torch.Tensor, params: DigitsParams, steps: int,
                lr: float, lr_at, gen: torch.Generator, *, weights: torch.Tensor | None = None,
                ema_decay: float | None = None, desc: str = "train", progress: bool = False,
                log_every: int = 0) -> tuple[nn.Module, list[float]]:
    """`steps` steps of epsilon-prediction training of `model` (in place) with class dropout and
    an EMA copy -> (the EMA model, per-step losses). x0_all: (N, 1, R, R) images in model space;
    y_all: (N,) int labels; lr_at: step -> multiplier of `lr`; weights: (N,) sampling weights of
    the training images (None: uniform, by `torch.randint` as the base training always drew).
    Deterministic given `gen` and torch's global seed."""
    from core.progress import progress_bar

    ema = copy.deepcopy(model).eval().requires_grad_(False)
    alphas = make_train_scheduler(params).alphas_cumprod.float()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    decay_max = params.ema_decay if ema_decay is None else ema_decay
    t0 = time.perf_counter()
    losses: list[float] = []
    model.train()
    n = len(x0_all)
    bar = progress_bar(range(steps), desc=desc, disable=not progress)
    for step in bar:
        if weights is None:
            idx = torch.randint(0, n, (params.train_batch,), generator=gen)
        else:
            idx = torch.multinomial(weights, params.train_batch, replacement=True, generator=gen)
        x0, y = x0_all[idx], y_all[idx].clone()
        drop = torch.rand(len(y), generator=gen) < params.class_dropout
        y[drop] = NULL_CLASS
        t = torch.randint(0, params.num_train_timesteps, (len(y),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = model(xt, t, class_labels=y, return_dict=False)[0]
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        decay = min(decay_max, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(float(loss.detach()))
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if log_every and step % log_every == 0:
            print(f"step {step} loss {np.mean(losses[-log_every:]):.4f} "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
    model.eval()
    return ema, losses


def _disable_dit_random_label_dropout(model: nn.Module) -> None:
    """Zero the random label dropout of diffusers' LabelEmbedding; its null row (index
    num_classes == NULL_CLASS) stays, so label NULL_CLASS selects "no class" explicitly."""
    for m in model.modules():
        if type(m).__name__ == "LabelEmbedding":
            m.dropout_prob = 0.0


# ----------------------------------------------------------------------------------------------
# the adapter
# ----------------------------------------------------------------------------------------------
class DigitsDenoiser(Denoiser):
    """A trained (or tiny random) digits model plus its sampling scheduler."""

    num_classes = NUM_CLASSES

    def __init__(self, model: nn.Module, arch: str, params: DigitsParams, name: str = "digits",
                 model_dir: Path | None = None, reference_dir: Path | None = None,
                 scheduler_config: dict[str, Any] | None = None, info: dict[str, Any] | None = None):
        if arch not in SUBFOLDER:
            raise QsensError(f"unknown digits arch {arch!r}")
        self.name = name
        self.arch = arch
        self.params = params
        self.model = model.eval().requires_grad_(False)
        if arch == "dit":
            _disable_dit_random_label_dropout(self.model)
        self.model_dir = Path(model_dir) if model_dir else None
        self.reference_dir = Path(reference_dir) if reference_dir else None
        self.scheduler_config = dict(scheduler_config or
                                     scheduler_config_of(make_sampling_scheduler(params)))
        self.info = dict(info or {})
        self.device = torch.device("cpu")

    # --- interface ----------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        """Image side in pixels (8 native; 16 or 32 upsampled)."""
        return int(self.params.resolution)

    def example_inputs(self, batch_size: int = 1) -> tuple[tuple, dict]:
        """One denoising step's inputs: noise `(B, 1, R, R)`, timestep 500, class labels `i % 10`."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn((batch_size, 1, self.resolution, self.resolution), generator=g)
        t = torch.full((batch_size,), 500, dtype=torch.long)
        y = torch.arange(batch_size, dtype=torch.long) % NUM_CLASSES
        x, t, y = x.to(self.device), t.to(self.device), y.to(self.device)
        return (x, t), {"class_labels": y, "return_dict": False}

    def reference(self) -> ReferenceData:
        """The digits reference data (`reference_dir`); QsensError when there is none (`qsens prepare`)."""
        if self.reference_dir is None:
            raise QsensError(f"{self.name}: no reference data dir (run `qsens prepare`)")
        return ReferenceData("digits", self.reference_dir, {"num_classes": NUM_CLASSES})

    def _scheduler(self):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        name = self.scheduler_config.get("_class_name", "DPMSolverMultistepScheduler")
        classes = {"DDIMScheduler": DDIMScheduler,
                   "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}
        if name not in classes:
            raise QsensError(f"{self.name}: unsupported sampling scheduler {name}")
        return classes[name].from_config(self.scheduler_config)

    def configure_generation(self, steps: int | None = None, guidance: float | None = None,
                             batch_size: int | None = None) -> None:
        """Change the `generate` defaults (None keeps the current value), as `Denoiser`'s."""
        from dataclasses import replace

        changes = {"steps": steps, "guidance": guidance, "gen_batch_size": batch_size}
        self.params = replace(self.params, **{k: v for k, v in changes.items() if v is not None})

    def labels_for(self, n: int) -> np.ndarray:
        """Conditioning labels cycle 0..9 so every class is balanced."""
        return np.arange(n, dtype=np.int64) % NUM_CLASSES

    @torch.inference_mode()
    def generate(self, n: int, seed: int = 0, *, steps: int | None = None,
                 guidance: float | None = None, batch_size: int | None = None,
                 progress: bool = False, labels: np.ndarray | None = None) -> Generation:
        """`n` class-conditional images (uint8 `(n, R, R, 1)`); image i uses seed `image_seeds(n, seed)[i]`.

        `labels` (n,) picks the classes (default: `i % 10`; ValueError when not n long); a
        `guidance` other than 1 turns classifier-free guidance on (label 10 = no class).
        Deterministic on CPU.
        """
        from core.progress import progress_bar

        steps = int(steps or self.params.steps)
        guidance = float(self.params.guidance if guidance is None else guidance)
        batch_size = int(batch_size or self.params.gen_batch_size)
        t0 = time.perf_counter()
        seeds = image_seeds(n, seed)
        labels = self.labels_for(n) if labels is None else np.asarray(labels, dtype=np.int64)
        if len(labels) != n:
            raise ValueError("labels must have n entries")
        shape = (1, self.resolution, self.resolution)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                             for s in seeds]) if n else torch.zeros((0, *shape))
        out = []
        starts = range(0, n, batch_size)
        for b0 in progress_bar(starts, desc=f"generate {self.name}", disable=not progress):
            x = noise[b0:b0 + batch_size].to(self.device)
            y = torch.from_numpy(labels[b0:b0 + batch_size]).to(self.device)
            with flush_denormal():
                out.append(self._sample(x, y, steps, guidance))
        images = torch.cat(out) if out else torch.zeros((0, *shape))
        u8, bad = to_uint8(images)
        return Generation(images=u8, seeds=seeds, labels=labels, nonfinite=bad,
                          seconds=time.perf_counter() - t0,
                          params={"steps": steps, "guidance": guidance, "batch_size": batch_size,
                                  "scheduler": self.scheduler_config.get("_class_name")})

    def _sample(self, x: torch.Tensor, y: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
        sched = self._scheduler()
        sched.set_timesteps(steps)
        x = x * sched.init_noise_sigma
        cfg = guidance != 1.0
        if cfg:
            y_in = torch.cat([y, torch.full_like(y, NULL_CLASS)])
        for t in sched.timesteps:
            if cfg:
                eps_c, eps_u = self._eps(torch.cat([x, x]), t, y_in).chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            else:
                eps = self._eps(x, t, y)
            x = sched.step(eps, t, x, return_dict=False)[0]
        return x

    def _eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tt = t.expand(x.shape[0]) if t.ndim == 0 else t
        return self.model(x, tt.to(x.device), class_labels=y, return_dict=False)[0]

    # --- persistence ----------------------------------------------------------------------------
    def save(self, model_dir: str | Path, reference_dir: str | Path | None = None) -> Path:
        """diffusers `save_pretrained` of the model and scheduler, plus `qsens_digits.json`."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(model_dir / SUBFOLDER[self.arch]))
        self._scheduler().save_pretrained(str(model_dir / "scheduler"))
        ref = reference_dir or self.reference_dir
        meta = {"family": "digits", "name": self.name, "arch": self.arch,
                "params": self.params.to_dict(), "info": self.info,
                "reference_dir": _relpath(Path(ref), model_dir) if ref else None}
        write_json(model_dir / META_FILE, meta, sort_keys=True)
        self.model_dir = model_dir
        return model_dir

    @staticmethod
    def load(model_dir: str | Path, reference_dir: str | Path | None = None) -> "DigitsDenoiser":
        """Load a model written by `qsens prepare` from `model_dir` (model.json + safetensors).

        Raises QsensError when `model_dir` is not a digits model dir.
        """
        model_dir = Path(model_dir)
        meta_path = model_dir / META_FILE
        if not meta_path.exists():
            raise QsensError(f"{model_dir} is not a digits model dir (no {META_FILE}): run "
                             "`qsens prepare --model digits`")
        meta = json.loads(meta_path.read_text())
        arch = meta["arch"]
        params = DigitsParams.from_dict(meta["params"])
        sub = model_dir / SUBFOLDER[arch]
        if arch == "unet":
            from diffusers import UNet2DModel as cls
        else:
            from diffusers import DiTTransformer2DModel as cls
        model = cls.from_pretrained(str(sub))
        sched_cfg_path = model_dir / "scheduler" / "scheduler_config.json"
        sched_cfg = json.loads(sched_cfg_path.read_text()) if sched_cfg_path.exists() else None
        if reference_dir is None and meta.get("reference_dir"):
            reference_dir = (model_dir / meta["reference_dir"]).resolve()
        return DigitsDenoiser(model, arch, params, name=meta.get("name", model_dir.name),
                              model_dir=model_dir, reference_dir=reference_dir,
                              scheduler_config=sched_cfg, info=meta.get("info"))


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())


def tiny_digits_denoiser(arch: str = "unet", seed: int = 0, steps: int = 2,
                         gen_batch_size: int = 8) -> DigitsDenoiser:
    """An untrained tiny model of the real class (tests, examples): builds in well under a second."""
    params = DigitsParams(unet_channels=(8, 16), unet_head_dim=8, dit_layers=1, dit_heads=2,
                          dit_head_dim=8, steps=steps, gen_batch_size=gen_batch_size, seed=seed)
    torch.manual_seed(seed)
    model = build_model(arch, params)
    return DigitsDenoiser(model, arch, params, name="digits" if arch == "unet" else "digits-dit")


# ----------------------------------------------------------------------------------------------
# the prepare stage (training part; reference stats are computed by sampling.scoring)
# ----------------------------------------------------------------------------------------------
@dataclass
class PrepareResult:
    """What `prepare` returns: the trained denoiser and classifier, their dirs and the stage times (s)."""

    denoiser: DigitsDenoiser
    classifier: DigitsClassifier
    classifier_info: dict[str, Any]
    model_dir: Path
    reference_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)


def prepare_digits(source: str, data_dir: str | Path = "data", params: DigitsParams | None = None,
                   progress: bool = True, retrain_classifier: bool = False,
                   name: str | None = None) -> PrepareResult:
    """Train the classifier (unless one with the same params exists) and the denoiser; save both.

    `source` is the architecture (`digits`: UNet2DModel, `digits-dit`: DiT); `name` (default:
    `source`) names the outputs: `data/reference/<name>/classifier.*` and `data/models/<name>/`.
    The reference statistics are written by the caller (`sampling.scoring.save_reference_stats`).
    """
    if source not in ARCHS:
        raise QsensError(f"unknown digits model {source!r}: expected one of {sorted(ARCHS)}")
    params = params or DigitsParams()
    data_dir = Path(data_dir)
    name = name or source
    ref_dir, model_dir = Layout(data_dir, name).reference, Layout(data_dir, name).models
    images, labels = load_digit_images()
    train_idx, test_idx = split_indices(labels, params.test_fraction, params.seed)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    classifier = None
    if not retrain_classifier and (ref_dir / "classifier.json").exists():
        try:
            cand, info = DigitsClassifier.load(ref_dir)
            if (info.get("seed"), info.get("epochs"), info.get("test_fraction")) == \
                    (params.seed, params.classifier_epochs, params.test_fraction):
                classifier, cls_info = cand, info
        except Exception:  # corrupt/old → retrain
            classifier = None
    if classifier is None:
        classifier, cls_info = train_classifier(images, labels, train_idx, test_idx, params, progress)
        classifier.save(ref_dir, cls_info)
    seconds["classifier"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    model, train_info = train_denoiser(ARCHS[source], images[train_idx], labels[train_idx], params,
                                       progress=progress)
    seconds["denoiser"] = round(time.perf_counter() - t0, 2)
    den = DigitsDenoiser(model, ARCHS[source], params, name=name, reference_dir=ref_dir,
                         info={"train": train_info, "classifier_test_accuracy": cls_info["test_accuracy"]})
    den.save(model_dir, ref_dir)
    return PrepareResult(den, classifier, cls_info, model_dir, ref_dir, seconds)
