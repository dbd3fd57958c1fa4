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
    "sample": {"num_configs": 14, "workers": 1},  # labels: score.images
    "analysis": {"images": 8, "calib_samples": 4, "calib_trajectories": 2, "ssim_images": 4},
    "probe": {"images": 8},
    "quant_analyzer": {"images": 8, "max_layers": 2, "sqnr_bits": [8], "sqnr_max_layers": 2, "calib_samples": 4,
                       "calib_trajectories": 2, "hist_bins": 8},
    "train": {"folds": 2, "epochs": 3, "patience": 3, "hidden": 8, "layers": 1, "heads": 1,
              "baselines": ["summed_error", "ridge", "probe"]},
    "search": {"budgets": [3.5, 4.0], "strategies": ["predictor", "fisher", "error", "uniform", "random-best"],
               "candidates_scored": 1, "select_images": 8, "mixdq_pick_images": 4, "relinearise_rounds": 3,
               "fisher_samples": 4, "fisher_trajectories": 2},
    "active": {"rounds": 1, "per_budget": 1, "disagreement": 1, "relinearise_rounds": 2, "epochs": 2},
    "evaluate": {"images": 16, "image_seeds": [23, 24], "act_bits": [8], "act_calib_samples": 4,
                 "act_calib_trajectories": 2},
    "act_calibration": {"images": 8, "image_seeds": [61, 62, 63], "bits": [8], "calib_samples": 4,
                        "calib_trajectories": 2},
    "metric_validity": {"n_images": [4, 8], "random_configs": 4, "window_configs": 1, "bootstrap": 20,
                        "calib_samples": 4, "calib_trajectories": 2},
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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_whole_pipeline_micro(tmp_path: Path) -> None:
    tracked_copy(tmp_path)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), MICRO)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)

    dvc(tmp_path, "repro")
    rows = json.loads((tmp_path / "metrics" / "digits" / "search.json").read_text())
    got = {(r["strategy"], r["budget"]) for r in rows}
    for strategy in MICRO["search"]["strategies"]:
        assert any(s == strategy for s, _ in got), f"no evaluation row for {strategy}"
    assert all(r["avg_bits"] <= r["budget"] + 1e-9 for r in rows if r.get("status", "ok") == "ok" and r["budget"])
    predictor = json.loads((tmp_path / "metrics" / "digits" / "predictor.json").read_text())
    assert set(predictor) >= {"ensemble", "folds", "baselines"}
    assert (tmp_path / "data" / "quant_cache" / "digits.parquet").is_file()
    assert all(len(r["fids"]) == 2 for r in rows if r.get("status") == "ok")  # every seed set scored
    curve = json.loads((tmp_path / "metrics" / "digits" / "active.json").read_text())
    assert [c["round"] for c in curve] == [0, 1]  # the learning curve: before and after one round
    validity = json.loads((tmp_path / "metrics" / "digits" / "metric_validity.json").read_text())
    assert validity["ground_truth"]["configs"] >= 4
    assert {m["metric"] for m in validity["metrics"]} >= {"fid", "fd_fp", "feat_dist", "output_mse"}
    assert {m["scope"] for m in validity["metrics"]} >= {"all", "top-quarter", "window-3.5"}
    cost = json.loads((tmp_path / "metrics" / "digits" / "cost.json").read_text())
    # 14 configs x 16 images + the FP images of the paired scores, counted by the sample stage
    assert cost["stages"]["sample"]["images"] == 14 * 16 + 16
    assert cost["total"]["images"] == sum(r["images"] for r in cost["stages"].values())
    assert all(cost["stages"][s]["images"] > 0 for s in ("evaluate", "probe", "analyze", "search"))

    second = dvc(tmp_path, "repro")
    assert "Running stage" not in second, second  # a second repro has nothing to do

    params["search"]["budgets"] = [3.75]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = dvc(tmp_path, "status")
    stale_stages = {line.strip().rstrip(":") for line in stale.splitlines() if line and not line.startswith(("\t", " "))}
    # metric_validity reads search.budgets (its budget windows): stale with them
    assert stale_stages == {"search@digits", "evaluate@digits", "metric_validity@digits"}, stale


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("kind", ["sd", "sd3"])  # epsilon U-Net; flow-matching transformer (#22)
def test_whole_pipeline_micro_on_a_real_class_pipeline(tmp_path: Path, kind: str) -> None:
    """`dvc repro` with `models:` naming a tiny pipeline directory of a real class (SD 1.5's
    StableDiffusionPipeline, SD3's flow-matching StableDiffusion3Pipeline) outside the repo copy
    (absolute path) and a reference built by `qsens reference build`; for SD, then a second model
    added to the same project."""
    from denoisers.pipeline import load_pipeline
    from denoisers.traits import pipeline_traits
    from tests.standins import write_standin_inception, write_test_images
    from tests.tiny_pipelines import build_tiny_pipeline

    repo = tmp_path / "repo"
    tracked_copy(repo)
    name = f"tiny-{kind}"
    source = build_tiny_pipeline(kind, tmp_path / "models" / name)
    traits = pipeline_traits(load_pipeline(source))
    resolution = traits.resolution
    inception = write_standin_inception(tmp_path / "standin-inception-random-weights.pt")
    names = write_test_images(tmp_path / "images")
    (tmp_path / "captions.txt").write_text("\n".join(f"a photo of thing {i}" for i in range(len(names))))
    from qsens.cli import main

    ref = tmp_path / f"reference-{resolution}"
    assert main(["reference", "build", "--images", str(tmp_path / "images"), "--captions",
                 str(tmp_path / "captions.txt"), "--resolution", str(resolution), "--num-images", str(len(names)),
                 "--inception", str(inception), "--out", str(ref)]) == 0
    micro = {k: v for k, v in MICRO.items() if k != "digits"}
    micro["bank"] = {"options": "uaq4,kma3"}  # analysis costs layers × options generations
    micro["analysis"] = {"images": 4, "calib_samples": 2, "calib_trajectories": 1, "ssim_images": 2}
    micro["sample"] = {"num_configs": 10, "workers": 1}
    micro["score"] = {**MICRO["score"], "images": 8}  # the cache's labels (and noise's scores)
    micro["search"] = {**MICRO["search"], "budgets": [3.5, 4.0]}
    # W/A rows are covered by the digits micro run and tests/test_act_search.py; here they would
    # only add generate-and-score runs of a CLIP-conditioned model to CI
    micro["evaluate"] = {**MICRO["evaluate"], "act_strategies": [], "act_mixed_bits": None}
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), micro)
    params["models"] = {name: {"source": str(source), "reference": str(ref), "steps": 2, "batch_size": 4}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)

    out = dvc(repo, "repro")
    assert "digits" not in "".join(p.name for p in (repo / "data").rglob("*")), "a digits path for a real model"
    rows = json.loads((repo / "metrics" / name / "search.json").read_text())
    assert {r["strategy"] for r in rows} >= set(MICRO["search"]["strategies"])
    info = json.loads((repo / "data" / "models" / name / "model.json").read_text())
    assert info["pipeline_class"] == traits.pipeline and info["resolution"] == resolution
    assert (repo / "data" / "quant_cache" / f"{name}.parquet").is_file(), out
    assert "Running stage" not in dvc(repo, "repro")
    if kind != "sd":
        return

    # #27: a second model in the same project (the same pipeline without classifier-free guidance:
    # half the denoiser batch, so the cheapest second setting) runs only its own stages and leaves
    # every output of the first byte-identical
    def snapshot() -> dict[str, bytes]:
        # DVC's own data/*/.gitignore files list every model's outputs: bookkeeping, not outputs
        files = [f for f in (repo / "data").rglob("*") if f.is_file() and "-few" not in str(f.relative_to(repo))
                 and f.name != ".gitignore"]
        files += [f for f in (repo / "metrics" / name).rglob("*") if f.is_file()]
        files += [repo / "docs" / "img" / f"{name}_samples.png", repo / "dvc.lock"]
        return {str(f.relative_to(repo)): f.read_bytes() for f in files if f.is_file()}

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    before = snapshot()
    second = f"{name}-few"
    params["models"][second] = {**params["models"][name], "guidance": 1.0}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran and all(stage.endswith(f"@{second}") for stage in ran), ran
    after = snapshot()
    after.pop("dvc.lock")
    assert {k: v for k, v in before.items() if k != "dvc.lock"} == after
    new_lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {k: v for k, v in new_lock.items() if k in lock} == lock  # the first model's entries untouched
    rows = json.loads((repo / "metrics" / second / "search.json").read_text())
    assert {r["strategy"] for r in rows} >= set(MICRO["search"]["strategies"])
    assert json.loads((repo / "data" / "models" / second / "settings.json").read_text())["guidance"] == 1.0
