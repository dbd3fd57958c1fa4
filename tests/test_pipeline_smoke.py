"""The whole DVC pipeline at micro scale, through the real stages and the real `dvc repro`.

A copy of the tracked tree gets a micro params.yaml (a few configs, few images, tiny training),
then `dvc repro` must run every stage, a second `dvc repro` must do nothing, and changing only
the budgets must re-run only search and evaluate.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

MICRO = {
    "digits": {"unet_channels": [8, 16], "unet_head_dim": 8, "train_steps": 30, "train_batch": 32,
               "classifier_epochs": 2, "steps": 2, "gen_batch_size": 16},
    "score": {"images": 16, "seed": 0},
    "noise": {"fp_seed_sets": 2, "random_configs": 3},
    "sample": {"num_configs": 14, "workers": 1, "images": 16},
    "analysis": {"images": 8, "calib_samples": 4, "calib_trajectories": 2, "ssim_images": 4},
    "probe": {"images": 8},
    "train": {"folds": 2, "epochs": 3, "patience": 3, "hidden": 8, "layers": 1, "heads": 1,
              "baselines": ["summed_error", "ridge", "probe"]},
    "search": {"budgets": [3.5, 4.0], "strategies": ["predictor", "error", "uniform", "random-best"],
               "candidates_scored": 1, "select_images": 8, "mixdq_pick_images": 4},
    "evaluate": {"images": 16},
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def tracked_copy(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if rel.startswith(("data/", "metrics/")) or not (ROOT / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)


def dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_whole_pipeline_micro(tmp_path: Path) -> None:
    tracked_copy(tmp_path)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), MICRO)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)

    dvc(tmp_path, "repro")
    rows = json.loads((tmp_path / "metrics" / "search.json").read_text())
    got = {(r["strategy"], r["budget"]) for r in rows}
    for strategy in MICRO["search"]["strategies"]:
        assert any(s == strategy for s, _ in got), f"no evaluation row for {strategy}"
    assert all(r["avg_bits"] <= r["budget"] + 1e-9 for r in rows if r.get("status", "ok") == "ok" and r["budget"])
    predictor = json.loads((tmp_path / "metrics" / "predictor.json").read_text())
    assert set(predictor) >= {"ensemble", "folds", "baselines"}
    assert (tmp_path / "data" / "quant_cache" / "digits.parquet").is_file()

    second = dvc(tmp_path, "repro")
    assert "Running stage" not in second, second  # a second repro has nothing to do

    params["search"]["budgets"] = [3.75]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = dvc(tmp_path, "status")
    stale_stages = {line.strip().rstrip(":") for line in stale.splitlines() if line and not line.startswith(("\t", " "))}
    assert stale_stages == {"search", "evaluate"}, stale
