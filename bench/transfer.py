"""Does sensitivity carry over to a fine-tune? The transfer study of issue #24.

Needs a finished `dvc repro` on `digits` (the base campaign: model, bank, graph, quant_cache,
active-learning predictor, evaluated family and the cost files). For each derived checkpoint
(`qsens prepare --derive KIND`, params `derive:`), through the real CLI:

    (a) unchanged     the base pipeline's predictor family, applied to the new checkpoint as is
    (b) transfer      `qsens transfer --base-predictor data/active/digits/predictor`
    (c) scratch_small `qsens transfer --scratch`: the same campaign (random + active labels) with
                      members trained from scratch, no probe: what the same spend buys without reuse
    (d) scratch_full  (--full) the base campaign's protocol on the new checkpoint: sample, probe,
                      train, search with active learning (bench/label_efficiency.py's runner)

each family scored by `qsens evaluate --given` on the pipeline's evaluation seeds (`evaluate.images`
× `evaluate.image_seeds`), so every FID pairs with the others seed by seed.

    python bench/transfer.py                      # finetune, lora, fewstep; (a)-(c)
    python bench/transfer.py --kinds finetune --full

Writes metrics/transfer.json ({"checkpoints": [{"name", "label_images": {"transfer",
"base_campaign"}, "fids": {"unchanged"|"transfer"|"scratch_small"|"scratch_full": {budget: [per
seed]}}, "holds"}]}; holds = (b) within one paired SE of (d) at every budget with ≤ 10 % of the base
campaign's label images; null when (d) was not run) + metrics/transfer.png, and a copy with the
machine in bench/results/transfer_digits.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/sampling.py must not shadow the package

import sampling.inception  # noqa: E402,F401 - the package, before label_efficiency puts bench/ (bench/sampling.py) first
from label_efficiency import label_images, predictor_fids, qsens, run_protocol  # noqa: E402

BASE = "digits"
CONDITIONS = ("unchanged", "transfer", "scratch_small", "scratch_full")


def evaluate(name: str, family: Path, common: list[str], out: Path, log: Path) -> dict[str, list[float]]:
    qsens("evaluate", *common, "--name", name, "--strategies", "predictor", "--given", f"predictor={family}",
          "--no-act", "--out", str(out), "--metrics", str(out / "search.json"), "--pareto-csv",
          str(out / "pareto.csv"), "--quiet", "--cost", str(out / "cost.json"), log=log)
    return json.loads((out / "search.json").read_text())


def retarget(family: Path, name: str, out: Path) -> Path:
    """The base family's configs, option for option, as configs of model `name` (a family dir of
    its own, with the SHA-256 `evaluate --given` checks): the base config applied unchanged."""
    from quant.config import QuantConfig
    from core.provenance import file_sha256

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in json.loads((family / "family.json").read_text()):
        cfg = QuantConfig.load(r["config"])
        cfg.model = name
        path = out / Path(r["config"]).name
        cfg.save(path)
        rows.append({**r, "config": str(path), "config_sha256": file_sha256(path), "cache": None})
    (out / "family.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan


def run_kind(kind: str, params: Path, budgets: list[float], base_labels: int, full: bool, root: Path) -> dict:
    name = f"{BASE}-{kind}"
    d = root / kind
    d.mkdir(parents=True, exist_ok=True)
    log = d / "log.txt"
    common = ["--params", str(params), "--data-dir", str(ROOT / "data")]
    t0 = time.perf_counter()
    qsens("prepare", *common, "--model", BASE, "--derive", kind, "--quiet", "--threads", "1", log=log)
    qsens("bank", "build", *common, "--name", name, "--quiet", log=log)
    qsens("graph", *common, "--name", name, log=log)
    fams = {"unchanged": retarget(ROOT / "data" / "search" / BASE / "family" / "predictor", name, d / "unchanged")}
    summaries = {}
    for cond, extra in (("transfer", ["--base-predictor", str(ROOT / "data" / "active" / BASE / "predictor")]),
                        ("scratch_small", ["--scratch"])):
        out = d / cond
        qsens("transfer", *common, "--name", name, *extra, "--out", str(out), "--threads", "1", "--quiet",
              "--cost", str(d / f"{cond}.cost.json"), log=log)
        summaries[cond] = json.loads((out / "transfer.json").read_text())
        fams[cond] = out / "family"
    fids = {}
    for cond, fam in fams.items():
        rows = evaluate(name, fam, common, d / f"eval-{cond}", log)
        fids[cond] = predictor_fids(rows, budgets)
    if full:
        base = yaml.safe_load(params.read_text())
        res = run_protocol(f"full-{kind}", {"model": {"name": name}}, base, name, d, reuse=True)
        fids["scratch_full"] = res["fids"]
        summaries["scratch_full"] = {"label_images": res["label_images"]}
    holds = None
    per_budget = {}
    for b in (f"{x:g}" for x in budgets):
        row = {}
        for cond in ("unchanged", "transfer", "scratch_small"):
            row[cond] = float(np.mean(fids[cond][b]))
        if "scratch_full" in fids:
            diff, se = paired(fids["transfer"][b], fids["scratch_full"][b])
            row |= {"scratch_full": float(np.mean(fids["scratch_full"][b])), "transfer_minus_full": diff,
                    "paired_se": se, "within_one_se": bool(diff <= se)}
        diff, se = paired(fids["transfer"][b], fids["scratch_small"][b])
        row |= {"transfer_minus_small": diff, "paired_se_small": se}
        diff, se = paired(fids["transfer"][b], fids["unchanged"][b])
        row |= {"transfer_minus_unchanged": diff, "paired_se_unchanged": se}
        per_budget[b] = row
    t_labels = summaries["transfer"]["label_images"]
    if "scratch_full" in fids:
        holds = bool(all(r["within_one_se"] for r in per_budget.values()) and t_labels <= 0.1 * base_labels)
    return {"name": name, "kind": kind,
            "label_images": {"transfer": t_labels, "scratch_small": summaries["scratch_small"]["label_images"],
                             "base_campaign": base_labels,
                             **({"scratch_full": summaries["scratch_full"]["label_images"]} if full else {})},
            "spend": {c: s.get("spend") for c, s in summaries.items()},
            "fids": fids, "per_budget": per_budget, "holds": holds,
            "seconds": round(time.perf_counter() - t0, 1)}


def add_fd_fp(ck: dict, root: Path) -> dict:
    """Per condition the paired FID to the checkpoint's own FP images (evaluate's per-seed `fd_fp`)
    and the paired comparisons on it: for a fine-tune whose FP images are far from the reference,
    FID vs real rewards configs that undo the fine-tune; FID to its own FP images is what a user
    compressing *their* model asks for."""
    d = root / ck["kind"]
    fd = {}
    runs = {cond: d / f"eval-{cond}" / "search.json" for cond in ("unchanged", "transfer", "scratch_small")}
    if (d / f"full-{ck['kind']}" / "search.json").is_file():
        runs["scratch_full"] = d / f"full-{ck['kind']}" / "search.json"
    for cond, path in runs.items():
        rows = json.loads(path.read_text())
        fd[cond] = {f"{float(r['budget']):g}": [float(p["fd_fp"]) for p in r["per_seed"]]
                    for r in rows if r.get("strategy") == "predictor" and r.get("act") is None
                    and r.get("status") == "ok"}
        fp = next((r for r in rows if r.get("strategy") == "fp16"), None)
        if fp is not None:
            ck["fp_fid"] = float(fp["fid"])
    ck["fd_fp"] = fd
    for b, row in ck["per_budget"].items():
        for other in ("scratch_small", "unchanged"):
            diff, se = paired(fd["transfer"][b], fd[other][b])
            row[f"fd_fp_transfer_minus_{other.split('_')[-1]}"] = diff
            row[f"fd_fp_paired_se_{other.split('_')[-1]}"] = se
        if "scratch_full" in fd:
            diff, se = paired(fd["transfer"][b], fd["scratch_full"][b])
            row |= {"fd_fp_transfer_minus_full": diff, "fd_fp_paired_se_full": se,
                    "fd_fp_within_one_se": bool(diff <= se)}
        for cond in fd:
            row[f"fd_fp_{cond}"] = float(np.mean(fd[cond][b]))
    if "scratch_full" in fd:  # the issue's `holds`, judged by FID to the checkpoint's own FP images
        ck["holds_fd_fp"] = bool(all(r["fd_fp_within_one_se"] for r in ck["per_budget"].values())
                                 and ck["label_images"]["transfer"] <= 0.1 * ck["label_images"]["base_campaign"])
    ck["fd_fp_transfer_best"] = bool(all(r["fd_fp_transfer_minus_small"] + r["fd_fp_paired_se_small"] < 0
                                         and r["fd_fp_transfer_minus_unchanged"] + r["fd_fp_paired_se_unchanged"] < 0
                                         for r in ck["per_budget"].values()))
    return ck


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cks = result["checkpoints"]
    fig, axes = plt.subplots(1, len(cks), figsize=(5 * len(cks), 4), squeeze=False)
    for ax, ck in zip(axes[0], cks):
        budgets = sorted(ck["fids"]["transfer"], key=float)
        for cond, style in zip(CONDITIONS, ("s--", "o-", "^:", "d-.")):
            if cond not in ck["fids"]:
                continue
            m = [np.mean(ck["fids"][cond][b]) for b in budgets]
            se = [np.std(ck["fids"][cond][b], ddof=1) / math.sqrt(len(ck["fids"][cond][b])) for b in budgets]
            ax.errorbar([float(b) for b in budgets], m, yerr=se, fmt=style, capsize=3,
                        label="base config unchanged" if cond == "unchanged"
                        else f"{cond} ({ck['label_images'][cond]:,} label images)")
        ax.set_title(ck["name"])
        ax.set_xlabel("budget (avg bits)")
        ax.set_ylabel("FID (mean ± SE over seed sets)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="finetune,lora,fewstep")
    ap.add_argument("--full", action="store_true", help="also (d): the base campaign's protocol per checkpoint")
    ap.add_argument("--out", type=Path, default=ROOT / "metrics" / "transfer.json")
    ap.add_argument("--summarize", action="store_true",
                    help="no measurement: add the paired FID-to-FP comparison to --out from the runs' evaluations")
    args = ap.parse_args()
    root = ROOT / "data" / "transfer_study"
    if args.summarize:
        result = json.loads(args.out.read_text())
        kinds = {k.strip() for k in args.kinds.split(",")}  # only these: another run may be rewriting the others
        result["checkpoints"] = [add_fd_fp(ck, root) if ck["kind"] in kinds else ck for ck in result["checkpoints"]]
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        from machine import machine_info

        (ROOT / "bench" / "results" / "transfer_digits.json").write_text(
            json.dumps({**result, "machine": machine_info()}, indent=2) + "\n")
        for ck in (c for c in result["checkpoints"] if c["kind"] in kinds):
            print(f"{ck['name']} (FP FID vs its reference {ck.get('fp_fid', float('nan')):.2f}): FID to its own FP images, "
                  f"transfer best at every budget: {ck['fd_fp_transfer_best']}")
            for b, r in ck["per_budget"].items():
                print(f"  {b}: unchanged {r['fd_fp_unchanged']:.3f}, transfer {r['fd_fp_transfer']:.3f}, "
                      f"scratch_small {r['fd_fp_scratch_small']:.3f} (transfer - scratch "
                      f"{r['fd_fp_transfer_minus_small']:+.3f} ± {r['fd_fp_paired_se_small']:.3f})")
        return 0
    params = ROOT / "params.yaml"
    p = yaml.safe_load(params.read_text())
    budgets = [float(b) for b in p["search"]["budgets"]]
    cost_dir = ROOT / "data" / "cost" / BASE
    costs = {f.stem: json.loads(f.read_text()) for f in cost_dir.glob("*.json")}
    if "sample" not in costs:
        raise SystemExit(f"error: {cost_dir}: no cost files of the base campaign (run `dvc repro` first)")
    base_labels = label_images(costs)
    cks = [run_kind(k.strip(), params, budgets, base_labels, args.full, root) for k in args.kinds.split(",")]
    if args.out.is_file():  # checkpoints measured by an earlier run (other --kinds) are kept
        done = {c["name"] for c in cks}
        cks = [c for c in json.loads(args.out.read_text()).get("checkpoints", []) if c["name"] not in done] + cks
    result = {"base": BASE, "budgets": budgets, "base_campaign_label_images": base_labels,
              "evaluation": {"images": p["evaluate"]["images"], "image_seeds": p["evaluate"]["image_seeds"]},
              "checkpoints": cks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    from machine import machine_info

    res = ROOT / "bench" / "results" / "transfer_digits.json"
    res.write_text(json.dumps({**result, "machine": machine_info()}, indent=2) + "\n")
    for ck in cks:
        print(f"{ck['name']}: transfer {ck['label_images']['transfer']:,} label images "
              f"({ck['label_images']['transfer'] / base_labels:.1%} of {base_labels:,}); holds {ck['holds']}")
        for b, r in ck["per_budget"].items():
            print(f"  {b}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
