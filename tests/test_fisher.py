"""search/fisher.py: AutoQuantize-style Fisher scores against a by-hand autograd computation,
their behaviour (lower bits score higher, a planted error dominates), determinism, restoring
the model, and the IP-score table's errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import QsensError

OPTIONS = ["uaq2", "uaq4"]
CALIB = dict(samples=12, trajectories=8, seed=3, steps=2)  # 2 steps × 8 trajectories = 16 calls


@pytest.fixture
def tiny_bank(tiny_bank_of, one_torch_thread):
    return tiny_bank_of(OPTIONS)[0]


def _plain(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_plain(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _by_hand(den, bank, layer: str, option: str, chunk: int, draws: int = 1, noise_seed: int = 0) -> float:
    """Σ_samples Σ_elements mean_draws(g²)·ΔY² for one layer, computed independently: g by
    torch.autograd.grad of L = ½‖ε − (sg(ε) + n)‖² w.r.t. the layer's output, where ε is the model
    output times the calibration's per-sample ε-space factor (1 for ε-prediction; see
    denoisers.traits.eps_scale), ΔY as the layer's output with the one-layer config applied
    (quant.apply.quantized) minus its FP output. Also the reference of the prediction-type tests
    (tests/test_pipeline_families_prediction.py)."""
    from sampling.calibration import collect_calibration, model_output
    from quant.apply import quantized
    from quant.config import QuantConfig

    model = den.model
    module = dict(model.named_modules())[layer]
    calib = collect_calibration(den, CALIB["samples"], trajectories=CALIB["trajectories"], seed=CALIB["seed"],
                                steps=CALIB["steps"])
    c_all = calib.eps_scale
    gen = torch.Generator().manual_seed(noise_seed)
    noise = None
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():  # autograd from the parameters down: the plain way
        p.requires_grad_(True)
    total = 0.0
    for ci, (args, kwargs) in enumerate(calib.chunks(chunk)):
        args, kwargs = _plain(args), _plain(kwargs)
        outs: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, y: outs.append(y))
        try:
            with torch.enable_grad():
                o = model_output(model(*args, **kwargs))
            with torch.no_grad(), quantized(model, QuantConfig("digits", {layer: option}), bank):
                n_fp = len(outs)
                model(*args, **kwargs)
        finally:
            handle.remove()
        y_fp, y_q = outs[:n_fp], outs[n_fp:]
        if noise is None:
            noise = torch.randn((draws, CALIB["samples"], *o.shape[1:]), generator=gen)
        b0 = ci * chunk
        c = (torch.ones(o.shape[0], dtype=torch.float64) if c_all is None
             else c_all[b0:b0 + o.shape[0]]).to(o.dtype).reshape(-1, *([1] * (o.ndim - 1)))
        eps = c * o
        g2 = [torch.zeros(y.shape, dtype=torch.float64) for y in y_fp]
        for d in range(draws):
            target = eps.detach() + noise[d, b0:b0 + o.shape[0]]
            grads = torch.autograd.grad(0.5 * ((eps - target) ** 2).sum(), y_fp, retain_graph=True)
            g2 = [a + g.double() ** 2 for a, g in zip(g2, grads)]
        for a, yf, yq in zip(g2, y_fp, y_q):
            total += float((a / draws * (yq.double() - yf.detach().double()) ** 2).sum())
    for p, flag in flags:
        p.requires_grad_(flag)
        p.grad = None
    return total


def _table(den, bank, **kw) -> pd.DataFrame:
    from search.fisher import fisher_sensitivity

    return fisher_sensitivity(den, bank, **{**CALIB, "chunk": 5, "progress": False, **kw})


def _pivot(df: pd.DataFrame) -> pd.DataFrame:
    return df.pivot(index="layer", columns="option", values="score")


def test_scores_match_a_by_hand_autograd_computation(tiny_digits_denoiser, tiny_bank) -> None:
    den, bank = tiny_digits_denoiser, tiny_bank
    df = _table(den, bank)
    assert list(df.columns) == ["layer", "option", "score", "n_samples"]
    assert df["score"].dtype == np.float64 and (df["n_samples"] == CALIB["samples"]).all()
    assert [(l, o) for l, o in zip(df["layer"], df["option"])] == [(l, o) for l in bank.layer_names for o in OPTIONS]
    assert df.attrs["calibration"]["samples"] == CALIB["samples"] and df.attrs["seconds"] > 0
    scores = _pivot(df)
    # a Linear in attention, a 3×3 Conv deep in the net, and the first layer (whose output
    # starts the gradient: nothing before it carries one)
    for layer in ("mid_block.attentions.0.to_out.0", "up_blocks.0.resnets.0.conv1", "conv_in"):
        for option in OPTIONS:
            want = _by_hand(den, bank, layer, option, chunk=5, draws=1)
            assert want > 0
            assert scores.loc[layer, option] == pytest.approx(want, rel=1e-6), (layer, option)
    # draws are averaged, per sample, with the same noise stream
    two = _pivot(_table(den, bank, draws=2, layers=["up_blocks.0.resnets.0.conv1"]))
    assert list(two.index) == ["up_blocks.0.resnets.0.conv1"]
    want = _by_hand(den, bank, "up_blocks.0.resnets.0.conv1", "uaq4", chunk=5, draws=2)
    assert two.loc["up_blocks.0.resnets.0.conv1", "uaq4"] == pytest.approx(want, rel=1e-6)
    assert two.loc["up_blocks.0.resnets.0.conv1", "uaq4"] != scores.loc["up_blocks.0.resnets.0.conv1", "uaq4"]


def test_lower_bits_score_higher_and_chunking_only_changes_rounding(tiny_digits_denoiser, tiny_bank) -> None:
    den, bank = tiny_digits_denoiser, tiny_bank
    df = _table(den, bank)
    assert np.isfinite(df["score"]).all() and (df["score"] >= 0).all()
    s = _pivot(df)
    assert (s["uaq2"] >= s["uaq4"]).mean() >= 0.9
    assert s["uaq2"].sum() > 10 * s["uaq4"].sum()
    # one chunk of all samples: the same scores up to float32 rounding of batched kernels
    whole = _pivot(_table(den, bank, chunk=CALIB["samples"]))
    big = s["uaq4"] > 1e-6 * s["uaq4"].max()  # (layers with a zero gradient: pure rounding noise)
    assert big.sum() >= 40
    np.testing.assert_allclose(whole["uaq4"][big], s["uaq4"][big], rtol=1e-4)


def test_deterministic_and_the_model_is_left_untouched(tiny_digits_denoiser, tiny_bank) -> None:
    from search.fisher import fisher_sensitivity

    den, bank = tiny_digits_denoiser, tiny_bank
    model = den.model
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)  # a user's own setting survives
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    a, b = _table(den, bank), _table(den, bank)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not _table(den, bank, noise_seed=1)["score"].equals(a["score"])  # the seed is used

    class Failing:  # a bank whose dequantize fails half-way through
        def __init__(self, bank):
            self.bank = bank

        def __getattr__(self, name):
            return getattr(self.bank, name)

        def dequantize(self, layer, option, dtype=torch.float32, device="cpu"):
            if layer == bank.layer_names[len(bank.layer_names) // 2]:
                raise RuntimeError("boom")
            return self.bank.dequantize(layer, option, dtype, device)

    with pytest.raises(QsensError, match="layer 'nope' is not in the bank"):
        fisher_sensitivity(den, bank, layers=["conv_in", "nope"], progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        fisher_sensitivity(den, Failing(bank), **CALIB, progress=False)
    after = model.state_dict()
    for k, v in before.items():
        assert v.dtype == after[k].dtype and v.numpy().tobytes() == after[k].numpy().tobytes(), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags and not frozen.requires_grad
    assert all(p.grad is None for p in model.parameters())
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, name


def test_a_planted_quantization_error_dominates(tiny_digits_denoiser, tiny_bank) -> None:
    """ΔW of one mid-ranked layer made 10× larger (the bank's W_q moved away from W): to this
    order its score grows exactly 100×, to the top; every other layer's score is unchanged."""
    den, bank = tiny_digits_denoiser, tiny_bank
    base = _pivot(_table(den, bank))
    rank = base["uaq4"].rank(ascending=False)
    layer = rank.index[rank == len(rank) // 2][0]
    fp = dict(den.model.named_modules())[layer].weight.detach().clone()

    class Planted:
        def __getattr__(self, name):
            return getattr(bank, name)

        def dequantize(self, l, option, dtype=torch.float32, device="cpu"):
            w_q = bank.dequantize(l, option, dtype, device)
            return fp.to(dtype) + 10 * (w_q - fp.to(dtype)) if l == layer else w_q

    planted = _pivot(_table(den, Planted()))
    for option in OPTIONS:
        assert planted[option].idxmax() == layer
        assert planted.loc[layer, option] == pytest.approx(100 * base.loc[layer, option], rel=1e-4)
        others = planted.index != layer
        assert (planted[option][others] == base[option][others]).all()


def test_table_scores_are_negated_and_a_missing_pair_is_named(tiny_bank) -> None:
    from search.fisher import fisher_table_scores

    bank = tiny_bank
    rng = np.random.default_rng(0)
    pairs = [(l, o) for l in bank.layer_names for o in OPTIONS]
    table = pd.DataFrame({"layer": [l for l, _ in pairs], "option": [o for _, o in pairs],
                          "score": rng.uniform(size=len(pairs)), "n_samples": 4})
    got = fisher_table_scores(table, bank)
    assert got == {(l, o): -s for l, o, s in zip(table["layer"], table["option"], table["score"])}
    missing = table.drop(index=[7, 9])
    l7, o7 = pairs[7]
    with pytest.raises(QsensError, match=rf"lacks \(layer '{l7}', option '{o7}'\)"):
        fisher_table_scores(missing, bank)
    bad = table.copy()
    bad.loc[3, "score"] = np.nan
    with pytest.raises(QsensError, match="not a finite value"):
        fisher_table_scores(bad, bank)
    with pytest.raises(QsensError, match="more than once"):
        fisher_table_scores(pd.concat([table, table.iloc[:1]]), bank)
    with pytest.raises(QsensError, match="column 'score' missing"):
        fisher_table_scores(table.drop(columns="score"), bank)
