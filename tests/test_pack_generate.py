"""`qsens generate --act-bits` installs one set of activation hooks (issue 25 item 4): with --config
or --quantized it replaces the config's own activation bits instead of stacking a second hook on
every layer; --keep-dequantized holds the decoded weights for the run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from denoisers.digits import DigitsDenoiser
from quant import QuantConfig, build_bank
from quant.layers import quantizable_layers


@pytest.fixture
def digits_bank(tiny_prepared_data, tmp_path: Path):
    den = DigitsDenoiser.load(tiny_prepared_data / "models" / "digits")
    bank = build_bank(den.model, ["uaq4"], model_name="digits", progress=False)
    bank_dir = bank.save(tmp_path / "bank")
    # the config asks for A6 itself: --act-bits 8 must replace it, not add to it
    config = QuantConfig("digits", {n: "uaq4" for n in bank.layer_names}, act_bits=6)
    return bank_dir, config.save(tmp_path / "c.json"), len(bank.layer_names)


def _count_hooks(monkeypatch) -> list[list[int]]:
    seen: list[list[int]] = []
    orig = DigitsDenoiser.generate

    def generate(self, *a, **k):
        seen.append([len(m._forward_pre_hooks) for m in quantizable_layers(self.model).values()])
        return orig(self, *a, **k)

    monkeypatch.setattr(DigitsDenoiser, "generate", generate)
    return seen


def test_act_bits_with_config_installs_one_hook_per_layer(tiny_prepared_data, digits_bank, tmp_path, monkeypatch):
    from qsens.cli import main

    bank_dir, cfg, n_layers = digits_bank
    seen = _count_hooks(monkeypatch)
    common = ["generate", "--model", "digits", "--data-dir", str(tiny_prepared_data), "--n-images", "2",
              "--threads", "1"]
    assert main([*common, "--bank", str(bank_dir), "--config", str(cfg), "--act-bits", "8",
                 "--out", str(tmp_path / "g")]) == 0
    assert seen[-1] == [1] * n_layers
    # export, then the packed checkpoint with --act-bits: one hook per layer too
    assert main(["export", "--model", "digits", "--data-dir", str(tiny_prepared_data), "--bank", str(bank_dir),
                 "--config", str(cfg), "--out", str(tmp_path / "q")]) == 0
    assert main([*common, "--quantized", str(tmp_path / "q"), "--act-bits", "8", "--out", str(tmp_path / "p")]) == 0
    assert seen[-1] == [1] * n_layers
    # the packed images equal the fake-quant ones (same weights, same A8 hooks)
    a = sorted((tmp_path / "g").glob("*.png"))
    b = sorted((tmp_path / "p").glob("*.png"))
    assert [x.read_bytes() for x in a] == [x.read_bytes() for x in b]
    # and --keep-dequantized changes nothing in the images
    assert main([*common, "--quantized", str(tmp_path / "q"), "--act-bits", "8", "--keep-dequantized",
                 "--out", str(tmp_path / "k")]) == 0
    k = sorted((tmp_path / "k").glob("*.png"))
    assert [x.read_bytes() for x in k] == [x.read_bytes() for x in b]
    # without --act-bits the config's own A6 is the one set
    assert main([*common, "--bank", str(bank_dir), "--config", str(cfg), "--out", str(tmp_path / "g6")]) == 0
    assert seen[-1] == [1] * n_layers
