"""Predictor bench: training time of the ensemble and a learning curve (25/50/100 % of each fold's
train configs), the GNN against the best baseline measured in the same run on the same splits.

    .venv/bin/python bench/predictor.py                       # data/ of the digits default if there
    .venv/bin/python bench/predictor.py --synthetic           # else a synthetic cache (known truth)
    .venv/bin/python bench/predictor.py --fractions 1.0 --seed 1      # another test split

Prints one row per fraction: test Spearman / Kendall of the GNN ensemble and of each baseline,
the ratio GNN / best baseline, and the wall time of the ensemble training. Writes the rows with
the command and the machine conditions to bench/results/predictor[_synthetic][_seed<N>].json
(or --json PATH).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from machine import write_result  # noqa: E402  (bench/machine.py)

from predictor.baselines import PROBE_BASELINES  # noqa: E402
from predictor.train import TrainParams, load_train_params, load_training_data, train_ensemble  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--synthetic", action="store_true", help="use a synthetic cache (300 configs)")
    ap.add_argument("--fractions", default="0.25,0.5,1.0")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seed", type=int, default=None,
                    help="train.seed override: another test split and fold assignment (default: params)")
    ap.add_argument("--json", help="write the rows here (default bench/results/predictor*.json)")
    args = ap.parse_args()
    data = Path(args.data_dir)
    cache, graph, bank = (data / "quant_cache" / f"{args.model}.parquet", data / "graphs" / f"{args.model}.json",
                          data / "bank" / args.model)
    probe = data / "probe" / f"{args.model}.safetensors"
    source = f"{args.model} cache"
    base = load_train_params(args.params)
    if args.synthetic or not cache.is_file():
        from predictor.synthetic import make_synthetic

        tmp = Path(tempfile.mkdtemp(prefix="qsens_pred_bench_"))
        paths = make_synthetic(tmp, n_configs=300, channels=(32, 64), noise=0.5)
        cache, graph, bank = paths["cache"], paths["graph"], paths["bank"]
        source = "synthetic cache (digits-sized UNet, 300 configs)"
        probe = None  # a synthetic cache has no generated images to probe
        base = TrainParams.from_dict({**asdict(base), "probe": False,
                                      "baselines": [b for b in base.baselines if b not in PROBE_BASELINES]})
    elif not base.needs_probe:
        probe = None
    if args.seed is not None:
        base = TrainParams.from_dict({**asdict(base), "seed": args.seed})
    template, configs = load_training_data(cache, graph, bank, probe=probe)
    rows = []
    print(f"predictor bench on the {source}: {len(configs)} configs, torch threads {base.threads}")
    for frac in [float(f) for f in args.fractions.split(",")]:
        params = TrainParams.from_dict({**asdict(base), "train_fraction": frac})
        t0 = time.perf_counter()
        res = train_ensemble(template, configs, params, progress=False)
        wall = time.perf_counter() - t0
        m = res.metrics
        best_name = max(m["baselines"], key=lambda b: m["baselines"][b]["spearman"])
        best = m["baselines"][best_name]
        row = {"fraction": frac, "n_train_per_fold": m["info"]["n_train_per_fold"], "seconds": round(wall, 1),
               "gnn": m["ensemble"], "baselines": m["baselines"],
               "ratio_spearman_vs_best_baseline": m["ensemble"]["spearman"] / best["spearman"],
               "best_baseline": best_name}
        rows.append(row)
        print(f"  {frac:>4.0%} train ({row['n_train_per_fold']:>3} configs/member): GNN Spearman "
              f"{m['ensemble']['spearman']:.3f} Kendall {m['ensemble']['kendall']:.3f} | best baseline "
              f"{best_name} {best['spearman']:.3f} / {best['kendall']:.3f} | ratio "
              f"{row['ratio_spearman_vs_best_baseline']:.3f} | {wall:.0f} s "
              f"({params.folds} members, threads {params.threads})")
        for b, bm in m["baselines"].items():
            print(f"        {b:>13}: Spearman {bm['spearman']:.3f} Kendall {bm['kendall']:.3f}")
        sys.stdout.flush()
    name = "predictor" + ("_synthetic" if source.startswith("synthetic") else "") + (
        f"_seed{args.seed}" if args.seed is not None else "")
    write_result(name, {"source": source, "seed": base.seed, "threads": base.threads, "rows": rows}, out=args.json)
    torch.set_num_threads(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
