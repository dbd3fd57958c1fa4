"""k-fold ensemble training of the sensitivity GNN, baselines on the same splits, checkpoints.

    test split (by config-id hash, never trained or early-stopped on)
    rest -> k folds; member k trains on the other folds, early-stops on fold k (val Spearman)
    active-learning rows (provenance != "random", search.active): train parts only, every fold
    ensemble prediction = mean of the members' predicted costs; metrics on the test split
    baselines: fitted on each member's train part, test predictions averaged the same way

Checkpoint directory (no pickles):
    ensemble.json          params, model config, per-member target scaler, template meta
                           (layers, options, feature order, graph/bank fingerprints), metrics
    template.safetensors   the shared DAG tensors and the option table (see predictor.dataset)
    member-<k>.safetensors each member's weights (incl. feature standardisation buffers)
    predictions.parquet    config_id, split (test / val), fold, fid, avg_bits, cost, pred
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from core.progress import progress_bar

from predictor import baselines as bl
from sampling.paired import LABEL_METRICS
from predictor.dataset import ConfigSet, GraphTemplate, TargetScaler, configs_from_cache, split_with_provenance
from predictor.losses import RANK_LOSSES, total_loss
from predictor.metrics import all_metrics
from predictor.model import CONVS, DIRECTIONS, ModelConfig, SensitivityGNN, count_parameters
from core.errors import QsensError
from core.params import read_section, reject_unknown, defaults_from
from core.jsonio import write_json

FORMAT_VERSION = 1


@dataclass
@defaults_from("train")
class TrainParams:
    """The `train:` section of params.yaml."""

    conv: str  # gatv2 | gin | transformer
    layers: int  # message-passing layers (hops)
    hidden: int
    heads: int
    dropout: float
    direction: str  # forward | backward | both
    node_emb: int  # node-identity embedding size (0: off)
    folds: int
    epochs: int
    patience: int  # epochs without a better val score before stopping
    batch_size: int  # configs per step
    lr: float
    weight_decay: float
    rank_loss: str  # pairwise | softrank | lambdarank | none
    rank_weight: float
    hop_weight: float  # deep supervision of the hop readouts
    target: str  # fid | reward (−FID − lambda_bits·avg_bits, learnt as its negation)
    lambda_bits: float  # used when target = reward
    target_transform: str  # none | log
    test_fraction: float
    train_fraction: float  # learning curves: use this share of each fold's train configs
    seed: int
    threads: int  # 1 is as fast on these small kernels and robust to a shared CPU
    baselines: list[str]
    probe: bool  # propagation readout on the probe's feature shifts (predictor.probe)
    label: str  # the cache column learnt: fid (vs real) or a paired score (sampling.paired)
    label_hifi: str | None  # multi-fidelity: this label where measured at >= hifi_min_images
    hifi_min_images: int  # (sample.hifi_configs), the cheap `label` calibrated to it elsewhere

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> "TrainParams":
        """The `train:` section as read from params.yaml -> validated `TrainParams`.

        Raises QsensError on an unknown key or a value `validate` rejects.
        """
        d = dict(d or {})
        reject_unknown(TrainParams, d, "train")
        p = TrainParams(**d)
        p.validate()
        return p

    def validate(self) -> None:
        """Check every field's range and choices; raises QsensError naming the first bad `train.` key."""
        checks = [(self.conv in CONVS, f"train.conv must be one of {CONVS}"),
                  (self.direction in DIRECTIONS, f"train.direction must be one of {DIRECTIONS}"),
                  (self.rank_loss in RANK_LOSSES, f"train.rank_loss must be one of {RANK_LOSSES}"),
                  (self.target in ("fid", "reward"), "train.target must be fid or reward"),
                  (self.label in LABEL_METRICS, f"train.label must be one of {LABEL_METRICS}"),
                  (self.label_hifi is None or self.label_hifi in LABEL_METRICS,
                   f"train.label_hifi must be null or one of {LABEL_METRICS}"),
                  (self.target_transform in ("none", "log"), "train.target_transform must be none or log"),
                  (self.folds >= 2, "train.folds must be >= 2"),
                  (self.hidden % self.heads == 0, "train.hidden must be divisible by train.heads"),
                  (0 < self.train_fraction <= 1, "train.train_fraction must be in (0, 1]"),
                  (all(b in bl.BASELINES for b in self.baselines),
                   f"train.baselines must be among {bl.BASELINES}")]
        for ok, msg in checks:
            if not ok:
                raise QsensError(msg)

    def model_config(self, template: GraphTemplate) -> ModelConfig:
        """The `ModelConfig` of a member for this template (probe dims set only when `probe` is on)."""
        return ModelConfig.for_features(template.feature_names, template.num_nodes, conv=self.conv,
                                        layers=self.layers, hidden=self.hidden, heads=self.heads,
                                        dropout=self.dropout, direction=self.direction,
                                        node_emb=self.node_emb,
                                        probe_dim=template.probe_dim if self.probe else 0,
                                        probe_layers=template.num_layers if self.probe else 0)

    @property
    def needs_probe(self) -> bool:
        """The propagation readout or a probe baseline is asked for: a probe file must be loaded."""
        return self.probe or any(b in bl.PROBE_BASELINES for b in self.baselines)

    def scaler(self) -> TargetScaler:
        """An unfitted `TargetScaler`: `lambda_bits` applies only with `target: reward`."""
        lam = self.lambda_bits if self.target == "reward" else 0.0
        return TargetScaler(lambda_bits=lam, transform=self.target_transform)


def load_train_params(path: str | Path = "params.yaml") -> TrainParams:
    """The validated `train:` section of a params file (QsensError when it is malformed)."""
    return TrainParams.from_dict(read_section(path, "train"))


# ---------------------------------------------------------------------------------------------
# one member


@dataclass
class Member:
    """One trained ensemble member (the model of one fold): its scaler, best epoch and validation Spearman."""

    model: SensitivityGNN
    scaler: TargetScaler
    best_epoch: int
    epochs_run: int
    val_spearman: float
    seconds: float


def _predict_z(model: SensitivityGNN, x: torch.Tensor, edge_index: torch.Tensor,
               rows: torch.Tensor | None = None, chunk: int = 128) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            out.append(model.forward_dense(x[s:s + chunk], edge_index,
                                           None if rows is None else rows[s:s + chunk])[0])
    return torch.cat(out).numpy() if out else np.zeros(0)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else -1.0


def train_member(template: GraphTemplate, x_all: torch.Tensor, data: ConfigSet, train_idx: np.ndarray,
                 val_idx: np.ndarray, params: TrainParams, seed: int, bar: Any | None = None,
                 rows_all: torch.Tensor | None = None, init: "MemberInit | None" = None) -> Member:
    """Train one GNN on `train_idx`, early-stopping on `val_idx` (Spearman, then MSE).

    `init` (warm start): start from these weights, buffers and target scaler instead of fitting
    them on `train_idx`, so epoch 0 is exactly the previous member (its feature standardisation
    and target scale included); the epochs then fine-tune it."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if init is None:
        scaler = params.scaler().fit(data.fid[train_idx], data.avg_bits[train_idx])
    else:
        scaler = TargetScaler.from_dict(init.scaler.to_dict())
    y_all = torch.tensor(scaler.encode(data.fid, data.avg_bits), dtype=torch.float32)
    model = SensitivityGNN(params.model_config(template))
    if init is None:
        model.set_feature_stats(x_all[torch.as_tensor(train_idx)])
        if rows_all is not None:
            model.set_probe(template.probe_offset, template.weight_index, rows_all[torch.as_tensor(train_idx)])
    else:
        try:
            model.load_state_dict(init.state)
        except RuntimeError as exc:
            raise QsensError("warm start: the previous member does not fit these train params "
                             f"(another model size/conv/probe?): {str(exc).splitlines()[0]}") from None
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / params.batch_size))
    total = params.epochs * steps_per_epoch
    warm = min(5 * steps_per_epoch, total // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ei = template.edge_index
    y_val = y_all[torch.as_tensor(val_idx)].numpy()
    best = (-2.0, math.inf)
    best_state, best_epoch, epoch = copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        perm = rng.permutation(train_idx)
        for s in range(0, len(perm), params.batch_size):
            idx = torch.as_tensor(perm[s:s + params.batch_size])
            if len(idx) < 2:
                continue
            pred, hop = model.forward_dense(x_all[idx], ei, _take(rows_all, idx))
            loss, _ = total_loss(pred, hop, y_all[idx], params.rank_loss, params.rank_weight, params.hop_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
        z = _predict_z(model, x_all[torch.as_tensor(val_idx)], ei, _take(rows_all, val_idx))
        score = (_spearman(z, y_val), float(((z - y_val) ** 2).mean()))
        if score[0] > best[0] + 1e-4 or (abs(score[0] - best[0]) <= 1e-4 and score[1] < best[1]):
            best, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val_srcc=f"{score[0]:.3f}", best=f"{best[0]:.3f}@{best_epoch}")
        if epoch - best_epoch >= params.patience:
            break
    if bar is not None and epoch < params.epochs:
        bar.update(params.epochs - epoch)
    model.load_state_dict(best_state)
    model.eval()
    return Member(model, scaler, best_epoch, epoch, best[0], time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# the ensemble


@dataclass
class MemberInit:
    """A warm start for one member: its state dict (weights + buffers) and target scaler."""

    state: dict[str, torch.Tensor]
    scaler: TargetScaler


@dataclass
class TrainResult:
    """What `train_ensemble` returns: the members, template, params, metrics and per-config predictions."""

    members: list[Member]
    template: GraphTemplate
    params: TrainParams
    metrics: dict[str, Any]
    predictions: pd.DataFrame  # config_id, split, fold, fid, avg_bits, cost, pred
    seconds: float


def _take(rows: torch.Tensor | None, idx: np.ndarray | torch.Tensor) -> torch.Tensor | None:
    return None if rows is None else rows[torch.as_tensor(idx)]


def _subsample(idx: np.ndarray, fraction: float, ids: list[str], seed: int) -> np.ndarray:
    if fraction >= 1.0:
        return idx
    from predictor.dataset import _unit_hash

    keep = max(4, int(round(fraction * len(idx))))
    order = sorted(idx.tolist(), key=lambda i: _unit_hash(seed, "subsample", ids[i]))
    return np.sort(np.array(order[:keep], dtype=np.int64))


def train_ensemble(template: GraphTemplate, data: ConfigSet, params: TrainParams,
                   progress: bool = True, init: list[MemberInit] | None = None) -> TrainResult:
    """Train `params.folds` members (see the module docstring) -> TrainResult.

    Rows whose `data.provenance` is not "random" (active learning picks) go into every member's
    train part and never into the test split or a val part (`split_with_provenance`), so the
    test metrics are on random configs only. `init`: one MemberInit per fold (warm start, see
    `train_member`), or None to initialise from `params.seed`. Raises QsensError for too few
    configs, a missing probe, or an `init` of the wrong length/shape."""
    params.validate()
    start = time.perf_counter()
    torch.set_num_threads(max(1, params.threads))
    if init is not None and len(init) != params.folds:
        raise QsensError(f"warm start: {len(init)} previous member(s) for {params.folds} folds")
    test_idx, folds = split_with_provenance(data, params.test_fraction, params.folds, params.seed)
    if len(test_idx) < 2:
        raise QsensError(f"test split has {len(test_idx)} configs: raise train.test_fraction or add configs")
    if params.needs_probe and template.probe_shift is None:
        raise QsensError("train.probe / the probe baselines need a probe: run `qsens predictor probe` "
                         "(the `probe` stage), or set train.probe: false and drop them from train.baselines")
    x_all = template.node_features(data.opt_idx)  # (B, N, F)
    rows_all = template.probe_rows(data.opt_idx) if params.probe else None  # (B, L, D)
    cost = params.scaler().cost(data.fid, data.avg_bits)
    summed = template.summed_error(data.opt_idx)
    mean_term = template.linearised_mean_term(data.opt_idx) if template.probe_shift is not None else None
    members: list[Member] = []
    test_preds, base_preds = [], {b: [] for b in params.baselines}
    fold_rows, pred_rows = [], []
    bar = progress_bar(total=params.folds * params.epochs, desc="train predictor", unit="epoch", disable=not progress)
    for k, (train_idx, val_idx) in enumerate(folds):
        train_idx = _subsample(train_idx, params.train_fraction, data.config_ids, params.seed + k)
        bar.set_description(f"train predictor (fold {k + 1}/{params.folds})")
        m = train_member(template, x_all, data, train_idx, val_idx, params, seed=params.seed * 1000 + k, bar=bar,
                         rows_all=rows_all, init=None if init is None else init[k])
        members.append(m)
        z_test = _predict_z(m.model, x_all[torch.as_tensor(test_idx)], template.edge_index, _take(rows_all, test_idx))
        z_val = _predict_z(m.model, x_all[torch.as_tensor(val_idx)], template.edge_index, _take(rows_all, val_idx))
        p_test, p_val = m.scaler.decode_cost(z_test), m.scaler.decode_cost(z_val)
        test_preds.append(p_test)
        fm = all_metrics(cost[test_idx], p_test)
        fold_rows.append({"fold": k, **fm, "val_spearman": all_metrics(cost[val_idx], p_val)["spearman"],
                          "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
                          "best_epoch": m.best_epoch, "epochs": m.epochs_run, "seconds": round(m.seconds, 2)})
        pred_rows += [{"config_id": data.config_ids[i], "split": "val", "fold": k, "pred": float(p)}
                      for i, p in zip(val_idx, p_val)]
        # baselines on the same train part, same target
        y_train = m.scaler.encode(data.fid[train_idx], data.avg_bits[train_idx])
        for b in params.baselines:
            feats = bl.features(b, data.opt_idx, len(template.options), summed, mean_term)
            z = bl.fit_predict(b, feats[train_idx], y_train, feats[test_idx], seed=params.seed + k)
            base_preds[b].append(m.scaler.decode_cost(z))
    bar.close()
    ens = np.mean(test_preds, axis=0)
    pred_rows += [{"config_id": data.config_ids[i], "split": "test", "fold": -1, "pred": float(p)}
                  for i, p in zip(test_idx, ens)]
    preds = pd.DataFrame(pred_rows)
    info = pd.DataFrame({"config_id": data.config_ids, "fid": data.fid, "avg_bits": data.avg_bits, "cost": cost})
    preds = preds.merge(info, on="config_id", how="left")[
        ["config_id", "split", "fold", "fid", "avg_bits", "cost", "pred"]]
    seconds = time.perf_counter() - start
    metrics = {
        "ensemble": all_metrics(cost[test_idx], ens),
        "folds": fold_rows,
        "baselines": {b: all_metrics(cost[test_idx], np.mean(v, axis=0)) for b, v in base_preds.items()},
        "info": {"n_configs": len(data), "n_test": int(len(test_idx)),
                 "n_active": int((~data.is_random()).sum()),
                 "n_train_per_fold": int(np.mean([r["n_train"] for r in fold_rows])),
                 "target": params.target, "cost": "fid" if params.scaler().lambda_bits == 0
                 else f"fid + {params.lambda_bits} * avg_bits",
                 "train_seconds": round(seconds, 1), "parameters": count_parameters(members[0].model),
                 "conv": params.conv, "layers": params.layers, "hidden": params.hidden,
                 "direction": params.direction, "rank_loss": params.rank_loss,
                 "rank_weight": params.rank_weight, "train_fraction": params.train_fraction,
                 "probe": params.probe},
    }
    if init is not None:
        metrics["info"]["warm_start"] = True
    return TrainResult(members, template, params, metrics, preds, seconds)


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_result(result: TrainResult, out_dir: str | Path) -> Path:
    """Write a trained ensemble into `out_dir`: template.safetensors, member-K.safetensors,
    ensemble.json and predictions.parquet (old member files removed first); returns `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("member-*.safetensors"):
        old.unlink()
    save_file({k: v.contiguous() for k, v in result.template.tensors().items()}, str(out / "template.safetensors"))
    for k, m in enumerate(result.members):
        state = {name: t.detach().contiguous() for name, t in m.model.state_dict().items()}
        save_file(state, str(out / f"member-{k}.safetensors"), metadata={"format": str(FORMAT_VERSION)})
    meta = {
        "format": "qsens-predictor", "format_version": FORMAT_VERSION,
        "model_config": result.members[0].model.cfg.to_dict(),
        "params": asdict(result.params),
        "members": [{"file": f"member-{k}.safetensors", "scaler": m.scaler.to_dict(),
                     "best_epoch": m.best_epoch, "val_spearman": m.val_spearman}
                    for k, m in enumerate(result.members)],
        "template": result.template.meta(),
        "metrics": {"ensemble": result.metrics["ensemble"], "baselines": result.metrics["baselines"]},
        "train_seconds": round(result.seconds, 1),
    }
    write_json(out / "ensemble.json", meta, indent=1)
    result.predictions.to_parquet(out / "predictions.parquet", index=False)
    return out


def write_metrics(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write metrics as JSON, floats rounded to 5 decimals and non-finite ones as null; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, float):
            return round(v, 5) if math.isfinite(v) else None
        return v

    write_json(path, clean(metrics))
    return path


def load_training_data(cache: str | Path, graph: str | Path, bank: str | Path, model: str | None = None,
                       probe: str | Path | None = None, label: str = "fid", label_hifi: str | None = None,
                       hifi_min_images: int = 500) -> tuple[GraphTemplate, ConfigSet]:
    """`probe`: a probe file (predictor.probe) to carry in the template, or None."""
    from graphs.io import read_graph
    from predictor.probe import Probe
    from quant.bank import Bank
    from sampling.cache import read_cache

    b = Bank.load(bank)
    g = read_graph(graph)
    template = GraphTemplate.build(g, b, model=model or b.model,
                                   probe=None if probe is None else Probe.load(probe))
    df = read_cache(Path(cache), ok_only=True)
    data = configs_from_cache(df, template, model=None, label=label, label_hifi=label_hifi,
                              hifi_min_images=hifi_min_images)
    return template, data
