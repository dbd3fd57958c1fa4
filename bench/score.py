"""Seconds to score one config of the `digits` default: apply → generate → score → restore.

Median over `--configs` random configs (Qua2SeDiMo sampler) at the default params (params.yaml
`digits:` / `score:`), against a reference measured in the same run: the naive recipe of the
feasibility study (DDIM 20 steps, classifier-free guidance 2 → doubled batch, same images).
Uses the trained model under data/ when present, else an untrained model of the same
architecture (same cost) with an untrained classifier. Budget: ≤ 3 s per config on 2 cores.

Last line: `score seconds_per_config=<x> reference=<y> speedup=<y/x> within_budget=<bool>`.
Writes the timings, the command and the machine conditions to bench/results/score.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# The repo root first: bench/ holds scripts whose names shadow packages (e.g. bench/sampling.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from denoisers.base import configure_torch  # noqa: E402
from denoisers.digits import DigitsClassifier, DigitsDenoiser, build_model, load_params  # noqa: E402
from quant.apply import quantized  # noqa: E402
from quant.bank import build_bank  # noqa: E402
from quant.config import QuantConfig  # noqa: E402
from sampling.noise import ScoreParams  # noqa: E402
from sampling.sampler import random_config  # noqa: E402
from sampling.evaluator import evaluate  # noqa: E402
from sampling.scoring import DigitsScorer, compute_digits_reference  # noqa: E402
from sampling.scorers import make_scorer  # noqa: E402

from machine import write_result  # noqa: E402  (bench/machine.py)

BUDGET_S = 3.0
REF_STEPS, REF_GUIDANCE = 20, 2.0  # the feasibility study's recipe (DDIM, classifier-free guidance)


def load(data_dir: Path, params_path: str):
    params = load_params(params_path)
    if (data_dir / "models" / "digits" / "qsens_digits.json").exists():
        from denoisers.registry import load_denoiser

        den = load_denoiser("digits", data_dir=data_dir)
        return den, make_scorer(den), "trained"
    torch.manual_seed(0)
    den = DigitsDenoiser(build_model("unet", params), "unet", params)
    clf = DigitsClassifier().eval()
    mu, sigma, _ = compute_digits_reference(clf)
    return den, DigitsScorer(clf, mu, sigma), "untrained (no data/models/digits)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=7, help="random configs to time")
    ap.add_argument("--reference-configs", type=int, default=2, help="configs for the reference")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, as the sampling workers use)")
    args = ap.parse_args()

    threads = configure_torch(args.threads)
    den, scorer, which = load(Path(args.data_dir), args.params)
    sp = ScoreParams.from_yaml(args.params)
    bank = build_bank(den.model, model_name="digits", progress=False)
    bank.check_model(den.model)
    layers = list(bank.layer_names)
    print(f"model: {which}, {den.num_parameters():,} params, {len(layers)} layers, "
          f"{sp.images} images, {den.params.steps} steps {den.params.scheduler}, "
          f"guidance {den.params.guidance}, batch {den.params.gen_batch_size}, threads {threads}")

    def one(i: int, **gen_kw) -> tuple[float, float]:
        cfg = QuantConfig("digits", random_config(layers, bank.options, 99, i))
        t0 = time.perf_counter()
        with quantized(den.model, cfg, bank, verify=False):
            score, _ = evaluate(den, scorer, sp.images, sp.seed, **gen_kw)
        return time.perf_counter() - t0, score.fid

    one(0)  # warm-up (allocator, oneDNN primitives)
    ours = [one(i) for i in range(args.configs)]
    from diffusers import DDIMScheduler

    fast_cfg = den.scheduler_config
    den.scheduler_config = dict(DDIMScheduler(num_train_timesteps=den.params.num_train_timesteps,
                                              beta_schedule=den.params.beta_schedule,
                                              clip_sample=False).config)
    ref = [one(i, steps=REF_STEPS, guidance=REF_GUIDANCE) for i in range(args.reference_configs)]
    den.scheduler_config = fast_cfg

    t_ours = statistics.median(t for t, _ in ours)
    t_ref = statistics.median(t for t, _ in ref)
    print("ours (s):      " + " ".join(f"{t:.2f}" for t, _ in ours))
    print("reference (s): " + " ".join(f"{t:.2f}" for t, _ in ref))
    print(f"FIDs (ours): {np.round([f for _, f in ours], 1).tolist()}")
    print(f"score seconds_per_config={t_ours:.3f} reference={t_ref:.3f} "
          f"speedup={t_ref / t_ours:.2f} within_budget={t_ours <= BUDGET_S}")
    write_result("score", {"model": which, "images": sp.images, "steps": den.params.steps,
                           "scheduler": den.params.scheduler, "threads": threads,
                           "seconds_per_config_median": t_ours, "seconds_per_config": [t for t, _ in ours],
                           "fids": [f for _, f in ours],
                           "reference_recipe": "DDIM 20 steps, classifier-free guidance 2 (doubled batch)",
                           "reference_steps": REF_STEPS, "reference_guidance": REF_GUIDANCE,
                           "reference_seconds_median": t_ref, "reference_seconds": [t for t, _ in ref],
                           "speedup": t_ref / t_ours, "budget_s": BUDGET_S, "within_budget": t_ours <= BUDGET_S})


if __name__ == "__main__":
    main()
