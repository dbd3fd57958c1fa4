"""The model spec: which denoiser every command and stage works on, and how it generates.

One `ModelSpec` comes from params.yaml's `model:` section, overridden by command-line flags
(`--model`, `--reference`, `--device`, `--dtype`, `--steps`, `--guidance`, `--batch-size`), and
is the only way a command gets a denoiser (`denoisers.registry.load_denoiser(spec)`). Its `source` is one of

- `digits` / `digits-dit` — the built-in default, trained by `qsens prepare` under
  `DATA/models/<name>/`;
- a directory: a digits model dir (`qsens_digits.json`) or a diffusers pipeline dir
  (`model_index.json`), absolute or relative;
- a hub id (`owner/name`), loaded by diffusers from the local hub cache (nothing is downloaded
  when the machine is offline: a missing snapshot is one error line).

`classify_source` is the one lookup of a source string; `denoisers.architectures` (graphs of
weight-less architectures) and `denoisers.registry` (loading weights) both use it.

`name` is the short name every data path uses (`data/bank/<name>`, `data/quant_cache/<name>.parquet`,
...). It defaults to the source's own short name (a directory's name, a hub id's last part),
never to a path string. Data products are tied to a model by its weight fingerprint (the bank
records it), not by the path, so a moved directory keeps them valid.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from core.errors import QsensError
from core.params import read_section, reject_unknown, defaults_from
from core.provenance import file_sha256
from denoisers.adapters import marker_kind

BUILTIN = ("digits", "digits-dit")
DIGITS_META = "qsens_digits.json"
PIPELINE_INDEX = "model_index.json"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HUB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# ----------------------------------------------------------------------------------------------
# what a source string is
# ----------------------------------------------------------------------------------------------
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256


def source_identity(source: str | Path) -> str:
    """What a model source *is*, independent of where it lies: the name of a built-in model or
    a hub id as given; for a directory (a diffusers pipeline, a digits model dir) a SHA-256 over
    its files' relative paths and contents (every component: weights, configs, tokenizer,
    scheduler). Job keys use it instead of the path, so moving or copying a model directory
    re-scores nothing, while any changed file (a swapped VAE too) does. File digests are kept per
    process by (path, size, mtime), so a worker hashes each file once (SD v1.5: ~4 GB, seconds)."""
    import hashlib

    path = Path(str(source)).expanduser()
    if not path.is_dir():
        return str(source)
    h = hashlib.sha256()
    for f in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        st = f.stat()
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FILE_DIGESTS:
            _FILE_DIGESTS[key] = file_sha256(f, chunk=1 << 22)
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + _FILE_DIGESTS[key].encode() + b"\n")
    return "sha256:" + h.hexdigest()[:32]


def classify_source(source: str | Path, *, architectures: tuple[str, ...] = ()) -> str:
    """What `source` names: "builtin" | "digits-dir" | "pipeline-dir" | "model-dir" |
    "config-json" | "architecture" | "hub-id", or the kind of a registered adapter
    (`denoisers.adapters`) whose marker file the directory holds.

    `architectures` are extra names that count (the shipped weight-less architectures, for
    graphs). Raises QsensError naming every accepted form when `source` is none of them.
    """
    text = str(source)
    if text in BUILTIN:
        return "builtin"
    if text in architectures:
        return "architecture"
    path = Path(text).expanduser()
    if path.is_dir():
        registered = marker_kind(path)  # a registered adapter's marker file (denoisers.adapters)
        if registered:
            return registered
        if (path / DIGITS_META).is_file():
            return "digits-dir"
        if (path / PIPELINE_INDEX).is_file():
            return "pipeline-dir"
        if (path / "config.json").is_file() or any(
                (path / sub / "config.json").is_file() for sub in ("unet", "transformer")):
            return "model-dir"
        raise QsensError(f"{text} is a directory but no model: no {PIPELINE_INDEX} (diffusers "
                         f"pipeline), config.json (diffusers model) or {DIGITS_META} (digits), nor the "
                         "marker file of a registered model adapter (docs/models.md, 'Adding a model family')")
    if path.is_file() and path.suffix == ".json":
        return "config-json"
    if _HUB_RE.match(text) and not text.startswith((".", "/", "~")):
        return "hub-id"
    known = ", ".join(BUILTIN + tuple(architectures))
    raise QsensError(f"unknown model {text!r}: not a directory or file here, not a hub id "
                     f"(owner/name), and not one of {known}")


def default_name(source: str | Path) -> str:
    """Short name of a source: the built-in name, a directory's or file's name, a hub id's last
    part. Characters outside [A-Za-z0-9._-] become '-'."""
    text = str(source).rstrip("/")
    if text in BUILTIN:
        return text
    path = Path(text).expanduser()
    base = path.stem if path.suffix == ".json" else (path.resolve().name if path.exists() else text.split("/")[-1])
    name = re.sub(r"[^A-Za-z0-9._-]", "-", base).strip("-.") or "model"
    return name[:64]


# ----------------------------------------------------------------------------------------------
# the spec
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
@defaults_from("model", not_knobs=("name",))
class ModelSpec:
    """params.yaml `model:` (see there for each field's meaning and default)."""

    source: str
    name: str = "digits"
    reference: str | None  # real models: a dir written by `qsens reference build`
    steps: int | None  # real models (digits: digits.steps); None = the pipeline's own __call__ default
    guidance: float | None  # real models; None = the pipeline's own __call__ default
    negative_prompt: str
    resolution: int | None  # real models: output side in px; None = the pipeline's
    dtype: str
    device: str
    batch_size: int  # real models (digits: digits.gen_batch_size)
    scheduler: str | None  # a diffusers scheduler class name; None = the pipeline's
    layers: str | None  # regex: only matching layers are quantized (quant.layers.restrict_layers)
    max_layers: int  # at most this many of them, evenly spaced in module order; 0 = all

    def __post_init__(self) -> None:
        if int(self.max_layers) < 0:
            raise QsensError(f"model.max_layers must be >= 0 (0 = every layer), got {self.max_layers}")
        if self.layers is not None:
            try:
                re.compile(str(self.layers))
            except re.error as exc:
                raise QsensError(f"model.layers {self.layers!r} is not a regular expression ({exc})") from None
        if not _NAME_RE.match(str(self.name)):
            raise QsensError(f"model.name {self.name!r} is not a short name ([A-Za-z0-9._-], at "
                             "most 64 characters): it names every data path")
        if self.dtype not in DTYPES:
            raise QsensError(f"model.dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.steps is not None and int(self.steps) < 1:
            raise QsensError(f"model.steps must be >= 1 (or null: the pipeline's default), got {self.steps}")
        if int(self.batch_size) < 1:
            raise QsensError(f"model.batch_size must be >= 1, got {self.batch_size}")
        if self.guidance is not None and not float(self.guidance) >= 0:
            raise QsensError(f"model.guidance must be >= 0, got {self.guidance}")
        if self.resolution is not None and not (8 <= int(self.resolution) <= 8192):
            raise QsensError(f"model.resolution must be in 8..8192 px, got {self.resolution}")
        if not re.match(r"^(cpu|cuda(:\d+)?|mps)$", str(self.device)):
            raise QsensError(f"model.device {self.device!r}: expected cpu, cuda, cuda:N or mps")
        if self.name in BUILTIN and self.source not in BUILTIN and not self.is_digits_dir:
            raise QsensError(f"model.name {self.name!r} is the built-in model's; give "
                             f"{self.source} its own model.name (e.g. {default_name(self.source)})")

    @property
    def is_digits_dir(self) -> bool:
        """The source is a digits model directory (qsens_digits.json), e.g. a derived checkpoint."""
        return Path(str(self.source)).is_dir() and (Path(str(self.source)) / DIGITS_META).is_file()

    @property
    def is_builtin(self) -> bool:
        """The source names a built-in model (digits, digits-dit) that `qsens prepare` trains."""
        return self.source in BUILTIN

    def to_dict(self) -> dict[str, Any]:
        """The spec as the `model:` section's plain values."""
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any], where: str = "model") -> "ModelSpec":
        """A spec from a `model:` mapping; QsensError naming `where` for an unknown key or a bad value."""
        reject_unknown(ModelSpec, data, "model", where)
        return ModelSpec(**data)

    def torch_dtype(self):
        """`model.dtype` as a torch dtype (fp32 → torch.float32, fp16, bf16)."""
        import torch

        return getattr(torch, DTYPES[self.dtype])

    def check_device(self) -> None:
        """One line when the device cannot be used here (e.g. cuda without a GPU)."""
        import torch

        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise QsensError(f"model.device {self.device}: no CUDA device is visible here "
                                 "(torch.cuda.is_available() is False); use --device cpu")
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if index >= torch.cuda.device_count():
                raise QsensError(f"model.device {self.device}: only {torch.cuda.device_count()} "
                                 "CUDA devices are visible")


def read_model_section(params: str | Path) -> dict[str, Any]:
    """params.yaml's `model:` as a dict; a bare string (`model: digits`, the old form) is the
    source. A params path that does not exist is an error (no silent built-in defaults)."""
    path = Path(params)
    if not path.is_file():
        raise QsensError(f"params file {path} not found (pass --params PATH)")
    import yaml

    try:
        raw = (yaml.safe_load(path.read_text()) or {}).get("model")
    except yaml.YAMLError as exc:
        raise QsensError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is None:
        return {}
    if isinstance(raw, str):
        return {"source": raw, "name": default_name(raw)}
    if not isinstance(raw, dict):
        raise QsensError(f"{path}: `model` must be a mapping (source, name, ...)")
    return read_section(path, "model")


def read_models_section(params: str | Path) -> dict[str, dict[str, Any]]:
    """params.yaml's `models:`: the models the pipeline runs side by side, name → that model's
    settings (any `model:` field but `name`; unset fields take `model:`'s). {} when absent.

    Each name is a short data-path name ([A-Za-z0-9._-]); an entry may be empty (`digits: {}`).
    Raises QsensError (one line, naming `models.<name>.<field>` and the file) for a bad name, a
    non-mapping entry, an unknown field or an ill-typed value."""
    path = Path(params)
    raw = read_section(path, "models") if path.is_file() else {}
    out: dict[str, dict[str, Any]] = {}
    for key, entry in raw.items():
        key = str(key)
        if not _NAME_RE.match(key):
            raise QsensError(f"{path}: models.{key}: not a short name ([A-Za-z0-9._-], at most 64 "
                             "characters): it names every data path of that model")
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise QsensError(f"{path}: models.{key} must be a mapping of model settings (source, "
                             f"reference, steps, ...), got {entry!r}")
        entry = dict(entry)
        if "name" in entry:
            raise QsensError(f"{path}: models.{key}.name: a model's name is its key under `models:`")
        unknown = sorted(set(entry) - {f.name for f in fields(ModelSpec)})
        if unknown:
            known = sorted(f.name for f in fields(ModelSpec) if f.name != "name")
            raise QsensError(f"unknown models.{key} params {unknown} in {path}; known: {known}")
        reject_unknown(ModelSpec, entry, f"models.{key}", path)
        out[key] = entry
    return out


def model_names(params: str | Path = "params.yaml") -> list[str]:
    """The names of the models the pipeline runs: `models:`'s keys in file order, or `model.name`
    alone when the file has no `models:` section."""
    models = read_models_section(params)
    if models:
        return list(models)
    return [resolve_spec(params).name]


def resolve_spec(params: str | Path = "params.yaml", *, model: str | None = None,
                 name: str | None = None, **overrides: Any) -> ModelSpec:
    """The model spec: params.yaml's model, then the command line.

    With a `models:` section (several models in one project), the params model is one of its
    entries over the `model:` defaults: the one `model` (the `--model` flag) or `name` names, else
    the first; an entry named after a built-in model (`digits-dit: {}`) defaults to that source.
    Without one, it is `model:` itself (name `model.name`).
    `model` may instead be a source (a directory, hub id or built-in not among the entries): it
    replaces the source, gets its own default name unless `name` is given, and no reference
    (params' reference is the params model's).
    Other keyword arguments (`reference`, `device`, `dtype`, `steps`, `guidance`, `batch_size`,
    `resolution`, `scheduler`, `negative_prompt`) override the params value when not None.
    """
    data = read_model_section(params)
    models = read_models_section(params)
    if models:
        if "name" in data:
            raise QsensError(f"{params}: model.name: with a `models:` section each model's name is "
                             "its key there; remove model.name")
        key = next((k for k in (model, name) if k in models), next(iter(models)))
        if model in models:
            model = None
        if name == key:
            name = None
        entry = models[key]
        source = entry.get("source") or (key if key in BUILTIN else data.get("source", "digits"))
        data = {**data, **entry, "source": source, "name": key}
    reject_unknown(ModelSpec, data, "model", params)
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise QsensError(f"unknown model settings {unknown}; known: {sorted(known)}")
    try:
        spec = ModelSpec(**data)
    except TypeError as exc:
        raise QsensError(f"{params}: bad `model` params ({exc})") from None
    if model is not None and model not in (spec.source, spec.name):
        try:
            classify_source(model)
        except QsensError as exc:
            if not models:
                raise
            raise QsensError(f"{exc}; nor an entry of {params} `models:` ({', '.join(models)})") from None
        # params' reference belongs to params' model: a new source uses --reference, or the one
        # `qsens prepare` installed under its own name
        spec = replace(spec, source=str(model), name=name or default_name(model), reference=None)
    elif name is not None:
        spec = replace(spec, name=name)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(spec, **changes) if changes else spec
