"""predictor/: dataset, splits, model invariances, losses, metrics, save/load, sensitivity, CLI.

Everything runs on a tiny synthetic cache built here (a tiny UNet2DModel's real bank and DAG,
a made-up FID with known sensitive layers) in a few seconds on 2 CPU cores.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from predictor.dataset import GraphTemplate, TargetScaler, configs_from_cache, highest_bits_reference, split_ids
from predictor.losses import RANK_LOSSES, rank_loss, total_loss
from predictor.metrics import all_metrics, ndcg_at_k, precision_at_k
from predictor.model import SensitivityGNN
from predictor.train import TrainParams, save_result, train_ensemble

TINY = dict(conv="gatv2", layers=2, hidden=16, heads=2, folds=2, epochs=3, patience=3, batch_size=16,
            baselines=["summed_error", "ridge"], threads=1, test_fraction=0.25, probe=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from predictor.synthetic import make_synthetic

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pred")
    paths = make_synthetic(root, n_configs=48, channels=(8, 16), model_name="tiny", seed=0,
                           options=("uaq3", "uaq4", "kmc3", "kma4"))
    from graphs.io import read_graph
    from quant.bank import Bank
    from sampling.cache import read_cache

    bank = Bank.load(paths["bank"])
    template = GraphTemplate.build(read_graph(paths["graph"]), bank)
    data = configs_from_cache(read_cache(paths["cache"], ok_only=True), template)
    return paths, bank, template, data


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    _, _, template, data = synthetic
    result = train_ensemble(template, data, TrainParams(**TINY), progress=False)
    out = save_result(result, tmp_path_factory.mktemp("ckpt") / "tiny")
    return result, out


def _model(template, **kw):
    torch.manual_seed(0)
    cfg = TrainParams(**{**TINY, **kw}).model_config(template)
    return SensitivityGNN(cfg)


# ---------------------------------------------------------------- dataset


def test_template_matches_bank_and_graph(synthetic):
    _, bank, template, data = synthetic
    assert template.layer_names and set(template.layer_names) == set(bank.layers)
    assert template.options[0] == "fp16" and set(template.options[1:]) == set(bank.options)
    x = template.node_features(data.opt_idx[:3])
    assert x.shape == (3, template.num_nodes, len(template.feature_names))
    # avg_bits and summed error agree with the bank's accounting (the cache's columns)
    from sampling.cache import read_cache

    df = read_cache(synthetic[0]["cache"], ok_only=True).set_index("config_id")
    np.testing.assert_allclose(data.avg_bits, df.loc[data.config_ids, "avg_bits"], rtol=1e-9)
    np.testing.assert_allclose(template.summed_error(data.opt_idx), df.loc[data.config_ids, "quantized_error"],
                               rtol=1e-6)
    assert template.decode(data.opt_idx[:1])[0] == json.loads(df.loc[data.config_ids[0], "options"])


def test_encode_rejects_unknown_options(synthetic):
    from core.errors import QsensError

    template = synthetic[2]
    with pytest.raises(QsensError, match="not trained on"):
        template.encode([{template.layer_names[0]: "kmc4"}])  # not in this bank's option set
    with pytest.raises(QsensError, match="unknown layer"):
        template.encode([{"nope": "uaq4"}])


def test_split_is_deterministic_and_disjoint():
    ids = [f"{i:016x}" for i in range(100)]
    test, folds = split_ids(ids, 0.2, 5, seed=3)
    test2, folds2 = split_ids(list(reversed(ids)), 0.2, 5, seed=3)
    assert sorted(ids[i] for i in test) == sorted(list(reversed(ids))[i] for i in test2)
    assert len(test) == 20
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals.tolist()) == sorted(set(range(100)) - set(test.tolist()))
    for tr, va in folds:
        assert not set(tr) & set(va) and not set(tr) & set(test) and not set(va) & set(test)
    assert split_ids(ids, 0.2, 5, seed=4)[0].tolist() != test.tolist()


def test_target_scaler_roundtrip():
    fid, bits = np.array([10.0, 20.0, 30.0]), np.array([3.5, 3.7, 4.0])
    for transform in ("none", "log"):
        s = TargetScaler(lambda_bits=2.0, transform=transform).fit(fid, bits)
        z = s.encode(fid, bits)
        assert abs(z.mean()) < 1e-9
        np.testing.assert_allclose(s.decode_fid(z, bits), fid)
    # by hand: cost = fid + 2·bits = 17, 27.4, 38; z = (t − mean) / population std of t
    cost = np.array([17.0, 27.4, 38.0])
    for transform, t in (("none", cost), ("log", np.log(cost))):
        s = TargetScaler(lambda_bits=2.0, transform=transform).fit(fid, bits)
        assert (s.mean, s.std) == pytest.approx((t.mean(), np.sqrt(((t - t.mean()) ** 2).mean())))
        np.testing.assert_allclose(s.encode(fid, bits), (t - t.mean()) / t.std(ddof=0), rtol=1e-12)
        np.testing.assert_allclose(s.decode_cost(np.array([0.0, 1.0])),
                                   s._inv(np.array([t.mean(), t.mean() + t.std()])), rtol=1e-12)
    assert TargetScaler(transform="log").fit(fid, bits).decode_cost(np.zeros(1))[0] == pytest.approx(
        np.exp(np.log(fid).mean()))  # the geometric mean FID


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("conv", ["gatv2", "gin", "transformer"])
@pytest.mark.parametrize("direction", ["forward", "both"])
def test_node_permutation_gives_same_prediction(synthetic, conv, direction):
    _, _, template, data = synthetic
    model = _model(template, conv=conv, direction=direction).eval()
    x = template.node_features(data.opt_idx[:4])  # (B, N, F)
    b, n, f = x.shape
    edges = template.edge_index
    union = torch.cat([edges + k * n for k in range(b)], 1)
    batch = torch.arange(b).repeat_interleave(n)
    node_id = torch.arange(n).repeat(b)
    with torch.no_grad():
        y, hop = model(x.reshape(b * n, f), union, batch, node_id, b)
        perm = torch.randperm(b * n, generator=torch.Generator().manual_seed(1))  # new position -> old node
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(b * n)
        y2, hop2 = model(x.reshape(b * n, f)[perm], inv[union], batch[perm], node_id[perm], b)
        y3, _ = model.forward_dense(x, edges)
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hop, hop2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y3)


def test_direction_matters(synthetic):
    _, _, template, data = synthetic
    x = template.node_features(data.opt_idx[:4])
    torch.manual_seed(0)
    m = _model(template, direction="forward").eval()
    state = m.state_dict()
    m2 = _model(template, direction="backward").eval()
    m2.load_state_dict(state)
    with torch.no_grad():
        assert not torch.allclose(m.forward_dense(x, template.edge_index)[0],
                                  m2.forward_dense(x, template.edge_index)[0])


# ---------------------------------------------------------------- losses and metrics


@pytest.mark.parametrize("kind", [k for k in RANK_LOSSES if k != "none"])
def test_ranking_term_gradient_reaches_parameters(synthetic, kind):
    _, _, template, data = synthetic
    model = _model(template).train()
    x = template.node_features(data.opt_idx[:12])
    y = torch.tensor(data.fid[:12], dtype=torch.float32)
    y = (y - y.mean()) / y.std()
    pred, _ = model.forward_dense(x, template.edge_index)
    loss = rank_loss(kind, pred, y)  # the ranking term ALONE
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values() if g is not None)
    conv_grad = sum(float(g.abs().sum()) for n, g in grads.items() if n.startswith("convs.") and g is not None)
    enc_grad = sum(float(g.abs().sum()) for n, g in grads.items() if n.startswith("encoder.") and g is not None)
    assert conv_grad > 0 and enc_grad > 0
    # and in the combined loss used for training, after the optimizer's zero_grad
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.zero_grad()
    pred, hop = model.forward_dense(x, template.edge_index)
    total, parts = total_loss(pred, hop, y, kind, rank_weight=1.0, hop_weight=0.1)
    total.backward()
    assert parts["rank"] > 0
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.convs.parameters())


def test_rank_losses_prefer_correct_order():
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])
    for kind in ("pairwise", "softrank", "lambdarank"):
        assert rank_loss(kind, y.clone(), y) < rank_loss(kind, -y, y)


def test_metrics_top_is_lowest_fid():
    true = np.arange(20, dtype=float)  # config 0 has the lowest FID = the best
    assert ndcg_at_k(true, true, 10) == pytest.approx(1.0)
    assert precision_at_k(true, true, 10) == 1.0
    assert precision_at_k(true, -true, 10) == 0.0
    assert ndcg_at_k(true, -true, 10) < 0.5
    m = all_metrics(true, true + 1.0)
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0) and m["mae"] == 1.0


# ---------------------------------------------------------------- training, checkpoints, API


def test_train_ensemble_learns_the_synthetic_fid(trained):
    result, _ = trained
    m = result.metrics
    keys = {"spearman", "kendall", "ndcg@10", "precision@10", "mae"}
    assert keys <= set(m["ensemble"]) and len(m["folds"]) == 2
    assert set(m["baselines"]) == {"summed_error", "ridge"}
    assert all(keys <= set(v) for v in m["baselines"].values())
    assert set(result.predictions.split) == {"test", "val"}
    # Training has to learn: on this fixture 3 epochs give test Spearman 0.74, the same
    # ensemble without optimizer steps 0.17; ridge on one-hot options 0.92, the training mean NaN.
    assert m["ensemble"]["spearman"] >= 0.5
    assert m["baselines"]["ridge"]["spearman"] >= 0.8
    assert m["baselines"]["summed_error"]["spearman"] >= 0.8
    # the metrics are those of the saved test predictions (mean of the members)
    from predictor.metrics import all_metrics

    test = result.predictions[result.predictions.split == "test"]
    assert len(test) == m["info"]["n_test"]
    assert all_metrics(test.cost.to_numpy(), test.pred.to_numpy())["spearman"] == pytest.approx(
        m["ensemble"]["spearman"], abs=1e-12)


def test_saved_and_loaded_predicts_identically(trained, synthetic):
    from predictor.api import Ensemble

    result, out = trained
    _, _, template, data = synthetic
    ens = Ensemble.load(out)
    configs = template.decode(data.opt_idx[:10])
    direct = []
    for m in result.members:
        z = m.model.eval().forward_dense(template.node_features(data.opt_idx[:10]), template.edge_index)[0]
        direct.append(m.scaler.decode_fid(z.detach().numpy(), data.avg_bits[:10]))
    np.testing.assert_allclose(ens.predict_members(configs), np.array(direct), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ens.predict(configs), np.mean(direct, 0), rtol=1e-5, atol=1e-5)
    assert not list(out.glob("*.pt")) and not list(out.glob("*.pkl"))
    meta = json.loads((out / "ensemble.json").read_text())
    assert meta["template"]["bank_fingerprint"] and meta["template"]["feature_names"]


def test_sensitivity_tables(trained, synthetic):
    from predictor.api import Ensemble
    from predictor.sensitivity import block_of

    _, out = trained
    _, bank, template, _ = synthetic
    ens = Ensemble.load(out)
    table = ens.sensitivity()
    assert list(table.columns) == ["layer", "option", "delta_fid", "delta_fid_std", "block"]
    assert len(table) == len(bank.layers) * len(bank.options)
    ref = highest_bits_reference(template)
    own = table[[ref[l] == o for l, o in zip(table.layer, table.option)]]
    assert len(own) == len(bank.layers) and (own.delta_fid == 0).all()
    # re-linearising around another config changes the table
    other = {n: "uaq3" for n in ens.layer_names}
    t2 = ens.sensitivity(other)
    assert (t2[t2.option == "uaq3"].delta_fid == 0).all()
    # delta = predict(changed) − predict(reference)
    row = table.iloc[5]
    changed = dict(ref)
    changed[row.layer] = row.option
    p = ens.predict([ref, changed])
    assert row.delta_fid == pytest.approx(p[1] - p[0], abs=1e-4)
    # every row: the members' mean and spread of predict(changed) − predict(reference)
    changed = []
    for layer, option in zip(table.layer, table.option):
        c = dict(ref)
        c[layer] = option
        changed.append(c)
    member_delta = ens.predict_members(changed) - ens.predict_members([ref])  # (M, rows)
    np.testing.assert_allclose(table.delta_fid, member_delta.mean(0), atol=1e-4)
    np.testing.assert_allclose(table.delta_fid_std, member_delta.std(0), atol=1e-4)
    blocks = ens.block_sensitivity()
    assert {"level", "name", "option", "delta_fid", "delta_fid_std", "delta_fid_sum"} <= set(blocks.columns)
    # a block row changes every layer of the block jointly; its additive guess sums the layer rows
    per_layer = table.set_index(["layer", "option"]).delta_fid
    for _, b in blocks.sample(n=6, random_state=0).iterrows():
        members = [n for n in ens.layer_names
                   if (block_of(n) == b["name"] if b.level == "block" else n.startswith(b["name"] + "."))]
        assert len(members) == b.n_layers
        joint = {**ref, **{n: b.option for n in members}}
        p = ens.predict([ref, joint])
        assert b.delta_fid == pytest.approx(p[1] - p[0], abs=1e-4)
        assert b.delta_fid_sum == pytest.approx(sum(per_layer[(n, b.option)] for n in members), abs=1e-6)
    assert set(blocks[blocks.level == "block"].name) == {block_of(n) for n in ens.layer_names}
    assert block_of("down_blocks.1.attentions.0.to_q") == "down_blocks.1"
    assert block_of("mid_block.resnets.0.conv1") == "mid_block"
    assert block_of("time_embedding.linear_1") == "time_embedding"


def test_baselines_fit_predict():
    from predictor.baselines import fit_predict, one_hot

    rng = np.random.default_rng(0)
    idx = torch.as_tensor(rng.integers(0, 3, size=(60, 5)))
    x = one_hot(idx, 3)
    assert x.shape == (60, 15) and (x.sum(1) == 5).all()
    y = x @ rng.normal(size=15)  # exactly linear in the one-hot options
    spread = np.abs(y[40:] - y[:40].mean()).mean()  # MAE of predicting the training mean (1.44)
    for name in ("ridge", "gbt", "mlp"):
        p = fit_predict(name, x[:40], y[:40], x[40:])
        assert p.shape == (20,) and np.isfinite(p).all()
        assert np.corrcoef(p, y[40:])[0, 1] > 0.9, name  # ridge 1.0000, gbt 0.98, mlp 0.97
        assert np.abs(p - y[40:]).mean() < 0.5 * spread, name
    # ridge recovers a linear target almost exactly (GCV picks the smallest alpha)
    assert np.abs(fit_predict("ridge", x[:40], y[:40], x[40:]) - y[40:]).max() < 0.01
    # the 1-D baselines are a least-squares line: exact on a feature that is a line of y
    feat = (3.0 * y - 2.0)[:, None]
    for name in ("summed_error", "probe"):
        np.testing.assert_allclose(fit_predict(name, feat[:40], y[:40], feat[40:]), y[40:], atol=1e-9)


def test_cli_train_and_inspect(synthetic, tmp_path):
    from qsens.cli import main

    paths = synthetic[0]
    params = tmp_path / "params.yaml"
    params.write_text("model: tiny\ntrain:\n" + "".join(
        f"  {k}: {json.dumps(v)}\n" for k, v in {**TINY, "baselines": ["ridge"]}.items()))
    out = tmp_path / "pred"
    metrics = tmp_path / "metrics" / "predictor.json"
    code = main(["predictor", "train", "--params", str(params), "--cache", str(paths["cache"]),
                 "--graph", str(paths["graph"]), "--bank", str(paths["bank"]), "--out", str(out),
                 "--metrics", str(metrics), "--quiet", "--set", "epochs=2"])
    assert code == 0
    m = json.loads(metrics.read_text())
    assert set(m) >= {"ensemble", "folds", "baselines"} and "ridge" in m["baselines"]
    table = pd.read_parquet(out / "sensitivity.parquet")
    assert list(table.columns) == ["layer", "option", "delta_fid", "delta_fid_std", "block"]
    # the stage's table is the saved ensemble's, around the highest-bits reference
    from predictor.api import Ensemble

    ens = Ensemble.load(out)
    pd.testing.assert_frame_equal(table, ens.sensitivity(), check_exact=False, atol=1e-6)
    ref = highest_bits_reference(ens.template)
    assert (table[[ref[l] == o for l, o in zip(table.layer, table.option)]].delta_fid == 0).all()
    test = pd.read_parquet(out / "predictions.parquet").query("split == 'test'")
    assert m["ensemble"]["spearman"] == pytest.approx(
        all_metrics(test.cost.to_numpy(), test.pred.to_numpy())["spearman"], abs=1e-5)
    assert (out / "blocks.parquet").is_file() and (out / "plots" / "scatter.png").is_file()
    assert (out / "plots" / "report.md").is_file()
    scatter = pd.read_csv(metrics.parent / "predictor_scatter.csv")
    assert {"true", "pred", "fold"} <= set(scatter.columns)
    code = main(["predictor", "inspect", "--out", str(out), "--graph", str(paths["graph"]),
                 "--plots-dir", str(tmp_path / "m2"), "--model", "tiny"])
    assert code == 0 and (tmp_path / "m2" / "predictor_layers.csv").is_file()
    # bad input: one line, exit 2
    assert main(["predictor", "train", "--params", str(params), "--cache", str(tmp_path / "nope.parquet"),
                 "--graph", str(paths["graph"]), "--bank", str(paths["bank"]), "--out", str(out)]) == 2
    assert main(["predictor", "train", "--params", str(params), "--cache", str(paths["cache"]),
                 "--graph", str(paths["graph"]), "--bank", str(paths["bank"]), "--out", str(out),
                 "--set", "conv=nope"]) == 2
