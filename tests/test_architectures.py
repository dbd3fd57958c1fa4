"""Shipped real-denoiser configs build the exact architectures on the meta device."""
from __future__ import annotations

import json

import pytest

from denoisers.architectures import (KNOWN_ARCHITECTURES, ModelSource, build_from_config,
                                     load_architecture_config, register_model_name,
                                     resolve_model_source)
from core.errors import QsensError
from quant.layers import quantizable_layers

# class, quantizable layers, parameters (millions, rounded) of the real models
EXPECTED = {
    "sd15": ("UNet2DConditionModel", 282, 859.5),
    "sdxl": ("UNet2DConditionModel", 794, 2567.5),
    "pixart-alpha": ("PixArtTransformer2DModel", 291, 611.3),
    "pixart-sigma": ("PixArtTransformer2DModel", 287, 610.9),
    "hunyuan-dit": ("HunyuanDiT2DModel", 472, 1500.0),
    "dit-xl-2": ("DiTTransformer2DModel", 255, 749.8),
}


def test_every_known_architecture_has_a_config():
    assert set(KNOWN_ARCHITECTURES) == set(EXPECTED)
    for name, path in KNOWN_ARCHITECTURES.items():
        config = json.loads(path.read_text())
        assert config["_class_name"] == EXPECTED[name][0]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_build_on_meta_matches_real_model(name):
    cls, n_layers, params_m = EXPECTED[name]
    model = build_from_config(name)
    assert type(model).__name__ == cls
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(b.device.type == "meta" for b in model.buffers())
    assert len(quantizable_layers(model)) == n_layers
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.1)


def test_unknown_class_is_one_line_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "NoSuchModel2D"}))
    with pytest.raises(QsensError, match="unknown model class 'NoSuchModel2D'"):
        build_from_config(path)


def test_bad_json_and_missing_class(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QsensError, match="not valid JSON"):
        load_architecture_config(bad)
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    with pytest.raises(QsensError, match="_class_name"):
        load_architecture_config(plain)


def test_resolve_sources(tmp_path):
    assert resolve_model_source("dit-xl-2").config["_class_name"] == "DiTTransformer2DModel"
    # a pipeline directory: the denoiser lives in transformer/
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    cfg = load_architecture_config("dit-xl-2")
    (tmp_path / "pipe" / "transformer" / "config.json").write_text(json.dumps(cfg))
    source = resolve_model_source(tmp_path / "pipe")
    assert source.path == tmp_path / "pipe" / "transformer"
    assert source.config["num_layers"] == 28
    with pytest.raises(QsensError, match="unknown model 'nope'"):
        resolve_model_source("nope")


def test_register_model_name(tmp_path):
    cfg = load_architecture_config("dit-xl-2")
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    register_model_name("tiny-test", path)
    assert resolve_model_source("tiny-test").name == "tiny-test"
    register_model_name("tiny-test-2", lambda: ModelSource(spec="x", name="tiny-test-2", config=cfg))
    assert resolve_model_source("tiny-test-2").config["_class_name"] == "DiTTransformer2DModel"
