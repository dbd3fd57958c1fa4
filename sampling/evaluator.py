"""The one apply → generate → score path. Every command that turns a config into images goes here.

    ev = Evaluator(denoiser, bank, scorer, fp_cache=Path("data/fp_cache/digits"))
    row = ev.score(config, n=32, seed=0, paired=True)   # {"fid", "content", "fd_fp", ...}
    with ev.applied(config):                            # the model runs quantized inside
        ...
    gen = ev.generate(config, n, seed)                  # None = the FP model

Why one place: sampling, selection, evaluation, the noise check, the per-layer sweeps, the probe,
QuantAnalyzer and activation calibration all did apply → generate → score on their own; a new
metric (the paired scores of `sampling.paired`) is now added once, and so is the cost meter.

**FP image cache.** The full-precision images of a (model, generation settings, seed set, n) and
their features and content score are made once and kept, content-addressed, under `fp_cache`
(`<key>.safetensors` + `<key>.json`; no pickles). The key covers the model's weight fingerprint
(every parameter and buffer), the generation settings, n, the seed set, the reference statistics
(the features and content score depend on them) and the evaluator's code, so it is reused exactly
while none of those changes. Without `fp_cache` it is kept in memory for the process.

**Cost.** Every generation is counted in `METER` (images generated, denoiser forward calls and
the samples they carried, which counts classifier-free guidance's doubled batch), so a stage can
state what it spent (`CostMeter.as_dict`); shard records carry their own share.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from core.layout import Layout
from core.errors import QsensError
from core.provenance import code_digest, job_key
from sampling.paired import paired_scores

# ----------------------------------------------------------------------------------------------
# cost
# ----------------------------------------------------------------------------------------------


@dataclass
class CostMeter:
    """What generation spent: images, denoiser forward calls, samples through the denoiser.

    `forward_samples` counts each sample of each call (a CFG step of a batch of 8 = 16), the unit
    GPU throughput is measured in; `images` is what a label costs in the issue's terms."""

    images: int = 0
    forwards: int = 0
    forward_samples: int = 0
    seconds: float = 0.0

    def add(self, other: "CostMeter | dict") -> None:
        """Add another meter's (or its `as_dict()`'s) images, forwards, forward samples and seconds."""
        d = other if isinstance(other, dict) else other.as_dict()
        self.images += int(d.get("images", 0))
        self.forwards += int(d.get("forwards", 0))
        self.forward_samples += int(d.get("forward_samples", 0))
        self.seconds += float(d.get("seconds", 0.0))

    def as_dict(self) -> dict[str, Any]:
        """The counts as a JSON-able dict (seconds rounded to ms), as stages store them for `cost`."""
        return {"images": self.images, "forwards": self.forwards,
                "forward_samples": self.forward_samples, "seconds": round(self.seconds, 3)}

    def since(self, start: dict) -> dict[str, Any]:
        """The spend since `start` (an earlier `as_dict()`)."""
        now = self.as_dict()
        return {k: (round(now[k] - start[k], 3) if k == "seconds" else now[k] - start[k]) for k in now}


METER = CostMeter()  # process-wide: each command reports its own spend from it


def _batch_of(args: tuple, kwargs: dict) -> int:
    for v in list(args) + [kwargs.get(k) for k in ("sample", "hidden_states", "x")]:
        if isinstance(v, torch.Tensor) and v.ndim >= 1:
            return int(v.shape[0])
    return 1


@contextmanager
def counting_forwards(model: torch.nn.Module, meter: CostMeter) -> Iterator[None]:
    """Count `model`'s forward calls (and the samples in each) into `meter` inside the block."""
    def hook(_m, args, kwargs):
        meter.forwards += 1
        meter.forward_samples += _batch_of(args, kwargs)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------
# identity
# ----------------------------------------------------------------------------------------------
def model_fingerprint(model: torch.nn.Module) -> str:
    """32 hex digits over every parameter and buffer (names, shapes, float32 values): changes when
    any weight changes (a fine-tune's norms and biases too), not when the model moves or is cast
    losslessly."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(list(model.state_dict(keep_vars=False).items()), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.device.type != "meta":
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def generation_settings(denoiser: Any) -> dict[str, Any]:
    """What besides the weights decides a denoiser's images (steps, guidance, scheduler, batch
    size, resolution, call arguments), read from the adapter; JSON-able."""
    params = getattr(denoiser, "params", None)
    out: dict[str, Any] = {"adapter": type(denoiser).__name__}
    if is_dataclass(params):
        out["params"] = asdict(params)
    for attr in ("steps", "guidance", "batch_size", "resolution", "call_kwargs", "scheduler_config",
                 "negative_prompt", "prompts"):
        v = getattr(denoiser, attr, None)
        if v is not None and not callable(v):
            out[attr] = v if attr != "prompts" else hashlib.sha256("\n".join(v).encode()).hexdigest()[:16]
    pipe = getattr(denoiser, "pipe", None)
    if pipe is not None and getattr(pipe, "scheduler", None) is not None:
        out["scheduler"] = dict(pipe.scheduler.config)
    return json.loads(json.dumps(out, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------------
# the evaluator
# ----------------------------------------------------------------------------------------------
@dataclass
class FPImages:
    """The FP model's images of one seed set: images uint8 (N, H, W, C), features (N, D)."""

    images: np.ndarray
    features: np.ndarray
    content: float
    key: str
    labels: np.ndarray | None = None


@dataclass
class Evaluator:
    """A loaded denoiser with its bank and scorer: applies configs, generates, scores.

    denoiser: a `denoisers.base.Denoiser`; bank: a `quant.bank.Bank` (None: FP only); scorer: a
    `sampling.scoring.Scorer` (None: images only); fp_cache: directory of the FP image cache (None:
    memory only); generate_kw: overrides passed to every `denoiser.generate` (steps, ...);
    lpips: optional callable (uint8 NHWC, uint8 NHWC) → per-image distances."""

    denoiser: Any
    bank: Any = None
    scorer: Any = None
    fp_cache: Path | None = None
    generate_kw: dict[str, Any] = field(default_factory=dict)
    lpips: Any = None
    meter: CostMeter = field(default_factory=lambda: METER)
    _checked: bool = False
    _fp_memo: dict = field(default_factory=dict)
    _fp_key_parts: dict | None = None

    # --- construction ---------------------------------------------------------------------------
    @staticmethod
    def load(spec: Any, data_dir: str | Path, bank: Any = None, *, device: str | None = None,
             generate: dict | None = None, scorer: bool = True) -> "Evaluator":
        """From a `denoisers.spec.ModelSpec`: its denoiser (generation overrides applied), the
        given bank (a `Bank` or a directory), its scorer, the FP cache under DATA/fp_cache/NAME."""
        from dataclasses import replace

        from denoisers.registry import load_denoiser

        if device is not None:
            spec = replace(spec, device=device)
        den = load_denoiser(spec, data_dir=Path(data_dir))
        if generate:
            den.configure_generation(**generate)
        return Evaluator.for_denoiser(den, bank, fp_cache=Layout(Path(data_dir), spec.name).fp_cache,
                                      device=spec.device, generate_kw=generate, scorer=scorer)

    @staticmethod
    def for_denoiser(den: Any, bank: Any = None, *, fp_cache: Path | None, device: str,
                     generate_kw: dict | None = None, scorer: bool = True) -> "Evaluator":
        """An evaluator of a loaded denoiser: `bank` (a `Bank` or its directory; None: FP only),
        the scorer of its family on `device` (unless `scorer` is False), the FP image cache
        `fp_cache`, and `generate_kw` passed to every generation (e.g. {"steps": 4})."""
        from quant.bank import Bank
        from sampling.scorers import make_scorer

        if bank is not None and not hasattr(bank, "dequantize"):
            bank = Bank.load(bank)
        sc = make_scorer(den, device=device) if scorer else None
        return Evaluator(den, bank, sc, fp_cache=fp_cache, generate_kw=dict(generate_kw or {}))

    # --- applying and generating: the only place a config meets the model -------------------
    @contextmanager
    def applied(self, config: Any = None, *, act_ranges: Any = None, verify: bool = False
                ) -> Iterator[torch.nn.Module]:
        """The model runs with `config` (weights from the bank, activation bits with
        `act_ranges` if the config has any) inside the block, with its FP weights after.
        None: the FP model. The bank is checked against the model once per evaluator."""
        if config is None:
            yield self.denoiser.model
            return
        from quant.apply import quantized

        if self.bank is None:
            raise QsensError("this evaluator has no bank: a config cannot be applied")
        if not self._checked:
            self.bank.check_model(self.denoiser.model)
            self._checked = True
        with quantized(self.denoiser.model, config, self.bank, verify=verify, act_ranges=act_ranges):
            yield self.denoiser.model

    def generate(self, config: Any, n: int, seed: int, *, act_ranges: Any = None,
                 hooks: Any = None, **kw: Any):
        """`n` images of seed set `seed` with `config` applied (None: FP) → `Generation`.
        `hooks`: an extra context manager entered around generation (calibration recorders)."""
        kw = {**self.generate_kw, **kw}
        t0 = time.perf_counter()
        with self.applied(config, act_ranges=act_ranges), (hooks or nullcontext()), \
                counting_forwards(self.denoiser.model, self.meter):
            gen = self.denoiser.generate(n, seed, **kw)
        self.meter.images += len(gen)
        self.meter.seconds += time.perf_counter() - t0
        return gen

    # --- FP images ----------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Everything besides the config, n and seed that can change a score: the model's weight
        fingerprint, its generation settings and overrides, the scorer's reference statistics and
        identity, and the evaluator's code. Resumable outputs put `job_key(**identity())` in
        their keys, so a changed reference or model re-scores (issue 28)."""
        if self._fp_key_parts is None:
            ref = getattr(self.scorer, "info", None) or {}
            self._fp_key_parts = {
                "weights": model_fingerprint(self.denoiser.model),
                "settings": generation_settings(self.denoiser),
                "generate": self.generate_kw,
                "scorer": [type(self.scorer).__name__, _array_digest(getattr(self.scorer, "ref_mu", None)),
                           json.dumps(ref, sort_keys=True, default=str)],
                "code": code_digest([__name__]),
            }
        return self._fp_key_parts

    def fp_key(self, n: int, seed: int) -> str:
        """Content address of the FP images of seed set `seed` at n images (module doc)."""
        return job_key(n=int(n), seed=int(seed), **self.identity())

    def fp_images(self, n: int, seed: int) -> FPImages:
        """The FP model's images, features and content score of seed set `seed` (cached)."""
        key = self.fp_key(n, seed)
        if key in self._fp_memo:
            return self._fp_memo[key]
        fp = self._read_fp(key)
        if fp is None:
            gen = self.generate(None, n, seed)
            if gen.n_nonfinite:
                raise QsensError(f"the FP model gives {gen.n_nonfinite} of {n} images with NaN/inf "
                                 f"pixels (seed set {seed}): paired scores need finite FP images")
            feats = self.scorer.features(gen.images)
            fp = FPImages(gen.images, np.asarray(feats, np.float32),
                          float(self.scorer.content_score(gen)), key, gen.labels)
            self._write_fp(fp, n, seed)
        self._fp_memo[key] = fp
        return fp

    def _read_fp(self, key: str) -> FPImages | None:
        if self.fp_cache is None:
            return None
        path, meta = self.fp_cache / f"{key}.safetensors", self.fp_cache / f"{key}.json"
        if not (path.is_file() and meta.is_file()):
            return None
        from safetensors.numpy import load_file

        try:
            t, info = load_file(str(path)), json.loads(meta.read_text())
        except Exception:  # a damaged entry is regenerated, never trusted
            return None
        if info.get("key") != key or "images" not in t or "features" not in t:
            return None
        return FPImages(t["images"], t["features"], float(info["content"]), key, t.get("labels"))

    def _write_fp(self, fp: FPImages, n: int, seed: int) -> None:
        if self.fp_cache is None:
            return
        from safetensors.numpy import save_file

        from core.jsonio import atomic_write, write_json

        self.fp_cache.mkdir(parents=True, exist_ok=True)
        tensors = {"images": np.ascontiguousarray(fp.images), "features": np.ascontiguousarray(fp.features)}
        if fp.labels is not None:
            tensors["labels"] = np.ascontiguousarray(fp.labels, dtype=np.int64)
        tmp = self.fp_cache / f".{fp.key}.tmp"
        save_file(tensors, str(tmp))
        atomic_write(self.fp_cache / f"{fp.key}.safetensors", tmp.read_bytes())
        tmp.unlink()
        # the JSON last: an entry without it is not read (a kill in between regenerates)
        write_json(self.fp_cache / f"{fp.key}.json", {"key": fp.key, "n": int(n), "seed": int(seed),
                                                     "content": fp.content, **(self._fp_key_parts or {})},
                   sort_keys=True, default=str)

    # --- scoring --------------------------------------------------------------------------------
    def score(self, config: Any, n: int, seed: int, *, paired: bool = False, act_ranges: Any = None,
              keep_images: bool = False, fid_images: int | None = None) -> dict[str, Any]:
        """Apply → generate → score. A dict: fid, content, status ("ok"/"failed"), reason,
        n_images, seconds, images_generated; with `paired`, every metric of `sampling.paired`
        against the FP images of the same seeds. Failures (NaN images, singular statistics) are
        rows with status "failed", never exceptions; `images` kept only with `keep_images`.

        fid_images > n (a multi-fidelity label): FID and content on `fid_images` images (`n_images`
        says so), the paired scores on the first n of the same generation (`paired_images`), against
        the first n FP images of a generation of the same size (so both sides batch alike)."""
        t0 = time.perf_counter()
        n_gen = max(int(n), int(fid_images or 0))
        fp = self.fp_images(n_gen, seed) if paired else None
        gen = self.generate(config, n_gen, seed, act_ranges=act_ranges)
        row = self.score_generation(gen, fp, paired_images=n)
        row["seconds"] = time.perf_counter() - t0
        row["images_generated"] = len(gen)
        if keep_images:
            row["images"] = gen.images
        return row

    def _content(self, gen: Any, k: int, images: np.ndarray) -> float:
        return float(self.scorer.content_score(prefix_generation(gen, k, images)))

    def fp_prefix(self, fp: FPImages, gen: Any, k: int) -> FPImages:
        """The first k of `fp`'s images as an `FPImages` of their own (content scored on them,
        with `gen`'s conditioning of the same seeds)."""
        return FPImages(fp.images[:k], fp.features[:k], self._content(gen, k, fp.images), fp.key,
                        None if fp.labels is None else fp.labels[:k])

    def image_mse(self, config: Any, fp_images: np.ndarray, seed: int) -> float:
        """Mean squared pixel error (float, no uint8 wrap-around) between `config`'s images and
        `fp_images` of the same seeds — MixDQ's final pick; inf when an image is not finite."""
        gen = self.generate(config, len(fp_images), seed)
        if gen.n_nonfinite:
            return math.inf
        from sampling.paired import image_mse

        return image_mse(gen.images, fp_images)

    def with_steps(self, steps: int | None) -> "Evaluator":
        """A second evaluator over the same loaded model, bank and scorer (shared cost meter and
        FP cache) whose generations use `steps` (None: the denoiser's own)."""
        kw = {k: v for k, v in self.generate_kw.items() if k != "steps"}
        if steps is not None:
            kw["steps"] = steps
        return Evaluator(self.denoiser, self.bank, self.scorer, self.fp_cache, kw, self.lpips,
                         self.meter, self._checked)

    def score_generation(self, gen: Any, fp: FPImages | None = None,
                         paired_images: int | None = None) -> dict[str, Any]:
        """Score an existing `Generation` (see `score`); paired scores on its first
        `paired_images` images (default: all) against as many of `fp`'s."""
        sc = self.scorer.score(gen)
        row: dict[str, Any] = {"fid": float(sc.fid) if sc.ok else math.nan,
                               "content": float(sc.content) if sc.ok else math.nan,
                               "status": sc.status, "reason": sc.reason or "",
                               "n_images": int(sc.n_images)}
        if fp is not None and sc.ok:
            k = len(gen) if paired_images is None else int(paired_images)
            try:
                feats = sc.features if sc.features is not None else self.scorer.features(gen.images)
                content = row["content"] if k == len(gen) else self._content(gen, k, gen.images)
                fpk = fp if k == len(fp.images) else self.fp_prefix(fp, gen, k)
                row.update(paired_scores(gen.images[:k], feats[:k], content, fpk.images, fpk.features,
                                         fpk.content, lpips=self.lpips))
                row["paired_images"] = k
            except (ValueError, np.linalg.LinAlgError) as exc:
                row.update(status="failed", reason=f"paired scores failed: {exc}")
        return row


def prefix_generation(gen: Any, k: int, images: np.ndarray | None = None):
    """The first k images of `gen`'s seeds/conditioning with `images` (same seeds) in their place."""
    from dataclasses import replace

    images = gen.images if images is None else images
    return replace(gen, images=images[:k], seeds=gen.seeds[:k],
                   labels=None if gen.labels is None else gen.labels[:k],
                   prompts=None if gen.prompts is None else gen.prompts[:k],
                   nonfinite=gen.nonfinite[:k])


def evaluate(denoiser: Any, scorer: Any, n: int, seed: int, **generate_kw: Any):
    """Generate `n` images of seed set `seed` with the model as it is now (no config applied by
    this call) and score them → (`sampling.scoring.Score`, `Generation`). Counted in `METER`.
    generate_kw: steps, guidance, batch_size, progress (None values are dropped)."""
    gen = Evaluator(denoiser, None, scorer).generate(
        None, n, seed, **{k: v for k, v in generate_kw.items() if v is not None})
    score = scorer.score(gen)
    score.extra.update({"seed": int(seed), **gen.params})
    return score, gen


def _array_digest(a: Any) -> str | None:
    if a is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
