"""Append-only shards: one JSON line per scored config, one file per worker.

Each record is written with a single `write` of one line, then flushed and fsynced, so a killed
worker leaves at most its in-flight line truncated. Reading reports a corrupt line by file and
line number; such a config is simply not "done", so the next run scores it again. So is a record
whose values cannot be right (an `ok` FID that is negative, NaN or infinite; see `check_record`).

Every record carries the `job_key` of the run that wrote it (model, bank, reference, scoring
settings and scoring code; `sampling.worker.job_key_for`). A config is finished only for the same
job: `claim_shard_dir` moves the shard files of any other job to `DIR/stale/<key>/` (kept, never
deleted) before a run starts, under an exclusive lock, so one directory holds one job.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from core.errors import QsensError

SHARD_GLOB = "*.jsonl"
STALE_DIR = "stale"
LOCK_FILE = ".lock"


def shard_path(directory: Path, worker: int) -> Path:
    """The shard file of worker `worker`: `DIR/worker-NNN.jsonl`."""
    return Path(directory) / f"worker-{worker:03d}.jsonl"


class ShardWriter:
    """Appends records to one shard file; safe to reopen after a crash."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A crash mid-line leaves no trailing newline: start on a fresh line so the next record
        # is not glued to the broken one (the broken one stays, and is reported by the reader).
        needs_newline = self.path.exists() and self.path.stat().st_size > 0 and _last_byte(self.path) != b"\n"
        self._fh = open(self.path, "a", encoding="utf-8")
        if needs_newline:
            self._fh.write("\n")
            self._sync()

    def append(self, record: dict) -> None:
        """Append one record as a JSON line, flushed and fsynced; an OSError names the shard file."""
        line = json.dumps(record, sort_keys=True, allow_nan=True, separators=(",", ":"))
        try:
            self._fh.write(line + "\n")
            self._sync()
        except OSError as exc:  # a full disk names the shard, not "a file" (qsens.cli names ENOSPC...)
            if exc.filename is None:
                exc.filename = str(self.path)
            raise

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the shard file."""
        self._fh.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


@dataclass
class ShardScan:
    """What `scan_shards` read: valid records and `file:line: what` problems for the lines it
    skipped."""

    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file:line: what"


REQUIRED_KEYS = ("config_id", "status")


def check_record(record: dict) -> str | None:
    """Why a shard record cannot be trusted, or None. An `ok` record needs a finite FID >= 0, a
    finite content score (or NaN/null: no content metric), avg_bits in (0, 32] and at least 2
    images; any record a known status."""
    status = record.get("status")
    if status not in ("ok", "failed"):
        return f"status {status!r} (expected ok or failed)"
    if status != "ok":
        return None

    def finite(name: str) -> float | None:
        v = record.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return float(v)

    fid, content, bits, n = finite("fid"), finite("content"), finite("avg_bits"), record.get("n_images")
    if fid is None or fid < 0:
        return f"ok record with FID {record.get('fid')!r} (expected a finite value >= 0)"
    raw = record.get("content")  # NaN / null: the reference has no content metric (content_metric: none)
    if content is None and not (raw is None or (isinstance(raw, float) and math.isnan(raw))):
        return f"ok record with content score {raw!r} (expected a finite value, or NaN when there is none)"
    if bits is None or not 0 < bits <= 32:
        return f"ok record with avg_bits {record.get('avg_bits')!r} (expected 0 < bits <= 32)"
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        return f"ok record with n_images {n!r} (expected an integer >= 2)"
    return None


def iter_shard(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, record or None, problem or None) for every non-empty line of a shard."""
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                truncated = not line.endswith("\n")
                what = "truncated record" if truncated else "corrupt record"
                yield lineno, None, f"{path}:{lineno}: {what} skipped; its config will be scored again"
                continue
            if not isinstance(record, dict) or any(k not in record for k in REQUIRED_KEYS):
                yield lineno, None, f"{path}:{lineno}: record without {'/'.join(REQUIRED_KEYS)} skipped"
                continue
            bad = check_record(record)
            if bad:
                yield lineno, None, f"{path}:{lineno}: {bad}: skipped; its config will be scored again"
                continue
            yield lineno, record, None


def scan_shards(directory: Path, job_key: str | None = None) -> ShardScan:
    """Every valid record in DIR/*.jsonl (not DIR/stale/); with `job_key`, only that job's."""
    scan = ShardScan()
    for path in sorted(Path(directory).glob(SHARD_GLOB)):
        for _, record, problem in iter_shard(path):
            if problem:
                scan.problems.append(problem)
            elif job_key is None or record.get("job_key") == job_key:
                scan.records.append(record)
    return scan


NO_LOCK_ENV = "QSENS_NO_LOCK"  # set by `qsens sample --no-lock`


class ShardLock:
    """An exclusive, non-blocking lock on a shard directory (`DIR/.lock`, flock): two runs on one
    directory would score every config twice. Released when the process exits, however it ends.

    Raises QsensError naming the holder's pid when another process holds it (EWOULDBLOCK/EAGAIN:
    the only errors that mean "busy"). Any other flock error (ENOLCK on NFS without lockd,
    EOPNOTSUPP/ENOSYS on file systems without locks, ...) is reported as what the OS said, with
    the ways on: another --shards directory, or `--no-lock` (`no_lock`, or QSENS_NO_LOCK=1)."""

    BUSY = (errno.EWOULDBLOCK, errno.EAGAIN)

    def __init__(self, directory: Path, no_lock: bool | None = None):
        self.directory = Path(directory)
        self.no_lock = bool(os.environ.get(NO_LOCK_ENV)) if no_lock is None else no_lock
        self._fh = None

    def __enter__(self) -> "ShardLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.no_lock:  # the user's explicit choice (file systems without locks): nothing to hold
            return self
        fh = open(self.directory / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            if exc.errno in self.BUSY:
                raise QsensError(f"{self.directory}: another `qsens sample` (pid {holder}) is writing these "
                                 "shards; wait for it or use another --shards directory") from None
            code = errno.errorcode.get(exc.errno, str(exc.errno))
            raise QsensError(f"{self.directory / LOCK_FILE}: cannot lock it: {exc.strerror or exc} ({code}); "
                             "this file system does not support file locks (e.g. NFS without lockd). Use a "
                             "--shards directory on a local disk, or pass --no-lock if no other `qsens "
                             "sample` can write this directory (two at once would score and append every "
                             "config twice)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def claim_shard_dir(directory: Path, job_key: str) -> list[Path]:
    """Move every shard file holding a record of another job to DIR/stale/<its key>/; returns the
    new paths. Call under `ShardLock`. Records without a key (older qsens) count as another job."""
    moved: list[Path] = []
    directory = Path(directory)
    for path in sorted(directory.glob(SHARD_GLOB)):
        keys = {(r or {}).get("job_key") for _, r, _ in iter_shard(path) if r is not None}
        if not keys or keys == {job_key}:
            continue
        other = sorted(str(k) for k in keys - {job_key})[0] if keys - {job_key} else "mixed"
        dest_dir = directory / STALE_DIR / (other if other != "None" else "unkeyed")
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / path.name
        if dest.exists():
            dest = dest_dir / f"{path.stem}-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}{path.suffix}"
        path.replace(dest)
        moved.append(dest)
    return moved


def finished_ids(records: list[dict], max_attempts: int) -> set[str]:
    """Config ids that need no more work: scored ok, or failed `max_attempts` times."""
    ok = {r["config_id"] for r in records if r["status"] == "ok"}
    failures: dict[str, int] = {}
    for r in records:
        if r["status"] != "ok":
            failures[r["config_id"]] = failures.get(r["config_id"], 0) + 1
    return ok | {cid for cid, n in failures.items() if n >= max_attempts}
