"""`qsens sample`: score random configs into append-only shards (resumable)."""
from __future__ import annotations

import argparse
from pathlib import Path

from quant.errors import QsensError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample", help="score random configs into shards (resumes where it stopped)",
        description="Draw random configs (per config p ~ U(0,1): each layer takes the lowest bit-width "
        "with probability p, method uniform), apply each from the bank, generate images and score them. "
        "Every outcome is appended to DIR/worker-NNN.jsonl; re-running with the same arguments resumes.")
    p.add_argument("--model", default="digits", help="digits | digits-dit | a diffusers directory (default: %(default)s)")
    p.add_argument("--bank", type=Path, default=None, help="bank directory (default: data/bank/MODEL)")
    p.add_argument("--num-configs", type=int, required=True, help="how many distinct random configs to score")
    p.add_argument("--workers", type=int, default=1, help="parallel workers (default: %(default)s)")
    p.add_argument("--backend", default="local", choices=["local", "ray"], help="local processes or Ray tasks")
    p.add_argument("--address", default=None, help="Ray cluster address (ray backend; default: a local instance)")
    p.add_argument("--shards", type=Path, required=True, help="shard directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the random config stream")
    p.add_argument("--image-seed", type=int, default=0, help="seed set of the generated images")
    p.add_argument("--images", type=int, default=200, help="images per config (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: cores / workers)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: one worker per visible GPU)")
    p.add_argument("--max-attempts", type=int, default=2, help="tries per config before it is recorded failed")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from denoisers.registry import check_model_spec
    from sampling.launch import launch
    from sampling.worker import SampleJob

    if args.num_configs < 1:
        raise QsensError(f"--num-configs must be at least 1, got {args.num_configs}")
    check_model_spec(args.model)
    bank = args.bank or args.data_dir / "bank" / Path(args.model).name
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    generate = {} if args.steps is None else {"steps": args.steps}
    job = SampleJob(model=args.model, bank=str(bank), shards=str(args.shards), num_configs=args.num_configs,
                    seed=args.seed, image_seed=args.image_seed, n_images=args.images, data_dir=str(args.data_dir),
                    max_attempts=args.max_attempts, threads=threads, device=args.device, generate=generate)
    result = launch(job, workers=args.workers, backend=args.backend, address=args.address, progress=not args.quiet)
    print(f"{result['finished']}/{result['planned']} configs finished in {args.shards}")
    for line in result["failed_workers"]:
        print(f"warning: {line}; run the same command again to resume")
    return 0 if not result["failed_workers"] else 1

