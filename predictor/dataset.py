"""quant_cache rows × the model's DAG -> tensors the GNN trains on.

Every config of a model shares one DAG, so a config is fully described by one option index per
layer. `GraphTemplate` holds what is shared: the static node features (`graphs.pyg`), the edges,
and an option table `(L, O, C)` with the per-config feature rows of every (layer, option) read
once from the bank. Featurising a batch of configs is then a gather:

    opt_idx (B, L) long  ->  x (B, N, F) = static features, with the weight rows' config columns
                               replaced by option_table[l, opt_idx[b, l]]

The template is self-contained (tensors + a small JSON dict), so a saved predictor needs neither
the bank nor the graph file to predict. With a probe (predictor.probe) it also holds each
(layer, option)'s measured feature shift `(L, O, D)`, gathered per config the same way:
`probe_rows(opt_idx) -> (B, L, D)`.

Targets. The model learns a *cost* (lower = better) `c = fid + lambda_bits * avg_bits`
(`lambda_bits = 0`: plain FID; > 0: Qua2SeDiMo's −FID − λ·avg_bits, negated), optionally
through `log`, standardised with the mean/std of the training split only.

Splits. `split_ids` is deterministic in (config ids, seed): a config goes to the TEST split when
`hash(seed, config_id)` falls in the lowest `test_fraction`; the rest is ordered by a second
hash and dealt round-robin into `folds` validation parts (fold k trains on the others).
`split_with_provenance` splits the random rows so and adds every other row (active learning
picks, `ConfigSet.provenance`) to every fold's train part only: the held-out metrics stay those
of random configs, whatever the active rounds added.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import networkx as nx
import numpy as np
import torch

from graphs.features import CONFIG_COLUMNS, ConfigFeaturizer, config_options
from graphs.pyg import CONFIG_SLICE, FEATURE_NAMES, STATIC_COLUMNS, to_pyg
from core.errors import QsensError
from quant.options import FP16, parse_option
from core.provenance import bank_digest


RANDOM = "random"  # sampling.cache.DEFAULT_PROVENANCE: rows from the random config sampler


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def graph_fingerprint(graph: nx.DiGraph) -> str:
    """Hash of the DAG's structure (node ids, kinds, ops, edges): 16 hex digits."""
    nodes = [(n, d.get("kind"), d.get("op")) for n, d in graph.nodes(data=True)]
    return _sha(json.dumps([nodes, sorted(map(list, graph.edges))]))[:16]


@dataclass
class GraphTemplate:
    """What every config of one model shares (see module docstring)."""

    node_names: list[str]
    layer_names: list[str]
    options: list[str]  # option index -> option string; index 0 is fp16
    static_x: torch.Tensor  # (N, F) float, config columns at fp16
    edge_index: torch.Tensor  # (2, E) long, edges u -> v in the DAG's direction
    weight_index: torch.Tensor  # (L,) long, node row of each layer
    option_table: torch.Tensor  # (L, O, C) float, config feature rows
    stored_bits: torch.Tensor  # (L, O) float64, payload + overhead bits (accounting)
    n_weights: torch.Tensor  # (L,) float64
    option_error: torch.Tensor  # (L, O) float64, bank MSE per weight (0 for fp16)
    model: str = ""
    graph_fingerprint: str = ""
    bank_fingerprint: str = ""
    probe_shift: torch.Tensor | None = None  # (L, O, D) float32, zero rows for fp16
    probe_offset: torch.Tensor | None = None  # (D,) float32, μ_fp − μ_ref

    # ------------------------------------------------------------------ build
    @staticmethod
    def build(graph: nx.DiGraph, bank: Any, model: str | None = None, probe: Any = None) -> "GraphTemplate":
        """`probe`: a predictor.probe.Probe measured on this bank, or None (no propagation readout)."""
        data = to_pyg(graph)
        bank_layers = list(bank.layers)
        missing = [n for n in data.layer_names if n not in bank.layers]
        extra = [n for n in bank_layers if n not in set(data.layer_names)]
        if missing or extra:
            raise QsensError(
                "graph and bank disagree on the layers: "
                + (f"{len(missing)} graph layer(s) not in the bank (first: {missing[:1]})" if missing else "")
                + ("; " if missing and extra else "")
                + (f"{len(extra)} bank layer(s) not in the graph (first: {extra[:1]})" if extra else "")
                + ". Rebuild the graph and the bank from the same model.")
        options = [FP16] + [o for o in bank.options if o != FP16]
        feat = ConfigFeaturizer(data.layer_names, bank)
        table = torch.tensor([[feat.row(l, o) for o in options] for l in data.layer_names],
                             dtype=torch.float32)  # (L, O, C)
        bits = torch.tensor([[float(bank.quantized_bits(l, o)) for o in options] for l in data.layer_names],
                            dtype=torch.float64)
        errs = torch.tensor([[float(bank.error(l, o)) for o in options] for l in data.layer_names],
                            dtype=torch.float64)
        nw = torch.tensor([float(bank.layers[l].n_weights) for l in data.layer_names], dtype=torch.float64)
        shift = offset = None
        if probe is not None:
            if str(probe.bank_fingerprint) != bank_digest(bank):
                raise QsensError(f"the probe was measured on another bank (bank digest {probe.bank_fingerprint} "
                                 f"vs {bank_digest(bank)}); re-run `qsens predictor probe`")
            shift = torch.from_numpy(probe.rows(data.layer_names, options))  # (L, O, D)
            offset = torch.from_numpy(np.asarray(probe.offset, dtype=np.float32))
        return GraphTemplate(list(data.node_names), list(data.layer_names), options, data.x.clone(),
                             data.edge_index.clone(), data.weight_index.clone(), table, bits, nw, errs,
                             model=model or getattr(bank, "model", ""),
                             graph_fingerprint=graph_fingerprint(graph),
                             bank_fingerprint=bank_digest(bank),
                             probe_shift=shift, probe_offset=offset)

    # ------------------------------------------------------------------ sizes
    @property
    def num_nodes(self) -> int:
        """N: the number of nodes of the DAG (rows of `static_x`)."""
        return int(self.static_x.shape[0])

    @property
    def num_layers(self) -> int:
        """L: the number of quantizable layers (weight nodes)."""
        return len(self.layer_names)

    @property
    def feature_names(self) -> list[str]:
        """The F node-feature column names (`graphs.pyg.FEATURE_NAMES`), in column order."""
        return list(FEATURE_NAMES)

    # ------------------------------------------------------------------ configs
    def encode(self, configs: Iterable[Any]) -> torch.Tensor:
        """Configs (QuantConfig or {layer: option}) -> option indices (B, L) long.

        Raises QsensError naming unknown layers/options (missing layers are fp16)."""
        pos = {o: i for i, o in enumerate(self.options)}
        known = set(self.layer_names)
        rows = []
        for k, config in enumerate(configs):
            opts = config_options(config)
            unknown = [n for n in opts if n not in known]
            bad = [f"{n}={o!r}" for n, o in opts.items() if o not in pos]
            if unknown or bad:
                raise QsensError(f"config #{k}: " + "; ".join(
                    ([f"unknown layer(s) {unknown[:3]}"] if unknown else [])
                    + ([f"option(s) the predictor was not trained on {bad[:3]} "
                        f"(known: {', '.join(self.options)})"] if bad else [])))
            rows.append([pos[opts.get(n, FP16)] for n in self.layer_names])
        return torch.tensor(rows, dtype=torch.long).reshape(-1, self.num_layers)

    def decode(self, opt_idx: torch.Tensor) -> list[dict[str, str]]:
        """`(B, L)` option indices -> B configs `{layer: option}`, fp16 layers left out (inverse of `encode`)."""
        return [{n: self.options[int(i)] for n, i in zip(self.layer_names, row) if int(i) != 0}
                for row in opt_idx]

    def node_features(self, opt_idx: torch.Tensor) -> torch.Tensor:
        """(B, L) option indices -> (B, N, F) node features."""
        b = opt_idx.shape[0]
        x = self.static_x.unsqueeze(0).repeat(b, 1, 1)  # (B, N, F)
        rows = self.option_table[torch.arange(self.num_layers).unsqueeze(0), opt_idx]  # (B, L, C)
        x[:, self.weight_index, CONFIG_SLICE] = rows
        return x

    @property
    def probe_dim(self) -> int:
        """D: the probe's feature dimension, 0 without a probe."""
        return 0 if self.probe_shift is None else int(self.probe_shift.shape[2])

    def probe_rows(self, opt_idx: torch.Tensor) -> torch.Tensor | None:
        """(B, L) option indices -> (B, L, D) feature shifts of each config's layers (None: no probe)."""
        if self.probe_shift is None:
            return None
        return self.probe_shift[torch.arange(self.num_layers).unsqueeze(0), opt_idx]

    def linearised_mean_term(self, opt_idx: torch.Tensor) -> np.ndarray:
        """(B, L) -> (B,) ‖offset + Σ_l shift_l‖²: the zero-training probe estimate (predictor.probe)."""
        if self.probe_shift is None:
            raise QsensError("no probe in this predictor template: run `qsens predictor probe` first")
        total = self.probe_offset.double() + self.probe_rows(opt_idx).double().sum(1)  # (B, D)
        return total.pow(2).sum(1).numpy()

    def avg_bits(self, opt_idx: torch.Tensor) -> np.ndarray:
        """(B, L) -> (B,) average stored bits per weight, overhead included (as `quant`)."""
        bits = self.stored_bits[torch.arange(self.num_layers).unsqueeze(0), opt_idx].sum(1)
        return (bits / self.n_weights.sum()).numpy()

    def summed_error(self, opt_idx: torch.Tensor) -> np.ndarray:
        """(B, L) -> (B,) Σ_l n_l · MSE_l: the cache's `quantized_error`."""
        err = self.option_error[torch.arange(self.num_layers).unsqueeze(0), opt_idx]
        return (err * self.n_weights).sum(1).numpy()

    # ------------------------------------------------------------------ save / load
    def tensors(self) -> dict[str, torch.Tensor]:
        """The template's tensors keyed `template.<field>` for a safetensors file (probe ones if present)."""
        out = {"template.static_x": self.static_x, "template.edge_index": self.edge_index,
               "template.weight_index": self.weight_index, "template.option_table": self.option_table,
               "template.stored_bits": self.stored_bits, "template.n_weights": self.n_weights,
               "template.option_error": self.option_error}
        if self.probe_shift is not None:
            out["template.probe_shift"] = self.probe_shift
            out["template.probe_offset"] = self.probe_offset
        return out

    def meta(self) -> dict[str, Any]:
        """The template's JSON-able part (names, options, column layout, fingerprints); see `from_saved`."""
        return {"model": self.model, "node_names": self.node_names, "layer_names": self.layer_names,
                "options": self.options, "feature_names": list(FEATURE_NAMES),
                "static_columns": list(STATIC_COLUMNS), "config_columns": list(CONFIG_COLUMNS),
                "graph_fingerprint": self.graph_fingerprint, "bank_fingerprint": self.bank_fingerprint}

    @staticmethod
    def from_saved(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "GraphTemplate":
        """Rebuild a template from `meta()` and `tensors()` as saved with a predictor.

        Raises QsensError when the predictor was trained with another node-feature layout than this
        qsens's `graphs.pyg` (the fix is to retrain it).
        """
        if list(meta["feature_names"]) != list(FEATURE_NAMES):
            raise QsensError("the predictor was trained with another node feature layout than this "
                             "qsens's graphs.pyg; retrain it (`qsens predictor train`)")
        t = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("template.")}
        return GraphTemplate(list(meta["node_names"]), list(meta["layer_names"]), list(meta["options"]),
                             t["static_x"], t["edge_index"], t["weight_index"], t["option_table"],
                             t["stored_bits"], t["n_weights"], t["option_error"], meta.get("model", ""),
                             meta.get("graph_fingerprint", ""), meta.get("bank_fingerprint", ""),
                             t.get("probe_shift"), t.get("probe_offset"))


# ---------------------------------------------------------------------------------------------
# the cache as a dataset


@dataclass
class ConfigSet:
    """Scored configs of one model, aligned with a template."""

    config_ids: list[str]
    opt_idx: torch.Tensor  # (B, L) long
    fid: np.ndarray  # (B,)
    avg_bits: np.ndarray  # (B,)
    # (B,) str: the cache's `provenance` ("random" | "active-r{round}"); None = all random.
    # Only random rows enter the test split and the val parts (predictor.train).
    provenance: np.ndarray | None = None
    # what `fid` holds: {"label", "label_hifi", ...the multi-fidelity fit (rows_hifi, rows_cheap, a, b, r)}
    label_info: dict | None = None

    def __len__(self) -> int:
        return len(self.config_ids)

    def is_random(self) -> np.ndarray:
        """(B,) bool: rows from the random sampler (all of them when `provenance` is None)."""
        if self.provenance is None:
            return np.ones(len(self), dtype=bool)
        return np.asarray(self.provenance) == RANDOM

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ConfigSet":
        """The rows at positions `idx` (ids, option indices, FID, avg bits and provenance alike)."""
        idx = np.asarray(idx, dtype=np.int64)
        return ConfigSet([self.config_ids[i] for i in idx], self.opt_idx[torch.as_tensor(idx)],
                         self.fid[idx], self.avg_bits[idx],
                         None if self.provenance is None else np.asarray(self.provenance)[idx])


def multi_fidelity_target(df: Any, label: str, label_hifi: str, min_images: int) -> tuple[np.ndarray, dict]:
    """One target per row from two fidelities: `label_hifi` (e.g. FID vs real) where the row's
    `n_images` >= `min_images`, else the cheap `label` mapped onto its scale by the least-squares
    line log(hifi) = a + b·log(cheap) fitted on the rows that have both (a monotone calibration,
    so the cheap label's ranking is kept and its scale matches the expensive one's).

    Returns (target (N,), info {rows_hifi, rows_cheap, a, b, r}). Raises QsensError with fewer
    than 3 rows carrying both labels (positive values)."""
    cheap = df[label].to_numpy(dtype=float)
    hi = df[label_hifi].to_numpy(dtype=float)
    is_hi = (df["n_images"].to_numpy(dtype=float) >= min_images) & np.isfinite(hi) & (hi > 0)
    usable = np.isfinite(cheap) & (cheap > 0)
    both = is_hi & usable
    if both.sum() < 3:
        counts = sorted({int(n) for n in df["n_images"].dropna()})
        raise QsensError(f"multi-fidelity labels: {int(both.sum())} row(s) have both {label} and {label_hifi} at "
                         f">= {min_images} images (the cache's rows have {counts} images); need 3: lower "
                         "train.hifi_min_images, or raise sample.hifi_configs / sample.hifi_images")
    x, y = np.log(cheap[both]), np.log(hi[both])
    b, a = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(y.mean()))
    mapped = np.exp(a + b * np.log(np.where(usable, cheap, np.nan)))
    target = np.where(is_hi, hi, mapped)
    r = float(np.corrcoef(x, y)[0, 1]) if both.sum() > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
    return target, {"rows_hifi": int(is_hi.sum()), "rows_cheap": int((~is_hi & usable).sum()),
                    "a": float(a), "b": float(b), "r": r}


def configs_from_cache(df: Any, template: GraphTemplate, model: str | None = None,
                       label: str = "fid", label_hifi: str | None = None, hifi_min_images: int = 500) -> ConfigSet:
    """Rows of a quant_cache DataFrame (status ok, weight-only) -> ConfigSet whose `fid` holds the
    `label` column (FID vs real, or a paired score of `sampling.paired`: `train.label`), or with
    `label_hifi` the two-fidelity target of `multi_fidelity_target`.

    Rows with activation quantization, another model, or a non-finite label are dropped; a cache
    without the label column is one QsensError."""
    if label_hifi is not None and label_hifi == label:
        raise QsensError(f"train.label_hifi {label_hifi!r} is train.label itself: name the cheap label in train.label")
    for name in (label, label_hifi):
        if name is not None and (name not in df or not np.isfinite(df[name].to_numpy(dtype=float)).any()):
            why = ("no LPIPS network was given when the configs were scored" if name == "lpips" else
                   "score the configs with `qsens sample --paired` to record paired scores")
            raise QsensError(f"the quant_cache has no {name!r} values (train.label/label_hifi): {why}")
    if model is not None and "model" in df:
        df = df[df["model"] == model]
    if "status" in df:
        df = df[df["status"] == "ok"]
    if "act_bits" in df:
        df = df[df["act_bits"].isna()]
    df = df.copy()
    info: dict = {"label": label}
    if label_hifi is not None:
        df["_target"], fit = multi_fidelity_target(df, label, label_hifi, hifi_min_images)
        info.update(label_hifi=label_hifi, hifi_min_images=int(hifi_min_images), **fit)
        label = "_target"
    df = df[np.isfinite(df[label].to_numpy(dtype=float))]
    if len(df) == 0:
        raise QsensError(f"no usable rows in the quant_cache (need status ok, weight-only, finite {label})")
    configs = [json.loads(s) for s in df["options"]]
    opt_idx = template.encode(configs)
    avg_bits = template.avg_bits(opt_idx)
    if "provenance" in df:  # null (a cache from before the column) = the random sampler
        provenance = np.array([RANDOM if p is None or p != p else str(p) for p in df["provenance"]], dtype=object)
    else:
        provenance = np.full(len(df), RANDOM, dtype=object)
    return ConfigSet(list(df["config_id"]), opt_idx, df[label].to_numpy(dtype=float), avg_bits, provenance, info)


def _unit_hash(seed: int, salt: str, config_id: str) -> float:
    return int(_sha(f"{seed}:{salt}:{config_id}")[:15], 16) / 16 ** 15


def split_ids(config_ids: Sequence[str], test_fraction: float, folds: int, seed: int
              ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Deterministic split by config id -> (test indices, [(train indices, val indices)] × folds).

    The test split never enters any fold; each fold's val part is disjoint from its train part,
    and the val parts partition the non-test configs."""
    if not 0.0 <= test_fraction < 1.0:
        raise QsensError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if folds < 2:
        raise QsensError(f"folds must be >= 2, got {folds}")
    u = np.array([_unit_hash(seed, "test", c) for c in config_ids])
    n_test = int(round(test_fraction * len(config_ids)))
    order = np.argsort(u, kind="stable")
    test = np.sort(order[:n_test])
    rest = order[n_test:]
    v = np.array([_unit_hash(seed, "fold", config_ids[i]) for i in rest])
    rest = rest[np.argsort(v, kind="stable")]
    if len(rest) < 2 * folds:
        raise QsensError(f"only {len(rest)} non-test configs: too few for {folds} folds")
    parts = [np.sort(rest[k::folds]) for k in range(folds)]
    fold_splits = [(np.sort(np.concatenate([parts[j] for j in range(folds) if j != k])), parts[k])
                   for k in range(folds)]
    return test, fold_splits


def split_with_provenance(data: ConfigSet, test_fraction: float, folds: int, seed: int
                          ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """`split_ids` over the random rows of `data` only; every non-random row goes into every
    fold's train part, never into the test split or a val part. With only random rows this is
    `split_ids(data.config_ids, ...)` itself (same arrays)."""
    rnd = data.is_random()
    if rnd.all():
        return split_ids(data.config_ids, test_fraction, folds, seed)
    r_idx = np.flatnonzero(rnd)
    extra = np.flatnonzero(~rnd)
    test, fold_splits = split_ids([data.config_ids[i] for i in r_idx], test_fraction, folds, seed)
    return np.sort(r_idx[test]), [(np.sort(np.concatenate([r_idx[tr], extra])), np.sort(r_idx[va]))
                                  for tr, va in fold_splits]


@dataclass
class TargetScaler:
    """cost = fid + lambda_bits·avg_bits -> (optionally log) -> standardised."""

    lambda_bits: float = 0.0
    transform: str = "none"  # none | log
    mean: float = 0.0
    std: float = 1.0

    def cost(self, fid: np.ndarray, avg_bits: np.ndarray) -> np.ndarray:
        """Cost `c = fid + lambda_bits · avg_bits` (lower = better), elementwise over `(n,)` arrays."""
        return np.asarray(fid, dtype=float) + self.lambda_bits * np.asarray(avg_bits, dtype=float)

    def _fwd(self, c: np.ndarray) -> np.ndarray:
        if self.transform == "log":
            return np.log(np.maximum(c, 1e-6))
        return c

    def _inv(self, t: np.ndarray) -> np.ndarray:
        return np.exp(t) if self.transform == "log" else t

    def fit(self, fid: np.ndarray, avg_bits: np.ndarray) -> "TargetScaler":
        """Set mean/std from the (transformed) costs of the training split only; returns self."""
        t = self._fwd(self.cost(fid, avg_bits))
        self.mean, self.std = float(t.mean()), float(t.std() or 1.0)
        return self

    def encode(self, fid: np.ndarray, avg_bits: np.ndarray) -> np.ndarray:
        """Standardised target `z = (T(cost) − mean) / std`, T = identity or log (`transform`)."""
        return (self._fwd(self.cost(fid, avg_bits)) - self.mean) / self.std

    def decode_cost(self, z: np.ndarray) -> np.ndarray:
        """Inverse of `encode`: standardised predictions `z` -> costs."""
        return self._inv(np.asarray(z, dtype=float) * self.std + self.mean)

    def decode_fid(self, z: np.ndarray, avg_bits: np.ndarray) -> np.ndarray:
        """Standardised predictions `z` -> FID, subtracting the `lambda_bits · avg_bits` term again."""
        return self.decode_cost(z) - self.lambda_bits * np.asarray(avg_bits, dtype=float)

    def to_dict(self) -> dict[str, Any]:
        """The scaler as a JSON-able dict (saved per ensemble member)."""
        return {"lambda_bits": self.lambda_bits, "transform": self.transform, "mean": self.mean,
                "std": self.std}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TargetScaler":
        """Rebuild a scaler from `to_dict()`'s output."""
        return TargetScaler(float(d["lambda_bits"]), str(d["transform"]), float(d["mean"]), float(d["std"]))


def batch_edges(edge_index: torch.Tensor, num_nodes: int, copies: int) -> torch.Tensor:
    """(2, E) -> (2, copies·E): the disjoint union of `copies` copies (copy-major order, so the
    first b·E columns are the union of the first b copies)."""
    offsets = (torch.arange(copies, dtype=torch.long) * num_nodes).repeat_interleave(edge_index.shape[1])
    return edge_index.repeat(1, copies) + offsets.unsqueeze(0)


def highest_bits_reference(template: GraphTemplate) -> dict[str, str]:
    """Default reference config: every layer at the highest bit-width, with the method of lowest
    bank error at that bit-width (ties: first in the option list)."""
    quantized = [(i, parse_option(o)) for i, o in enumerate(template.options) if o != FP16]
    top = max(opt.bits for _, opt in quantized)
    cand = [i for i, opt in quantized if opt.bits == top]
    ref = {}
    for l, name in enumerate(template.layer_names):
        best = min(cand, key=lambda i: (float(template.option_error[l, i]), i))
        ref[name] = template.options[best]
    return ref
