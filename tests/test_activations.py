"""quant.activations + QuantConfig.act_options: per-layer activation bits, static calibrated ranges,
and MixDQ's activation SQNR (sampling.calibration)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from quant.activations import (activation_quant, calibrate_ranges, config_activation_bits,
                               enable_config_activations, fake_quantize_activation, fake_quantize_static)
from quant.config import QuantConfig
from core.errors import ConfigError


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _inputs_seen(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The input layer `name` actually receives (after any quantizing pre-hook)."""
    seen = []
    h = dict(model.named_modules())[name].register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        model(x)
    finally:
        h.remove()
    return seen[0]


# ------------------------------------------------------------------------------- the config
def test_act_options_round_trip_and_keep_old_ids(tmp_path: Path) -> None:
    old = QuantConfig("m", {"a": "uaq4"})
    # the id of a weight-only config is the hash it always was (cache ids stay valid)
    expect = hashlib.sha256(b'{"options":{"a":"uaq4"}}').hexdigest()[:16]
    assert old.config_id == expect
    assert "act_options" not in old.to_dict()  # weight-only files are written as before
    cfg = QuantConfig("m", {"a": "uaq4"}, act_bits=8, act_options={"b": 4, "a": 6})
    assert cfg.config_id != QuantConfig("m", {"a": "uaq4"}, act_bits=8).config_id
    assert cfg.config_id == QuantConfig("m", {"a": "uaq4"}, act_bits=8, act_options={"a": 6, "b": 4}).config_id
    loaded = QuantConfig.load(cfg.save(tmp_path / "c.json"))
    assert loaded == cfg and loaded.config_id == cfg.config_id
    assert json.loads((tmp_path / "c.json").read_text())["act_options"] == {"b": 4, "a": 6}
    assert loaded.act_bits_of("a") == 6 and loaded.act_bits_of("b") == 4 and loaded.act_bits_of("zz") == 8
    # an old file without the key still loads
    (tmp_path / "old.json").write_text(json.dumps({"model": "m", "options": {"a": "uaq4"}, "avg_bits": None,
                                                   "act_bits": None}))
    assert QuantConfig.load(tmp_path / "old.json") == old
    # 6.0 in JSON is 6
    (tmp_path / "f.json").write_text(json.dumps({"model": "m", "options": {}, "act_options": {"a": 6.0}}))
    assert QuantConfig.load(tmp_path / "f.json").act_options == {"a": 6}


@pytest.mark.parametrize("bad", [1, 9, 16, 4.5, True, "8", None])
def test_act_options_bits_outside_2_to_8_are_one_line(tmp_path: Path, bad) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "m", "options": {}, "act_options": {"a": 4, "b": bad}}))
    with pytest.raises(ConfigError, match=r"'act_options' bit-width\(s\) outside 2-8: b=") as exc:
        QuantConfig.load(path)
    assert "\n" not in str(exc.value) and "a=" not in str(exc.value)
    # built in code, validate() says the same in one line
    with pytest.raises(ConfigError, match=r"act_options: 1 bit-width\(s\) outside 2-8: b=") as exc:
        QuantConfig("m", {}, act_options={"a": 4, "b": bad}).validate(["a", "b"])
    assert "\n" not in str(exc.value)


def test_act_options_unknown_layer_is_one_line() -> None:
    cfg = QuantConfig("m", {"a": "uaq4"}, act_options={"a": 8, "nope": 6})
    with pytest.raises(ConfigError, match=r"act_options: 1 unknown layer\(s\): nope$") as exc:
        cfg.validate(["a", "b"])
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"act_options: 1 unknown layer\(s\): nope"):
        enable_config_activations(Two(), QuantConfig("m", {}, act_options={"nope": 8}))
    with pytest.raises(ConfigError, match="'act_options' must map layer names"):
        QuantConfig.from_dict({"model": "m", "options": {}, "act_options": [8]})


def test_config_activation_bits_falls_back_to_the_global_act_bits() -> None:
    layers = ["a", "b", "c"]
    assert config_activation_bits(QuantConfig("m", {}), layers) == {}
    assert config_activation_bits(QuantConfig("m", {}, act_bits=8), layers) == {"a": 8, "b": 8, "c": 8}
    assert config_activation_bits(QuantConfig("m", {}, act_bits=8, act_options={"b": 4}), layers) == \
        {"a": 8, "b": 4, "c": 8}
    assert config_activation_bits(QuantConfig("m", {}, act_options={"c": 3}), layers) == {"c": 3}


# ------------------------------------------------------------------------------- quantizing
def test_static_quantizer_grid_and_clipping_by_hand() -> None:
    # range [-1, 2] at 2 bits: scale 1, zero 1 → grid {-1, 0, 1, 2}; outside values clip
    x = torch.tensor([-3.0, -1.0, -0.4, 0.6, 1.49, 2.0, 7.0])
    assert fake_quantize_static(x, 2, -1.0, 2.0).tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    # a degenerate range is exact at its one value
    assert fake_quantize_static(torch.tensor([0.5, 0.5]), 4, 0.5, 0.5).tolist() == [0.5, 0.5]
    # dynamic takes each token's own range: the same token alone gives the same result
    t = torch.tensor([[0.0, 1.0, 3.0], [10.0, 20.0, 30.0]])
    assert torch.equal(fake_quantize_activation(t, 2, (-1,))[0], fake_quantize_static(t[0], 2, 0.0, 3.0))


def test_per_layer_bits_quantize_only_their_layers() -> None:
    model = Two()
    x = torch.randn(7, 6)
    with activation_quant(model, {"a": 3}):
        seen_a = _inputs_seen(model, "a", x)
        seen_b = _inputs_seen(model, "b", x)
    assert torch.equal(seen_a, fake_quantize_activation(x, 3, (-1,)))
    assert all(len(torch.unique(row)) <= 8 for row in seen_a)  # 3 bits: at most 8 levels per token
    assert torch.equal(seen_b, torch.relu(model.a(seen_a)))  # b untouched
    assert torch.equal(_inputs_seen(model, "a", x), x)  # hooks removed
    with pytest.raises(ConfigError, match=r"outside 2-8: a=9"):
        activation_quant(model, {"a": 9}).__enter__()
    with pytest.raises(ConfigError, match="activation bits"):  # the global setting stays 8 or 6
        activation_quant(model, 4).__enter__()


def test_static_ranges_are_min_max_over_the_calibration_inputs() -> None:
    model = Two()
    batches = [((torch.randn(4, 6) * s,), {}) for s in (1.0, 3.0, 0.5)]
    ranges = calibrate_ranges(model, batches)
    x = torch.cat([b[0][0] for b in batches])
    with torch.no_grad():
        h = torch.relu(model.a(x))
    assert ranges["a"] == (float(x.min()), float(x.max()))
    assert ranges["b"] == pytest.approx((float(h.min()), float(h.max())), abs=1e-6)
    # static mode uses exactly these ranges (per tensor), dynamic its own per token
    with activation_quant(model, {"a": 4}, ranges=ranges):
        seen = _inputs_seen(model, "a", batches[0][0][0])
    assert torch.equal(seen, fake_quantize_static(batches[0][0][0], 4, *ranges["a"]))
    with pytest.raises(ConfigError, match="no calibrated range for 1 layer"):
        activation_quant(model, {"a": 4, "b": 4}, ranges={"a": ranges["a"]}).__enter__()


def test_calibration_ranges_and_activation_sqnr_on_a_tiny_digits_model(tiny_digits_denoiser, one_torch_thread) -> None:
    from sampling.calibration import activation_ranges, activation_sqnr, collect_calibration, run_model, sqnr_db
    from quant.layers import quantizable_layers

    den = tiny_digits_denoiser
    calib = collect_calibration(den, 8, trajectories=4, seed=3, how="normal")
    modules = quantizable_layers(den.model)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach().clone()))
             for n, m in modules.items()]
    with torch.no_grad():
        for args, kwargs in calib.chunks(5):  # the chunking activation_ranges uses (batch-size numerics)
            den.model(*args, **kwargs)
    for h in hooks:
        h.remove()
    ranges = activation_ranges(den.model, calib, chunk=5)
    assert set(ranges) == set(modules)
    for n in modules:
        allx = torch.cat([t.flatten() for t in seen[n]])
        assert ranges[n] == (float(allx.min()), float(allx.max())), n
    y = run_model(den.model, calib)
    got = activation_sqnr(den.model, calib, ["conv_in", "conv_out"], 4, ranges=ranges)
    with activation_quant(den.model, {"conv_in": 4}, ranges={"conv_in": ranges["conv_in"]}):
        by_hand = sqnr_db(y, run_model(den.model, calib))
    assert got["conv_in"] == by_hand
    assert activation_sqnr(den.model, calib, ["conv_in"], 8, ranges=ranges)["conv_in"] > got["conv_in"]


# ------------------------------------------- float32 arithmetic whatever the dtype (#23 item 1)
def _old_fake_quantize(x: torch.Tensor, bits: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The previous implementation (arithmetic in x's dtype): the float32 reference."""
    qmax = (1 << bits) - 1
    degenerate = hi <= lo
    scale = torch.where(degenerate, torch.ones_like(hi), (hi - lo) / qmax)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return torch.where(degenerate, torch.minimum(torch.maximum(x, lo), hi), (q - zero) * scale)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_float32_activation_quantization_is_unchanged(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 7, 16, generator=g) * 3
    x[0, 0] = 0.25  # a zero-width range
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    assert torch.equal(fake_quantize_activation(x, bits, (-1,)), _old_fake_quantize(x, bits, lo, hi))
    lo_t, hi_t = torch.tensor(-2.5), torch.tensor(3.0)
    assert torch.equal(fake_quantize_static(x, bits, -2.5, 3.0), _old_fake_quantize(x, bits, lo_t, hi_t))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations_at_the_edges_of_their_range(dtype: torch.dtype) -> None:
    big = torch.finfo(dtype).max
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[0, 0], x[0, 1] = big, -big  # a range of 2·max: over the dtype's max
    x[1, 0], x[1, 1] = 40000.0, -40000.0
    x[2, :] = torch.finfo(dtype).tiny  # subnormal-edge, zero-width
    for bits in (8, 6, 4):
        dyn = fake_quantize_activation(x, bits, (-1,))
        sta = fake_quantize_static(x, bits, -float(big), float(big))
        for out in (dyn, sta):
            assert out.dtype == dtype and torch.isfinite(out).all(), (dtype, bits)
        # within half a grid step of the input (the grid computed in float32), then the cast
        xf = x.float()
        step = (xf.amax(-1, keepdim=True) / ((1 << bits) - 1) - xf.amin(-1, keepdim=True) / ((1 << bits) - 1))
        err = (dyn.float() - xf).abs()
        assert (err <= step * 0.5 * 1.01 + xf.abs() * 2 * torch.finfo(dtype).eps).all(), (dtype, bits)
        assert torch.equal(dyn[2], x[2])  # zero-width range: kept exactly
    # a layer in fp16 / bf16 with dynamic A8 on such an input stays finite
    lin = nn.Linear(8, 4).to(dtype)
    lin.weight.data.mul_(1e-3)
    xi = torch.zeros(1, 8, dtype=dtype)
    xi[0, 0], xi[0, 1] = 40000.0, -40000.0
    with torch.no_grad(), activation_quant(lin, 8):
        assert torch.isfinite(lin(xi)).all()


@pytest.mark.parametrize("bits", [2, 6, 8])
def test_native_grid_equals_the_torch_ops_bit_for_bit(bits: int, monkeypatch) -> None:
    import quant.packing as packing

    if not packing.native_decode_available():
        pytest.skip("no C compiler here")
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 5, 4, 6, generator=g) * 7
    x[0, 0, 0, :3] = torch.tensor([0.5, -0.5, 2.5])  # ties
    x[1, 1, 1, 1] = float("nan")
    x[2, 2] = -0.0
    cl = x.to(memory_format=torch.channels_last)
    cases = [((-1,), x), ((2, 3), x), ((0,), x), ((-1,), x[:, :, :, :4]),  # not contiguous
             ((2, 3), cl), ((-1,), x.transpose(1, 2))]
    for dims, xi in cases:
        native = fake_quantize_activation(xi, bits, dims)
        native_static = fake_quantize_static(xi, bits, -3.0, 4.5)
        with monkeypatch.context() as m:
            m.setattr(packing, "_LIB", [None])
            ref = fake_quantize_activation(xi, bits, dims)
            ref_static = fake_quantize_static(xi, bits, -3.0, 4.5)
        for a, b in ((native, ref), (native_static, ref_static)):
            both_nan = a.isnan() & b.isnan()  # NaN in, NaN out (its sign bit is no value)
            assert torch.equal(a.isnan(), b.isnan()), dims
            assert torch.equal(a.view(torch.int32)[~both_nan], b.view(torch.int32)[~both_nan]), dims
