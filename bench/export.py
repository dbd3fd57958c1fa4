"""Packed low-bit inference against full precision on CPU, at SD v1.5 scale and on digits.

Per model, one denoiser forward (the unit every sampler step pays), timed for
  fp          the model as built (float32),
  fake_quant  the same model with the config's dequantized weights written in (`quant.apply`),
  fake_quant_a8  the same plus one set of dynamic 8-bit activation hooks (`generate --act-bits 8`),
  packed      `quant.pack` layers: bit-packed codes + fp16 params, the weight decoded in every
              forward (the memory promise: no float weight is kept),
  torchao     int8 and int4 weight-only (`torchao.quantize_`) where the installed torchao runs
              them on CPU (otherwise the reason is stored),
at batch 1 and 2, best of --rounds, wall and CPU time (time.process_time: all threads of this
process), all variants interleaved in each round (fp, fake, packed, fp, ...) so load changes on a
shared machine hit them alike. Then where the packed time goes: every packed layer's decode timed
alone (per method), and its two parts (field unpacking, table gather).

Models (random weights: speed does not depend on the values):
  sd15    the shipped SD v1.5 UNet config (denoisers/configs/sd15.json), Laplace weights with the
          fan-in scale, 64×64 latents, (B, 77, 768) text states; a mixed config drawn over all six
          options uaq/kmc/kma × 3/4 bits (sampling.sampler.random_config, seed 0). Its "bank" holds
          only what that config needs: per layer the codes + fp16 params of one option, UAQ by
          min/max, K-Means-C/A codebooks at Laplace quantiles of the row / tensor with nearest-
          level codes (no Lloyd iterations: a bank of 860 M weights by k-means is hours on one
          core); built once, cached in --cache-dir (gitignored).
  digits  the digits UNet architecture (params.yaml), random init, and a real bank
          (`quant.bank.build_bank`, six options), cached in --cache-dir; packed through the
          checkpoint (`save_quantized` -> `load_quantized`), whose on-disk weights are compared
          with the accounted bytes.

    .venv/bin/python bench/export.py --threads 1                # both models (SD v1.5: ~15 min)
    .venv/bin/python bench/export.py --models digits --threads 1
    .venv/bin/python bench/export.py --smoke                    # tiny SD config, seconds (tests)

Writes bench/results/export.json (figures + machine conditions: load average at start and end,
threads, CPU). Last line:
`export weights_ratio=<digits on-disk weights / accounted> packed_vs_fp_cpu_sd15=<packed / FP CPU
time, batch 1> packed_vs_fp_cpu_digits=<same, digits>`.
"""
from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/ (the script dir): bench/sampling.py must not shadow the package

from machine import loadavg, write_result  # noqa: E402  (bench/machine.py)

OPTIONS = ("uaq3", "uaq4", "kmc3", "kmc4", "kma3", "kma4")
TINY_UNET = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "cross_attention_dim": 32,
             "attention_head_dim": 2, "sample_size": 8, "norm_num_groups": 16}


# ----------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def interleaved(models: dict[str, torch.nn.Module], inputs: dict[int, tuple[tuple, dict]], rounds: int,
                log: Callable[[str], None], skip: set[tuple[str, int]] = frozenset()) -> dict[str, dict]:
    """Best wall / CPU seconds of one forward per (model, batch), every round running every model
    in turn. Returns {f"{model}_b{batch}": {"wall": s, "cpu": s, "runs": n}}."""
    best: dict[str, dict] = {}
    for r in range(rounds):
        for batch, (args, kwargs) in inputs.items():
            for name, model in models.items():
                if (name, batch) in skip:
                    continue
                with torch.inference_mode():
                    _, w, c = timed(lambda: model(*args, **kwargs))
                key = f"{name}_b{batch}"
                b = best.setdefault(key, {"wall": float("inf"), "cpu": float("inf"), "runs": 0, "cpu_all": []})
                b["wall"], b["cpu"], b["runs"] = min(b["wall"], w), min(b["cpu"], c), b["runs"] + 1
                b["cpu_all"].append(c)
                log(f"  round {r + 1}/{rounds} {key}: wall {w:.3f} s, cpu {c:.3f} s")
    return best


def ratios(best: dict[str, dict], batches, names) -> dict[str, float]:
    out = {}
    for b in batches:
        fp = best.get(f"fp_b{b}")
        for n in names:
            cur = best.get(f"{n}_b{b}")
            if fp and cur and n != "fp":
                out[f"{n}_vs_fp_cpu_b{b}"] = cur["cpu"] / fp["cpu"]
                out[f"{n}_vs_fp_wall_b{b}"] = cur["wall"] / fp["wall"]
                pairs = [c / f for c, f in zip(cur.get("cpu_all", []), fp.get("cpu_all", []))]
                if pairs:  # each round's ratio (same round, adjacent runs): the spread is the noise
                    out[f"{n}_vs_fp_cpu_b{b}_per_round"] = pairs
                    out[f"{n}_vs_fp_cpu_b{b}_median_round"] = float(sorted(pairs)[len(pairs) // 2]) \
                        if len(pairs) % 2 else float(sum(sorted(pairs)[len(pairs) // 2 - 1: len(pairs) // 2 + 1]) / 2)
    return out


# ------------------------------------------------------------------------- where time goes
def decode_profile(model: torch.nn.Module, rounds: int = 2) -> dict[str, Any]:
    """Seconds to decode every packed layer's weight once (best of `rounds`), per method, and the
    share of field unpacking (`unpack_fields`) in it."""
    from quant.pack import packed_layers
    from quant.packing import unpack_fields

    layers = list({id(m): m for m in packed_layers(model).values()}.values())
    per_method: dict[str, float] = {}
    unpack_s = 0.0
    total = float("inf")
    for _ in range(rounds):
        t_all, per, un = 0.0, {}, 0.0
        for m in layers:
            method, bits, numel = m._format
            t0 = time.perf_counter()
            m.dequantize()
            dt = time.perf_counter() - t0
            t0 = time.perf_counter()
            unpack_fields(m._source().codes, bits, numel)
            un += time.perf_counter() - t0
            per[method] = per.get(method, 0.0) + dt
            t_all += dt
        if t_all < total:
            total, per_method, unpack_s = t_all, per, un
    n = sum(m._format[2] for m in layers)
    return {"layers": len(layers), "weights": n, "decode_all_s": total, "per_method_s": per_method,
            "unpack_fields_s_single_codes": unpack_s, "ns_per_weight": 1e9 * total / max(n, 1)}


# ----------------------------------------------------------------------------------- torchao
def torchao_variants(fp_model: torch.nn.Module, names: list[str], log) -> dict[str, Any]:
    """{"int8": model | reason, "int4": model | reason}: weight-only torchao on `names` (a copy)."""
    out: dict[str, Any] = {}
    try:
        import warnings

        import torchao
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
        warnings.filterwarnings("ignore", module="torchao")
        out["version"] = torchao.__version__
    except Exception as exc:  # not installed / broken: say so
        return {"error": f"torchao not importable: {exc}"}
    wanted = set(names)
    keep = lambda m, fqn: fqn in wanted and isinstance(m, torch.nn.Linear)  # noqa: E731  (torchao: Linear only)

    for key, make in (("int8", lambda: Int8WeightOnlyConfig()),
                      ("int4", lambda: _int4_cpu_config(Int4WeightOnlyConfig))):
        model = None
        try:
            model = copy.deepcopy(fp_model)
            quantize_(model, make(), filter_fn=keep)
            probe = next(m for n, m in model.named_modules() if keep(m, n))
            x = torch.randn(2, probe.in_features)
            with torch.inference_mode():
                probe(x)  # a CPU kernel exists for it
            out[key] = model
            log(f"torchao {key} weight-only: {sum(keep(m, n) for n, m in model.named_modules())} Linear layers")
        except Exception as exc:  # torchao raises many types for unsupported device/layout
            del model
            gc.collect()
            out[key] = f"not run on CPU by torchao {out.get('version')}: {type(exc).__name__}: " \
                       f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(out[key])
    return out


def _int4_cpu_config(cls):
    try:
        from torchao.dtypes import Int4CPULayout
        return cls(group_size=128, layout=Int4CPULayout(), version=1)
    except Exception:  # noqa: BLE001  (layout or keyword absent in this torchao)
        return cls(group_size=128)


# ------------------------------------------------------------------------------------- SD v1.5
def sd15_unet(smoke: bool) -> torch.nn.Module:
    from denoisers.architectures import build_from_config, load_architecture_config
    from gpu import laplace_  # bench/gpu.py

    cfg = load_architecture_config("sd15") | (TINY_UNET if smoke else {})
    torch.manual_seed(0)
    unet = build_from_config(cfg, device="cpu")
    laplace_(unet)
    return unet.eval().requires_grad_(False)


def laplace_levels(k: int) -> torch.Tensor:
    """k levels at the (i + 1/2)/k quantiles of a unit-scale Laplace (sorted)."""
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k - 0.5
    return (-torch.sign(u) * torch.log1p(-2 * u.abs())).to(torch.float32)


@torch.no_grad()
def quick_codes(w: torch.Tensor, option: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 (numel,), params fp16) for `option` without k-means (see module doc)."""
    from quant.options import parse_option

    opt = parse_option(option)
    k = 1 << opt.bits
    rows = w.reshape(w.shape[0], -1).float()
    if opt.method == "uaq":
        lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
        scale = ((hi - lo) / (k - 1)).clamp_min(1e-8).half().float()
        zero = torch.round(-lo / scale).clamp(0, k - 1)
        codes = torch.clamp(torch.round(rows / scale) + zero, 0, k - 1)
        return codes.to(torch.uint8).reshape(-1), torch.cat([scale, zero], 1).half()
    levels = laplace_levels(k)
    if opt.method == "kmc":
        b = (rows - rows.mean(1, keepdim=True)).abs().mean(1, keepdim=True)  # Laplace scale per row
        book = (rows.mean(1, keepdim=True) + b * levels[None, :]).half()
        z = (rows - rows.mean(1, keepdim=True)) / b.clamp_min(1e-12)
    else:
        b = (rows - rows.mean()).abs().mean()
        book = (rows.mean() + b * levels[None, :]).half()
        z = (rows - rows.mean()) / b.clamp_min(1e-12)
    mids = (levels[1:] + levels[:-1]) / 2
    codes = torch.bucketize(z, mids)
    return codes.to(torch.uint8).reshape(-1), book


def sd15_bank(unet: torch.nn.Module, cache: Path, smoke: bool, log) -> tuple[dict[str, str], dict]:
    """{layer: option} and {layer: (packed codes, params)} for the SD v1.5 config, cached."""
    from safetensors.torch import load_file, save_file

    from quant.layers import quantizable_layers
    from quant.packing import pack_codes
    from sampling.sampler import random_config

    layers = quantizable_layers(unet)
    config = random_config(list(layers), OPTIONS, seed=0, index=0)
    key = hashlib.sha256(json.dumps([smoke, sorted(config.items()),
                                     [list(m.weight.shape) for m in layers.values()]]).encode()).hexdigest()[:12]
    path = cache / f"sd15_bank_{key}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        log(f"sd15 bank: cached {path}")
    else:
        t0 = time.perf_counter()
        t = {}
        for name, opt in config.items():
            codes, params = quick_codes(layers[name].weight, opt)
            t[f"{name}.codes"] = pack_codes(codes, int(opt[3:]))
            t[f"{name}.params"] = params.contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(t, str(path))
        log(f"sd15 bank: built in {time.perf_counter() - t0:.1f} s -> {path}")
    return config, {n: (t[f"{n}.codes"], t[f"{n}.params"]) for n in config}


def bench_sd15(args, log) -> dict[str, Any]:
    from quant.accounting import layer_bits
    from quant.layers import LayerInfo, quantizable_layers
    from quant.options import parse_option
    from quant.pack import _replace, packed_module, weight_bytes

    t0 = time.perf_counter()
    fp = sd15_unet(args.smoke)
    log(f"sd15: UNet built in {time.perf_counter() - t0:.1f} s")
    config, tensors = sd15_bank(fp, Path(args.cache_dir), args.smoke, log)
    layers = quantizable_layers(fp)
    packed = copy.deepcopy(fp)
    pl = quantizable_layers(packed)
    _replace(packed, {id(pl[n]): packed_module(pl[n], o, *tensors[n]) for n, o in config.items()})
    fake = copy.deepcopy(fp)
    fl = quantizable_layers(fake)
    with torch.no_grad():
        for n, m in quantizable_layers(packed).items():
            fl[n].weight.copy_(m.dequantize())
    n_weights = sum(m.weight.numel() for m in layers.values())
    accounted = sum(layer_bits(parse_option(o), LayerInfo(n, "", tuple(layers[n].weight.shape),
                                                          layers[n].weight.numel(), layers[n].weight.shape[0]))
                    for n, o in config.items()) / 8
    resident = weight_bytes(packed)["packed"]
    avg_bits = 8 * accounted / n_weights
    lat = fp.config.sample_size
    g = torch.Generator().manual_seed(0)
    inputs = {}
    for b in args.batches:
        x = torch.randn(b, 4, lat, lat, generator=g)
        ctx = torch.randn(b, 77, fp.config.cross_attention_dim, generator=g)
        inputs[b] = ((x, torch.full((b,), 500)), {"encoder_hidden_states": ctx, "return_dict": False})
    log(f"sd15: {len(layers)} layers, {n_weights:,} weights, config {avg_bits:.3f} avg bits "
        f"({', '.join(f'{o} {sum(v == o for v in config.values())}' for o in OPTIONS)}); "
        f"latents {lat}x{lat}, batches {args.batches}, {torch.get_num_threads()} thread(s)")
    with torch.inference_mode():
        a = packed(*inputs[1][0], **inputs[1][1])[0]
        f = fake(*inputs[1][0], **inputs[1][1])[0]
    exact = bool(torch.equal(a, f))
    log(f"sd15: packed forward == fake-quant forward: {exact}")
    from quant.activations import enable_activation_quant

    fake_a8 = copy.deepcopy(fake)  # weight-only config + one set of dynamic A8 hooks (`--act-bits 8`)
    enable_activation_quant(fake_a8, 8)
    # fake-quant (with and without A8) at batch 1 only (time)
    skip = {(n, b) for b in args.batches if b != 1 for n in ("fake_quant", "fake_quant_a8")}
    best = interleaved({"fp": fp, "fake_quant": fake, "packed": packed, "fake_quant_a8": fake_a8}, inputs,
                       args.rounds, log, skip)
    del fake, fake_a8
    gc.collect()
    prof = decode_profile(packed)
    log(f"sd15: decoding all {prof['layers']} packed layers once: {prof['decode_all_s']:.2f} s "
        f"({prof['ns_per_weight']:.2f} ns/weight; " + ", ".join(f"{k} {v:.2f} s" for k, v in prof["per_method_s"].items()) + ")")
    out: dict[str, Any] = {
        "layers": len(layers), "weights": n_weights, "avg_bits": avg_bits,
        "options": {o: sum(v == o for v in config.values()) for o in OPTIONS},
        "latent": lat, "batches": list(args.batches), "rounds": args.rounds,
        "accounted_bytes": accounted, "resident_packed_bytes": resident, "resident_ratio": resident / accounted,
        "packed_forward_equals_fake_quant": exact, "bank": "quick codes (see bench/export.py doc), cached",
        "decode_profile": prof,
    }
    if not args.no_torchao:
        tao = torchao_variants(fp, list(config), log)
        out["torchao"] = {k: (v if isinstance(v, str) else "ran") for k, v in tao.items()}
        runnable = {f"torchao_{k}": v for k, v in tao.items() if k in ("int8", "int4") and not isinstance(v, str)}
        if runnable:
            tb = interleaved({"fp": fp, **runnable}, {1: inputs[1]}, 1, log)
            out["torchao_seconds"] = tb
            out["torchao_ratios"] = ratios(tb, [1], ["fp", *runnable])
        del tao, runnable
    out["seconds"] = best
    out["ratios"] = ratios(best, args.batches, ["fp", "fake_quant", "packed", "fake_quant_a8"])
    # --act-bits against the weight-only time, per round (adjacent runs) and best/best
    out["ratios"]["a8_vs_weight_only_cpu_b1"] = best["fake_quant_a8_b1"]["cpu"] / best["fake_quant_b1"]["cpu"]
    out["ratios"]["a8_vs_weight_only_cpu_b1_per_round"] = [
        a / w for a, w in zip(best["fake_quant_a8_b1"]["cpu_all"], best["fake_quant_b1"]["cpu_all"])]
    log(f"sd15 a8_vs_weight_only_cpu_b1 = {out['ratios']['a8_vs_weight_only_cpu_b1']:.3f}")
    gc.collect()
    return out


# ------------------------------------------------------------------------------------- digits
def bench_digits(args, log) -> dict[str, Any]:
    from denoisers.digits import DigitsDenoiser, build_model, load_params
    from quant.apply import apply_config
    from quant.bank import Bank, build_bank
    from quant.config import QuantConfig
    from quant.pack import WEIGHTS_FILE, load_quantized, pack, read_manifest, save_quantized, weight_bytes
    from sampling.sampler import random_config

    params = load_params(ROOT / "params.yaml")
    torch.manual_seed(0)
    den = DigitsDenoiser(build_model("unet", params), "unet", params)
    fp = den.model
    bank_dir = Path(args.cache_dir) / "digits_bank"
    try:
        bank = Bank.load(bank_dir)
        bank.check_model(fp)
        log(f"digits bank: cached {bank_dir}")
    except Exception:  # absent, or built from other weights: build it again
        t0 = time.perf_counter()
        bank = build_bank(fp, OPTIONS, model_name="digits", progress=False)
        bank.save(bank_dir)
        bank = Bank.load(bank_dir)
        log(f"digits bank: built in {time.perf_counter() - t0:.1f} s -> {bank_dir}")
    config = QuantConfig("digits", random_config(bank.layer_names, bank.options, seed=0, index=0))
    stats = bank.summarize(config)
    fake = copy.deepcopy(fp)
    apply_config(fake, config, bank, verify=False)
    work = Path(tempfile.mkdtemp(prefix="qsens-export-bench-"))
    save_quantized(pack(copy.deepcopy(fp), config, bank, verify=False), work / "q", config,
                   fingerprint=bank.fingerprint, accounted=stats.to_dict())
    manifest = read_manifest(work / "q")
    packed = load_quantized(work / "q", copy.deepcopy(fp))
    batches = sorted(set(args.batches) | {int(params.gen_batch_size)})  # + the generation batch
    inputs = {b: den.example_inputs(b) for b in batches}
    with torch.inference_mode():
        exact = bool(torch.equal(packed(*inputs[1][0], **inputs[1][1])[0], fake(*inputs[1][0], **inputs[1][1])[0]))
    accounted = manifest["packed_accounted_bytes"]
    disk = manifest["files"][WEIGHTS_FILE]["bytes"]
    mem = weight_bytes(packed)
    log(f"digits: {len(bank.layer_names)} layers, {stats.avg_bits:.3f} avg bits; weights on disk {disk:,} B / "
        f"accounted {accounted:,.0f} B = {disk / accounted:.4f}; packed == fake-quant forward: {exact}")
    from quant.activations import enable_activation_quant

    fake_a8 = copy.deepcopy(fake)  # weight-only config + one set of dynamic A8 hooks (`--act-bits 8`)
    enable_activation_quant(fake_a8, 8)
    models = {"fp": fp, "fake_quant": fake, "packed": packed, "fake_quant_a8": fake_a8}
    quiet = lambda s: None  # noqa: E731  (hundreds of short runs)
    best = interleaved(models, inputs, args.digits_rounds, quiet)
    out: dict[str, Any] = {
        "layers": len(bank.layer_names), "avg_bits": stats.avg_bits, "weights": sum(i.n_weights for i in bank.layers.values()),
        "accounted_bytes": accounted, "disk_weights_bytes": disk, "disk_ratio": disk / accounted,
        "resident_packed_bytes": mem["packed"], "resident_ratio": mem["packed"] / accounted,
        "packed_forward_equals_fake_quant": exact, "rounds": args.digits_rounds,
        "decode_profile": decode_profile(packed, rounds=5),
    }
    if not args.no_torchao:
        tao = torchao_variants(fp, bank.layer_names, log)
        out["torchao"] = {k: (v if isinstance(v, str) else "ran") for k, v in tao.items()}
        runnable = {f"torchao_{k}": v for k, v in tao.items() if k in ("int8", "int4") and not isinstance(v, str)}
        if runnable:
            best |= {k: v for k, v in interleaved({"fp": fp, **runnable}, inputs, args.digits_rounds, quiet).items()
                     if k.startswith("torchao")}
    out["seconds"] = best
    out["batches"] = batches
    out["ratios"] = ratios(best, batches, ["fp", "fake_quant", "packed", "fake_quant_a8", "torchao_int8",
                                           "torchao_int4"])
    for b in batches:  # --act-bits against the weight-only time
        out["ratios"][f"a8_vs_weight_only_cpu_b{b}"] = best[f"fake_quant_a8_b{b}"]["cpu"] / best[f"fake_quant_b{b}"]["cpu"]
    for k, v in out["ratios"].items():
        if "_cpu_" in k and isinstance(v, float):
            log(f"digits {k} = {v:.3f}")
    return out


def markdown_table(result: dict[str, Any]) -> str:
    """The docs/export.md table from a bench/results/export.json: one row per model × variant ×
    batch, best CPU and wall seconds of one forward and the ratio to FP measured in the same run."""
    rows = ["| model | variant | batch | CPU s / forward | wall s / forward | CPU vs FP (best / best) | "
            "CPU vs FP per round (median) | runs |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model in ("sd15", "digits"):
        r = result.get(model)
        if not r:
            continue
        secs = dict(r.get("seconds", {}))
        for k, v in (r.get("torchao_seconds") or {}).items():
            secs.setdefault(k if not k.startswith("fp_") else f"fp(torchao phase)_{k[3:]}", v)
        for key, v in secs.items():
            name, _, b = key.rpartition("_b")
            fp = ((r.get("torchao_seconds") or {}).get(f"fp_b{b}") if name.startswith("torchao") else None) \
                or secs.get(f"fp_b{b}")
            ratio = f"{v['cpu'] / fp['cpu']:.3f}" if fp and not name.startswith("fp") else "1 (ref)" if name.startswith("fp") else ""
            ms = lambda s: f"{s:.3f}" if s >= 0.1 else f"{s * 1e3:.2f} ms"  # noqa: E731
            per = [c / f for c, f in zip(v.get("cpu_all", []), (fp or {}).get("cpu_all", []))]
            med = f"{sorted(per)[len(per) // 2]:.3f}" if per and not name.startswith("fp") and len(per) % 2 else \
                f"{sum(sorted(per)[len(per) // 2 - 1: len(per) // 2 + 1]) / 2:.3f}" if per and not name.startswith("fp") else ""
            rows.append(f"| {model} | {name} | {b} | {ms(v['cpu'])} | {ms(v['wall'])} | {ratio} | {med} | {v['runs']} |")
        for k, v in (r.get("torchao") or {}).items():
            if isinstance(v, str) and k in ("int8", "int4") and v != "ran":
                rows.append(f"| {model} | torchao_{k} | – | not run | | {v} | | |")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":  # render docs/export.md's table from a result
        print(markdown_table(json.loads(Path(sys.argv[2]).read_text())))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits", "sd15"], choices=("digits", "sd15"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds, SD v1.5 (default 2)")
    ap.add_argument("--digits-rounds", type=int, default=30, help="interleaved rounds, digits (default 30)")
    ap.add_argument("--cache-dir", default=str(ROOT / "tmp" / "bench_export"), help="bank cache (gitignored)")
    ap.add_argument("--no-torchao", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny SD config, 1 round (code paths only)")
    ap.add_argument("--out", default=None, help="default bench/results/export.json (--smoke: a temp file)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.rounds, args.digits_rounds = 1, 2
    out = args.out or (str(Path(tempfile.mkdtemp()) / "export_smoke.json") if args.smoke else None)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    result: dict[str, Any] = {"threads": torch.get_num_threads(), "device": "cpu", "dtype": "float32",
                              "flush_denormal": False, "smoke": args.smoke, "loadavg_start": loadavg()}
    log(f"{torch.get_num_threads()} thread(s); load average {result['loadavg_start']}")
    for model in args.models:
        result[model] = (bench_digits if model == "digits" else bench_sd15)(args, log)
        result[f"loadavg_after_{model}"] = loadavg()
        write_result("export", result, out)
    result["loadavg_end"] = loadavg()
    result["seconds_total"] = time.perf_counter() - t_start
    write_result("export", result, out)
    get = lambda m, k: result.get(m, {}).get("ratios", {}).get(k, float("nan"))  # noqa: E731
    wr = result.get("digits", {}).get("disk_ratio", float("nan"))
    print(f"export weights_ratio={wr:.4f} packed_vs_fp_cpu_sd15={get('sd15', 'packed_vs_fp_cpu_b1'):.3f} "
          f"packed_vs_fp_cpu_digits={get('digits', 'packed_vs_fp_cpu_b1'):.3f}")


if __name__ == "__main__":
    main()
