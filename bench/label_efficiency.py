"""The label-efficiency curve: the predictor's evaluated FID vs the images spent on its labels.

Needs a finished `dvc repro` (its model, reference, bank, graph, quant_cache, `metrics/digits/search.json`
and `metrics/digits/cost.json` are the reference protocol). Each cheaper protocol runs the real CLI in its
own data dir (the pipeline's model, reference, bank and graph linked in, everything else fresh):

    qsens sample → cache merge → predictor probe (if the protocol uses it) → predictor train
    → search (predictor family, active learning if the protocol has rounds) → evaluate (predictor only)

with the protocol's params (a copy of params.yaml with its overrides). Evaluation is the pipeline's
own: `evaluate.images` images on each of `evaluate.image_seeds`, so every protocol's FIDs pair with
the reference's seed by seed. Label images = the sample stage's (cache labels and the FP images of
paired scores) + probe + search (active-learning labels and selection scores), from each run's
cost files.

    python bench/label_efficiency.py                    # digits: the default protocols below
    python bench/label_efficiency.py --model digits-dit --name digits-dit   # after its dvc exp run

Writes `metrics/label_efficiency.json` (format in the issue: reference, protocols with name,
label_images, fids per budget per seed) + `metrics/label_efficiency.png`, and a copy with the
machine conditions in `bench/results/label_efficiency_<name>.json`. "holds": at every budget the
protocol's mean FID exceeds the reference's by at most one standard error, the larger of the
paired SE (same seeds) and the reference's own SE.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# name → params overrides. Probe and selection stay FID-based where they are used.
PROTOCOLS = {
    "paired-fd32": {  # every label: Fréchet distance to the FP features of the same 32 seeds
        "score": {"images": 32}, "sample": {"images": 32}, "train": {"label": "fd_fp"},
        "probe": {"images": 32}},
    "paired-fd32-no-active": {
        "score": {"images": 32}, "sample": {"images": 32}, "train": {"label": "fd_fp"},
        "probe": {"images": 32}, "active": {"rounds": 0}},
    "fid64": {  # today's label (FID vs real) at 64 images
        "score": {"images": 64}, "sample": {"images": 64}, "probe": {"images": 64}},
    "multifidelity": {  # paired labels for all, FID at 500 images for the stream's first 10 configs and
        # the active picks (at 250), the cheap label calibrated onto FID by the configs that have both
        "score": {"images": 32}, "sample": {"images": 32, "hifi_configs": 10, "hifi_images": 500},
        "train": {"label": "fd_fp", "label_hifi": "fid", "hifi_min_images": 250, "probe": False,
                  "baselines": ["summed_error", "ridge", "gbt", "mlp"]},
        "active": {"rounds": 1, "per_budget": 2, "disagreement": 2, "fid_images": 250}},
    "configs30": {  # today's label at full images, a tenth of the configs, no probe
        "sample": {"num_configs": 30}, "active": {"rounds": 0},
        "train": {"probe": False, "baselines": ["summed_error", "ridge", "gbt", "mlp"]}},
}
LINKED = ("models/{n}", "reference/{n}", "bank/{n}", "graphs/{n}.json", "fp_cache/{n}")


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def qsens(*args: str, log: Path) -> None:
    cmd = [str(Path(sys.executable).parent / "qsens"), *args]
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if rc != 0:
        raise SystemExit(f"error: {' '.join(args[:2])} failed (rc {rc}); see {log}")


def predictor_fids(rows: list[dict], budgets: list[float]) -> dict[str, list[float]]:
    out = {}
    for b in budgets:
        r = next((r for r in rows if r.get("strategy") == "predictor" and r.get("act") is None
                  and r.get("budget") is not None and abs(float(r["budget"]) - b) < 1e-9), None)
        if r is None or r.get("status") != "ok":
            raise SystemExit(f"error: no scored predictor row at budget {b}")
        out[f"{b:g}"] = [float(f) for f in r["fids"]]
    return out


def label_images(costs: dict[str, dict]) -> int:
    return int(sum(costs[s].get("label_images", costs[s]["images"]) for s in ("sample", "probe", "search")
                   if s in costs))


def run_protocol(name: str, over: dict, base: dict, model_name: str, out_root: Path, reuse: bool = False) -> dict:
    d = out_root / name
    data = d / "data"
    done = d / "result.json"
    if reuse and done.is_file() and json.loads(done.read_text()).get("overrides") == over:
        return json.loads(done.read_text())
    if d.exists():
        shutil.rmtree(d)
    data.mkdir(parents=True)
    for rel in LINKED:
        src = ROOT / "data" / rel.format(n=model_name)
        dst = data / rel.format(n=model_name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.exists():
            dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
    params = merge(base, over)
    pfile = d / "params.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    log = d / "log.txt"
    common = ["--params", str(pfile), "--data-dir", str(data)]
    cost = d / "cost"
    t0 = time.perf_counter()
    qsens("sample", *common, "--quiet", "--cost", str(cost / "sample.json"), log=log)
    qsens("cache", "merge", "--shards", str(data / "shards" / model_name), "--out",
          str(data / "quant_cache" / f"{model_name}.parquet"), log=log)
    tr = params["train"]
    needs_probe = tr.get("probe") or any(b in ("probe", "gbt_probe") for b in tr.get("baselines", []))
    if needs_probe:
        qsens("predictor", "probe", *common, "--threads", "1", "--quiet", "--cost", str(cost / "probe.json"), log=log)
    qsens("predictor", "train", *common, "--metrics", str(d / "predictor.json"), "--no-inspect", "--quiet", log=log)
    qsens("search", *common, "--budgets", "params", "--strategy", "predictor", "--active-rounds",
          str(params["active"]["rounds"]), "--active-metrics", str(d / "active.json"), "--quiet",
          "--cost", str(cost / "search.json"), log=log)
    qsens("evaluate", *common, "--strategies", "predictor", "--given",
          f"predictor={data / 'search' / model_name / 'family' / 'predictor'}", "--no-act",
          "--metrics", str(d / "search.json"), "--pareto-csv", str(d / "pareto.csv"), "--quiet",
          "--cost", str(cost / "evaluate.json"), log=log)
    costs = {p.stem: json.loads(p.read_text()) for p in cost.glob("*.json")}
    budgets = [float(b) for b in params["search"]["budgets"]]
    result = {"name": name, "overrides": over, "label_images": label_images(costs),
              "fids": predictor_fids(json.loads((d / "search.json").read_text()), budgets),
              "cost": {k: {kk: v[kk] for kk in ("images", "forward_samples", "seconds")} for k, v in costs.items()},
              "seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def compare(protocol: dict, reference: dict) -> dict:
    per_budget, holds = {}, True
    for b, ref in reference["fids"].items():
        got = protocol["fids"][b]
        diff = np.array(got) - np.array(ref)
        n = len(diff)
        paired_se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        ref_se = float(np.std(ref, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        tol = max(paired_se, ref_se)
        ok = bool(diff.mean() <= tol)
        holds &= ok
        per_budget[b] = {"fid": float(np.mean(got)), "reference_fid": float(np.mean(ref)),
                         "diff": float(diff.mean()), "paired_se": paired_se, "reference_se": ref_se,
                         "within_one_se": ok}
    return {"per_budget": per_budget, "holds": holds,
            "label_fraction": protocol["label_images"] / reference["label_images"]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(result["reference"]["fids"])
    fig, axes = plt.subplots(1, len(budgets), figsize=(4 * len(budgets), 3.8), sharey=False)
    entries = [("reference (today)", result["reference"])] + [(p["name"], p) for p in result["protocols"]]
    for ax, b in zip(np.atleast_1d(axes), budgets):
        for name, e in entries:
            f = np.array(e["fids"][b])
            ax.errorbar(e["label_images"], f.mean(), yerr=f.std(ddof=1) / math.sqrt(len(f)), marker="o",
                        capsize=3, label=name)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # overlapping 2×10⁴, 3×10⁴ labels
        ax.set_title(f"{b} bits")
        ax.set_xlabel("label images (cache + probe + active + selection)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("predictor's evaluated FID (mean ± SE, 5 seed sets)")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    from machine import write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="digits", help="model.name of the finished pipeline run")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma list of " + ", ".join(PROTOCOLS))
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "label_study")
    ap.add_argument("--out", type=Path, default=ROOT / "metrics" / "label_efficiency.json")
    ap.add_argument("--run-only", action="store_true",
                    help="run the protocols (each keeps its result.json) without the reference comparison")
    ap.add_argument("--reuse", action="store_true", help="keep a protocol's finished result.json (same overrides)")
    ap.add_argument("--reference-label-images", type=int, default=None,
                    help="the reference protocol's label images when metrics/digits/cost.json lacks a stage (state how counted)")
    ap.add_argument("--reference-note", default="", help="how the reference figures were obtained (stored)")
    args = ap.parse_args()
    base = yaml.safe_load(args.params.read_text())
    if args.run_only:
        for name in [p.strip() for p in args.protocols.split(",") if p.strip()]:
            print(f"protocol {name} ...", flush=True)
            r = run_protocol(name, PROTOCOLS[name], base, args.name, args.work / args.name, args.reuse)
            print(f"  {r['label_images']} label images in {r['seconds']} s", flush=True)
        return 0
    ref_rows = json.loads((ROOT / "metrics" / "digits" / "search.json").read_text())
    budgets = [float(b) for b in base["search"]["budgets"]]
    ref_images = args.reference_label_images
    if ref_images is None:
        ref_images = label_images(json.loads((ROOT / "metrics" / "digits" / "cost.json").read_text())["stages"])
    reference = {"label_images": ref_images, "fids": predictor_fids(ref_rows, budgets), "note": args.reference_note,
                 "protocol": {"sample": base["sample"], "score": base["score"], "probe": base["probe"],
                              "active_rounds": base["active"]["rounds"], "label": base["train"].get("label", "fid")}}
    protocols = []
    for name in [p.strip() for p in args.protocols.split(",") if p.strip()]:
        print(f"protocol {name} ...", flush=True)
        res = run_protocol(name, PROTOCOLS[name], base, args.name, args.work / args.name, args.reuse)
        res.update(compare(res, reference))
        protocols.append(res)
        print(f"  {res['label_images']} label images ({res['label_fraction']:.1%} of the reference), holds={res['holds']}: "
              + ", ".join(f"{b} {v['fid']:.3f} vs {v['reference_fid']:.3f} (±{max(v['paired_se'], v['reference_se']):.3f})"
                          for b, v in res["per_budget"].items()), flush=True)
    result = {"model": args.name, "reference": reference, "protocols": protocols,
              "criterion": "holds: at every budget mean FID - reference mean FID <= max(paired SE, reference SE)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    write_result(f"label_efficiency_{args.name}", result)
    cheap = [p for p in protocols if p["holds"] and p["label_fraction"] <= 0.1]
    print(f"label_efficiency model={args.name} protocols={len(protocols)} holding_at_10pct="
          + (",".join(p["name"] for p in cheap) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
