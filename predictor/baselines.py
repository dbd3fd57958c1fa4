"""Baseline predictors, trained and scored on exactly the GNN's splits (same train configs per
fold, same standardised target, test predictions averaged over the folds like the ensemble).

- `summed_error`: Σ_l n_l·MSE_l of the config (the cache's quantized_error), mapped to the
  target by a 1-D least-squares line fitted on the fold's train configs (the rank metrics do not
  depend on that line; MAE does).
- `ridge`: ridge regression on one-hot options (L × O columns); alpha by GCV on the train part.
- `gbt`: scikit-learn GradientBoostingRegressor on one-hot options.
- `mlp`: scikit-learn MLPRegressor on one-hot options (early stopping on a 15 % holdout).
- `probe`: the probe's linearised FID mean term log ‖offset + Σ_l shift_l‖² (predictor.probe), no
  training beyond the 1-D line: what the GNN's propagation readout starts from.
- `gbt_probe`: gradient-boosted trees on one-hot options plus that term: a strong non-graph
  learner with the same measured information as the GNN.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

ONE_HOT_BASELINES = ("summed_error", "ridge", "gbt", "mlp")
PROBE_BASELINES = ("probe", "gbt_probe")
BASELINES = ONE_HOT_BASELINES + PROBE_BASELINES


def one_hot(opt_idx: torch.Tensor, n_options: int) -> np.ndarray:
    """(B, L) option indices -> (B, L·O) one-hot."""
    b, l = opt_idx.shape
    out = np.zeros((b, l * n_options), dtype=np.float32)
    cols = (np.arange(l) * n_options)[None, :] + opt_idx.numpy()
    np.put_along_axis(out, cols, 1.0, axis=1)
    return out


def fit_predict(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                seed: int = 0) -> np.ndarray:
    """Fit baseline `name` on (x_train, y_train); return its predictions for x_test."""
    if name in ("summed_error", "probe"):
        a = np.vstack([x_train[:, 0], np.ones(len(x_train))]).T
        coef, *_ = np.linalg.lstsq(a, y_train, rcond=None)
        return coef[0] * x_test[:, 0] + coef[1]
    if name == "ridge":
        from sklearn.linear_model import RidgeCV

        return RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x_train, y_train).predict(x_test)
    if name in ("gbt", "gbt_probe"):
        from sklearn.ensemble import GradientBoostingRegressor

        m = GradientBoostingRegressor(n_estimators=300, learning_rate=0.05, max_depth=3, subsample=0.8,
                                      random_state=seed)
        return m.fit(x_train, y_train).predict(x_test)
    if name == "mlp":
        from sklearn.neural_network import MLPRegressor

        m = MLPRegressor(hidden_layer_sizes=(64, 64), alpha=1e-2, learning_rate_init=1e-3, max_iter=2000,
                         early_stopping=True, validation_fraction=0.15, n_iter_no_change=50,
                         random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return m.fit(x_train, y_train).predict(x_test)
    raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")


def features(name: str, opt_idx: torch.Tensor, n_options: int, summed_error: np.ndarray,
             mean_term: np.ndarray | None = None) -> np.ndarray:
    """The baseline's input columns; `mean_term` (B,) is the probe's linearised mean term."""
    if name == "summed_error":
        return summed_error.reshape(-1, 1)
    if name in PROBE_BASELINES:
        if mean_term is None:
            raise ValueError(f"baseline {name!r} needs the probe's mean term")
        log_term = np.log(np.maximum(mean_term, 1e-12)).reshape(-1, 1)
        if name == "probe":
            return log_term
        return np.hstack([log_term, one_hot(opt_idx, n_options)])
    return one_hot(opt_idx, n_options)
