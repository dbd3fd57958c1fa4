"""`qsens sample`: score random configs into append-only shards (resumable)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qsens.argtypes import images_count, non_negative_int, positive_int
from qsens.context import add_cost_arg, add_model_args, context, write_cost
from core.errors import QsensError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample", help="score random configs into shards (resumes where it stopped)",
        description="Draw random configs (per config p ~ U(0,1): each layer takes the lowest bit-width "
        "with probability p, method uniform), apply each from the bank, generate images and score them. "
        "Every outcome is appended to DIR/worker-NNN.jsonl; re-running with the same arguments resumes.")
    add_model_args(p)
    p.add_argument("--bank", type=Path, default=None, help="bank directory (default: DATA/bank/NAME)")
    p.add_argument("--num-configs", type=positive_int, default=None,
                   help="how many distinct random configs to score (default: sample.num_configs in params)")
    p.add_argument("--workers", type=positive_int, default=None, help="parallel workers (default: sample.workers)")
    p.add_argument("--backend", default=None, choices=["local", "ray"],
                   help="local processes or Ray tasks (default: sample.backend)")
    p.add_argument("--address", default=None, help="Ray cluster address (ray backend; default: a local instance)")
    p.add_argument("--shards", type=Path, default=None, help="shard directory (default: DATA/shards/NAME)")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="seed of the random config stream (default: sample.seed)")
    p.add_argument("--image-seed", type=non_negative_int, default=None,
                   help="seed set of the generated images (default: score.seed)")
    p.add_argument("--images", type=images_count, default=None, help="images per config (default: score.images)")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads per worker (0: cores / workers)")
    p.add_argument("--max-attempts", type=positive_int, default=None,
                   help="tries per config before it is recorded failed (default: sample.max_attempts)")
    p.add_argument("--paired", default=None, action=argparse.BooleanOptionalAction,
                   help="also score each config against the FP images of the same seeds (fd_fp, "
                   "feat_dist, image_mse, dssim, content_drop; default: sample.paired)")
    p.add_argument("--hifi-configs", type=non_negative_int, default=None,
                   help="multi-fidelity: the stream's first K configs also get FID and content at --hifi-images "
                   "(their paired scores stay at --images; default: sample.hifi_configs)")
    p.add_argument("--hifi-images", type=images_count, default=None,
                   help="images behind the expensive label (default: sample.hifi_images)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-lock", action="store_true",
                   help="do not lock the shard directory (for file systems without locks, e.g. NFS without "
                   "lockd); only when no other `qsens sample` can write it: two at once score every config twice")
    add_cost_arg(p)
    p.set_defaults(func=run)


def fill_from_params(args: argparse.Namespace, params_path) -> None:
    """Every flag left unset takes its params value — `sample.<key>`, or `score.images` /
    `score.seed` for --images / --image-seed (the cache's labels: one knob, shared with the other
    stages that label it) — checked like every params section (one `error:` line for a bad one)."""
    from core.params import load_section
    from sampling.noise import ScoreParams
    from sampling.worker import SampleParams

    from core.params import read_section

    moved = sorted({"images", "image_seed"} & set(read_section(params_path, "sample")))
    if moved:
        raise QsensError(f"{params_path}: sample.{' / sample.'.join(moved)}: the quant_cache's labels are "
                         "score.images / score.seed (one knob for every stage that labels it); move the value there")
    sp = load_section(SampleParams, params_path, "sample")
    score = ScoreParams.from_yaml(params_path)
    for key in ("num_configs", "workers", "backend", "seed", "max_attempts", "paired", "hifi_configs", "hifi_images"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(sp, key))
    if args.images is None:
        args.images = score.images
    if args.image_seed is None:
        args.image_seed = score.seed


def job_cost(shards: Path, key: str, job) -> dict:
    """What the job's shard records cost (deterministic: the same records, the same sums). A
    record carries what its scoring generated, the FP images of the paired scores included the
    first time a worker needed them (later ones read the FP image cache)."""
    from sampling.shards import scan_shards

    spent = {"images": 0, "forwards": 0, "forward_samples": 0, "seconds": 0.0}
    records = scan_shards(Path(shards), key).records if Path(shards).is_dir() else []
    for r in records:
        for k in ("images", "forwards", "forward_samples"):
            spent[k] += int(r.get("images_generated" if k == "images" else k) or 0)
        spent["seconds"] += float(r.get("seconds") or 0.0)
    spent["seconds"] = round(spent["seconds"], 3)
    return {"spent": spent, "label_images": spent["images"], "records": len(records)}


def run(args: argparse.Namespace) -> int:
    import os

    from denoisers.registry import check_model_spec
    from sampling.launch import launch
    from sampling.worker import SampleJob

    ctx = context(args)
    if getattr(args, "no_lock", False):
        from sampling.shards import NO_LOCK_ENV

        os.environ[NO_LOCK_ENV] = "1"  # read by ShardLock (sampling.launch), explicit user choice
    fill_from_params(args, ctx.params)
    ctx.spec.check_device()
    check_model_spec(ctx.spec.source)
    bank = args.bank or ctx.layout.bank
    shards = args.shards or ctx.layout.shards
    if args.hifi_configs and args.hifi_images <= args.images:
        raise QsensError(f"--hifi-images {args.hifi_images} must exceed --images {args.images} for the "
                         f"{args.hifi_configs} multi-fidelity configs (sample.hifi_images vs sample.images)")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    job = SampleJob(model=ctx.spec.to_dict(), bank=str(bank), shards=str(shards),
                    num_configs=args.num_configs, seed=args.seed, image_seed=args.image_seed,
                    n_images=args.images, data_dir=str(ctx.layout.root),
                    max_attempts=args.max_attempts, threads=threads, device=ctx.spec.device,
                    generate=ctx.generation, paired=args.paired, hifi_configs=args.hifi_configs,
                    hifi_images=args.hifi_images)
    result = launch(job, workers=args.workers, backend=args.backend, address=args.address, progress=not args.quiet,
                    log=print)
    print(f"{result['finished']}/{result['planned']} configs finished in {shards} (job {result['job_key']})")
    write_cost(args.cost, "sample", **job_cost(shards, result["job_key"], job))
    for line in result["failed_workers"]:
        print(f"warning: {line}; run the same command again to resume")
    if result["planned"] and result.get("ok", result["finished"]) == 0:
        print(f"error: every config failed; see the reasons with `qsens cache merge --shards {shards}`",
              file=sys.stderr)
        return 1
    return 0 if not result["failed_workers"] else 1

