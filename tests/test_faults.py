"""Faults of issue #23/#28 (one kind per section): each test states the right behaviour for the
whole kind, not only for the case that found it."""
from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from quant.errors import QsensError


def _tiny_model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 4))
    return m.to(dtype)


# ---------------------------------------------------------------- #23.1 non-finite weights
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_named_before_any_work(value, monkeypatch):
    import quant.bank as bank_mod
    from quant.layers import check_finite_weights, non_finite_layers

    model = _tiny_model()
    with torch.no_grad():
        model[1].weight.view(-1)[3] = value
        model[3].weight.view(-1)[0] = value
    assert non_finite_layers(model) == {"1": 1, "3": 1}
    with pytest.raises(QsensError, match=r"2 layer\(s\): 1 \(1 value\), 3 \(1 value\)"):
        check_finite_weights(model)
    calls = []
    monkeypatch.setattr(bank_mod, "quantize", lambda *a, **k: calls.append(a))
    with pytest.raises(QsensError, match="non-finite") as err:
        bank_mod.build_bank(model, ["uaq3", "kmc3"], progress=False)  # k-means and UAQ alike
    assert "\n" not in str(err.value) and "1 (1 value)" in str(err.value)
    assert calls == [], "the bank quantized something before refusing"


def test_quantizer_refuses_non_finite_input():
    from quant.quantizers import quantize

    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    for opt in ("uaq3", "kmc3", "kma4"):
        with pytest.raises(QsensError, match="non-finite"):
            quantize(w, opt)


def test_bank_with_nan_errors_is_refused_on_load(tmp_path):
    from quant.bank import Bank, build_bank
    from quant.errors import BankFormatError

    build_bank(_tiny_model(), ["uaq3"], progress=False).save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bank.json").read_text())
    meta["entries"]["1"]["uaq3"]["mse"] = float("nan")  # a bank built by an older qsens from NaN weights
    (tmp_path / "b" / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankFormatError, match=r"non-finite quantization error for 1 layer\(s\) \(1\)"):
        Bank.load(tmp_path / "b")


def test_check_model_names_nan_layers_not_another_model(tmp_path):
    from quant.bank import build_bank

    model = _tiny_model()
    bank = build_bank(model, ["uaq3"], progress=False)
    with torch.no_grad():
        model[0].weight.view(-1)[0] = float("nan")
    with pytest.raises(QsensError, match=r"non-finite .* 0 \(1 value\)"):
        bank.check_model(model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("opt", ["uaq3", "uaq4", "kmc3", "kma3"])
def test_quantization_arithmetic_is_fp32_for_half_models(dtype, opt):
    """An fp16/bf16 weight quantizes exactly like its float32 upcast (codes and stored params)."""
    from quant.quantizers import fake_quantize, quantize

    torch.manual_seed(1)
    w = (torch.randn(16, 40) * 0.05).to(dtype)
    q_half, q_32 = quantize(w, opt), quantize(w.to(torch.float32), opt)
    assert torch.equal(q_half.codes, q_32.codes) and torch.equal(q_half.params, q_32.params)
    assert q_half.params.dtype == torch.float32
    fq = fake_quantize(w, opt)
    assert fq.dtype == dtype and bool(torch.isfinite(fq).all())


def test_half_edge_values():
    """fp16 subnormals (scale underflow) quantize to finite values; bf16 weights beyond the fp16
    range cannot be stored with fp16 scales: the bank refuses naming the layer instead of inf."""
    from quant.bank import build_bank
    from quant.quantizers import quantize

    tiny = torch.full((2, 8), 1e-7, dtype=torch.float16)  # subnormal in fp16
    tiny[0, 0] = 0
    for opt in ("uaq3", "kmc3", "kma3"):
        assert bool(torch.isfinite(quantize(tiny, opt).dequantize()).all())
    model = _tiny_model(torch.bfloat16)
    with torch.no_grad():
        model[3].weight.view(-1)[0] = 1e6  # finite in bf16; its scale is beyond fp16 65504
    with pytest.raises(QsensError, match=r"layer 3: uaq3 .* overflow fp16"):
        build_bank(model, ["uaq3"], progress=False)


def test_fp32_bank_unchanged_by_the_fp32_cast():
    """The cast is a no-op for float32 models: same codes/params as quantizing the raw tensor."""
    from quant.quantizers import quantize_kmeans, quantize_uaq, quantize

    torch.manual_seed(2)
    w = torch.randn(8, 27)
    c, p = quantize_uaq(w, 3)
    q = quantize(w.reshape(8, 3, 3, 3), "uaq3")
    assert torch.equal(q.codes, c) and torch.equal(q.params, p)
    c, p = quantize_kmeans(w, 3, per_row=True)
    q = quantize(w, "kmc3")
    assert torch.equal(q.codes, c) and torch.equal(q.params, p)
