"""Inputs users bring (issue #22): spiece.model-only T5 tokenizers, pre-quantized checkpoints,
pipelines that need a conditioning image or none at all; bad ones end in one `error:` line, exit 2."""
from __future__ import annotations

import io
import json
import random
import shutil

import pytest

from tests.test_real_pipelines import params_for, qsens
from tests.tiny_pipelines import _words, build_tiny_pipeline


def _train_spiece() -> bytes:
    import sentencepiece as spm

    rng = random.Random(0)
    words = _words(400, rng)
    sentences = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=200, model_type="unigram",
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", minloglevel=2, num_threads=1)
    return model.getvalue()


def _hub_layout(tok_dir, spiece: bytes) -> None:
    """A T5 tokenizer as PixArt/SD3/FLUX hub repos ship it: spiece.model, no tokenizer.json."""
    shutil.rmtree(tok_dir, ignore_errors=True)
    tok_dir.mkdir(parents=True)
    (tok_dir / "spiece.model").write_bytes(spiece)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512, "legacy": True,
         "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    (tok_dir / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))


def test_t5_tokenizer_from_a_real_spiece_model_matches_sentencepiece(tmp_path):
    import sentencepiece as spm

    from denoisers.tokenizers import load_t5_spiece, read_spiece

    data = _train_spiece()
    _hub_layout(tmp_path / "tok", data)
    pieces, charsmap = read_spiece(tmp_path / "tok" / "spiece.model")
    sp = spm.SentencePieceProcessor(model_proto=data)
    assert [p for p, _ in pieces] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert [s for _, s in pieces] == pytest.approx([sp.get_score(i) for i in range(sp.get_piece_size())])
    assert charsmap  # nmt_nfkc's precompiled normalizer rides along
    tok = load_t5_spiece(tmp_path / "tok")
    for text in ("a red cube", "a lion riding a bike", "the dog and the cat under a blue sky",
                 "zqx unknownword photo"):
        assert tok(text)["input_ids"] == sp.encode(text) + [1], text  # T5 appends </s> (id 1)
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.model_max_length == 512


def test_a_pipeline_with_a_spiece_only_tokenizer_loads_and_generates(tmp_path, monkeypatch):
    from denoisers.spec import ModelSpec

    source = build_tiny_pipeline("pixart-alpha", tmp_path / "pixart")
    _hub_layout(source / "tokenizer", _train_spiece())
    from denoisers.registry import load_denoiser

    den = load_denoiser(ModelSpec(source=str(source), name="pixart", steps=2, batch_size=2))
    den.prompts = ["a red cube"]
    assert den.generate(2, 0).images.shape == (2, 16, 16, 3)


def test_bad_inputs_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = []
    # a tokenizer file that cannot load
    broken = build_tiny_pipeline("pixart-alpha", tmp_path / "broken-tok")
    _hub_layout(broken / "tokenizer", b"\x0a\xff\xff\xff\xff\x0fnot a model")
    p1 = params_for(tmp_path, broken, "broken-tok", None, "p1.yaml")
    cases.append((["bank", "build", "--params", p1, "--quiet"], "spiece.model is not a sentencepiece model"))
    # a checkpoint saved quantized with a method qsens does not dequantize
    bnb = build_tiny_pipeline("sd", tmp_path / "bnb")
    cfg = json.loads((bnb / "unet" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (bnb / "unet" / "config.json").write_text(json.dumps(cfg))
    p2 = params_for(tmp_path, bnb, "bnb", None, "p2.yaml")
    cases.append((["bank", "build", "--params", p2, "--quiet"], "saved quantized"))
    # an image-conditioned pipeline given no conditioning image
    img2img = build_tiny_pipeline("img2img", tmp_path / "img2img")
    p3 = params_for(tmp_path, img2img, "img2img", None, "p3.yaml")
    cases.append((["generate", "--params", p3, "--prompt", "a cat", "--n-images", 2, "--out",
                   tmp_path / "g3"], "needs a source image"))
    control = build_tiny_pipeline("controlnet", tmp_path / "control")
    p4 = params_for(tmp_path, control, "control", None, "p4.yaml")
    cases.append((["generate", "--params", p4, "--prompt", "a cat", "--n-images", 2, "--out",
                   tmp_path / "g4"], "needs a control image"))
    # an unconditional pipeline given a prompt
    ddpm = build_tiny_pipeline("ddpm", tmp_path / "ddpm")
    p5 = params_for(tmp_path, ddpm, "ddpm", None, "p5.yaml")
    cases.append((["generate", "--params", p5, "--prompt", "a cat", "--n-images", 2, "--out",
                   tmp_path / "g5"], "is unconditional"))
    for argv, message in cases:
        capsys.readouterr()
        assert qsens(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and message in err, (argv, err)
        assert "tiktoken" not in err


@pytest.mark.slow
def test_a_prequantized_torchao_checkpoint_is_dequantized_with_one_line(tmp_path, monkeypatch, capsys):
    import torch
    from diffusers import TorchAoConfig, UNet2DConditionModel
    from torchao.quantization import Int8WeightOnlyConfig

    monkeypatch.chdir(tmp_path)
    source = build_tiny_pipeline("sd", tmp_path / "preq")
    unet = UNet2DConditionModel.from_pretrained(source / "unet", torch_dtype=torch.bfloat16,
                                                quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    shutil.rmtree(source / "unet")
    unet.save_pretrained(source / "unet")
    assert "quantization_config" in json.loads((source / "unet" / "config.json").read_text())
    params = params_for(tmp_path, source, "preq", None)
    capsys.readouterr()
    assert qsens("bank", "build", "--params", params, "--quiet") == 0
    err = capsys.readouterr().err
    assert "saved quantized (torchao Int8WeightOnlyConfig" in err and "dequantized to float32" in err
    bank = json.loads((tmp_path / "data" / "bank" / "preq" / "bank.json").read_text())
    assert len(bank["layer_fingerprints"]) > 10


WANT = {  # kind: (conditioning, image input, native px, prediction, guidance kind)
    "flux": ("text", None, 256, "flow", "embedded"),  # default_sample_size 128 x VAE factor 2
    "sana": ("text", None, 32, "flow", "cfg"),
    "sd3": ("text", None, 16, "flow", "cfg"),
    "hunyuan": ("text", None, 16, "v_prediction", "cfg"),
    "lcm": ("text", None, 16, "epsilon", "embedded"),
    "ddpm": ("none", None, 16, "epsilon", "none"),
    "img2img": ("text", "init", 16, "epsilon", "cfg"),
    "controlnet": ("text", "control", 16, "epsilon", "cfg"),
    "sd": ("text", None, 16, "epsilon", "cfg"),
    "dit": ("class", None, 16, "epsilon", "cfg"),
}


@pytest.mark.parametrize("kind", sorted(WANT))
def test_traits_are_asked_of_the_pipeline(kind):
    from denoisers.traits import check_drivable, pipeline_traits
    from tests.tiny_pipelines import tiny_pipeline

    pipe = tiny_pipeline(kind)
    t = pipeline_traits(pipe)
    check_drivable(pipe, t)
    assert (t.conditioning, t.image_input, t.resolution, t.prediction, t.guidance_kind) == WANT[kind]


def test_a_pipeline_needing_a_mask_is_refused_in_one_line():
    from diffusers import StableDiffusionInpaintPipeline

    from denoisers.pipeline import DiffusersPipelineDenoiser
    from core.errors import QsensError
    from tests.tiny_pipelines import tiny_pipeline

    pipe = StableDiffusionInpaintPipeline(**tiny_pipeline("sd").components, requires_safety_checker=False)
    with pytest.raises(QsensError, match=r"needs a mask image \(inpainting\) \(`mask_image`\)"):
        DiffusersPipelineDenoiser(pipe, "inpaint", prompts=["a cat"])
