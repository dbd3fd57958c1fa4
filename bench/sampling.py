"""Sampling throughput on the default model: configs/minute with 1 and 2 CPU workers.

Needs the trained default (`dvc repro prepare bank` or `make repro`). Each run scores the same
`--configs` random configs into a fresh shard directory; the ratio is 2 workers over 1 worker,
measured in the same run.

    python bench/sampling.py [--model digits] [--configs 12] [--images 200]

Writes both rates, the command and the machine conditions to bench/results/sampling.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Repo root first: run as `python bench/sampling.py`, this file would otherwise shadow `sampling`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampling.launch import launch  # noqa: E402
from sampling.worker import SampleJob  # noqa: E402

from machine import write_result  # noqa: E402  (bench/machine.py)


def configs_per_minute(args: argparse.Namespace, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        job = SampleJob(model=args.model, bank=str(Path(args.data_dir) / "bank" / args.model), shards=tmp,
                        num_configs=args.configs, seed=12345, image_seed=args.image_seed, n_images=args.images,
                        data_dir=args.data_dir, threads=max(1, (os.cpu_count() or 2) // workers))
        t0 = time.perf_counter()
        result = launch(job, workers=workers, backend="local", progress=False)
        seconds = time.perf_counter() - t0
    assert result["finished"] == args.configs, result
    return args.configs / seconds * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--configs", type=int, default=12)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--image-seed", type=int, default=0)
    args = ap.parse_args()
    one = configs_per_minute(args, 1)
    two = configs_per_minute(args, 2)
    print(f"1 worker: {one:.1f} configs/min   2 workers: {two:.1f} configs/min   ({args.images} images/config)")
    print(f"sampling configs_per_min_1={one:.1f} configs_per_min_2={two:.1f} speedup_2_over_1={two / one:.2f}")
    write_result("sampling", {"model": args.model, "configs": args.configs, "images": args.images,
                              "configs_per_min_1_worker": one, "configs_per_min_2_workers": two,
                              "speedup_2_over_1": two / one,
                              "threads_per_worker": {"1": max(1, (os.cpu_count() or 2) // 1),
                                                     "2": max(1, (os.cpu_count() or 2) // 2)}})


if __name__ == "__main__":
    main()
