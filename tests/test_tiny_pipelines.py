"""The tiny random pipelines of the real classes (tests/tiny_pipelines.py) behave like real ones:
saved, reloaded offline, 2-step generation with classifier-free guidance that depends on the
prompt / class, and `denoisers.inputs` feeds their denoisers what their pipelines feed them."""
from __future__ import annotations

import inspect
import json

import pytest
import torch
from diffusers import DiffusionPipeline

from denoisers.inputs import example_inputs
from graphs.dag import build_dag, weight_nodes
from quant.layers import quantizable_layers
from tests.tiny_pipelines import KINDS, build_tiny_pipeline, call_kwargs, tiny_pipelines  # noqa: F401

CLASSES = {  # pipeline, denoiser, text encoder(s)
    "sd": ("StableDiffusionPipeline", "UNet2DConditionModel", ["CLIPTextModel"]),
    "sdxl": ("StableDiffusionXLPipeline", "UNet2DConditionModel",
             ["CLIPTextModel", "CLIPTextModelWithProjection"]),
    "pixart-alpha": ("PixArtAlphaPipeline", "PixArtTransformer2DModel", ["T5EncoderModel"]),
    "pixart-sigma": ("PixArtSigmaPipeline", "PixArtTransformer2DModel", ["T5EncoderModel"]),
    "dit": ("DiTPipeline", "DiTTransformer2DModel", []),
}


@pytest.fixture(scope="module")
def loaded(tiny_pipelines):
    cache = {}

    def get(kind):
        if kind not in cache:
            pipe = DiffusionPipeline.from_pretrained(tiny_pipelines(kind), local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            cache[kind] = pipe
        return cache[kind]
    return get


def denoiser(pipe):
    return getattr(pipe, "unet", None) or pipe.transformer


def generate(pipe, kind, cond, guidance=4.0, seed=0):
    kw = dict(num_inference_steps=2, guidance_scale=guidance, output_type="pt",
              generator=torch.Generator().manual_seed(seed), **call_kwargs(kind))
    if kind == "dit":
        kw["class_labels"] = [cond]
    else:
        kw["prompt"] = cond
        if kind.startswith("pixart"):
            kw["clean_caption"] = False  # needs beautifulsoup4
    with torch.no_grad():
        return pipe(**kw).images  # float (1, 3, H, W) in [0, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_saved_pipeline_reloads_offline_as_the_real_classes(kind, loaded, tiny_pipelines):
    pipe = loaded(kind)
    cls, den_cls, encoders = CLASSES[kind]
    assert type(pipe).__name__ == cls and type(denoiser(pipe)).__name__ == den_cls
    names = ["text_encoder", "text_encoder_2"][: len(encoders)]
    assert [type(getattr(pipe, n)).__name__ for n in names] == encoders
    index = json.loads((tiny_pipelines(kind) / "model_index.json").read_text())
    assert index["_class_name"] == cls
    assert all(p.dtype == torch.float32 for p in denoiser(pipe).parameters())
    if kind == "dit":
        assert pipe.get_label_ids(["goldfish", "tiger shark"]) == [1, 3]
    else:  # tokenizers split words into several real pieces, and different words differently
        ids = pipe.tokenizer("a lion riding a bike").input_ids
        assert len(set(ids)) > 6 and pipe.tokenizer("a red cube").input_ids != ids


@pytest.mark.parametrize("kind", KINDS)
def test_two_step_generation_depends_on_condition_and_guidance(kind, loaded):
    pipe = loaded(kind)
    a, b = (1, 3) if kind == "dit" else ("a lion riding a bike", "a red cube")
    img = generate(pipe, kind, a)
    assert img.shape == (1, 3, 16, 16) and torch.isfinite(img).all()
    assert 0.01 < img.std().item()  # not a constant image
    assert torch.equal(img, generate(pipe, kind, a))  # seeded: deterministic
    assert (img - generate(pipe, kind, b)).abs().max() > 1e-3  # the condition matters
    assert (img - generate(pipe, kind, a, guidance=1.0)).abs().max() > 1e-3  # CFG is applied
    assert (img - generate(pipe, kind, a, seed=1)).abs().max() > 1e-3


def _named_inputs(model, args, kwargs) -> dict[str, torch.Tensor]:
    """Tensor inputs by forward-parameter name (added_cond_kwargs flattened as `added.<key>`)."""
    bound = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    out = {}
    for name, value in bound.items():
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, dict):
            out.update({f"added.{k}": v for k, v in value.items() if isinstance(v, torch.Tensor)})
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_example_inputs_match_what_the_pipeline_feeds(kind, loaded):
    """The builder, from the denoiser's config alone, gives every input the pipeline gives (text
    masks aside), with the same shapes up to batch and text length; the forward runs."""
    pipe = loaded(kind)
    model = denoiser(pipe)
    seen = {}

    def hook(module, args, kwargs):
        seen.setdefault("call", (args, kwargs))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        generate(pipe, kind, 1 if kind == "dit" else "a red cube")
    finally:
        handle.remove()
    fed = _named_inputs(model, *seen["call"])
    args, kw = example_inputs(model, batch_size=2)
    ours = _named_inputs(model, args, kw)
    wanted = {k for k in fed if "mask" not in k and k != "timestep"}
    assert wanted <= set(ours)
    for name in wanted:
        a, b = fed[name].shape[1:], ours[name].shape[1:]
        if name == "encoder_hidden_states":  # text length: the pipeline's tokenizer decides
            a, b = a[1:], b[1:]
        assert a == b, name
        assert ours[name].shape[0] == 2 and ours[name].dtype == fed[name].dtype
    with torch.no_grad():
        out = model(*args, **kw)[0]
    assert out.shape[0] == 2 and out.shape[2:] == args[0].shape[2:] and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", KINDS)
def test_graph_of_each_denoiser_holds_every_layer(kind, loaded):
    model = denoiser(loaded(kind))
    graph = build_dag(model).graph
    assert sorted(weight_nodes(graph)) == sorted(quantizable_layers(model))


def test_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny pipeline kind 'sd9'"):
        build_tiny_pipeline("sd9", tmp_path)
