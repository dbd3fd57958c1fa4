"""Append-only shards: one JSON line per scored config, one file per worker.

Each record is written with a single `write` of one line, then flushed and fsynced, so a killed
worker leaves at most its in-flight line truncated. Reading reports a corrupt line by file and
line number; such a config is simply not "done", so the next run scores it again.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SHARD_GLOB = "*.jsonl"


def shard_path(directory: Path, worker: int) -> Path:
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
        line = json.dumps(record, sort_keys=True, allow_nan=True, separators=(",", ":"))
        self._fh.write(line + "\n")
        self._sync()

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
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
    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file:line: what"


REQUIRED_KEYS = ("config_id", "status")


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
            yield lineno, record, None


def scan_shards(directory: Path) -> ShardScan:
    scan = ShardScan()
    for path in sorted(Path(directory).glob(SHARD_GLOB)):
        for _, record, problem in iter_shard(path):
            if problem:
                scan.problems.append(problem)
            else:
                scan.records.append(record)
    return scan


def finished_ids(records: list[dict], max_attempts: int) -> set[str]:
    """Config ids that need no more work: scored ok, or failed `max_attempts` times."""
    ok = {r["config_id"] for r in records if r["status"] == "ok"}
    failures: dict[str, int] = {}
    for r in records:
        if r["status"] != "ok":
            failures[r["config_id"]] = failures.get(r["config_id"], 0) + 1
    return ok | {cid for cid, n in failures.items() if n >= max_attempts}
