"""Keep another run's pipeline metrics as a bench result README can cite.

`dvc exp run` in a clone (e.g. the `digits-dit` headline) leaves its metrics in that clone's
metrics/<model>/; this stores them, with the run's params and the machine, in bench/results/<name>.json:

    python bench/collect_exp.py --repo /path/to/clone --name digits_dit [--model digits-dit] [--note TEXT]

No measurement: it copies `metrics/<model>/{search,active,predictor,metric_validity,cost}.json` (those
present) and params.yaml's `model`, `sample`, `analysis`, `search`, `active`, `evaluate` and
`metric_validity` sections.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from denoisers.spec import model_names  # noqa: E402
from machine import write_result  # noqa: E402  (bench/machine.py)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="the clone the experiment ran in")
    ap.add_argument("--name", required=True, help="bench/results/<name>.json")
    ap.add_argument("--model", default=None,
                    help="the model's name under the clone's params `models:` (default: its first)")
    ap.add_argument("--note", default="", help="how the run was made (the dvc exp run command)")
    args = ap.parse_args(argv)
    params = yaml.safe_load((args.repo / "params.yaml").read_text())
    model = args.model or model_names(args.repo / "params.yaml")[0]
    metrics = args.repo / "metrics" / model
    out = {"note": args.note, "repo": str(args.repo),
           "params": {k: params.get(k) for k in ("models", "model", "sample", "analysis", "search", "active", "evaluate",
                                                "metric_validity")}}
    for name in ("search", "active", "predictor", "metric_validity", "cost"):
        f = metrics / f"{name}.json"
        out[name] = json.loads(f.read_text()) if f.is_file() else None
    write_result(args.name, out, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
