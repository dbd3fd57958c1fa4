"""The quantization-method registry (issue #26 item 3): a method registered in a test — symmetric
per-channel absmax, one stored float per output channel — goes through bank → apply → pack →
save → load like the built-ins, with its own size accounting, and nothing else is edited."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError
from quant.accounting import layer_bits
from quant.apply import quantized
from quant.bank import Bank, build_bank
from quant.config import QuantConfig
from quant.layers import layer_infos
from quant.methods import QuantMethod, get_method, method_names, register_method, unregister_method
from quant.options import parse_option
from quant.pack import load_quantized, pack, save_quantized


def _absmax_quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, n) float32 → codes (R, n) uint8 around the mid level, params (R, 1) fp16-exact scale."""
    half = 1 << (bits - 1)
    scale = (w.abs().amax(dim=1, keepdim=True) / (half - 1)).to(torch.float16).to(torch.float32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(w / scale) + half, 0, (1 << bits) - 1).to(torch.uint8)
    return codes, scale


def _absmax_table(params: torch.Tensor, bits: int) -> torch.Tensor:
    levels = torch.arange(1 << bits, dtype=torch.float32, device=params.device) - (1 << (bits - 1))
    return levels[None, :] * params[:, 0:1]  # (C_out, 2^b)


@pytest.fixture
def absmax():
    method = register_method(QuantMethod("absmax", "symmetric per-channel, scale = max|w| / (2^(b-1) - 1)",
                                         _absmax_quantize, lambda c_out, bits: (c_out, 1), _absmax_table))
    yield method
    unregister_method("absmax")


def test_a_registered_method_runs_bank_apply_pack_and_load(absmax, tiny_digits_denoiser, tmp_path: Path):
    model = tiny_digits_denoiser.model.eval()
    assert parse_option("absmax4").method == "absmax" and "absmax" in method_names()

    bank = build_bank(model, ["absmax4", "uaq4"], model_name="digits", progress=False)
    bank.save(tmp_path / "bank")
    bank = Bank.load(tmp_path / "bank")
    infos = {i.name: i for i in layer_infos(model)}
    name = next(iter(infos))
    info = infos[name]
    # its own accounting: payload n·b plus one 16-bit scale per output channel
    assert bank.quantized_bits(name, "absmax4") == layer_bits("absmax4", info) == 4 * info.n_weights + 16 * info.c_out
    assert 0 < bank.error(name, "absmax4") < float(model.get_submodule(name).weight.detach().pow(2).mean())

    config = QuantConfig("digits", {n: "absmax4" for n in infos})
    args, kw = tiny_digits_denoiser.example_inputs(2)

    def run(m):
        out = m(*args, **kw)
        return out.sample if hasattr(out, "sample") else out[0]

    with torch.no_grad():
        fp = run(model)
        with quantized(model, config, bank):
            fake = run(model)
            weight = model.get_submodule(name).weight.detach().clone()
        assert torch.equal(run(model), fp)  # restored
    w = model.get_submodule(name).weight.detach()
    codes, scale = _absmax_quantize(w.reshape(w.shape[0], -1), 4)
    assert torch.equal(weight, get_method("absmax").dequantize(codes, scale, 4).reshape(w.shape))
    assert not torch.equal(fake, fp) and torch.isfinite(fake).all()

    packed = pack(copy.deepcopy(model), config, bank)
    out = save_quantized(packed, tmp_path / "q", config, fingerprint=bank.fingerprint)
    loaded = load_quantized(out, copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(run(packed), fake)  # packed computes what fake-quant computes
        assert torch.equal(run(loaded), fake)


def test_the_registry_refuses_bad_and_unknown_names(absmax):
    with pytest.raises(ConfigError, match="already registered"):
        register_method(absmax)
    with pytest.raises(ConfigError, match="lowercase"):
        register_method(QuantMethod("fp8x", "", _absmax_quantize, lambda c, b: (c, 1), _absmax_table))
    with pytest.raises(ConfigError, match="registered: uaq, kmc, kma, absmax"):
        get_method("nope")
    with pytest.raises(ConfigError, match="unknown option 'nope4'.*uaq/kmc/kma/absmax"):
        parse_option("nope4")


def test_an_unregistered_method_is_an_unknown_option():
    with pytest.raises(ConfigError, match="unknown option 'absmax4'"):
        parse_option("absmax4")
