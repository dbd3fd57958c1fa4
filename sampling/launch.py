"""Run the workers: `local` (processes on this machine) or `ray` (tasks on a Ray cluster).

Both call the same `run_worker(job, worker, num_workers)`; each worker owns every
num_workers-th config of the plan and its own shard file. Progress comes from counting the
configs finished in the shard directory, so it covers every backend alike.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from quant.bank import Bank
from core.errors import QsensError
from core.progress import progress_bar
from sampling.sampler import random_configs
from sampling.shards import ShardLock, claim_shard_dir, finished_ids, scan_shards
from sampling.worker import SampleJob, job_key_for, run_worker

BACKENDS = ("local", "ray")


def _planned_ids(job: SampleJob) -> set[str]:
    bank = Bank.load(job.bank)
    return {c.config_id for _, c in random_configs(bank.model, bank.layer_names, bank.options, job.seed,
                                                   job.num_configs)}


def _finished(job: SampleJob, planned: set[str]) -> int:
    shards = Path(job.shards)
    if not shards.is_dir():
        return 0
    return len(finished_ids(scan_shards(shards, job.job_key).records, job.max_attempts) & planned)


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this worker when its parent dies (even by SIGKILL),
    so no orphaned worker keeps scoring and writing. Elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _process_main(job_dict: dict, worker: int, num_workers: int) -> None:
    # The parent owns Ctrl-C (it stops every worker and says so once); a worker prints nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    try:
        run_worker(SampleJob(**job_dict), worker, num_workers)
    except KeyboardInterrupt:
        sys.exit(130)


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def launch(job: SampleJob, workers: int = 1, backend: str = "local", address: str | None = None,
           progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Score the planned configs with `workers` workers; returns {"finished", "ok", "planned",
    "failed_workers"} (finished: ok or out of attempts; ok: scored)."""
    if backend not in BACKENDS:
        raise QsensError(f"unknown backend {backend!r} (choose {' or '.join(BACKENDS)})")
    if workers < 1:
        raise QsensError(f"--workers must be at least 1, got {workers}")
    job = replace(job, job_key=job_key_for(job))
    planned = _planned_ids(job)
    with ShardLock(Path(job.shards)):
        moved = claim_shard_dir(Path(job.shards), job.job_key)
        if moved and log is not None:
            unkeyed = sum(1 for p in moved if p.parent.name == "unkeyed")
            why = ("written by an older qsens without job keys" if unkeyed == len(moved) else
                   "of another scoring job: model, bank, reference, images, seed or scoring code changed")
            log(f"note: {len(moved)} shard file(s) {why}; moved to {Path(job.shards) / 'stale'}/, "
                "their configs are scored again")
        start = _finished(job, planned)
        bar = progress_bar(total=len(planned), initial=start, desc="configs", unit="cfg",
                           disable=not progress, smoothing=0.1)
        main_thread = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            if backend == "local":
                failed = _launch_local(job, workers, bar, planned)
            else:
                failed = _launch_ray(job, workers, address, bar, planned)
        except _Terminated:
            raise QsensError(f"terminated; every worker was stopped. Run the same command to resume "
                             f"({Path(job.shards)})") from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, old)
        finished = _finished(job, planned)
        bar.n = finished
        bar.refresh()
        bar.close()
    records = scan_shards(Path(job.shards), job.job_key).records
    ok = len({r["config_id"] for r in records if r["status"] == "ok"} & planned)
    return {"finished": finished, "ok": ok, "planned": len(planned), "failed_workers": failed,
            "moved": moved, "job_key": job.job_key}


def _launch_local(job: SampleJob, workers: int, bar: Any, planned: set[str]) -> list[str]:
    if workers == 1:  # in-process: simplest to debug, and progress per record
        run_worker(job, 0, 1, on_record=lambda r: bar.update(1) if r["status"] == "ok" else None)
        return []
    ctx = mp.get_context("spawn")  # fork + torch threads is unsafe
    procs = [ctx.Process(target=_process_main, args=(job.to_dict(), w, workers), daemon=False)
             for w in range(workers)]
    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            bar.n = _finished(job, planned)
            bar.refresh()
    finally:  # Ctrl-C, SIGTERM or an error here: no worker outlives the launcher
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join(timeout=10)
    return [f"worker {w} exited with code {p.exitcode}" for w, p in enumerate(procs) if p.exitcode != 0]


def _launch_ray(job: SampleJob, workers: int, address: str | None, bar: Any, planned: set[str]) -> list[str]:
    try:
        import ray
    except ImportError:
        raise QsensError("the ray backend needs Ray: pip install 'qsens[ray]'") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # a private local instance (laptop, CI)
            ray.init(num_cpus=max(workers, job.threads * workers), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
    use_gpu = job.device.startswith("cuda")
    task = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=job.threads, max_retries=0)(_process_main)
    pending = {task.remote(job.to_dict(), w, workers): w for w in range(workers)}
    failed = []
    while pending:
        ready, _ = ray.wait(list(pending), timeout=1.0)
        for ref in ready:
            w = pending.pop(ref)
            try:
                ray.get(ref)
            except Exception as exc:
                failed.append(f"worker {w}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        bar.n = _finished(job, planned)
        bar.refresh()
    return failed


def default_workers(device: str) -> int:
    """One worker per visible GPU, else one CPU worker."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1
