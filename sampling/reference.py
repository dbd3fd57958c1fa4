"""Reference dirs for real models: FID statistics of real images, their prompts, their identity.

Built once by `qsens reference build` (`sampling.reference_build`) from a folder of real images (e.g. COCO val2017) and read
by `sampling.inception.InceptionClipScorer` and the model spec. A reference dir holds

- `stats.safetensors`: `mu` (2048,), `sigma` (2048, 2048), float64: mean and unbiased covariance
  of clean-fid "clean" Inception features of the images (as `sampling.scoring.feature_stats`);
- `reference.json`: `format` (1), `kind` ("inception"), `resolution`, `n_images`,
  `feature_network` {name, file (as given), file_abs, sha256, dim}, `mode` ("clean"),
  `clip_model`, `images` (source dir), `captions` (file or null), `prompts_file`
  ("prompts.txt" or null), `images_file` ("images.txt"), `preprocess` (words), and
  `clip_score_real` (CLIP score of the images against their own captions, when a CLIP model and
  captions are given; null otherwise);
- `prompts.txt`: one prompt per line, image i ↔ line i (only with captions);
- `images.txt`: the source file names, image i ↔ line i.

Images: every `.jpg`/`.jpeg`/`.png` directly in the folder, sorted by file name, the first
`num_images`. Each is converted to RGB as clean-fid does (`PIL.Image.convert("RGB")`: grey, CMYK,
palette and RGBA alike; alpha is dropped), its shorter side resized to `resolution` (PIL
bicubic), centre-cropped to resolution × resolution and rounded to uint8 — what the model
outputs — then passed to `sampling.inception.inception_features` (clean-fid's "clean" resize to
299 + the Inception network), the same function the scorer applies to generated images.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from denoisers.base import REFERENCE_JSON, read_reference_info
from core.errors import QsensError
from sampling.scoring import STATS_FILE

PROMPTS_FILE = "prompts.txt"
IMAGES_FILE = "images.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_OWN_FILES = {REFERENCE_JSON, PROMPTS_FILE, IMAGES_FILE, STATS_FILE, "cond.safetensors"}
PREPROCESS = ("PIL convert('RGB'); shorter side to {r} px (PIL bicubic); centre crop {r}x{r}; "
              "uint8; clean-fid 'clean' resize to 299x299 (PIL bicubic, float); Inception pool3")


@dataclass
class Reference:
    """A loaded reference dir. `prompts[i]` / `images[i]` belong to image i (None if absent)."""

    path: Path
    mu: np.ndarray  # float64 (d,)
    sigma: np.ndarray  # float64 (d, d)
    info: dict[str, Any]
    prompts: list[str] | None = None
    images: list[str] | None = None

    @property
    def resolution(self) -> int:
        """Image side in pixels the reference was built at."""
        return int(self.info["resolution"])


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def list_images(images_dir: str | Path) -> list[Path]:
    """JPEG/PNG files directly in `images_dir`, sorted by name. Raises QsensError if none/missing."""
    d = Path(images_dir)
    if not d.is_dir():
        raise QsensError(f"image folder {d} not found")
    files = sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.name)
    if not files:
        raise QsensError(f"image folder {d} holds no .jpg/.jpeg/.png files")
    return files


def load_image(path: str | Path, resolution: int) -> np.ndarray:
    """Any JPEG/PNG → uint8 (resolution, resolution, 3): RGB, shorter side resized (bicubic),
    centre-cropped. Raises QsensError naming the file if PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise QsensError(f"cannot read image {path}: {exc}") from exc
    w, h = im.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return np.asarray(im.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())  # prompts.txt holds one prompt per line


def read_captions(captions: str | Path, names: Sequence[str], n_total: int | None = None) -> list[str]:
    """One caption per image name, in the order of `names`.

    - `.json`: COCO captions (`images[]` with `id`/`file_name`, `annotations[]` with
      `image_id`/`caption`); an image's caption is its first annotation in file order.
    - anything else: text, one caption per line, line i ↔ `names[i]` (the sorted images).

    Whitespace runs (newlines included) become one space. Raises QsensError naming the file and
    the first image without a (non-empty) caption.
    """
    path = Path(captions)
    if not path.is_file():
        raise QsensError(f"captions file {path} not found")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ids = {str(img["file_name"]): img["id"] for img in data["images"]}
            first: dict[Any, str] = {}
            for ann in data["annotations"]:
                first.setdefault(ann["image_id"], ann["caption"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise QsensError(f"captions file {path} is not COCO captions JSON (images[].id/"
                             f"file_name, annotations[].image_id/caption): {exc!r}") from exc
        out = []
        for name in names:
            cap = _one_line(first.get(ids[name], "")) if name in ids else ""
            if not cap:
                where = "has no caption" if name in ids else "is not listed in its images[]"
                raise QsensError(f"captions {path} do not match the images: image {name} {where}")
            out.append(cap)
        return out
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, name in enumerate(names):
        if i >= len(lines):
            raise QsensError(f"captions {path} has {len(lines)} lines, fewer than the {len(names)} "
                             f"images: no caption for image {name} (line {i + 1})")
        cap = _one_line(lines[i])
        if not cap:
            raise QsensError(f"captions {path}: line {i + 1} (image {name}) is empty")
        out.append(cap)
    return out


# ----------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------
def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(p.name not in _OWN_FILES for p in out.iterdir())):
        raise QsensError(f"{out} exists and is not a reference dir: choose another --out")


def _write_atomic(out: Path, files: dict[str, bytes | tuple[np.ndarray, np.ndarray]]) -> None:
    """Write `files` into a temp dir beside `out`, then swap it in for `out` so that a crash at
    any point leaves the old or the new reference (core.atomicdir); leftovers are removed."""
    from safetensors.numpy import save_file

    from core.atomicdir import write_dir

    def fill(tmp: Path) -> None:
        for name, content in files.items():
            if isinstance(content, tuple):
                mu, sigma = content
                save_file({"mu": np.ascontiguousarray(mu, dtype=np.float64),
                           "sigma": np.ascontiguousarray(sigma, dtype=np.float64)}, str(tmp / name))
            else:
                (tmp / name).write_bytes(content)

    write_dir(out, fill)


# ----------------------------------------------------------------------------------------------
# load / check
# ----------------------------------------------------------------------------------------------
def load_reference(directory: str | Path) -> Reference:
    """Read a reference dir. Raises QsensError (one line) if it is missing, not a reference dir,
    of another format, or its files disagree (stats shapes, prompt count)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from core.atomicdir import recover

    d = Path(directory)
    recover(d)  # a rebuild killed between its two renames (file systems without renameat2)
    validate_reference_json(d)
    info, prompts, images = read_reference_info(d)
    if not (d / STATS_FILE).is_file():
        raise QsensError(f"reference {d}: {STATS_FILE} is missing")
    try:
        t = load_file(str(d / STATS_FILE))
        mu, sigma = t["mu"], t["sigma"]
    except (SafetensorError, KeyError, OSError) as exc:
        raise QsensError(f"reference {d / STATS_FILE} is corrupt or lacks mu/sigma: {exc}") from exc
    dim = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (dim, dim):
        raise QsensError(f"reference {d / STATS_FILE}: mu {mu.shape} and sigma {sigma.shape} "
                         "are not (d,) and (d, d)")
    check_stats(mu, sigma, info, where=f"reference {d / STATS_FILE}")
    return Reference(d, mu, sigma, info, prompts, images)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_reference_json(d: Path) -> None:
    """QsensError (one line) for a reference.json whose fields have the wrong type or whose
    files lie outside the reference dir; read_reference_info checks format, kind and presence."""
    meta = d / REFERENCE_JSON
    if not meta.is_file():
        return  # read_reference_info says what is missing
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return  # read_reference_info names the JSON error
    if not isinstance(info, dict):
        return
    where = f"reference {meta}"
    for key, low in (("n_images", 2), ("resolution", 1)):
        if key in info and not (_is_int(info[key]) and info[key] >= low):
            raise QsensError(f"{where}: {key} {info[key]!r} is not an integer >= {low}")
    net = info.get("feature_network")
    if "feature_network" in info:
        if not isinstance(net, dict):
            raise QsensError(f"{where}: feature_network {net!r} is not an object "
                             "{name, file, sha256, dim}")
        for key in ("name", "file", "file_abs", "sha256"):
            if net.get(key) is not None and not isinstance(net[key], str):
                raise QsensError(f"{where}: feature_network.{key} {net[key]!r} is not text")
        if "dim" in net and not (_is_int(net["dim"]) and net["dim"] >= 1):
            raise QsensError(f"{where}: feature_network.dim {net['dim']!r} is not a positive integer")
    for key in ("prompts_file", "images_file", "cond_file"):
        name = info.get(key)
        if name is None:
            continue
        if not isinstance(name, str) or not name:
            raise QsensError(f"{where}: {key} {name!r} is not a file name")
        target = (d / name).resolve()
        if Path(name).is_absolute() or not target.is_relative_to(d.resolve()):
            raise QsensError(f"{where}: {key} {name!r} lies outside the reference dir; a reference "
                             "reads only its own files")


def check_stats(mu: np.ndarray, sigma: np.ndarray, info: dict[str, Any], where: str) -> None:
    """QsensError (one line) for FID statistics that cannot be right: another dimension than the
    feature network's, NaN/inf, or a covariance that is not symmetric."""
    dim = (info.get("feature_network") or {}).get("dim")
    if _is_int(dim) and mu.shape[0] != dim:
        raise QsensError(f"{where}: statistics of {mu.shape[0]}-d features, the feature network "
                         f"gives {dim}-d: the file belongs to another reference")
    for name, a in (("mu", mu), ("sigma", sigma)):
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise QsensError(f"{where}: {name} holds {bad} non-finite (NaN/inf) values; rebuild the reference")
    asym = float(np.abs(sigma - sigma.T).max()) if sigma.size else 0.0
    scale = float(np.abs(sigma).max()) if sigma.size else 0.0
    if asym > 1e-9 * max(scale, 1e-300):
        raise QsensError(f"{where}: sigma is not symmetric (max |sigma - sigma.T| = {asym:.3g}); "
                         "not a covariance: rebuild the reference")


def recorded_inception_path(ref: Reference) -> str:
    """The Inception file recorded in the reference: as given at build time if it exists from
    here, else its absolute path at build time (the scorer checks its sha256 either way)."""
    net = ref.info["feature_network"]
    for p in (net.get("file"), net.get("file_abs")):
        if p and os.path.isfile(p):
            return p
    return net.get("file") or net.get("file_abs") or "inception-2015-12-05.pt"


def check_reference(info: dict[str, Any], *, resolution: int | tuple[int, int] | None = None,
                    feature_sha256: str | None = None, feature_file: str | None = None) -> None:
    """Refuse (QsensError, one line) a reference built at another resolution or with another
    feature network than the scorer's. `resolution`: the model's output size, int or (h, w)."""
    if resolution is not None:
        h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        ref = int(info["resolution"])
        if (int(h), int(w)) != (ref, ref):
            size = f"{h} px" if h == w else f"{h}x{w} px"
            raise QsensError(f"the reference was built at {ref} px, the model generates {size}: "
                             f"build a reference with `qsens reference build --resolution {h}`")
    if feature_sha256 is not None:
        net = info.get("feature_network") or {}
        rec = str(net.get("sha256", ""))
        if rec != feature_sha256:
            raise QsensError(f"the reference was built with feature network sha256 {rec[:16]} "
                             f"({net.get('file')}), the scorer uses {feature_sha256[:16]} "
                             f"({feature_file}): FIDs from different networks do not compare")
