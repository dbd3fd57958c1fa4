"""Every command on tiny random pipelines of the other families (issue #22): FLUX, Sana, SD3,
Hunyuan-DiT, LCM, unconditional DDPM, img2img and ControlNet.

Each is saved to a directory and named in params.yaml, as a user would, and goes through
reference build → prepare → bank → graph → generate → sample → merge → score → search (the
fisher strategy, which calibrates on the model's own trajectory and uses its prediction type).
img2img's reference carries its source images (`--cond-images source`), ControlNet's a canny
map of other images (`--cond-images DIR --cond-preprocess canny`).

CPU seconds per stage (this process, `time.process_time`) go to `$QSENS_FAMILY_TIMINGS` (a
JSON file) when set: docs/models.md's table comes from there.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_real_pipelines import params_for, qsens, scoring_files  # noqa: F401 - fixture
from tests.tiny_pipelines import build_tiny_pipeline

# the faster ones run by default; the others are marked slow
FAST = ["sd3", "hunyuan", "lcm", "ddpm", "img2img", "controlnet"]
SLOW = ["flux", "sana"]
RESOLUTION = {"flux": 16}  # FLUX's native size is default_sample_size (128) x the VAE factor
FISHER = {"fisher_samples": 4, "fisher_trajectories": 2, "time_limit_s": 5}


def _timings_file() -> Path | None:
    path = os.environ.get("QSENS_FAMILY_TIMINGS")
    return Path(path) if path else None


def _record(kind: str, seconds: dict[str, float], extra: dict) -> None:
    path = _timings_file()
    if path is None:
        return
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[kind] = {"cpu_seconds": {k: round(v, 2) for k, v in seconds.items()}, **extra}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _reference(kind: str, files, out: Path, resolution: int, tmp: Path) -> list[str]:
    argv = ["reference", "build", "--images", files["images"], "--captions", files["captions"],
            "--resolution", resolution, "--num-images", files["n"], "--inception",
            files["inception"], "--clip", files["clip"], "--out", out, "--quiet"]
    if kind == "img2img":
        argv += ["--cond-images", "source"]
    elif kind == "controlnet":
        from tests.standins import write_test_images

        cond = tmp / "control-src"
        write_test_images(cond, seed=1)
        argv += ["--cond-images", cond, "--cond-preprocess", "canny"]
    return argv


def run_family(kind: str, tmp_path: Path, files, capsys) -> None:
    seconds: dict[str, float] = {}

    wall: dict[str, float] = {}

    def step(name: str, *argv) -> None:
        t0, w0 = time.process_time(), time.perf_counter()
        assert qsens(*argv) == 0, (kind, name)
        seconds[name] = seconds.get(name, 0.0) + time.process_time() - t0
        wall[name] = wall.get(name, 0.0) + time.perf_counter() - w0

    source = build_tiny_pipeline(kind, tmp_path / "models" / kind)
    from denoisers.pipeline import load_pipeline
    from denoisers.traits import pipeline_traits

    traits = pipeline_traits(load_pipeline(source))
    resolution = RESOLUTION.get(kind, traits.resolution)
    reference = tmp_path / "refs" / kind
    step("reference", *_reference(kind, files, reference, resolution, tmp_path))
    extra = {"resolution": resolution} if kind in RESOLUTION else {}
    params = params_for(tmp_path, source, f"tiny-{kind}", reference, **extra)
    import yaml

    p = yaml.safe_load(params.read_text())
    p["search"].update(FISHER)
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    name = f"tiny-{kind}"

    step("prepare", "prepare", "--params", params)
    step("bank", "bank", "build", "--params", params, "--quiet")
    step("graph", "graph", "--params", params)
    bank = json.loads((tmp_path / "data" / "bank" / name / "bank.json").read_text())
    layers = list(bank["layer_fingerprints"])
    assert layers

    out = tmp_path / "gen"
    what = () if traits.conditioning == "none" else ("--prompt", "a lion riding a bike")
    step("generate", "generate", "--params", params, *what, "--n-images", 2,
         "--out", out)
    meta = json.loads((out / "generate.json").read_text())
    assert len(meta["files"]) == 2 and all((out / f).is_file() for f in meta["files"])

    step("sample", "sample", "--params", params, "--num-configs", 3, "--images", 4, "--quiet")
    cache = tmp_path / "data" / "quant_cache" / f"{name}.parquet"
    step("merge", "cache", "merge", "--shards", tmp_path / "data" / "shards" / name, "--out", cache)
    from sampling.cache import read_cache

    rows = read_cache(cache)
    assert len(rows) == 3 and (rows["status"] == "ok").all(), rows[["status"]].to_string()

    capsys.readouterr()
    step("score", "score", "--params", params, "--config", "fp16", "--json")
    fp = json.loads(capsys.readouterr().out)
    assert fp["status"] == "ok" and np.isfinite(fp["fid"]) and fp["n_images"] == 4
    cfg = tmp_path / "uaq4.json"
    cfg.write_text(json.dumps({"model": name, "options": {l: "uaq4" for l in layers}}))
    step("score", "score", "--params", params, "--config", cfg, "--json")
    q = json.loads(capsys.readouterr().out)
    assert q["status"] == "ok" and q["fid"] != pytest.approx(fp["fid"], rel=1e-9, abs=1e-12)

    found = tmp_path / "found.json"
    step("search", "search", "--params", params, "--budget", "4.0", "--strategy", "fisher",
         "--out", found, "--quiet")
    config = json.loads(found.read_text())
    assert set(config["options"]) <= set(layers) and config["avg_bits"] <= 4.0 + 1e-9
    _record(kind, seconds, {"pipeline": traits.pipeline, "needs": traits.needs(),
                            "prediction": traits.prediction, "guidance": traits.guidance_kind,
                            "resolution": resolution, "quantizable_layers": len(layers),
                            "wall_seconds": {k: round(v, 2) for k, v in wall.items()}})


@pytest.mark.parametrize("kind", FAST)
def test_every_command_on_a_family(kind, tmp_path, scoring_files, monkeypatch, capsys, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    run_family(kind, tmp_path, scoring_files, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("kind", SLOW)
def test_every_command_on_a_slow_family(kind, tmp_path, scoring_files, monkeypatch, capsys, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    run_family(kind, tmp_path, scoring_files, capsys)


@pytest.mark.slow
def test_activation_work_on_hunyuan_leaves_out_layers_hooks_cannot_see(tmp_path, scoring_files, monkeypatch,
                                                                        capsys, one_torch_thread):
    """#27 item 1: Hunyuan-DiT's attention pooler runs its projections through
    F.multi_head_attention_forward, so forward hooks never see time_extra_emb.pooler.*: activation
    calibration and QuantAnalyzer leave them out of activation work with one warning line and
    record them (they used to end in a KeyError, rc 3, and a refusal)."""
    import yaml

    from denoisers.pipeline import load_pipeline
    from denoisers.traits import pipeline_traits

    monkeypatch.chdir(tmp_path)
    source = build_tiny_pipeline("hunyuan", tmp_path / "models" / "hunyuan")
    reference = tmp_path / "refs" / "hunyuan"
    assert qsens(*_reference("hunyuan", scoring_files, reference,
                             pipeline_traits(load_pipeline(source)).resolution, tmp_path)) == 0
    params = params_for(tmp_path, source, "tiny-hunyuan", reference)
    p = yaml.safe_load(params.read_text())
    p["act_calibration"].update({"images": 2, "calib_samples": 4, "calib_trajectories": 2, "image_seeds": [41, 42, 43]})
    p["quant_analyzer"].update({"images": 2, "max_layers": 2, "sqnr_bits": [8], "sqnr_max_layers": 2,
                                "calib_samples": 4, "calib_trajectories": 2})
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    assert qsens("prepare", "--params", params) == 0
    assert qsens("bank", "build", "--params", params, "--quiet") == 0
    capsys.readouterr()
    out = tmp_path / "act.json"
    assert qsens("analyze", "act-calibration", "--params", params, "--out", out, "--threads", 1, "--quiet") == 0
    warned = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert len(warned) == 1 and "time_extra_emb.pooler" in warned[0], warned
    excluded = json.loads(out.read_text())["excluded_layers"]
    assert excluded and all(l.startswith("time_extra_emb.pooler.") for l in excluded)
    assert qsens("analyze", "quant-analyzer", "--params", params, "--threads", 1, "--quiet") == 0
    qa = tmp_path / "data" / "analysis" / "tiny-hunyuan" / "quant_analyzer" / "weight_activation_sensitivity.json"
    assert set(json.loads(qa.read_text())["excluded_from_activations"]) == set(excluded)
