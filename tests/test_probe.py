"""predictor/probe.py and the GNN's propagation readout built on it.

The measurement runs on the tiny digits UNet with its real bank and the real (untrained) digits
scorer; the readout tests use the synthetic cache of test_predictor with a probe of random shifts
(the model only needs their shape, not their meaning).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.probe import Probe, measure_probe
from core.errors import QsensError

LAYERS = ["conv_in", "down_blocks.0.resnets.0.time_emb_proj", "conv_out"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from denoisers.digits import tiny_digits_denoiser
    from quant.bank import build_bank

    den = tiny_digits_denoiser("unet", seed=0)
    bank = build_bank(den.model, ["uaq3", "uaq4"], model_name="digits", progress=False)
    return den, bank


@pytest.fixture(scope="module")
def probe(measured, request):
    scorer = request.getfixturevalue("tiny_digits_scorer")
    den, bank = measured
    return measure_probe(den, bank, scorer, images=8, seed=3, layers=LAYERS, progress=False)


def test_shift_is_the_mean_feature_change_of_that_one_layer(measured, probe, tiny_digits_scorer):
    from quant.apply import quantized
    from quant.config import QuantConfig

    den, bank = measured
    fp = tiny_digits_scorer.features(den.generate(8, 3).images).mean(0)
    with quantized(den.model, QuantConfig("digits", {"conv_out": "uaq3"}), bank):
        q = tiny_digits_scorer.features(den.generate(8, 3).images).mean(0)
    np.testing.assert_allclose(probe.shift[LAYERS.index("conv_out"), probe.options.index("uaq3")], q - fp,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probe.fp_mean, fp, rtol=1e-6)
    assert probe.shift.shape == (3, 2, fp.shape[0]) and np.abs(probe.shift).sum() > 0
    # the weights are restored after every pair: a second FP generation is unchanged
    np.testing.assert_allclose(tiny_digits_scorer.features(den.generate(8, 3).images).mean(0), fp)


def test_linearised_mean_term(probe):
    off = probe.offset
    assert probe.linearised_mean_term([{}])[0] == pytest.approx(float(off @ off))
    one = probe.shift[2, 0] + probe.shift[0, 1] + off
    cfg = {"conv_out": "uaq3", "conv_in": "uaq4"}
    assert probe.linearised_mean_term([cfg])[0] == pytest.approx(float(one @ one), rel=1e-5)
    rows = probe.rows(["conv_out", "conv_in"], ["fp16", "uaq4", "uaq3"])
    assert rows.shape == (2, 3, off.shape[0]) and not rows[:, 0].any()
    np.testing.assert_array_equal(rows[0, 2], probe.shift[2, 0])


def test_save_load_round_trip_and_clear_errors(probe, tmp_path: Path):
    path = probe.save(tmp_path / "probe.safetensors")
    back = Probe.load(path)
    np.testing.assert_array_equal(back.shift, probe.shift)
    np.testing.assert_array_equal(back.ref_mean, probe.ref_mean)
    assert (back.layers, back.options, back.images, back.seed) == (LAYERS, ["uaq3", "uaq4"], 8, 3)
    with pytest.raises(QsensError, match="no probe file"):
        Probe.load(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(QsensError, match="not a readable qsens probe"):
        Probe.load(broken)
    with pytest.raises(QsensError, match=r"no layer\(s\) \['nope'\]"):
        probe.rows(["conv_in", "nope"], ["uaq3"])
    with pytest.raises(QsensError, match=r"no option\(s\) \['kma3'\]"):
        probe.rows(["conv_in"], ["kma3"])


def test_non_finite_images_are_counted_not_averaged(measured, tiny_digits_scorer, monkeypatch):
    den, bank = measured
    fp_weight = den.model.conv_out.weight.detach().clone()
    real = den.generate

    def generate(n, seed, **kw):  # conv_out quantized -> 3 images "came out NaN"
        g = real(n, seed, **kw)
        if not torch.equal(den.model.conv_out.weight, fp_weight):
            g.nonfinite[:3] = True
        return g

    monkeypatch.setattr(den, "generate", generate)
    p = measure_probe(den, bank, tiny_digits_scorer, images=8, seed=3, layers=["conv_in", "conv_out"],
                      progress=False)
    assert p.nonfinite == {"conv_out|uaq3": 3, "conv_out|uaq4": 3}
    assert np.isfinite(p.shift).all()


# ---------------------------------------------------------------- the readout in the GNN


@pytest.fixture(scope="module")
def synthetic_with_probe(tmp_path_factory):
    from graphs.io import read_graph
    from predictor.dataset import GraphTemplate, configs_from_cache
    from predictor.synthetic import make_synthetic
    from quant.bank import Bank
    from sampling.cache import read_cache

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probe_pred")
    paths = make_synthetic(root, n_configs=40, channels=(8, 16), model_name="tiny", seed=0,
                           options=("uaq3", "uaq4", "kma4"))
    bank = Bank.load(paths["bank"])
    rng = np.random.default_rng(0)
    layers, options = list(bank.layer_names), list(bank.options)
    from core.provenance import bank_digest

    fake = Probe("tiny", bank_digest(bank), layers, options,
                 rng.normal(size=(len(layers), len(options), 6)).astype(np.float32),
                 rng.normal(size=6), np.zeros(6), images=4, seed=0)
    template = GraphTemplate.build(read_graph(paths["graph"]), bank, probe=fake)
    data = configs_from_cache(read_cache(paths["cache"], ok_only=True), template)
    return paths, bank, fake, template, data


def test_probe_from_another_bank_is_refused(synthetic_with_probe):
    from graphs.io import read_graph
    from predictor.dataset import GraphTemplate

    paths, bank, fake, _, _ = synthetic_with_probe
    other = dataclasses.replace(fake, bank_fingerprint="0123abcd")
    with pytest.raises(QsensError, match="measured on another bank"):
        GraphTemplate.build(read_graph(paths["graph"]), bank, probe=other)


def _probe_model(template, data):
    from predictor.model import SensitivityGNN
    from predictor.train import TrainParams

    torch.manual_seed(0)
    params = TrainParams(layers=2, hidden=16, heads=2, probe=True)
    model = SensitivityGNN(params.model_config(template))
    rows = template.probe_rows(data.opt_idx)
    model.set_probe(template.probe_offset, template.weight_index, rows)
    with torch.no_grad():  # leave the zero initialisation so the gains differ per node
        model.gain.weight.normal_(0, 0.3)
    return model, rows


def test_readout_starts_from_the_zero_training_estimate(synthetic_with_probe):
    from predictor.model import SensitivityGNN
    from predictor.train import TrainParams

    _, _, _, template, data = synthetic_with_probe
    torch.manual_seed(0)
    model = SensitivityGNN(TrainParams(layers=2, hidden=16, heads=2, probe=True).model_config(template))
    rows = template.probe_rows(data.opt_idx)
    model.set_probe(template.probe_offset, template.weight_index, rows)
    q = model._mean_term(rows.sum(1))  # gains are exactly 1 at initialisation
    np.testing.assert_allclose(q.exp().numpy(), template.linearised_mean_term(data.opt_idx), rtol=1e-4)
    with pytest.raises(ValueError, match="pass the probe's shift rows"):
        model.forward_dense(template.node_features(data.opt_idx[:2]), template.edge_index)


def test_readout_is_permutation_invariant_and_trains_the_gains(synthetic_with_probe):
    _, _, _, template, data = synthetic_with_probe
    model, rows = _probe_model(template, data)
    model.eval()
    x = template.node_features(data.opt_idx[:4])  # (B, N, F)
    b, n, f = x.shape
    union = torch.cat([template.edge_index + k * n for k in range(b)], 1)
    batch = torch.arange(b).repeat_interleave(n)
    node_id = torch.arange(n).repeat(b)
    nodes = ((torch.arange(b) * n).unsqueeze(1) + template.weight_index.unsqueeze(0)).reshape(-1)
    shift_rows = rows[:4].reshape(-1, rows.shape[-1])
    with torch.no_grad():
        y, _ = model(x.reshape(b * n, f), union, batch, node_id, b, nodes, shift_rows)
        perm = torch.randperm(b * n, generator=torch.Generator().manual_seed(1))
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(b * n)
        y2, _ = model(x.reshape(b * n, f)[perm], inv[union], batch[perm], node_id[perm], b, inv[nodes], shift_rows)
        y3, _ = model.forward_dense(x, template.edge_index, rows[:4])
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y3)
    model.train()
    pred, _ = model.forward_dense(x, template.edge_index, rows[:4])
    pred.sum().backward()
    assert float(model.gain.weight.grad.abs().sum()) > 0 and float(model.probe_skip.grad.abs()) > 0


def test_trained_probe_ensemble_saves_and_reloads(synthetic_with_probe, tmp_path: Path):
    from predictor.api import Ensemble
    from predictor.train import TrainParams, save_result, train_ensemble

    _, _, _, template, data = synthetic_with_probe
    params = TrainParams(layers=1, hidden=8, heads=1, folds=2, epochs=2, patience=2, batch_size=16,
                         baselines=["summed_error", "probe", "gbt_probe"], test_fraction=0.25, probe=True)
    result = train_ensemble(template, data, params, progress=False)
    assert {"probe", "gbt_probe"} <= set(result.metrics["baselines"]) and result.metrics["info"]["probe"]
    ens = Ensemble.load(save_result(result, tmp_path / "ckpt"))
    configs = template.decode(data.opt_idx[:6])
    direct = [m.scaler.decode_fid(m.model.eval().forward_dense(
        template.node_features(data.opt_idx[:6]), template.edge_index, template.probe_rows(data.opt_idx[:6])
    )[0].detach().numpy(), data.avg_bits[:6]) for m in result.members]
    np.testing.assert_allclose(ens.predict(configs), np.mean(direct, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ens.template.linearised_mean_term(data.opt_idx[:6]),
                               template.linearised_mean_term(data.opt_idx[:6]), rtol=1e-6)


def test_probe_training_without_a_probe_fails_in_one_line(synthetic_with_probe):
    from predictor.train import TrainParams, train_ensemble

    _, _, _, template, data = synthetic_with_probe
    bare = dataclasses.replace(template, probe_shift=None, probe_offset=None)
    with pytest.raises(QsensError, match="run `qsens predictor probe`"):
        train_ensemble(bare, data, TrainParams(folds=2, epochs=1, probe=True, baselines=["ridge"]), progress=False)
