"""Score random configs: plan them, split them across workers, and write every outcome to a shard.

The plan (which configs, in which order) depends only on (model layers, options, seed,
num_configs), so every worker computes the same plan and takes every `num_workers`-th config:
disjoint ids without any coordination. A worker skips ids already finished in any shard *for
the same job* (`job_key_for`: what can change a score), so a re-run resumes, a changed run
re-scores, and a killed worker loses at most its in-flight config.
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import torch

from core.layout import Layout
from core.errors import QsensError
from core.params import defaults_from
from quant.bank import Bank
from quant.config import QuantConfig
from core.provenance import code_digest, content_digest, job_key
from sampling.sampler import random_configs
from sampling.shards import ShardWriter, finished_ids, scan_shards, shard_path


def code_version() -> str:
    """The installed qsens version, recorded in every shard record ("qsens (not installed)" when
    run from a source tree without an install)."""
    try:
        return f"qsens {version('qsens')}"
    except PackageNotFoundError:
        return "qsens (not installed)"


@dataclass(frozen=True)
@defaults_from("sample")
class SampleParams:
    """The `sample:` section of params.yaml: how many random configs, on how many workers. Their
    labels are `score.images` images on `score.seed` (sampling.noise.ScoreParams): one knob per
    meaning, shared with the other stages that label the quant_cache."""

    num_configs: int
    workers: int
    backend: str  # local | ray
    seed: int  # random config stream
    max_attempts: int
    paired: bool  # also score against the FP images of the same seeds (sampling/paired.py)
    hifi_configs: int  # multi-fidelity: the first K configs also get FID at hifi_images
    hifi_images: int

    def __post_init__(self) -> None:
        for name in ("num_configs", "workers", "max_attempts", "hifi_images"):
            if getattr(self, name) < 1:
                raise QsensError(f"sample.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "hifi_configs"):
            if getattr(self, name) < 0:
                raise QsensError(f"sample.{name} must be >= 0, got {getattr(self, name)}")
        if self.backend not in ("local", "ray"):
            raise QsensError(f"sample.backend: {self.backend!r} (choose local or ray)")


@dataclass
class SampleJob:
    """Everything a worker needs; plain data, so it travels to processes and Ray tasks."""
    model: dict | str  # ModelSpec.to_dict() (or a bare source: digits, a pipeline dir, a hub id)
    bank: str  # bank directory
    shards: str  # shard directory
    num_configs: int
    seed: int = 0  # random config stream
    image_seed: int = 0  # seed set of the generated images
    n_images: int = 200
    data_dir: str = "data"
    max_attempts: int = 2
    threads: int = 1  # torch threads per worker
    device: str = "cpu"
    generate: dict[str, Any] = field(default_factory=dict)  # steps, guidance, batch_size...
    paired: bool = True  # also score each config against the FP images of the same seeds
    hifi_configs: int = 0  # multi-fidelity: the stream's first K configs also get FID at hifi_images
    hifi_images: int = 500
    job_key: str = ""  # set by the launcher (`job_key_for`); records carry it

    def to_dict(self) -> dict:
        """The job as plain JSON-able values (what a worker process or Ray task receives)."""
        return asdict(self)


# Settings of a model spec that change its images (name/device/batch size do not); the source
# enters by what it is (`denoisers.spec.source_identity`), not by its path.
_SPEC_SCORE_FIELDS = ("steps", "guidance", "negative_prompt", "resolution", "dtype", "scheduler", "layers",
                      "max_layers")
_DIGEST_SKIP = {".lock"}


def reference_dir_for(job: SampleJob) -> Path:
    """The reference dir a worker scores against: model.reference, else DATA/reference/NAME."""
    model = job.model if isinstance(job.model, dict) else {"source": job.model, "name": None}
    if model.get("reference"):
        return Path(model["reference"])
    from denoisers.spec import default_name

    return Layout(Path(job.data_dir), model.get("name") or default_name(model["source"])).reference


def job_key_for(job: SampleJob) -> str:
    """What can change a score: the model (what its source is, not where: a moved directory keeps
    its key) and its image settings, the bank (its metadata holds the model's weight fingerprint
    and every option's error), the reference statistics, image count, image seed, generation
    overrides, and the scoring code (import closure of this module)."""
    from denoisers.spec import source_identity

    model = job.model if isinstance(job.model, dict) else {"source": job.model}
    return job_key(
        model={**{k: model.get(k) for k in _SPEC_SCORE_FIELDS}, "identity": source_identity(model["source"])},
        bank=content_digest([Path(job.bank) / "bank.json"]),
        reference=content_digest([reference_dir_for(job)], skip=_DIGEST_SKIP),
        n_images=job.n_images, image_seed=job.image_seed, generate=job.generate, paired=job.paired,
        hifi=[job.hifi_configs, job.hifi_images] if job.hifi_configs else None,
        code=code_digest([__name__, "sampling.evaluator"]),
    )


def plan_configs(job: SampleJob, bank: Bank) -> list[tuple[int, QuantConfig]]:
    """The job's (stream index, config) list: `job.num_configs` configs of the seeded random
    stream over the bank's layers and options (the same list for every worker)."""
    return list(random_configs(bank.model, bank.layer_names, bank.options, job.seed, job.num_configs))


def load_evaluator(job: SampleJob):
    """The worker's `sampling.evaluator.Evaluator`: the job's denoiser, bank and scorer."""
    from denoisers.spec import ModelSpec, default_name
    from sampling.evaluator import Evaluator

    spec = (ModelSpec.from_dict(job.model, "SampleJob.model") if isinstance(job.model, dict)
            else ModelSpec(source=job.model, name=default_name(job.model)))
    ev = Evaluator.load(spec, job.data_dir, job.bank, device=job.device, generate=job.generate)
    ev.bank.check_model(ev.denoiser.model)  # once; the loop below skips the weight hash
    ev._checked = True
    return ev


def score_record(evaluator: Any, job: SampleJob, index: int, config: QuantConfig, worker: str,
                 attempt: int) -> dict:
    """One shard record for `config`: its options, bit accounting (avg bits, bytes, weight
    error), the evaluator's score (FID, content, paired scores; a failure recorded with its
    reason, never dropped), the job key, worker, attempt, cost and code version."""
    stats = evaluator.bank.summarize(config)
    record = {
        "config_id": config.config_id, "model": config.model, "index": index,
        "options": config.canonical_options(), "act_bits": config.act_bits,
        "avg_bits": stats.avg_bits, "quantized_bytes": stats.quantized_bytes,
        "quantized_error": stats.quantized_error, "bops": float(stats.bops),
        "image_seed": job.image_seed, "sample_seed": job.seed, "attempts": attempt,
        "worker": worker, "code_version": code_version(), "job_key": job.job_key,
    }
    t0 = time.perf_counter()
    spent = evaluator.meter.as_dict()
    try:
        hifi = index < job.hifi_configs and job.hifi_images > job.n_images
        row = evaluator.score(config, job.n_images, job.image_seed, paired=job.paired,
                              fid_images=job.hifi_images if hifi else None)
        if row["status"] != "ok":
            raise FloatingPointError(row["reason"])
        row.pop("seconds"), row.pop("reason"), row.pop("status"), row.pop("images_generated")
        record.update(row, status="ok", reason="")
    except Exception as exc:  # recorded, retried a bounded number of times, never dropped
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {Path(last.filename).name}:{last.lineno}" if last else ""
        record.update(fid=None, content=None, n_images=job.n_images, status="failed",
                      reason=f"{type(exc).__name__}: {exc}{where}"[:500])
    record["seconds"] = round(time.perf_counter() - t0, 4)
    cost = evaluator.meter.since(spent)
    record.update(images_generated=cost["images"], forwards=cost["forwards"],
                  forward_samples=cost["forward_samples"])
    return record


def run_worker(job: SampleJob, worker: int = 0, num_workers: int = 1,
               on_record: Callable[[dict], None] | None = None) -> dict:
    """Score this worker's share of the plan; returns counts. Safe to kill and re-run."""
    torch.set_num_threads(max(1, job.threads))
    if not job.job_key:
        job = SampleJob(**{**job.to_dict(), "job_key": job_key_for(job)})
    if job.device.startswith("cuda") and torch.cuda.is_available() and job.device == "cuda":
        job = SampleJob(**{**job.to_dict(), "device": f"cuda:{worker % torch.cuda.device_count()}"})
    evaluator = load_evaluator(job)
    plan = plan_configs(job, evaluator.bank)[worker::num_workers]
    shards = Path(job.shards)
    records = scan_shards(shards, job.job_key).records if shards.is_dir() else []
    done = finished_ids(records, job.max_attempts)
    failures: dict[str, int] = {}
    for r in records:
        if r["status"] != "ok":
            failures[r["config_id"]] = failures.get(r["config_id"], 0) + 1
    name = f"{socket.gethostname()}:{os.getpid()}/w{worker}"
    counts = {"scored": 0, "failed": 0, "skipped": 0}
    with ShardWriter(shard_path(shards, worker)) as writer:
        for index, config in plan:
            if config.config_id in done:
                counts["skipped"] += 1
                continue
            for attempt in range(failures.get(config.config_id, 0) + 1, job.max_attempts + 1):
                record = score_record(evaluator, job, index, config, name, attempt)
                writer.append(record)
                if on_record:
                    on_record(record)
                if record["status"] == "ok":
                    counts["scored"] += 1
                    break
            else:
                counts["failed"] += 1
    return counts
