"""Behaviour of the quantization core that every later stage relies on."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from quant import (Bank, BankFormatError, BankMismatchError, ConfigError, QuantConfig, apply_config,
                   avg_bits, build_bank, fake_quantize, layer_bits, quantize, quantized)
from quant.activations import activation_quant, fake_quantize_activation
from quant.kmeans import assign, kmeans_1d
from quant.layers import LayerInfo, count_macs
from quant.packing import pack_codes, unpack_codes


def laplace(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(*shape, generator=g) - 0.5
    return -0.02 * torch.sign(u) * torch.log1p(-2 * u.abs())


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv1d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # (N, 8, H, W)
        h = self.mix(h.flatten(2)).mean(-1)  # (N, 8)
        return self.head(h)


@pytest.fixture(scope="module")
def toy() -> Toy:
    torch.manual_seed(0)
    return Toy()


@pytest.fixture(scope="module")
def toy_bank(toy: Toy) -> Bank:
    return build_bank(toy, model_name="toy", progress=False)


@pytest.mark.parametrize("method", ["uaq", "kmc", "kma"])
def test_error_decreases_with_bits(method: str) -> None:
    w = laplace(8, 600)  # wider than 2^8, so 8-bit k-means still has an error to lower
    errors = [float(((fake_quantize(w, f"{method}{b}") - w) ** 2).mean()) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_kmc_never_worse_than_kma(bits: int) -> None:
    w = laplace(16, 200, seed=bits) * torch.linspace(0.2, 3, 16)[:, None]  # channels of different scale
    err = {m: float(((fake_quantize(w, f"{m}{bits}") - w) ** 2).mean()) for m in ("kmc", "kma")}
    assert err["kmc"] <= err["kma"] * (1 + 1e-6)


@pytest.mark.parametrize("option", ["uaq2", "uaq3", "uaq8", "kmc3", "kmc4", "kma3", "kma4", "kmc8"])
def test_codes_in_range_and_dequantize_exactly(option: str) -> None:
    w = laplace(8, 3, 3, 3)
    q = quantize(w, option)
    assert q.codes.dtype == torch.uint8
    assert int(q.codes.max()) < 2 ** q.option.bits
    assert q.dequantize().shape == w.shape
    # exact: stored floats are fp16 and the rebuild is a pure gather/affine map of them
    assert torch.equal(q.params, q.params.half().float())
    again = quantize(w, option)
    assert torch.equal(q.codes, again.codes) and torch.equal(q.params, again.params)  # deterministic


def test_uaq_picks_the_clipping_with_lowest_lp_error() -> None:
    from quant.quantizers import UAQ_NORM_P, UAQ_SHRINKS

    w = laplace(6, 256)
    w[:3, 0] = 0.12  # a mild outlier: clipping it pays off in Lp error
    q = quantize(w, "uaq3")
    chosen = ((q.dequantize() - w).abs() ** UAQ_NORM_P).sum(1)
    for r in range(w.shape[0]):  # brute force, one row and one shrink at a time
        lo, hi = min(float(w[r].min()), 0.0), max(float(w[r].max()), 0.0)
        best = float("inf")
        for s in UAQ_SHRINKS:
            scale = float(torch.tensor((hi - lo) * s / 7).half())
            zero = min(max(round(-lo * s / scale), 0), 7)
            deq = (torch.clamp(torch.round(w[r] / scale) + zero, 0, 7) - zero) * scale
            best = min(best, float(((deq - w[r]).abs() ** UAQ_NORM_P).sum()))
        assert float(chosen[r]) == pytest.approx(best, rel=1e-4)
    assert (q.params[:3, 0] < (w[:3].max(1).values - w[:3].min(1).values) / 7).all()  # clipped


def test_kmeans_matches_brute_force_optimum_on_tiny_rows() -> None:
    x = torch.tensor([[0.0, 0.1, 0.2, 5.0, 5.1, 9.0, 9.2, 9.4]])
    res = kmeans_1d(x, 3)
    assert torch.allclose(res.centroids, torch.tensor([[0.1, 5.05, 9.2]]), atol=1e-5)
    assert assign(x, res.centroids).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]


def test_kmeans_handles_fewer_distinct_values_than_clusters() -> None:
    x = torch.tensor([[1.0] * 10 + [2.0] * 10])
    res = kmeans_1d(x, 8)
    codes = assign(x, res.centroids)
    assert torch.allclose(res.centroids.gather(1, codes), x)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8])
def test_bit_packing_round_trip_and_size(bits: int) -> None:
    codes = torch.randint(0, 2 ** bits, (1001,), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == (1001 * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, 1001), codes)


def test_apply_and_restore_is_bit_exact(toy: Toy, toy_bank: Bank) -> None:
    before = {k: v.clone() for k, v in toy.state_dict().items()}
    x = torch.randn(2, 3, 6, 6)
    y_fp = toy(x)
    config = QuantConfig("toy", {"conv": "kmc3", "head": "uaq3", "mix": "kma4"})
    with quantized(toy, config, toy_bank):
        assert not torch.equal(toy.conv.weight, before["conv.weight"])
        # each layer holds its own option's dequantized tensor: the quantizer's output on its FP weight
        for layer, option in config.options.items():
            w = getattr(toy, layer).weight
            assert torch.equal(w, toy_bank.dequantize(layer, option))
            assert torch.equal(w, quantize(before[f"{layer}.weight"], option).dequantize())
        assert torch.equal(toy.conv.bias, before["conv.bias"])  # biases stay FP
        y_q = toy(x)
    assert not torch.equal(y_fp, y_q)
    for k, v in toy.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(toy(x), y_fp)


def test_missing_layers_mean_fp16(toy: Toy, toy_bank: Bank) -> None:
    handle = apply_config(toy, QuantConfig("toy", {"head": "uaq4"}), toy_bank)
    try:
        assert set(handle.saved) == {"head"}
    finally:
        handle.restore()
    infos = toy_bank.layers
    assert avg_bits({}, infos) == 16.0


def test_config_validation_names_every_bad_entry_in_one_line(toy_bank: Bank) -> None:
    config = QuantConfig("toy", {"conv": "uaq9", "nope": "kmc3", "head": "fp8", "blocks.x": "uaq4"})
    with pytest.raises(ConfigError) as err:
        toy_bank.validate(config)
    message = str(err.value)
    assert "\n" not in message
    for needle in ("nope", "blocks.x", "conv='uaq9'", "head='fp8'", "2 unknown layer", "2 unknown option"):
        assert needle in message


def test_config_file_errors_are_one_line(tmp_path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        QuantConfig.load(bad)
    bad.write_text(json.dumps({"model": "toy", "options": {"a": 3}}))
    with pytest.raises(ConfigError, match="option strings"):
        QuantConfig.load(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        QuantConfig.load(tmp_path / "missing.json")


def test_config_id_is_canonical() -> None:
    a = QuantConfig("m", {"x": "uaq4", "y": "fp16", "z": "kmc3"})
    b = QuantConfig("m", {"z": "kmc3", "x": "uaq4"})
    assert a.config_id == b.config_id
    assert a.config_id != QuantConfig("m", {"x": "uaq3", "z": "kmc3"}).config_id


def test_bank_round_trip_and_lazy_load(tmp_path, toy: Toy, toy_bank: Bank) -> None:
    toy_bank.save(tmp_path / "bank")
    loaded = Bank.load(tmp_path / "bank")
    assert loaded.fingerprint == toy_bank.fingerprint
    for layer in toy_bank.layers:
        for option in toy_bank.options:
            assert torch.equal(loaded.dequantize(layer, option), toy_bank.dequantize(layer, option))
            assert loaded.error(layer, option) == toy_bank.error(layer, option)
    loaded.check_model(toy)


def test_bank_refuses_another_model(tmp_path, toy_bank: Bank) -> None:
    other = Toy()
    with pytest.raises(BankMismatchError) as err:
        toy_bank.check_model(other)
    assert "3 layer(s) with other weights" in str(err.value) and "conv" in str(err.value)
    with pytest.raises(BankMismatchError):
        apply_config(other, QuantConfig("toy", {"conv": "uaq4"}), toy_bank)


def test_truncated_bank_shard_is_reported(tmp_path, toy_bank: Bank) -> None:
    toy_bank.save(tmp_path / "bank")
    shard = next((tmp_path / "bank").glob("bank-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(BankFormatError, match=shard.name):
        Bank.load(tmp_path / "bank").dequantize("conv", "uaq4")


def test_avg_bits_hand_computed_two_layer_example() -> None:
    infos = {
        "a": LayerInfo("a", "Linear", (4, 8), 32, 4),  # 32 weights, C_out 4
        "b": LayerInfo("b", "Conv2d", (2, 2, 2, 2), 16, 2),  # 16 weights, C_out 2
    }
    # a @ kmc3: 32·3 + 8·16·4 = 96 + 512 = 608 ; b @ uaq4: 16·4 + 2·16·2 = 64 + 64 = 128
    assert layer_bits("kmc3", infos["a"]) == 608 and layer_bits("uaq4", infos["b"]) == 128
    assert avg_bits({"a": "kmc3", "b": "uaq4"}, infos) == pytest.approx((608 + 128) / 48)
    # kma4 on a: 32·4 + 16·16 = 384 ; b left fp16: 16·16 = 256
    assert avg_bits({"a": "kma4"}, infos) == pytest.approx((384 + 256) / 48)


def test_summary_accounts_error_and_bops(toy: Toy) -> None:
    macs = count_macs(toy, torch.randn(1, 3, 6, 6))
    assert macs["conv"] == 8 * 36 * 3 * 9 and macs["head"] == 4 * 8
    bank = build_bank(toy, ["uaq4", "kmc3"], model_name="toy", macs=macs, progress=False)
    stats = bank.summarize(QuantConfig("toy", {"conv": "uaq4"}))
    assert stats.bops == macs["conv"] * 4 * 16 + (macs["mix"] + macs["head"]) * 16 * 16
    assert stats.quantized_error == pytest.approx(bank.error("conv", "uaq4") * 8 * 27)


def test_activation_quant_per_token_and_per_channel(toy: Toy) -> None:
    x = torch.randn(2, 5, 16)
    q8 = fake_quantize_activation(x, 8, (-1,))
    q6 = fake_quantize_activation(x, 6, (-1,))
    assert (q8 - x).abs().max() < (q6 - x).abs().max()
    # each token's own range: a huge token does not wreck the others
    x[0, 0] *= 1000
    assert (fake_quantize_activation(x, 8, (-1,))[1] - x[1]).abs().max() < 0.05
    inp = torch.randn(2, 3, 6, 6)
    y = toy(inp)
    with activation_quant(toy, 6):
        y6 = toy(inp)
    assert not torch.equal(y, y6) and torch.allclose(y, y6, atol=0.5)
    assert torch.equal(toy(inp), y)  # hooks removed
    with pytest.raises(ConfigError, match="activation bits"):
        with activation_quant(toy, 4):
            pass


def _minmax_fake_quant(x: torch.Tensor, bits: int, dims: tuple[int, ...]) -> torch.Tensor:
    """Asymmetric min-max fake quantization written out: s = (hi − lo)/(2^b − 1), z = round(−lo/s)."""
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    s = (hi - lo) / (2 ** bits - 1)
    z = torch.round(-lo / s)
    return (torch.clamp(torch.round(x / s) + z, 0, 2 ** bits - 1) - z) * s


def test_activation_quant_values_by_hand(toy: Toy) -> None:
    # a grid of 256 levels 0.01 apart is exactly representable at 8 bits, and only there
    x = (torch.arange(256, dtype=torch.float64) / 100).reshape(1, 256)
    torch.testing.assert_close(fake_quantize_activation(x, 8, (-1,)), x, atol=1e-12, rtol=0)
    assert (fake_quantize_activation(x, 6, (-1,)) - x).abs().max() > 0.01
    # 2 bits on [-1, 2]: s = 1, z = 1, levels -1, 0, 1, 2
    y = torch.tensor([[-1.0, -0.3, 0.2, 0.6, 2.0]])
    assert fake_quantize_activation(y, 2, (-1,)).tolist() == [[-1.0, 0.0, 0.0, 1.0, 2.0]]
    # per-token 8-bit error is at most half a step, s/2 = (hi − lo)/510
    r = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0))
    err = (fake_quantize_activation(r, 8, (-1,)) - r).abs().amax(-1)
    half_step = (r.amax(-1) - r.amin(-1)) / 510
    assert (err <= half_step * (1 + 1e-5)).all() and (err > 0.2 * half_step).all()
    # the hooks quantize exactly the inputs of every quantizable layer, each at its own ranges:
    # conv per (sample, channel) over space, Linear per token
    inp = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for bits in (8, 6):
        with torch.no_grad(), activation_quant(toy, bits):
            got = toy(inp)
            h = torch.relu(nn.functional.conv2d(_minmax_fake_quant(inp, bits, (2, 3)), toy.conv.weight,
                                                toy.conv.bias, padding=1))
            h = nn.functional.conv1d(_minmax_fake_quant(h.flatten(2), bits, (2,)), toy.mix.weight,
                                     toy.mix.bias).mean(-1)
            want = nn.functional.linear(_minmax_fake_quant(h, bits, (-1,)), toy.head.weight, toy.head.bias)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("option", ["uaq3", "uaq4", "kmc3", "kmc4", "kma3", "kma4"])
def test_quantizers_on_cuda_match_cpu(option: str) -> None:
    w = laplace(64, 288)
    cpu = quantize(w, option)
    gpu = quantize(w.cuda(), option)
    mse_cpu = float(((cpu.dequantize() - w) ** 2).mean())
    mse_gpu = float(((gpu.dequantize().cpu() - w) ** 2).mean())
    assert gpu.codes.is_cuda and int(gpu.codes.max()) < 2 ** gpu.option.bits
    assert mse_gpu == pytest.approx(mse_cpu, rel=1e-3)  # float order of sums may differ on the GPU


def test_kmeans_on_a_tensor_larger_than_float32_integer_precision() -> None:
    """K-Means-A on SD-size tensors (29.5 M weights) once indexed past the end in float32."""
    n = (1 << 24) + 3
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float32)[None]
    res = kmeans_1d(x, 4)
    assert res.centroids.shape == (1, 4) and torch.isfinite(res.centroids).all()


def test_bank_files_are_byte_identical_across_builds(tmp_path, toy: Toy) -> None:
    for name in ("a", "b"):
        build_bank(toy, ["uaq3", "kmc4"], model_name="toy", progress=False).save(tmp_path / name)
    for file in ("bank.json", "bank-00000.safetensors"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
