"""Issue 12's real-world cases 1–4, each with the right value, and other members of each kind:

1. tied weights: save/restore keyed by tensor memory, one quantization unit, counted once;
2. legacy imports: names translated to module paths and checked against the model;
3. exact budgets: caps and cuts exact at any magnitude, every printed bound accepted;
4. params.yaml values checked against the declared types.

The case scripts themselves (../shared/cases/*.py) run in the `slow` tests at the end.
"""
from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quant import QuantConfig, build_bank, quantized
from quant.accounting import layer_bits
from quant.bank import Bank
from core.errors import ConfigError, QsensError
from quant.layers import LayerInfo, quantizable_layers, tied_groups

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT.parent / "shared" / "cases"
OPTIONS = ["uaq3", "kmc3", "kma4"]


# ------------------------------------------------------------------------------- 1. tied weights
class Tiny(nn.Module):
    """The case's model: a → relu → b, plus an unused conv; `share` ties b's weight to a's."""

    def __init__(self, share: str | None = None):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        if share == "parameter":
            self.b.weight = self.a.weight  # the same Parameter object
        elif share == "storage":
            self.b.weight = nn.Parameter(self.a.weight.data)  # another Parameter, the same memory
        self.c = nn.Conv2d(4, 8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _state(model):
    return {n: t.detach().clone() for n, t in model.state_dict(keep_vars=True).items()}


def _same(model, before) -> bool:
    return all(torch.equal(before[n], t) for n, t in model.state_dict(keep_vars=True).items())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_case1_untied_each_layer_holds_its_option_and_restores_bit_exactly(dtype, one_torch_thread) -> None:
    torch.manual_seed(0)
    model = Tiny().to(dtype)
    before = _state(model)
    bank = build_bank(model, OPTIONS, model_name="tiny", progress=False)
    cfg = QuantConfig("tiny", {"a": "uaq3", "b": "kmc3", "c": "kma4"})
    with quantized(model, cfg, bank):
        model(torch.randn(2, 32, dtype=dtype))
        assert torch.equal(model.a.weight, bank.dequantize("a", "uaq3", dtype=dtype))
        assert torch.equal(model.b.weight, bank.dequantize("b", "kmc3", dtype=dtype))
        assert not torch.equal(model.a.weight, before["a.weight"])
    assert _same(model, before)


@pytest.mark.parametrize("share", ["parameter", "storage"])
def test_case1_tied_layers_with_different_options_are_refused_and_nothing_changes(share, one_torch_thread) -> None:
    torch.manual_seed(0)
    model = Tiny(share)
    assert list(quantizable_layers(model)) == ["a", "b", "c"] and tied_groups(model) == [["a", "b"]]
    before = _state(model)
    bank = build_bank(model, OPTIONS, model_name="tiny", progress=False)
    with pytest.raises(ConfigError) as err:
        with quantized(model, QuantConfig("tiny", {"a": "uaq3", "b": "kmc3"}), bank):
            pass
    msg = str(err.value)
    assert "\n" not in msg and "a=uaq3" in msg and "b=kmc3" in msg and "share one weight tensor" in msg
    assert _same(model, before)
    # An unlisted tied layer is fp16: also a different option for the one tensor.
    with pytest.raises(ConfigError, match="a=uaq3, b=fp16"):
        with quantized(model, QuantConfig("tiny", {"a": "uaq3"}), bank):
            pass
    assert _same(model, before)


@pytest.mark.parametrize("share", ["parameter", "storage"])
def test_case1_tied_layers_are_one_unit_written_and_restored_once(share, one_torch_thread) -> None:
    torch.manual_seed(0)
    model = Tiny(share)
    before = _state(model)
    bank = build_bank(model, OPTIONS, model_name="tiny", progress=False)
    cfg = QuantConfig("tiny", {"a": "kmc3", "b": "kmc3", "c": "uaq3"})
    x = torch.randn(3, 32)
    with quantized(model, cfg, bank) as m:
        q = bank.dequantize("a", "kmc3")
        assert torch.equal(m.a.weight, q) and torch.equal(m.b.weight, q)
        y = m(x)
    ref = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, q, before["a.bias"])), q,
                                     before["b.bias"])
    assert torch.allclose(y, ref, atol=1e-6)
    assert _same(model, before)
    if share == "parameter":
        assert model.b.weight is model.a.weight  # still tied afterwards


def test_case1_restore_after_a_failure_midway_is_bit_exact(monkeypatch, one_torch_thread) -> None:
    torch.manual_seed(0)
    model = Tiny("parameter")
    before = _state(model)
    bank = build_bank(model, OPTIONS, model_name="tiny", progress=False)
    real = bank.dequantize
    calls = []

    def flaky(layer, option, **kw):
        calls.append(layer)
        if len(calls) == 2:
            raise RuntimeError("disk gone")
        return real(layer, option, **kw)

    monkeypatch.setattr(bank, "dequantize", flaky)
    with pytest.raises(RuntimeError):
        with quantized(model, QuantConfig("tiny", {"a": "uaq3", "b": "uaq3", "c": "kma4"}), bank):
            pass
    assert calls == ["a", "c"]  # the tied pair is written once
    assert _same(model, before)


def test_case1_partially_overlapping_weights_are_refused(one_torch_thread) -> None:
    model = Tiny()
    big = torch.randn(64, 32)
    model.a.weight = nn.Parameter(big[0:32])
    model.b.weight = nn.Parameter(big[16:48])  # rows 16..31 shared with a, not the same tensor
    with pytest.raises(QsensError, match="overlap in one storage"):
        tied_groups(model)
    model.b.weight = nn.Parameter(big[32:64])  # disjoint slices of one storage: independent layers
    assert tied_groups(model) == []


def test_case1_bank_stores_the_shared_tensor_once_and_counts_it_once(tmp_path, one_torch_thread) -> None:
    from safetensors import safe_open

    torch.manual_seed(0)
    model = Tiny("parameter")
    bank = build_bank(model, OPTIONS, model_name="tiny", progress=False)
    bank.save(tmp_path / "bank")
    meta = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert meta["tied"] == [["a", "b"]]
    with safe_open(str(tmp_path / "bank" / "bank-00000.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("b/") for k in keys) and "a/kmc3/codes" in keys
    loaded = Bank.load(tmp_path / "bank")
    assert loaded.tied == [["a", "b"]]
    assert torch.equal(loaded.dequantize("b", "kmc3"), bank.dequantize("a", "kmc3"))
    infos = loaded.layers
    cfg = QuantConfig("tiny", {"a": "kmc3", "b": "kmc3", "c": "uaq3"})
    stats = loaded.summarize(cfg)
    n = infos["a"].n_weights + infos["c"].n_weights  # the shared tensor once
    assert stats.avg_bits == (layer_bits("kmc3", infos["a"]) + layer_bits("uaq3", infos["c"])) / n
    assert stats.fp_bytes == 2 * n
    assert stats.quantized_error == pytest.approx(infos["a"].n_weights * loaded.error("a", "kmc3")
                                                  + infos["c"].n_weights * loaded.error("c", "uaq3"))
    with pytest.raises(ConfigError, match="a=kmc3, b=uaq3"):
        loaded.summarize(QuantConfig("tiny", {"a": "kmc3", "b": "uaq3"}))


def test_case1_untied_bank_format_is_unchanged(tmp_path, one_torch_thread) -> None:
    """Banks built before tied-weight support (no `tied` key) load and give identical results; an
    untied model still writes exactly the old keys, byte-identically on a rebuild."""
    torch.manual_seed(0)
    model = Tiny()
    bank = build_bank(model, OPTIONS, model_name="tiny", progress=False)
    bank.save(tmp_path / "b1")
    build_bank(model, OPTIONS, model_name="tiny", progress=False).save(tmp_path / "b2")
    text = (tmp_path / "b1" / "bank.json").read_text()
    assert set(json.loads(text)) == {"format_version", "model", "fingerprint", "options", "layers",
                                     "layer_fingerprints", "entries"}
    assert text == (tmp_path / "b2" / "bank.json").read_text()
    loaded = Bank.load(tmp_path / "b1")
    assert loaded.tied == []
    cfg = QuantConfig("tiny", {"a": "uaq3", "b": "kmc3", "c": "kma4"})
    assert loaded.summarize(cfg) == bank.summarize(cfg)
    for layer, option in cfg.options.items():
        assert torch.equal(loaded.dequantize(layer, option), bank.dequantize(layer, option))


def test_case1_ip_gives_tied_layers_one_option_and_counts_the_tensor_once(one_torch_thread) -> None:
    from search.ip import bits_matrix, solve_named

    torch.manual_seed(0)
    model = Tiny("parameter")
    bank = build_bank(model, OPTIONS, model_name="tiny", progress=False)
    b, n = bits_matrix(bank, bank.layer_names, bank.options)
    assert n == bank.layers["a"].n_weights + bank.layers["c"].n_weights and (b[1] == 0).all()
    # b prefers kmc3 strongly, a mildly prefers uaq3: the pair must take kmc3 (summed scores)
    scores = {(l, o): 0.0 for l in bank.layer_names for o in bank.options}
    scores[("a", "uaq3")], scores[("b", "kmc3")] = 1.0, 5.0
    from search.ip import feasible_range

    options, res = solve_named(scores, bank, budget=feasible_range(b, n)[1])
    assert options["a"] == options["b"] == "kmc3"
    assert res.avg_bits == bank.summarize(QuantConfig("tiny", options)).avg_bits


# ----------------------------------------------------------------------------- 2. legacy imports
def _legacy_cache_records() -> list[dict]:
    """Exactly what ../shared/cases/legacy_quant_cache_sd15.py writes."""
    recs = []
    for i, (m1, m2, m3, fid) in enumerate([("kmeans-4", "mse-3", "kmeans_all-3", 23.5),
                                           ("mse-4", "kmeans-3", "mse-4", 31.25)]):
        cfg = {
            "model.conv_in.weight_quantizer": [m1, 23040, 5840, 0.0123],
            "model.up_blocks.1.resnets.0.conv1.weight_quantizer": [m2, 8847360, 1660000, 0.51],
            "model.up_blocks.1.resnets.0.conv1.weight_quantizer_0": [m3, 4423680, 830000, 0.33],
            "model.conv_out.weight_quantizer": [m1, 23040, 5840, 0.02],
        }
        recs.append({"config": cfg, "quantized_size": 2501680 + i, "quantized_error": 0.87,
                     "FID-GT-1k": np.float64(fid), "avg_bits": 3.61, "bops": float(12 + i)})
    return recs


def _cli(argv, capsys):
    from qsens.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_case2_legacy_sd15_cache_maps_every_name_to_an_sd15_layer(tmp_path, capsys) -> None:
    from sampling.cache import read_cache
    from sampling.legacy import model_layers

    pkl = tmp_path / "quant_cache.pkl"
    pkl.write_bytes(pickle.dumps(_legacy_cache_records(), protocol=4))
    out = tmp_path / "legacy.parquet"
    code, stdout, err = _cli(["cache", "import-legacy", pkl, "--out", out, "--model", "sd15"], capsys)
    assert code == 0, err
    assert "imported 2 legacy configs for sd15" in stdout
    assert "split layers with different halves: 2 in 2 config(s)" in stdout
    sd15 = model_layers("sd15").infos
    df = read_cache(out).sort_values("index")
    opts = [json.loads(o) for o in df["options"]]
    assert all(name in sd15 for o in opts for name in o)
    # record 0: halves uaq3 / kma3 (equal bits → the first half's); record 1: kmc3 / uaq4 (fewer bits)
    assert opts[0] == {"conv_in": "kmc4", "up_blocks.1.resnets.0.conv1": "uaq3", "conv_out": "kmc4"}
    assert opts[1] == {"conv_in": "uaq4", "up_blocks.1.resnets.0.conv1": "kmc3", "conv_out": "uaq4"}
    assert df["fid"].tolist() == [23.5, 31.25] and (df["status"] == "ok").all()
    # avg bits by qsens' accounting of the translated config (unlisted layers fp16), not the record's
    expect = QuantConfig("sd15", opts[0])
    from quant.accounting import avg_bits
    assert df["avg_bits"].iloc[0] == avg_bits(expect.options, sd15) and df["avg_bits"].iloc[0] != 3.61


def test_case2_unmatched_names_are_one_error_line_and_nothing_written(tmp_path, capsys) -> None:
    recs = _legacy_cache_records()
    recs[1]["config"]["model.down.0.attn.to_q.weight_quantizer"] = ["mse-4", 1, 1, 0.0]
    recs[1]["config"]["model.input_blocks.1.1.proj_in.weight_quantizer"] = ["mse-4", 1, 1, 0.0]
    pkl = tmp_path / "q.pkl"
    pkl.write_bytes(pickle.dumps(recs))
    out = tmp_path / "legacy.parquet"
    out.write_bytes(b"previous")
    code, stdout, err = _cli(["cache", "import-legacy", pkl, "--out", out, "--model", "dit-xl-2"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    # every name is foreign to DiT-XL/2: 4 distinct sd15 names + 2 more
    assert "6 layer name(s) match no quantizable layer of dit-xl-2" in lines[0]
    assert "model.conv_in.weight_quantizer" in lines[0] and "(+1 more)" in lines[0]
    assert "LDM module names" in lines[0] and "nothing written" in lines[0]
    assert out.read_bytes() == b"previous"


def test_case2_same_halves_take_that_option_and_a_model_dir_works(tmp_path, capsys) -> None:
    from sampling.cache import read_cache

    model_dir = tmp_path / "tiny_unet" / "unet"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({
        "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}))
    recs = [{"config": {"model.up_blocks.0.resnets.0.conv1.weight_quantizer": "kmeans-4",
                        "model.up_blocks.0.resnets.0.conv1.weight_quantizer_0": "kmeans-4",
                        "conv_in": ["mse-3", 0, 0, 0.0]},  # a bare module path is accepted too
             "FID-GT-1k": 12.0}]
    pkl = tmp_path / "q.pkl"
    pkl.write_bytes(pickle.dumps(recs))
    code, stdout, err = _cli(["cache", "import-legacy", pkl, "--out", tmp_path / "o.parquet", "--model",
                              tmp_path / "tiny_unet"], capsys)
    assert code == 0, err
    assert "split layers with different halves: 0 in 0 config(s)" in stdout
    row = read_cache(tmp_path / "o.parquet").iloc[0]
    assert json.loads(row["options"]) == {"conv_in": "uaq3", "up_blocks.0.resnets.0.conv1": "kmc4"}
    assert row["model"] == "tiny_unet"


def test_case2_duplicate_legacy_configs_keep_the_first_ok_record(tmp_path) -> None:
    from sampling.legacy import import_legacy

    a = {"model.pos_embed.proj.weight_quantizer": "mse-4"}
    recs = [{"config": a, "FID-GT-1k": float("nan")}, {"config": a, "FID-GT-1k": 5.0},
            {"config": a, "FID-GT-1k": 9.0}]
    pkl = tmp_path / "q.pkl"
    pkl.write_bytes(pickle.dumps(recs))
    report = import_legacy(pkl, tmp_path / "o.parquet", "dit-xl-2")
    from sampling.cache import read_cache

    df = read_cache(tmp_path / "o.parquet")
    assert report.rows == 1 and report.duplicates == 2 and df["fid"].tolist() == [5.0]


def _dit_config_pickle(path: Path) -> None:
    cfg = {f"model.transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1.weight_quantizer":
           ("kmeans-4" if i == 0 else "mse-3") for i in range(28)}
    cfg["model.pos_embed.proj.weight_quantizer"] = "kmeans_all-3"
    path.write_bytes(pickle.dumps(cfg))


def test_case2_config_import_legacy_writes_a_checked_quantconfig(tmp_path, capsys) -> None:
    from quant.accounting import avg_bits
    from sampling.legacy import model_layers

    pkl = tmp_path / "dit_40.pkl"
    _dit_config_pickle(pkl)
    out = tmp_path / "c.json"
    code, stdout, err = _cli(["config", "import-legacy", pkl, "--model", "dit-xl-2", "--out", out], capsys)
    assert code == 0, err
    cfg = QuantConfig.load(out)
    infos = model_layers("dit-xl-2").infos
    cfg.validate(infos)
    assert cfg.model == "dit-xl-2" and len(cfg.options) == 29
    # the reference loads every block's timestep embedder with block 0's option
    assert {cfg.options[f"transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1"] for i in range(28)} == {"kmc4"}
    assert cfg.options["pos_embed.proj"] == "kma3"
    assert cfg.avg_bits == avg_bits(cfg.options, infos)
    assert "27 timestep-embedder layer(s) set to block 0's option" in stdout
    code, stdout, err = _cli(["config", "show", out], capsys)
    assert code == 0 and "kmc4" in stdout and "28 layers" in stdout
    # the same file for the wrong model: one line, nothing written
    code, _, err = _cli(["config", "import-legacy", pkl, "--model", "pixart-alpha", "--out", tmp_path / "x.json"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "28 layer name(s) match no" in err
    assert not (tmp_path / "x.json").exists()


def test_case2_config_import_refuses_caches_and_code(tmp_path, capsys) -> None:
    import os

    pkl = tmp_path / "cache.pkl"
    pkl.write_bytes(pickle.dumps(_legacy_cache_records()))
    code, _, err = _cli(["config", "import-legacy", pkl, "--model", "sd15", "--out", tmp_path / "c.json"], capsys)
    assert code == 2 and "is a quant_cache, not one config" in err

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/qsens_pwned_cfg",))

    pkl.write_bytes(pickle.dumps({"model.conv_in.weight_quantizer": Evil()}))
    code, _, err = _cli(["config", "import-legacy", pkl, "--model", "sd15", "--out", tmp_path / "c.json"], capsys)
    assert code == 2 and "refused to unpickle" in err and not Path("/tmp/qsens_pwned_cfg").exists()


def test_config_show_with_a_bank_accounts_the_config(tmp_path, capsys, one_torch_thread) -> None:
    torch.manual_seed(0)
    model = Tiny("parameter")
    bank = build_bank(model, OPTIONS, model_name="tiny", progress=False)
    bank.save(tmp_path / "bank")
    cfg = QuantConfig("tiny", {"a": "kmc3", "b": "kmc3", "c": "uaq3"})
    cfg.save(tmp_path / "c.json")
    code, out, err = _cli(["config", "show", tmp_path / "c.json", "--bank", tmp_path / "bank"], capsys)
    assert code == 0, err
    assert f"avg bits {bank.summarize(cfg).avg_bits:.4f}" in out and "share one weight tensor" in out
    QuantConfig("tiny", {"a": "kmc3", "b": "uaq3"}).save(tmp_path / "bad.json")
    code, out, err = _cli(["config", "show", tmp_path / "bad.json", "--bank", tmp_path / "bank"], capsys)
    assert code == 2 and "a=kmc3, b=uaq3" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- 3. exact budgets
OPTS6 = ["uaq3", "uaq4", "kmc3", "kmc4", "kma3", "kma4"]


def _sdxl_sized(seed: int = 0, layers: int = 803):
    """SDXL-like layer sizes (803 layers, 10^3..2.6·10^7 weights, 2.6·10^9 in all): stored bits
    per (layer, option) by the real accounting."""
    rng = np.random.default_rng(seed)
    infos = []
    for i in range(layers):
        c_out = int(rng.choice([320, 640, 1280, 2048, 5120]))
        c_in = int(rng.choice([4, 320, 640, 1280, 2560, 5120]))
        k = int(rng.choice([1, 9], p=[0.7, 0.3]))
        n = c_out * c_in * k
        infos.append(LayerInfo(f"l{i}", "Linear", (c_out, c_in * k), n, c_out))
    b = np.array([[layer_bits(o, i) for o in OPTS6] for i in infos], dtype=np.int64)
    return b, sum(i.n_weights for i in infos), -rng.random(b.shape)


@pytest.fixture(scope="module")
def sdxl_sized():
    return _sdxl_sized()


def test_case3_budget_equal_to_an_achievable_configs_avg_bits_is_solved(sdxl_sized) -> None:
    from search.ip import solve

    b, N, s = sdxl_sized
    assert N > 10**9 and b.sum(axis=1).max() > 10**8
    cases = {"smallest": b.min(1).sum(), "uniform kmc3": b[:, 2].sum(), "uniform uaq4": b[:, 1].sum(),
             "largest": b.max(1).sum()}
    for what, total in cases.items():
        budget = float(total) / N  # the config's avg_bits exactly as reported
        res = solve(s, b, N, budget, None, time_limit_s=20)
        assert res.total_bits <= total and res.avg_bits <= budget, what
        if what == "smallest":  # the only config that fits
            assert res.total_bits == total and (res.choice == b.argmin(1)).all()
            # a tiny (or zero) tolerance: the window holds exactly the configs of that reported size
            # (mid-range exact windows are subset-sum instances: found fast, proved slowly)
            for tol in (0.0, 1e-12):
                assert solve(s, b, N, budget, tol, time_limit_s=20).avg_bits == budget, tol


def test_case3_every_printed_bound_is_accepted(sdxl_sized) -> None:
    from search.ip import BudgetError, check_budget, feasible_range, format_range, solve

    b, N, s = sdxl_sized
    lo, hi = feasible_range(b, N)
    printed = format_range(lo, hi)
    a, z = (float(t) for t in printed.split(".."))
    assert lo <= a < lo + 1e-4 and hi - 1e-4 < z <= hi  # rounded inward, 4 decimals
    for budget in (a, z, lo, hi):
        check_budget(budget, b, N)
    assert solve(s, b, N, a, None, time_limit_s=20).avg_bits <= a
    with pytest.raises(BudgetError, match=r"below the smallest.*feasible range: " + printed.replace(".", r"\.")):
        check_budget(math.nextafter(lo, 0), b, N)
    with pytest.raises(BudgetError, match="above the largest"):
        check_budget(math.nextafter(hi, 10), b, N)
    # rounding inward would cross when the range is narrower than the printed precision
    narrow = format_range(3.00004, 3.00006)
    assert narrow == "3.00004..3.00006" and all(3.00004 <= float(t) <= 3.00006 for t in narrow.split(".."))


def test_case3_cli_budget_check_accepts_its_own_printed_range(tmp_path, one_torch_thread) -> None:
    from types import SimpleNamespace

    from qsens.search_args import parse_budget_list
    from search.ip import BudgetError, bits_matrix, feasible_range, solve_named

    torch.manual_seed(0)
    bank = build_bank(Tiny(), OPTIONS, model_name="tiny", progress=False)
    ctx = SimpleNamespace(bank=bank)
    with pytest.raises(BudgetError) as err:
        parse_budget_list("abc", ctx, many=False)
    printed = str(err.value).split("feasible range for this bank: ")[1].split(" avg bits")[0]
    lo_txt, hi_txt = printed.split("..")
    b, n = bits_matrix(bank, bank.layer_names, bank.options)
    lo, hi = feasible_range(b, n)
    assert lo <= float(lo_txt) and float(hi_txt) <= hi
    assert parse_budget_list(f"{lo_txt},{hi_txt}", ctx, many=True) == [float(lo_txt), float(hi_txt)]
    scores = {(l, o): -float(i) for l in bank.layer_names for i, o in enumerate(bank.options)}
    for text in (lo_txt, hi_txt):
        options, res = solve_named(scores, bank, float(text))
        assert bank.summarize(QuantConfig("tiny", options)).avg_bits <= float(text)


def test_case3_caps_are_exact_at_any_magnitude() -> None:
    from search.ip import cap_bits, floor_bits

    rng = np.random.default_rng(3)
    for _ in range(2000):
        N = int(rng.integers(1, 10**10))
        T = int(rng.integers(N, 20 * N))
        budget = T / N
        cap = cap_bits(budget, N)
        assert cap >= T and cap / N <= budget < (cap + 1) / N
        low = floor_bits(budget, N)
        assert low <= T and low / N >= budget > (low - 1) / N


def test_case3_lagrangian_cut_is_valid_in_exact_arithmetic() -> None:
    """On large integer objectives the float bound may fall below the optimum; the exact one never."""
    from search.ip import brute_force, lagrangian, lagrangian_bound

    rng = np.random.default_rng(7)
    for _ in range(40):
        L, K = 4, 3
        n = rng.integers(10**6, 3 * 10**7, size=L)
        b = rng.integers(3, 5, size=(L, K)) * n[:, None] + rng.integers(0, 10**5, size=(L, K))
        coef = -rng.integers(0, 10**6, size=(L, K))
        coef[np.arange(L), rng.integers(0, K, size=L)] = 0
        N = int(n.sum())
        total = int(b[np.arange(L), rng.integers(0, K, size=L)].sum())
        cap = total
        best = brute_force(coef.astype(float), b, N, total / N)
        _, _, lam = lagrangian(coef.astype(float), b, cap, with_lambda=True)
        for lam_try in (lam, 0.0, lam * 1.5, lam * 0.5):
            assert lagrangian_bound(coef, b, cap, lam_try) >= best[0]


def test_case3_infeasible_under_the_cut_is_rechecked_without_it(monkeypatch) -> None:
    import search.ip as ip

    monkeypatch.setattr(ip, "lagrangian_bound", lambda *a, **k: -10**12)  # a (wrong) cut that removes all
    s = np.array([[-1.0, 0.0], [-2.0, 0.0]])
    b = np.array([[300, 400], [300, 400]])
    res = ip.solve(s, b, 200, 3.5)  # cap 700 bits: one layer at 400
    assert res.total_bits == 700 and res.extra["phases"] == 2 and res.choice.tolist() == [0, 1]


# --------------------------------------------------------------------------- 4. params.yaml types
def _params(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_case4_dvc_scalars_and_strings_become_one_element_lists(tmp_path) -> None:
    from search.params import SearchParams

    sp = SearchParams.from_yaml(_params(tmp_path, "search:\n  budgets: 3.4\n  strategies: error\n  mixdq_k: 1\n"))
    assert sp.budgets == (3.4,) and sp.strategies == ("error",) and sp.mixdq_k == (1.0,)
    assert ",".join(str(b) for b in sp.budgets) == "3.4"  # what `qsens search --budgets params` passes on


@pytest.mark.parametrize("text, message", [
    ("search:\n  budgets: abc\n", "search.budgets = 'abc': expected a list of numbers"),
    ("search:\n  budgets: [3.25, x]\n", "search.budgets = [3.25, 'x']: expected a list of numbers"),
    ("search:\n  budgets: {a: 1}\n", "expected a list of numbers"),
    ("search:\n  strategies: [error, 3]\n", "search.strategies = ['error', 3]: expected a list of strings"),
    ("search:\n  tolerance: .nan\n", "search.tolerance = nan: expected a finite number"),
    ("search:\n  tolerance: true\n", "search.tolerance = True: expected a finite number"),
    ("search:\n  steps: 8.5\n", "search.steps = 8.5: expected an integer or null"),
    ("search:\n  relinearise_rounds: null\n", "search.relinearise_rounds = None: expected an integer"),
    ("search:\n  select_seed: '3'\n", "search.select_seed = '3': expected an integer"),
])
def test_case4_ill_typed_values_are_one_line_naming_key_value_and_type(tmp_path, text, message) -> None:
    from search.params import SearchParams

    with pytest.raises(QsensError) as err:
        SearchParams.from_yaml(_params(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_case4_every_params_section_is_checked(tmp_path) -> None:
    from analysis.params import AnalysisParams
    from denoisers.digits import DigitsParams
    from predictor.train import TrainParams
    from sampling.noise import NoiseParams, ScoreParams
    from search.params import EvaluateParams

    assert AnalysisParams.from_yaml(_params(tmp_path, "analysis:\n  content_patterns: attn2\n")).content_patterns == ("attn2",)
    assert TrainParams.from_dict({"baselines": "ridge"}).baselines == ["ridge"]
    assert TrainParams.from_dict({"epochs": 3.0}).epochs == 3  # an exact integer is accepted
    assert DigitsParams.from_dict({"unet_channels": 32}).unet_channels == (32,)
    assert EvaluateParams.from_yaml(_params(tmp_path, "evaluate:\n  steps: null\n")).steps is None
    assert ScoreParams.from_yaml(_params(tmp_path, "score:\n  images: 64\n")).images == 64
    assert TrainParams.from_dict({"lr": "1e-3"}).lr == 0.001  # PyYAML reads 1e-3 as a string
    bad = [(lambda: TrainParams.from_dict({"probe": 1}), "train.probe = 1: expected true or false"),
           (lambda: TrainParams.from_dict({"baselines": [["ridge"]]}), "expected a list of strings"),
           (lambda: DigitsParams.from_dict({"unet_channels": "32,64"}), "expected a list of integers"),
           (lambda: NoiseParams.from_yaml(_params(tmp_path, "noise:\n  seed_a: 0.5\n")), "noise.seed_a = 0.5"),
           (lambda: AnalysisParams.from_yaml(_params(tmp_path, "analysis:\n  calib_timesteps: 3\n")),
            "analysis.calib_timesteps = 3: expected a string")]
    for make, message in bad:
        with pytest.raises(QsensError, match=message.replace(".", r"\.").replace("[", r"\[")):
            make()


def test_case4_every_default_fits_its_declared_type() -> None:
    """The checker and the dataclasses agree: each section's defaults pass unchanged (a field
    declared with the wrong type would be caught here, not by a user)."""
    from analysis.params import AnalysisParams
    from denoisers.digits import DigitsParams
    from predictor.probe import ProbeParams
    from predictor.train import TrainParams
    from core.params import check_types
    from sampling.noise import NoiseParams, ScoreParams
    from search.params import EvaluateParams, SearchParams

    for cls in (SearchParams, EvaluateParams, AnalysisParams, TrainParams, DigitsParams, NoiseParams,
                ScoreParams, ProbeParams):
        default = cls()
        values = {f.name: getattr(default, f.name) for f in fields(cls)}
        assert check_types(cls, values, cls.__name__) == values, cls.__name__
        assert cls(**check_types(cls, asdict(default), cls.__name__)) == default, cls.__name__


# ---------------------------------------------------------------------------- the case scripts
@pytest.mark.slow
@pytest.mark.skipif(not CASES.is_dir(), reason="../shared/cases not present")
def test_case_scripts_run_from_the_project_root(tmp_path) -> None:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *args: subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                                       text=True, timeout=600, env=env)
    ip = run(CASES / "ip_budget_exact.py")
    lines = ip.stdout.strip().splitlines()
    assert ip.returncode == 0 and len(lines) == 3 and all("-> solved" in l for l in lines), ip.stdout + ip.stderr
    tied = run(CASES / "apply_restore_tied.py")
    out = tied.stdout.strip().splitlines()
    assert len(out) >= 4 and all("restored bit-exactly: True" in l for l in out[:3]), tied.stdout
    # the tied case with different options on one tensor is the clear refusal (one line)
    assert tied.stderr.strip().splitlines()[-1].startswith("core.errors.ConfigError: config: layers a and b "
                                                           "share one weight tensor"), tied.stderr
    pkl = tmp_path / "q.pkl"
    assert run(CASES / "legacy_quant_cache_sd15.py", pkl).returncode == 0
    imp = run("-m", "qsens", "cache", "import-legacy", pkl, "--out", tmp_path / "o.parquet", "--model", "sd15")
    assert imp.returncode == 0 and "split layers with different halves: 2 in 2" in imp.stdout, imp.stderr


def test_case4_config_act_bits_follow_the_same_integer_rule(tmp_path) -> None:
    """A QuantConfig's `act_bits: 8.0` is 8 (same id as 8); 8.5, true or "8" are one ConfigError."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "m", "options": {"x": "uaq4"}, "act_bits": 8.0}))
    cfg = QuantConfig.load(path)
    assert cfg.act_bits == 8 and isinstance(cfg.act_bits, int)
    assert cfg.config_id == QuantConfig("m", {"x": "uaq4"}, act_bits=8).config_id
    for bad in (8.5, True, "8"):
        path.write_text(json.dumps({"model": "m", "options": {}, "act_bits": bad}))
        with pytest.raises(ConfigError, match=r"'act_bits' = .*: expected null, 8 or 6"):
            QuantConfig.load(path)


@pytest.mark.slow
@pytest.mark.skipif(not CASES.is_dir(), reason="../shared/cases not present")
def test_issue23_case_scripts(tmp_path) -> None:
    """The #23 case scripts (non-finite weights, no locks, pandas round trip, skip list, fused
    QKV) from the project root, with their expected outcomes."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *args: subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                                       text=True, timeout=600, env=env)
    tiny = tmp_path / "tiny"
    assert run(CASES / "make_tiny_data.py", tiny).returncode == 0
    M = ["--model", "digits", "--data-dir"]
    assert run("-m", "qsens", "bank", "build", *M, tiny, "--out", tiny / "bank" / "digits", "--quiet").returncode == 0
    # 1. a NaN weight: refused in one line naming the layer, with UAQ-only and k-means options alike
    assert run(CASES / "poison_weights.py", tiny, tmp_path / "nan", "nan", "mid_block.resnets.0.conv2").returncode == 0
    for opts in ("uaq3,uaq4", "kmc3,uaq4"):
        r = run("-m", "qsens", "bank", "build", *M, tmp_path / "nan", "--options", opts, "--out", tmp_path / "nb", "--quiet")
        err = [l for l in r.stderr.splitlines() if l.startswith("error")]
        assert r.returncode == 2 and len(err) == 1 and "mid_block.resnets.0.conv2" in err[0], r.stderr[-800:]
        assert not (tmp_path / "nb").exists()
    # 5. no locks on the file system: what the OS said, not "another qsens"
    r = run(CASES / "nfs_no_locks.py", "sample", *M, tiny, "--num-configs", "2", "--images", "4", "--workers", "1",
            "--shards", tmp_path / "s", "--quiet")
    err = [l for l in r.stderr.splitlines() if l.startswith("error")]
    assert r.returncode == 2 and len(err) == 1 and "No locks available (ENOLCK)" in err[0], r.stderr[-800:]
    # 6. a cache written back by pandas reads the same
    r = run("-m", "qsens", "sample", *M, tiny, "--num-configs", "2", "--images", "4", "--workers", "1",
            "--shards", tmp_path / "s2", "--quiet")
    assert r.returncode == 0, r.stderr[-800:]
    assert run("-m", "qsens", "cache", "merge", "--shards", tmp_path / "s2", "--out", tmp_path / "c.parquet").returncode == 0
    assert run(CASES / "cache_pandas_roundtrip.py", tmp_path / "c.parquet", tmp_path / "rt").returncode == 0
    shown = run("-m", "qsens", "cache", "show", tmp_path / "c.parquet").stdout
    for f in ("filtered", "concat"):
        r = run("-m", "qsens", "cache", "show", tmp_path / f"rt-{f}.parquet")
        assert r.returncode == 0 and r.stdout.splitlines()[1:] == shown.splitlines()[1:], r.stderr[-800:]
    # 3. the skip list keeps exactly the ranked layer under diffusers+torchao's own rule
    r = run(CASES / "skiplist_diffusers_torchao.py", tmp_path / "flux")
    assert "really left in FP: ['transformer_blocks.0.attn.to_q']" in r.stdout, r.stdout + r.stderr[-800:]
    # 2. fused QKV: the dead projections are neither banked nor counted
    r = run(CASES / "fused_qkv_bank.py")
    assert "dead layers in the bank: 0" in r.stdout and "avg_bits 16.000" in r.stdout, r.stdout + r.stderr[-800:]
