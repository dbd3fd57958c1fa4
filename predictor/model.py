"""The sensitivity GNN: (DAG + config) -> predicted (standardised) cost of the config.

    x (n, F) node features (graphs.pyg layout: static columns + per-config columns)
      │  node encoder: Linear(standardised x) + Emb(kind) + Emb(op) + Emb(method) + Emb(bits)
      │                + Linear(Emb(node id))           [node id: optional, one DAG per model]
      ▼
    h_0 (n, H)
      │  × L:  h_k = h_{k-1} + Dropout(GELU(Conv_k(Norm_k(h_{k-1}), edges)))   (pre-norm residual)
      │        Conv ∈ {GATv2Conv (default), GINEConv, TransformerConv}; edge attr = direction
      ▼
    hop readouts: r_k = [mean_v h_k,v ; max_v h_k,v]  (B, 2H) for k = 0..L
      │  With directed message passing h_k,v summarises the k-hop module that ENDS at v (its
      │  k-hop upstream subgraph), so pooling h_k over all v pools every k-hop module of the
      │  graph: the hop-wise embeddings of Qua2SeDiMo, generalised from hand-picked module
      │  ends to every node. `direction=both` lets information also flow downstream -> upstream.
      ▼
    propagation readout (when a probe is given, predictor.probe): every weight node v gets a gain
      │  g_v = exp(Linear(h_L,v)) (1 at initialisation) on its layer's measured feature shift s_v
      │  at the config's option; q = log ‖offset + Σ_v g_v·s_v‖² is the linearised FID mean term
      │  with context-dependent gains (message passing decides how the rest of the config
      │  amplifies or damps a layer's error), standardised on the training configs
      ▼
    y = MLP([r_0; …; r_L; q]) + a·q  (B,)   hop_y[:, k] = Linear_k(r_k)  (B, L+1) (deep supervision)

Direction of message passing (`direction`): `forward` (edges u->v of the DAG), `backward`
(reversed), `both` (the union; the edge attribute one-hot tells which way an edge runs).
Everything is permutation-equivariant in the node order until the (invariant) pooling, so a
relabelling of the nodes (with their ids) gives the same prediction.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv, GINEConv, TransformerConv
from torch_geometric.utils import scatter

CONVS = ("gatv2", "gin", "transformer")
DIRECTIONS = ("forward", "backward", "both")
BITS_VOCAB = 17  # bits 0 (not a weight node) .. 16 (fp16)


@dataclass
class ModelConfig:
    """Hyper-parameters and feature layout of one `SensitivityGNN` (saved in ensemble.json).

    The `*_cols` fields are the one-hot column indices of x that the node encoder embeds; see the
    module docstring for the architecture and `TrainParams` for where the values come from.
    """

    num_features: int  # F
    num_nodes: int  # N of the DAG (size of the node-id table)
    kind_cols: list[int] = field(default_factory=list)  # one-hot columns of x, embedded
    op_cols: list[int] = field(default_factory=list)
    method_cols: list[int] = field(default_factory=list)
    bits_col: int = -1  # column holding bits/16
    conv: str = "gatv2"
    layers: int = 3
    hidden: int = 64
    heads: int = 4
    dropout: float = 0.1
    direction: str = "both"
    node_emb: int = 8  # 0: no node-identity embedding
    norm: str = "layer"  # layer | none
    probe_dim: int = 0  # D of the probe's feature shifts (0: no propagation readout)
    probe_layers: int = 0  # L, the number of weight nodes carrying a shift

    def __post_init__(self) -> None:
        if self.conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {self.conv!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict."""
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelConfig":
        """Rebuild a config from `to_dict()`'s output."""
        return ModelConfig(**d)

    @staticmethod
    def for_features(feature_names: list[str], num_nodes: int, **kw: Any) -> "ModelConfig":
        """A config whose column indices are read from the node-feature names (`kind_*`, `op_*`,
        `method_*`, `bits_norm`); `kw` sets the remaining hyper-parameters.
        """
        cols = {n: i for i, n in enumerate(feature_names)}
        return ModelConfig(
            num_features=len(feature_names), num_nodes=num_nodes,
            kind_cols=[i for n, i in cols.items() if n.startswith("kind_")],
            op_cols=[i for n, i in cols.items() if n.startswith("op_")],
            method_cols=[i for n, i in cols.items() if n.startswith("method_")],
            bits_col=cols["bits_norm"], **kw)


def _category(x: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """One-hot columns -> index (0 = none of them set, else 1 + argmax). (n,) long."""
    block = x[:, cols]
    return torch.where(block.sum(1) > 0, block.argmax(1) + 1, torch.zeros_like(block[:, 0], dtype=torch.long))


class NodeEncoder(nn.Module):
    """Node encoder: Linear(standardised x) + embeddings of kind, op, method, bits and (optionally) node id.

    Maps x `(n, F)` and node ids `(n,)` to `(n, H)`; the standardisation statistics are buffers
    (`x_mean`, `x_std`) set from the training configs.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden
        self.cfg = cfg
        self.lin = nn.Linear(cfg.num_features, h)
        self.kind = nn.Embedding(len(cfg.kind_cols) + 1, h)
        self.op = nn.Embedding(len(cfg.op_cols) + 1, h)
        self.method = nn.Embedding(len(cfg.method_cols) + 1, h)
        self.bits = nn.Embedding(BITS_VOCAB, h)
        if cfg.node_emb > 0:
            self.node = nn.Embedding(cfg.num_nodes, cfg.node_emb)
            self.node_proj = nn.Linear(cfg.node_emb, h, bias=False)
        # feature standardisation (set from training data; saved with the weights)
        self.register_buffer("x_mean", torch.zeros(cfg.num_features))
        self.register_buffer("x_std", torch.ones(cfg.num_features))

    def forward(self, x: torch.Tensor, node_id: torch.Tensor) -> torch.Tensor:
        """x `(n, F)`, node_id `(n,)` long -> node embeddings h_0 `(n, H)`."""
        # x (n, F), node_id (n,) -> (n, H)
        cfg = self.cfg
        bits = torch.round(x[:, cfg.bits_col] * 16).long().clamp(0, BITS_VOCAB - 1)
        h = (self.lin((x - self.x_mean) / self.x_std) + self.kind(_category(x, cfg.kind_cols))
             + self.op(_category(x, cfg.op_cols)) + self.method(_category(x, cfg.method_cols))
             + self.bits(bits))
        if cfg.node_emb > 0:
            h = h + self.node_proj(self.node(node_id))
        return h


def make_conv(cfg: ModelConfig) -> nn.Module:
    """One message-passing layer for `cfg.conv`: GATv2Conv (Brody et al., ICLR 2022), TransformerConv
    (Shi et al., IJCAI 2021) or GINEConv (Hu et al., ICLR 2020); edge attribute = direction one-hot.
    """
    h = cfg.hidden
    if cfg.conv == "gatv2":
        return GATv2Conv(h, h // cfg.heads, heads=cfg.heads, edge_dim=2, add_self_loops=True)
    if cfg.conv == "transformer":
        return TransformerConv(h, h // cfg.heads, heads=cfg.heads, edge_dim=2, root_weight=True)
    return GINEConv(nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h)), train_eps=True, edge_dim=2)


class SensitivityGNN(nn.Module):
    """The sensitivity GNN: a batch of configs on one DAG -> predicted standardised cost `(B,)`.

    Node encoder, `cfg.layers` pre-norm residual convolutions, hop-wise mean/max readouts
    (Qua2SeDiMo's hop-wise embeddings) and an MLP head, plus the probe's propagation readout when
    `cfg.probe_dim > 0`; see the module docstring.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, k = cfg.hidden, cfg.layers
        self.encoder = NodeEncoder(cfg)
        self.convs = nn.ModuleList(make_conv(cfg) for _ in range(k))
        self.norms = nn.ModuleList((nn.LayerNorm(h) if cfg.norm == "layer" else nn.Identity()) for _ in range(k))
        self.drop = nn.Dropout(cfg.dropout)
        self.hop_heads = nn.ModuleList(nn.Linear(2 * h, 1) for _ in range(k + 1))
        n_in = 2 * h * (k + 1) + (1 if cfg.probe_dim else 0)
        self.head = nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, h), nn.GELU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(h, 1))
        if cfg.probe_dim:
            self.gain = nn.Linear(h, 1)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.gain.bias)
            self.probe_skip = nn.Parameter(torch.tensor(1.0))
            self.register_buffer("probe_offset", torch.zeros(cfg.probe_dim))
            self.register_buffer("probe_weight_index", torch.zeros(cfg.probe_layers, dtype=torch.long))
            self.register_buffer("q_mean", torch.zeros(()))
            self.register_buffer("q_std", torch.ones(()))
        self._edge_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def set_feature_stats(self, x: torch.Tensor) -> None:
        """Standardise node features with the mean/std over the nodes of `x` (…, F)."""
        flat = x.reshape(-1, x.shape[-1])
        self.encoder.x_mean.copy_(flat.mean(0))
        self.encoder.x_std.copy_(flat.std(0).clamp_min(1e-2))

    def set_probe(self, offset: torch.Tensor, weight_index: torch.Tensor, rows: torch.Tensor) -> None:
        """Probe constants: offset μ_fp − μ_ref (D,), the weight nodes' rows (L,), and the training
        configs' shift rows (B, L, D), whose ungained mean term sets q's standardisation."""
        self.probe_offset.copy_(offset)
        self.probe_weight_index.copy_(weight_index)
        q = self._mean_term(rows.sum(1))  # (B,)
        self.q_mean.copy_(q.mean())
        self.q_std.copy_(q.std().clamp_min(1e-3) if len(q) > 1 else torch.ones(()))

    def _mean_term(self, shift_sum: torch.Tensor) -> torch.Tensor:
        # shift_sum (B, D) -> log ‖offset + shift_sum‖² (B,)
        total = self.probe_offset + shift_sum
        return torch.log(total.pow(2).sum(1) + 1e-8)

    # ------------------------------------------------------------------ graph batches
    def directed(self, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DAG edges (2, E) -> message edges and their direction one-hot (E', 2)."""
        fwd = torch.tensor([[1.0, 0.0]]).expand(edge_index.shape[1], 2)
        bwd = torch.tensor([[0.0, 1.0]]).expand(edge_index.shape[1], 2)
        if self.cfg.direction == "forward":
            return edge_index, fwd.contiguous()
        if self.cfg.direction == "backward":
            return edge_index.flip(0), bwd.contiguous()
        return torch.cat([edge_index, edge_index.flip(0)], 1), torch.cat([fwd, bwd], 0)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor,
                node_id: torch.Tensor, num_graphs: int, shift_nodes: torch.Tensor | None = None,
                shift_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (n, F), edge_index (2, e) DAG edges of the disjoint union, batch (n,) graph of each node,
        node_id (n,) node's index in the DAG; with a probe, shift_nodes (m,) the weight nodes among
        the n and shift_rows (m, D) their feature shifts -> (prediction (B,), hop predictions (B, L+1))."""
        ei, ea = self.directed(edge_index)
        h = self.encoder(x, node_id)  # (n, H)
        hops = [h]
        for conv, norm in zip(self.convs, self.norms):
            h = h + self.drop(nn.functional.gelu(conv(norm(h), ei, ea)))  # (n, H)
            hops.append(h)
        readouts = [torch.cat([scatter(hk, batch, 0, num_graphs, "mean"),
                               scatter(hk, batch, 0, num_graphs, "max")], 1) for hk in hops]  # (B, 2H) each
        if self.cfg.probe_dim:
            if shift_nodes is None or shift_rows is None:
                raise ValueError("this predictor has a propagation readout: pass the probe's shift rows")
            gain = torch.exp(self.gain(h[shift_nodes]).clamp(-4.0, 4.0))  # (m, 1)
            shift_sum = scatter(gain * shift_rows, batch[shift_nodes], 0, num_graphs, "sum")  # (B, D)
            q = ((self._mean_term(shift_sum) - self.q_mean) / self.q_std).unsqueeze(1)  # (B, 1)
            y = self.head(torch.cat(readouts + [q], 1)).squeeze(1) + self.probe_skip * q.squeeze(1)  # (B,)
        else:
            y = self.head(torch.cat(readouts, 1)).squeeze(1)  # (B,)
        hop_y = torch.cat([head(r) for head, r in zip(self.hop_heads, readouts)], 1)  # (B, L+1)
        return y, hop_y

    def forward_dense(self, x: torch.Tensor, edge_index: torch.Tensor, probe_rows: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every graph is the same DAG: x (B, N, F), edge_index (2, E), probe_rows (B, L, D) the
        feature shifts of each config's layers (models with a probe) -> (B,), (B, L+1)."""
        b, n, f = x.shape
        key = (b, n, edge_index.data_ptr(), edge_index.shape[1])
        if key not in self._edge_cache:
            offsets = (torch.arange(b) * n).repeat_interleave(edge_index.shape[1])
            union = edge_index.repeat(1, b) + offsets.unsqueeze(0)  # (2, B·E)
            batch = torch.arange(b).repeat_interleave(n)  # (B·N,)
            if len(self._edge_cache) > 8:
                self._edge_cache.clear()
            self._edge_cache[key] = (union, batch)
        union, batch = self._edge_cache[key]
        node_id = torch.arange(n).repeat(b)
        nodes = rows = None
        if probe_rows is not None and self.cfg.probe_dim:
            nodes = ((torch.arange(b) * n).unsqueeze(1) + self.probe_weight_index.unsqueeze(0)).reshape(-1)  # (B·L,)
            rows = probe_rows.reshape(-1, probe_rows.shape[-1])  # (B·L, D)
        return self(x.reshape(b * n, f), union, batch, node_id, b, nodes, rows)


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters of a module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
