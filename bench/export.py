"""Real low-bit weights: size on disk and in memory against the accounting, the price of
dequantizing on the fly, and torchao's version of the same config — all in one run.

For the default model (`digits`, its bank and a found config):
  1. FP, fake-quant (`quant.quantized`: dequantized floats written into the model) and packed
     (`quant.pack` -> `save_quantized` -> `load_quantized` with no bank and no FP weights)
     generate the same N images from the same seeds, timed (best of --runs, wall and CPU);
  2. the packed checkpoint's weights file and the loaded model's packed tensors are compared
     with the accounted bytes (payload n·b + 16-bit overhead, DESIGN.md);
  3. the packed images must equal the fake-quant ones exactly;
  4. the torchao export (`search.export`) is loaded with `torchao.quantize_` and generates the
     same seeds: pixel differences and FID against our fake-quant images, torchao's weight error
     against ours per layer, and the bytes torchao holds.
Writes bench/results/export.json (figures + machine conditions).

Last line: `export weights_ratio=<on-disk weights / accounted> packed_vs_fp_time=<packed s / FP s>`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from denoisers.registry import load_denoiser  # noqa: E402
from machine import cpu_model, loadavg  # noqa: E402  (bench/machine.py)
from denoisers.spec import ModelSpec  # noqa: E402
from quant.apply import apply_config  # noqa: E402
from quant.bank import Bank  # noqa: E402
from quant.config import QuantConfig  # noqa: E402
from quant.pack import WEIGHTS_FILE, load_quantized, pack, read_manifest, save_quantized, weight_bytes  # noqa: E402


def timed(fn, runs: int, device: str):
    """(result of the last run, best wall s, best CPU s of this process)."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(runs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return out, best, best_cpu


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a (possibly torchao subclass) tensor holds: the sum over its inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--config", default="data/search/digits/configs/predictor-3.5.json")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-torchao", action="store_true")
    ap.add_argument("--out", default="bench/results/export.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):  # same kernels for the same inputs: exact comparisons hold
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    load_start = loadavg()
    data = Path(args.data_dir)
    den = load_denoiser(ModelSpec(source=args.model, name=args.model), data_dir=data)
    den.to(args.device)
    bank = Bank.load(data / "bank" / args.model)
    bank.check_model(den.model)
    config = QuantConfig.load(args.config)
    stats = bank.summarize(config)
    fp_model = den.model
    n, seed = args.images, args.seed
    print(f"{args.model}: {len(bank.layer_names)} layers, config {args.config} ({stats.avg_bits:.3f} avg bits), "
          f"{n} images, {args.threads} threads, {args.device}")

    # 1. the models: FP, fake-quant (a copy with the dequantized weights written in), packed
    #    (exported, then loaded with no bank and no FP weights), torchao
    t0 = time.perf_counter()
    fake_model = copy.deepcopy(fp_model)
    apply_config(fake_model, config, bank, verify=False)
    t_apply = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="qsens-export-bench-"))
    t0 = time.perf_counter()
    save_quantized(pack(copy.deepcopy(fp_model), config, bank, verify=False), work / "q", config,
                   fingerprint=bank.fingerprint, accounted=stats.to_dict())
    t_export = time.perf_counter() - t0
    manifest = read_manifest(work / "q")
    t0 = time.perf_counter()
    packed_model = load_quantized(work / "q", device=args.device)
    t_load = time.perf_counter() - t0
    models = {"fp": fp_model, "fake_quant": fake_model, "packed": packed_model}
    tao = None if args.no_torchao else torchao_model(fp_model, config, bank, work)
    if tao is not None:
        models["torchao"] = tao["model"]
    # 2. generation, interleaved (fp, fake, packed, torchao, fp, ...) so load changes hit all alike
    wall = {k: float("inf") for k in models}
    cpu = dict(wall)
    gens = {}
    for _ in range(args.runs):
        for key, model in models.items():
            den.model = model
            gens[key], w, c = timed(lambda: den.generate(n, seed), 1, args.device)
            wall[key], cpu[key] = min(wall[key], w), min(cpu[key], c)
    den.model = fp_model
    # one denoiser forward at batch 1: the worst case for dequantizing on the fly (no batch to
    # amortise it over)
    fwd = {k: float("inf") for k in ("fp", "packed")}
    fargs, fkwargs = den.example_inputs(batch_size=1)
    with torch.no_grad():
        for _ in range(10 * args.runs):
            for key in fwd:
                fwd[key] = min(fwd[key], timed(lambda: models[key](*fargs, **fkwargs), 1, args.device)[1])
    fake_gen, packed_gen = gens["fake_quant"], gens["packed"]
    t_fp, t_fake, t_packed = wall["fp"], wall["fake_quant"], wall["packed"]
    c_fp, c_fake, c_packed = cpu["fp"], cpu["fake_quant"], cpu["packed"]
    accounted = manifest["packed_accounted_bytes"]
    disk = manifest["files"][WEIGHTS_FILE]["bytes"]
    mem = weight_bytes(packed_model)
    fp_mem = weight_bytes(fp_model)
    exact = bool(np.array_equal(packed_gen.images, fake_gen.images))
    sizes = {"accounted_bytes": accounted, "quantized_bytes_all_layers": stats.quantized_bytes,
             "fp_weight_bytes_model_dtype": fp_mem["fp_layers"], "fp16_bytes": stats.fp_bytes,
             "disk_weights_bytes": disk, "disk_rest_bytes": manifest["files"]["rest.safetensors"]["bytes"],
             "resident_packed_bytes": mem["packed"], "resident_rest_bytes": mem["rest"],
             "disk_ratio": disk / accounted, "resident_ratio": mem["packed"] / accounted}
    print(f"weights: accounted {accounted:,.0f} B | on disk {disk:,} B ({disk / accounted:.4f}x) | resident "
          f"{mem['packed']:,} B ({mem['packed'] / accounted:.4f}x) | FP {fp_mem['fp_layers']:,} B in "
          f"{str(next(fp_model.parameters()).dtype).removeprefix('torch.')} ({stats.fp_bytes:,} B at fp16)")
    print(f"other tensors: {sizes['disk_rest_bytes']:,} B on disk, {mem['rest']:,} B resident")
    print(f"generation of {n} images, best of {args.runs} interleaved runs: FP {t_fp:.3f} s, fake-quant "
          f"{t_fake:.3f} s (+ {t_apply:.3f} s to apply), packed {t_packed:.3f} s -> packed/FP "
          f"{t_packed / t_fp:.3f}x, fake/FP {t_fake / t_fp:.3f}x (CPU time: packed/FP {c_packed / c_fp:.3f}x, "
          f"fake/FP {c_fake / c_fp:.3f}x); packed images == fake-quant images: {exact}")
    print(f"one forward at batch 1: FP {1e3 * fwd['fp']:.2f} ms, packed {1e3 * fwd['packed']:.2f} ms "
          f"({fwd['packed'] / fwd['fp']:.2f}x)")
    result = {"bench": "export", "model": args.model, "config": args.config, "avg_bits": stats.avg_bits,
              "images": n, "seed": seed, "runs": args.runs, "device": args.device, "sizes": sizes,
              "seconds": {"fp": t_fp, "fake_quant": t_fake, "fake_quant_apply": t_apply, "packed": t_packed,
                          "cpu_fp": c_fp, "cpu_fake_quant": c_fake, "cpu_packed": c_packed,
                          "export": t_export, "load": t_load,
                          "forward_batch1_fp": fwd["fp"], "forward_batch1_packed": fwd["packed"]},
              "packed_vs_fp_forward_batch1": fwd["packed"] / fwd["fp"],
              "packed_vs_fp_time": t_packed / t_fp, "fake_vs_fp_time": t_fake / t_fp,
              "packed_vs_fp_cpu_time": c_packed / c_fp, "fake_vs_fp_cpu_time": c_fake / c_fp, "packed_images_equal_fake_quant": exact}

    if tao is not None:
        result["torchao"] = torchao_report(den, tao, fp_model, config, bank, gens, wall, cpu, seed)
    load_end = loadavg()
    result["machine"] = {"cpu_count": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                         "processor": cpu_model(), "loadavg_start": load_start, "loadavg_end": load_end, "python": platform.python_version(),
                         "torch": torch.__version__,
                         "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"load average {load_start} at start, {load_end} at end (on {os.cpu_count()} cpus) -> {out}")
    if not exact:
        raise SystemExit("packed images differ from fake-quant images")
    print(f"export weights_ratio={disk / accounted:.4f} packed_vs_fp_time={t_packed / t_fp:.3f}")


def torchao_model(fp_model, config, bank, work: Path) -> dict:
    """The torchao export of `config`, loaded into a copy of the FP model with torchao.quantize_."""
    import warnings

    from search.export import apply_torchao_config, torchao_plan, write_torchao_config

    warnings.filterwarnings("ignore", module="torchao")
    plan = torchao_plan(config, bank.layers)
    path = write_torchao_config(plan, work / "torchao.json", fingerprint=bank.fingerprint)
    model = copy.deepcopy(fp_model)  # on the device already: torchao 0.18's codebook tensor cannot .to()
    t0 = time.perf_counter()
    apply_torchao_config(model, path)
    return {"model": model, "plan": plan, "quantize_seconds": time.perf_counter() - t0}


def torchao_report(den, tao, fp_model, config, bank, gens, wall, cpu, seed: int) -> dict:
    """Image and weight differences between torchao's model and ours, and why."""
    import torchao

    from quant.apply import quantized
    from sampling.scoring import make_scorer

    plan, model = tao["plan"], tao["model"]
    # ours on exactly the layers torchao quantizes (the rest FP, as torchao leaves them): what is
    # left of the difference is torchao's own scales / codebooks
    same_layers = QuantConfig(config.model, {n: o for n, o in config.options.items() if n in plan.configs})
    with quantized(fp_model, same_layers, bank, verify=False):
        same_gen = den.generate(len(gens["fp"].images), seed)
    mods, fp_mods = dict(model.named_modules()), dict(fp_model.named_modules())
    ratios = {"uaq": [], "kmc": [], "kma": []}
    held = 0
    for name in plan.configs:
        w = mods[name].weight
        held += tensor_bytes(w)
        fp_w = fp_mods[name].weight.detach().float().cpu()
        err = float(((w.dequantize().float().cpu() - fp_w) ** 2).mean())
        ratios[config.options[name][:3]].append(err / max(bank.error(name, config.options[name]), 1e-30))
    ours_bytes = sum(bank.quantized_bits(n, config.options[n]) for n in plan.configs) / 8
    img = {k: g.images.astype(np.int16) for k, g in gens.items()}
    same = same_gen.images.astype(np.int16)
    scorer = make_scorer(den)
    fid = {k: float(scorer.fid(g.images)) for k, g in gens.items()}
    fid["fake_quant_same_layers"] = float(scorer.fid(same_gen.images))
    d = lambda a, b: float(np.abs(a - b).mean())  # noqa: E731
    out = {
        "torchao_version": torchao.__version__, "layers_configured": len(plan.configs),
        "layers_unsupported": len(plan.unsupported), "unsupported": plan.unsupported,
        "quantize_seconds": tao["quantize_seconds"], "generate_seconds": wall["torchao"],
        "torchao_vs_fp_time": wall["torchao"] / wall["fp"], "torchao_vs_fp_cpu_time": cpu["torchao"] / cpu["fp"],
        "pixel_mean_abs_diff": {"torchao_vs_fake_quant": d(img["torchao"], img["fake_quant"]),
                                "torchao_vs_fake_quant_same_layers": d(img["torchao"], same),
                                "fake_quant_vs_fp": d(img["fake_quant"], img["fp"]),
                                "fake_quant_same_layers_vs_fp": d(same, img["fp"]),
                                "torchao_vs_fp": d(img["torchao"], img["fp"])},
        "pixels_equal_fake_quant_same_layers": float((img["torchao"] == same).mean()),
        "fid": fid,
        "weight_mse_ratio_torchao_over_ours_median": {k: float(np.median(v)) for k, v in ratios.items() if v},
        "bytes_held_by_torchao_for_configured_layers": held,
        "accounted_bytes_for_configured_layers": ours_bytes,
    }
    pm = out["pixel_mean_abs_diff"]
    print(f"torchao {torchao.__version__}: {len(plan.configs)} layers configured, {len(plan.unsupported)} "
          f"unsupported (left FP by it). mean |Δpixel| (of 255): torchao vs our fake-quant "
          f"{pm['torchao_vs_fake_quant']:.2f}, vs ours on the same {len(plan.configs)} layers "
          f"{pm['torchao_vs_fake_quant_same_layers']:.2f} (ours vs FP {pm['fake_quant_same_layers_vs_fp']:.2f})")
    print("  FID: " + ", ".join(f"{k} {v:.2f}" for k, v in fid.items()))
    print("  torchao weight MSE / ours (median per method): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in out["weight_mse_ratio_torchao_over_ours_median"].items())
          + f"; it holds {held:,} B for those layers ({ours_bytes:,.0f} B accounted packed); generation "
          f"{wall['torchao']:.3f} s ({wall['torchao'] / wall['fp']:.3f}x FP, CPU {cpu['torchao'] / cpu['fp']:.3f}x)")
    return out


if __name__ == "__main__":
    main()
