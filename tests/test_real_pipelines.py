"""Every command on tiny random pipelines of the real classes (SD, SDXL, PixArt-α/Σ, DiT).

Each pipeline is saved to a local directory and named in a params.yaml `model:` section, as a
user would; the reference dir comes from `qsens reference build` on generated image files
through a stand-in Inception file (random weights, clean-fid's interface) and a tiny CLIP.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from qsens.cli import main as qsens_main
from tests.standins import write_standin_inception, write_test_images, write_tiny_clip
from tests.tiny_pipelines import build_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["sd", "sdxl", "pixart-alpha", "pixart-sigma", "dit"]

# Micro settings: what each section of the shipped params.yaml becomes for a tiny model.
MICRO = {
    "bank": {"options": "uaq4,kma3"},
    "score": {"images": 4, "seed": 0},
    "noise": {"fp_seed_sets": 2, "random_configs": 3},
    "sample": {"num_configs": 3, "workers": 1},
    "analysis": {"images": 2, "calib_samples": 2, "calib_trajectories": 1, "ssim_images": 2},
    "probe": {"images": 2},
}


def qsens(*argv: str) -> int:
    return qsens_main([str(a) for a in argv])


def params_for(tmp: Path, source: Path, name: str, reference: Path | None,
               filename: str = "params.yaml", **model) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in MICRO.items():
        params[section].update(values)
    params["models"] = {name: dict(source=str(source), reference=str(reference) if reference else None,
                                   steps=2, batch_size=2, **model)}
    path = tmp / filename
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def scoring_files(tmp_path_factory):
    """A stand-in Inception file, a tiny CLIP dir and real image files with captions."""
    root = tmp_path_factory.mktemp("scoring")
    inception = write_standin_inception(root / "standin-inception-random-weights.pt")
    clip = write_tiny_clip(root / "clip")
    images = root / "images"
    names = write_test_images(images)
    captions = root / "captions.txt"
    captions.write_text("\n".join(f"a photo of thing {i}" for i in range(len(names))) + "\n")
    return {"inception": inception, "clip": clip, "images": images, "captions": captions,
            "n": len(names)}


def build_reference(scoring_files, out: Path, resolution: int) -> Path:
    assert qsens("reference", "build", "--images", scoring_files["images"],
                 "--captions", scoring_files["captions"], "--resolution", resolution,
                 "--num-images", scoring_files["n"], "--inception", scoring_files["inception"],
                 "--clip", scoring_files["clip"], "--out", out) == 0
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_on_a_real_class_pipeline(kind, tmp_path, scoring_files, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = build_tiny_pipeline(kind, tmp_path / "models" / kind)
    from denoisers.pipeline import load_pipeline, native_resolution

    resolution = native_resolution(load_pipeline(source))
    reference = build_reference(scoring_files, tmp_path / "refs" / "set", resolution)
    params = params_for(tmp_path, source, f"tiny-{kind}", reference)
    name = f"tiny-{kind}"

    assert qsens("prepare", "--params", params) == 0
    info = json.loads((tmp_path / "data" / "models" / name / "model.json").read_text())
    assert info["identity"].startswith("sha256:") and len(info["fingerprint"]) > 8
    assert str(source) not in json.dumps(info)  # what the model is, not where it lies
    assert (tmp_path / "data" / "reference" / name / "reference.json").is_file()

    assert qsens("bank", "build", "--params", params, "--quiet") == 0
    assert qsens("graph", "--params", params) == 0
    graph = json.loads((tmp_path / "data" / "graphs" / f"{name}.json").read_text())
    bank = json.loads((tmp_path / "data" / "bank" / name / "bank.json").read_text())
    weight_nodes = {n["id"] for n in graph["nodes"] if n.get("kind") == "weight"}
    assert set(bank["layer_fingerprints"]) <= weight_nodes | {n.get("layer") for n in graph["nodes"]}

    capsys.readouterr()
    assert qsens("score", "--params", params, "--config", "fp16", "--json") == 0
    fp = json.loads(capsys.readouterr().out)
    assert fp["status"] == "ok" and np.isfinite(fp["fid"]) and fp["n_images"] == 4

    # a uniform 4-bit config changes the images, so its FID differs from FP's
    layers = list(bank["layer_fingerprints"])
    cfg = tmp_path / "uaq4.json"
    cfg.write_text(json.dumps({"model": name, "options": {l: "uaq4" for l in layers}}))
    assert qsens("score", "--params", params, "--config", cfg, "--json") == 0
    q = json.loads(capsys.readouterr().out)
    assert q["status"] == "ok" and q["fid"] != pytest.approx(fp["fid"], rel=1e-9, abs=1e-12)

    out = tmp_path / "gen"
    what = ("--class-id", "1") if kind == "dit" else ("--prompt", "a lion riding a bike")
    assert qsens("generate", "--params", params, "--config", cfg, *what, "--n-images", 2,
                 "--out", out) == 0
    meta = json.loads((out / "generate.json").read_text())
    assert len(meta["files"]) == 2 and all((out / f).is_file() for f in meta["files"])

    assert qsens("sample", "--params", params, "--num-configs", 3, "--images", 4, "--quiet") == 0
    cache = tmp_path / "data" / "quant_cache" / f"{name}.parquet"
    assert qsens("cache", "merge", "--shards", tmp_path / "data" / "shards" / name,
                 "--out", cache) == 0
    from sampling.cache import read_cache

    rows = read_cache(cache)
    assert len(rows) == 3 and (rows["status"] == "ok").all() and (rows["model"] == name).all()

    assert qsens("predictor", "probe", "--params", params, "--quiet") == 0
    assert (tmp_path / "data" / "probe" / f"{name}.safetensors").is_file()


def test_generation_settings_reach_the_pipeline(tmp_path, monkeypatch):
    """Guidance, steps and the negative prompt change the images; the defaults are the pipeline's."""
    monkeypatch.chdir(tmp_path)
    source = build_tiny_pipeline("sd", tmp_path / "sd")
    from denoisers.spec import ModelSpec

    spec = ModelSpec(source=str(source), name="sd", steps=2, batch_size=2)
    from denoisers.registry import load_denoiser

    den = load_denoiser(spec)
    assert den.guidance == 7.5  # StableDiffusionPipeline.__call__'s default, as users run it
    den.prompts = ["a red cube"]
    base = den.generate(2, 0).images
    assert np.array_equal(base, den.generate(2, 0).images)  # deterministic
    den.configure_generation(guidance=1.0)
    assert not np.array_equal(base, den.generate(2, 0).images)
    den.configure_generation(guidance=7.5)
    den.negative_prompt = "blurry"
    den._embed_cache.clear()
    assert not np.array_equal(base, den.generate(2, 0).images)


def test_bad_model_inputs_are_one_line(tmp_path, monkeypatch, capsys, scoring_files):
    monkeypatch.chdir(tmp_path)
    source = build_tiny_pipeline("sd", tmp_path / "sd")
    notapipe = tmp_path / "empty"
    notapipe.mkdir()
    cases = [
        (["score", "--model", notapipe, "--config", "fp16"], "is a directory but no model"),
        (["score", "--model", source, "--config", "fp16"], "no reference dir"),
        (["score", "--model", "no/such-model-here", "--config", "fp16"], "cannot load"),
        (["score", "--model", "./missing-dir", "--config", "fp16"], "unknown model"),
    ]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"source": "digits"}}))
    params = params_for(tmp_path, source, "sd", None, "p-sched.yaml", scheduler="NoSuchScheduler")
    cases.append((["score", "--params", params, "--config", "fp16"], "unknown scheduler"))
    ref = build_reference(scoring_files, tmp_path / "ref32", 32)
    params2 = params_for(tmp_path, source, "sd", ref, "p-ref32.yaml")
    from denoisers.pipeline import load_pipeline, native_resolution

    if native_resolution(load_pipeline(source)) != 32:
        cases.append((["score", "--params", params2, "--config", "fp16"], "was built at 32 px"))
    cases.append((["score", "--params", tmp_path / "nope.yaml", "--config", "fp16"], "not found"))
    for argv, message in cases:
        capsys.readouterr()
        assert qsens(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and message in err, (argv, err)


def test_a_moved_pipeline_dir_rescores_nothing(tmp_path, scoring_files, monkeypatch, capsys):
    """#27 item 4: identity by content, not path. After `mv` of the pipeline dir, prepare writes a
    byte-identical model.json (DVC's downstream stages stay valid) and sample scores nothing
    again; a changed file (another VAE) is another model."""
    import shutil

    from denoisers.pipeline import load_pipeline, native_resolution
    from denoisers.spec import source_identity

    monkeypatch.chdir(tmp_path)
    source = build_tiny_pipeline("sd", tmp_path / "models" / "sd")
    reference = build_reference(scoring_files, tmp_path / "refs" / "set", native_resolution(load_pipeline(source)))
    params = params_for(tmp_path, source, "tiny-sd", reference)
    model_json = tmp_path / "data" / "models" / "tiny-sd" / "model.json"
    shards = tmp_path / "data" / "shards" / "tiny-sd"
    assert qsens("prepare", "--params", params) == 0
    before = model_json.read_bytes()
    assert qsens("bank", "build", "--params", params, "--quiet") == 0
    assert qsens("sample", "--params", params, "--num-configs", 2, "--images", 4, "--quiet") == 0
    scored = {f.name: f.read_bytes() for f in shards.glob("*.jsonl")}
    assert scored

    moved = tmp_path / "elsewhere" / "sd-moved"
    moved.parent.mkdir()
    shutil.move(str(source), moved)
    params = params_for(tmp_path, moved, "tiny-sd", reference, filename="params-moved.yaml")
    assert qsens("prepare", "--params", params) == 0
    assert model_json.read_bytes() == before
    assert qsens("sample", "--params", params, "--num-configs", 2, "--images", 4, "--quiet") == 0
    assert {f.name: f.read_bytes() for f in shards.glob("*.jsonl")} == scored

    ident = source_identity(moved)
    vae = next((moved / "vae").glob("*.safetensors"))
    vae.write_bytes(vae.read_bytes()[:-1] + bytes([vae.read_bytes()[-1] ^ 1]))
    assert source_identity(moved) != ident
