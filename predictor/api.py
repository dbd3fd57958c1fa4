"""The trained predictor as a library: `Ensemble.load(dir)`.

    ens = Ensemble.load("data/predictor/digits")
    ens.predict([config, ...])            # (B,) predicted FID, mean over members
    ens.predict_members([config, ...])    # (M, B)
    ens.sensitivity()                     # per (layer, option) Δfid vs the highest-bits reference
    ens.sensitivity(reference_config)     # ... re-linearised around any config
    ens.block_sensitivity(reference)      # subgraph (block / unit) scores

Configs are `QuantConfig`s or plain {layer: option} dicts (missing layers = fp16). Predicting
needs neither the bank nor the graph: the checkpoint carries the DAG tensors and option table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from predictor.dataset import GraphTemplate, TargetScaler, highest_bits_reference
from predictor.model import ModelConfig, SensitivityGNN
from core.errors import QsensError
from core.jsonio import read_json


class Ensemble:
    """A trained predictor: the k-fold members, their scalers and the graph template (`Ensemble.load`).

    Predicts a config's FID as the mean over members; needs neither the bank nor the graph file.
    """

    def __init__(self, template: GraphTemplate, members: list[SensitivityGNN], scalers: list[TargetScaler],
                 meta: dict[str, Any] | None = None, path: Path | None = None):
        self.template = template
        self.members = members
        self.scalers = scalers
        self.meta = meta or {}
        self.path = path
        for m in self.members:
            m.eval()

    # ------------------------------------------------------------------ info
    @property
    def model(self) -> str:
        """The model name the predictor was trained for."""
        return self.template.model

    @property
    def layer_names(self) -> list[str]:
        """The quantizable layers, in the template's order."""
        return list(self.template.layer_names)

    @property
    def options(self) -> list[str]:
        """Quantized options the predictor knows (fp16 excluded)."""
        return [o for o in self.template.options if o != "fp16"]

    def __len__(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ load
    @staticmethod
    def load(directory: str | Path) -> "Ensemble":
        """Load a predictor saved by `qsens predictor train` (ensemble.json + safetensors) from `directory`.

        Raises QsensError when ensemble.json or template.safetensors is missing, not a qsens predictor,
        or of another format version / node-feature layout.
        """
        directory = Path(directory)
        meta_path = directory / "ensemble.json"
        if not meta_path.is_file():
            raise QsensError(f"{directory}: no trained predictor (no ensemble.json); run `qsens predictor train`")
        meta = read_json(meta_path, "a qsens predictor checkpoint")
        if meta.get("format") != "qsens-predictor":
            raise QsensError(f"{meta_path}: not a qsens predictor checkpoint")
        tensors_path = directory / "template.safetensors"
        if not tensors_path.is_file():
            raise QsensError(f"{tensors_path}: missing; retrain with `qsens predictor train`")
        template = GraphTemplate.from_saved(meta["template"], load_file(str(tensors_path)))
        cfg = ModelConfig.from_dict(meta["model_config"])
        members, scalers = [], []
        for entry in meta["members"]:
            f = directory / entry["file"]
            if not f.is_file():
                raise QsensError(f"{f}: member checkpoint missing; retrain with `qsens predictor train`")
            model = SensitivityGNN(cfg)
            model.load_state_dict(load_file(str(f)))
            members.append(model)
            scalers.append(TargetScaler.from_dict(entry["scaler"]))
        return Ensemble(template, members, scalers, meta, directory)

    def check_bank(self, bank: Any) -> None:
        """QsensError if `bank` is not the one the predictor was trained with: its node features
        hold that bank's per-option errors, so another bank's configs would be scored wrongly.
        Identity = `core.provenance.bank_digest` (model weights, options and every error)."""
        from core.provenance import bank_digest

        fp = self.template.bank_fingerprint
        if fp and bank_digest(bank) != fp:
            raise QsensError(f"the predictor in {self.path} was trained with another bank "
                             f"(bank digest {fp}, this bank {bank_digest(bank)}); retrain it with "
                             "`qsens predictor train`")

    # ------------------------------------------------------------------ predict
    def predict_idx_members(self, opt_idx: torch.Tensor, chunk: int = 128) -> np.ndarray:
        """(B, L) option indices -> (M, B) predicted FID."""
        avg_bits = self.template.avg_bits(opt_idx)
        out = np.zeros((len(self.members), opt_idx.shape[0]))
        with torch.no_grad():
            for s in range(0, opt_idx.shape[0], chunk):
                x = self.template.node_features(opt_idx[s:s + chunk])
                rows = self.template.probe_rows(opt_idx[s:s + chunk])
                for k, (m, sc) in enumerate(zip(self.members, self.scalers)):
                    z = m.forward_dense(x, self.template.edge_index, rows)[0].numpy()
                    out[k, s:s + chunk] = sc.decode_fid(z, avg_bits[s:s + chunk])
        return out

    def predict_members(self, configs: Sequence[Any]) -> np.ndarray:
        """(M, B): each member's predicted FID."""
        return self.predict_idx_members(self.template.encode(configs))

    def predict(self, configs: Sequence[Any]) -> np.ndarray:
        """(B,): predicted FID, mean over the members."""
        return self.predict_members(configs).mean(0)

    # ------------------------------------------------------------------ sensitivity
    def reference(self, reference: Any = None) -> dict[str, str]:
        """The reference config `{layer: option}`: the given one (fp16 for layers it leaves out) or,
        with None, every layer at the highest bits with its lowest-error method.
        """
        if reference is None:
            return highest_bits_reference(self.template)
        opts = dict(getattr(reference, "options", reference))
        return {n: opts.get(n, "fp16") for n in self.layer_names}

    def sensitivity(self, reference: Any = None) -> pd.DataFrame:
        """Per (layer, option): Δfid of the reference with only that layer changed (see
        predictor.sensitivity.layer_sensitivity)."""
        from predictor.sensitivity import layer_sensitivity

        return layer_sensitivity(self, self.reference(reference))

    def block_sensitivity(self, reference: Any = None) -> pd.DataFrame:
        """The subgraph (block / unit) sensitivity table around the reference (`predictor.sensitivity`)."""
        from predictor.sensitivity import block_sensitivity

        return block_sensitivity(self, self.reference(reference))
