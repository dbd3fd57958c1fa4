"""The digits denoisers: generation determinism, seeds, save/load, registry, prepare, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from denoisers.base import SEED_STRIDE, image_seeds
from denoisers.digits import (DigitsClassifier, DigitsDenoiser, DigitsParams, load_digit_images,
                              split_indices)
from core.errors import QsensError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_image_seeds_are_disjoint_across_seed_sets():
    a, b = image_seeds(500, 0), image_seeds(500, 1)
    assert a[0] == 0 and b[0] == SEED_STRIDE and not set(a) & set(b)
    with pytest.raises(ValueError):
        image_seeds(10, -1)


def test_generate_is_deterministic_and_balanced(tiny_digits_denoiser):
    den = tiny_digits_denoiser
    g1 = den.generate(20, seed=5)
    g2 = den.generate(20, seed=5)
    assert g1.images.dtype == np.uint8 and g1.images.shape == (20, 8, 8, 1)
    assert np.array_equal(g1.images, g2.images)
    assert g1.labels.tolist() == [i % 10 for i in range(20)]
    assert g1.seeds.tolist() == list(5 * SEED_STRIDE + np.arange(20))
    assert g1.n_nonfinite == 0
    g3 = den.generate(20, seed=6)
    assert not np.array_equal(g1.images, g3.images)


def test_images_do_not_depend_on_how_many_are_requested(tiny_digits_denoiser):
    """Per-image seeds + fixed batch size: image i is the same whoever generates the rest."""
    den = tiny_digits_denoiser
    full = den.generate(16, seed=2, batch_size=8)
    head = den.generate(8, seed=2, batch_size=8)
    assert np.array_equal(full.images[:8], head.images)


def test_guidance_follows_the_classifier_free_formula(tiny_digits_denoiser):
    """eps = eps_u + g·(eps_c − eps_u), the null class giving eps_u, at every sampler step."""
    from denoisers.digits import NULL_CLASS

    den = tiny_digits_denoiser
    g = den.generate(4, seed=0, guidance=2.0)
    assert g.images.shape == (4, 8, 8, 1) and g.params["guidance"] == 2.0
    assert np.abs(g.images.astype(int) - den.generate(4, seed=0).images).max() > 0
    # the sampler by hand: conditional and null-class predictions in separate calls
    torch.manual_seed(0)
    x0 = torch.randn(4, 1, 8, 8)
    y = torch.tensor([3, 1, 4, 1])
    for guidance in (0.0, 3.0):
        sched = den._scheduler()
        sched.set_timesteps(den.params.steps)
        x = x0 * sched.init_noise_sigma
        with torch.inference_mode():
            for t in sched.timesteps:
                eps_c = den._eps(x, t, y)
                eps_u = den._eps(x, t, torch.full_like(y, NULL_CLASS))
                x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x, return_dict=False)[0]
            got = den._sample(x0.clone(), y, den.params.steps, guidance)
        torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-4)
    # guidance 0 is the unconditional model: the null class for every image
    unc = den.generate(4, seed=0, guidance=0.0).images.astype(int)
    null = den.generate(4, seed=0, labels=np.full(4, NULL_CLASS)).images.astype(int)
    assert np.abs(unc - null).max() <= 1  # uint8 rounding of float-identical samples


def test_dit_generates_and_exports_inputs(tiny_digits_dit):
    den = tiny_digits_dit
    assert type(den.model).__name__ == "DiTTransformer2DModel"
    g1, g2 = den.generate(6, seed=1), den.generate(6, seed=1)
    assert np.array_equal(g1.images, g2.images)
    args, kwargs = den.example_inputs(batch_size=3)
    out = den.model(*args, **kwargs)[0]
    assert out.shape == (3, 1, 8, 8)
    names = den.layer_names()
    assert any("attn1.to_q" in n for n in names) and any("proj_out" in n for n in names)


def test_layers_and_example_inputs_unet(tiny_digits_denoiser):
    den = tiny_digits_denoiser
    names = den.layer_names()
    assert "conv_in" in names and "conv_out" in names and "time_embedding.linear_1" in names
    assert not any("class_embedding" in n for n in names)  # embedding tables are not quantizable
    infos = den.layer_infos()
    assert len(infos) == len(names) and all(i.macs > 0 for i in infos)


def test_save_load_roundtrip(tiny_digits_denoiser, tmp_path):
    den = tiny_digits_denoiser
    den.save(tmp_path / "m", reference_dir=tmp_path / "ref")
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "m" / "scheduler" / "scheduler_config.json").exists()
    back = DigitsDenoiser.load(tmp_path / "m")
    assert back.arch == "unet" and back.params == den.params
    assert back.reference_dir.resolve() == (tmp_path / "ref").resolve()
    for (k, v), (k2, v2) in zip(den.model.state_dict().items(), back.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert np.array_equal(den.generate(8, seed=0).images, back.generate(8, seed=0).images)


def test_classifier_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    clf = DigitsClassifier().eval()
    clf.save(tmp_path, {"test_accuracy": 0.5})
    back, info = DigitsClassifier.load(tmp_path)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(clf(x), back(x)) and info["test_accuracy"] == 0.5
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_split_is_stratified_and_deterministic():
    _, labels = load_digit_images()
    tr, te = split_indices(labels, 0.2, 0)
    tr2, te2 = split_indices(labels, 0.2, 0)
    assert np.array_equal(tr, tr2) and not set(tr) & set(te)
    assert len(tr) + len(te) == len(labels)
    counts = np.bincount(labels[te], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37


def test_params_reject_unknown_keys():
    with pytest.raises(QsensError, match="unknown digits params"):
        DigitsParams.from_dict({"train_stepz": 3})
    p = DigitsParams.from_dict({"unet_channels": [16, 32], "steps": 4})
    assert p.unet_channels == (16, 32) and p.steps == 4


def test_registry_errors(tmp_path):
    from denoisers.registry import load_denoiser

    with pytest.raises(QsensError, match="qsens prepare"):
        load_denoiser("digits", data_dir=tmp_path)
    with pytest.raises(QsensError, match="unknown model"):
        load_denoiser("nope")
    with pytest.raises(QsensError, match="is a directory but no model"):
        load_denoiser(str(tmp_path))


def test_registry_loads_prepared_digits(tiny_prepared_data):
    from denoisers.registry import load_denoiser

    den = load_denoiser("digits", data_dir=tiny_prepared_data)
    assert isinstance(den, DigitsDenoiser) and den.reference().kind == "digits"
    meta = json.loads((tiny_prepared_data / "models" / "digits" / "qsens_digits.json").read_text())
    assert meta["arch"] == "unet" and "classifier_test_accuracy" in meta["info"]
    same = load_denoiser(str(tiny_prepared_data / "models" / "digits"))
    assert same.layer_names() == den.layer_names()


def test_diffusers_pipeline_adapter_with_tiny_dit_pipeline(tmp_path):
    """The real-model path: a tiny random DiTPipeline saved and reloaded from a local dir."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from denoisers.pipeline import DiffusersPipelineDenoiser
    from denoisers.registry import load_denoiser

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,),
                        latent_channels=4, norm_num_groups=8, sample_size=8)
    tr = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                               out_channels=4, num_layers=1, sample_size=8, patch_size=2,
                               num_embeds_ada_norm=10)
    DiTPipeline(transformer=tr, vae=vae, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "p")
    from denoisers.spec import ModelSpec

    # guidance 1: DiTPipeline's null class is id 1000, which a 10-class toy model does not have
    den = load_denoiser(ModelSpec(source=str(tmp_path / "p"), name="p", steps=2, batch_size=2,
                                  guidance=1.0))
    assert isinstance(den, DiffusersPipelineDenoiser) and den.model is den.pipe.transformer
    g1, g2 = den.generate(3, seed=0), den.generate(3, seed=0)
    assert g1.images.shape == (3, 8, 8, 3) and g1.images.dtype == np.uint8
    assert np.array_equal(g1.images, g2.images) and g1.labels.tolist() == [0, 1, 2]
    args, kwargs = den.example_inputs()
    assert den.model(*args, **kwargs)[0].shape == (1, 4, 8, 8)


def test_cli_score_fp16(tiny_prepared_data, capsys):
    from qsens.cli import main

    rc = main(["score", "--model", "digits", "--config", "fp16", "--data-dir",
               str(tiny_prepared_data), "--images", "20", "--seed", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok" and out["n_images"] == 20 and out["config"] == "fp16"
    assert out["fid"] > 0 and 0 <= out["content"] <= 1
    # the FP model's scores on seed set 1 (not the params' default 0)
    from denoisers.registry import load_denoiser
    from sampling.evaluator import evaluate
    from sampling.scorers import make_scorer

    den = load_denoiser("digits", data_dir=tiny_prepared_data)
    score, _ = evaluate(den, make_scorer(den), 20, seed=1)
    assert out["seed"] == 1 and out["fid"] == pytest.approx(score.fid, rel=1e-9)
    assert out["content"] == pytest.approx(score.content, abs=1e-12)


def test_cli_score_bad_config_is_one_line_error(tiny_prepared_data, tmp_path, capsys):
    from qsens.cli import main

    rc = main(["score", "--model", "digits", "--config", str(tmp_path / "missing.json"),
               "--data-dir", str(tiny_prepared_data)])
    assert rc == 2
    assert "error:" in capsys.readouterr().err


def test_ddim_scheduler_option_and_clipping(tiny_digits_denoiser):
    from denoisers.digits import make_sampling_scheduler, scheduler_config_of

    den = tiny_digits_denoiser
    dpm = den._scheduler()
    assert type(dpm).__name__ == "DPMSolverMultistepScheduler"
    assert dpm.config.thresholding and dpm.config.sample_max_value == 1.0
    ddim = make_sampling_scheduler(DigitsParams(scheduler="ddim"))
    den.scheduler_config = scheduler_config_of(ddim)
    assert type(den._scheduler()).__name__ == "DDIMScheduler"
    g1, g2 = den.generate(6, seed=0), den.generate(6, seed=0)
    assert np.array_equal(g1.images, g2.images)


def test_cli_prepare_with_tiny_params(tmp_path, capsys):
    from qsens.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("digits:\n  unet_channels: [8, 16]\n  unet_head_dim: 8\n  train_steps: 2\n"
                      "  train_batch: 8\n  classifier_epochs: 1\n")
    rc = main(["prepare", "--model", "digits", "--data-dir", str(tmp_path / "data"), "--params",
               str(params), "--metrics", str(tmp_path / "prepare.json"), "--quiet",
               "--threads", "1"])
    assert rc == 0
    figures = json.loads((tmp_path / "prepare.json").read_text())
    assert 0 <= figures["classifier_test_accuracy"] <= 1 and figures["quantizable_layers"] > 10
    ref = tmp_path / "data" / "reference" / "digits"
    assert (ref / "stats.safetensors").exists() and (ref / "classifier.safetensors").exists()
    # the reported accuracy is the saved classifier's on the held-out split
    clf, _ = DigitsClassifier.load(ref)
    images, labels = load_digit_images()
    p = DigitsParams()
    _, test = split_indices(labels, p.test_fraction, p.seed)
    with torch.inference_mode():
        pred = clf(torch.from_numpy(images[test]).float()[:, None] / 255.0).argmax(1).numpy()
    assert figures["classifier_test_accuracy"] == pytest.approx(float((pred == labels[test]).mean()), abs=1e-4)
    assert (tmp_path / "data" / "models" / "digits" / "unet" / "config.json").exists()


def test_cli_score_uniform_config_with_bank(tiny_prepared_data, tmp_path, capsys):
    from denoisers.registry import load_denoiser
    from qsens.cli import main
    from quant.bank import build_bank
    from quant.config import QuantConfig

    den = load_denoiser("digits", data_dir=tiny_prepared_data)
    bank_dir = tmp_path / "bank"
    build_bank(den.model, model_name="digits", progress=False).save(bank_dir)
    cfg = tmp_path / "u4.json"
    QuantConfig.uniform("digits", den.layer_names(), "uaq4").save(cfg)
    args = ["score", "--model", "digits", "--config", str(cfg), "--bank", str(bank_dir),
            "--data-dir", str(tiny_prepared_data), "--images", "20", "--json", "--threads", "1"]
    assert main(args + ["--seed", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args + ["--seed", "1"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["status"] == "ok" and first["avg_bits"] > 4.0
    assert first["fid"] == second["fid"] and first["content"] == second["content"]
    # the printed scores are those of the quantized model, not of the FP one
    from quant.apply import quantized
    from sampling.evaluator import evaluate
    from sampling.scorers import make_scorer

    bank = build_bank(den.model, model_name="digits", progress=False)
    scorer = make_scorer(den)
    with quantized(den.model, QuantConfig.load(cfg), bank):
        q_score, _ = evaluate(den, scorer, 20, seed=1)
    fp_score, _ = evaluate(den, scorer, 20, seed=1)
    assert first["fid"] == pytest.approx(q_score.fid, rel=1e-9)
    assert first["content"] == pytest.approx(q_score.content, abs=1e-12)
    assert abs(first["fid"] - fp_score.fid) > 1e-3 * fp_score.fid
    assert first["avg_bits"] == pytest.approx(bank.summarize(QuantConfig.load(cfg)).avg_bits)


def test_prepare_writes_byte_identical_files_for_the_same_params(tmp_path):
    """DVC skips every later stage after a re-run of `prepare` only if its outputs are the same bytes."""
    from denoisers.digits import prepare_digits

    params = DigitsParams(unet_channels=(8, 16), unet_head_dim=8, train_steps=3, train_batch=16,
                          classifier_epochs=1, steps=2, gen_batch_size=16)
    for run in ("a", "b"):
        prepare_digits("digits", tmp_path / run, params, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
