"""Collapse an exported ATen graph into a module-level DAG (networkx `DiGraph`).

Nodes
- `weight`: one per quantizable layer, named by its module path, exactly `quantizable_layers`.
  A layer called more than once is one node carrying the edges of every call.
- `combine`: the operations between layers that matter for sensitivity: `add` (residuals,
  gated residuals), `mul` (gating), `concat` (U-Net skips), `attention` (SDPA or QK/softmax/AV
  matmuls), `matmul` (activation x activation outside attention), `norm`, `adanorm` (a norm
  modulated by another branch: AdaLN, AdaGroupNorm, scale-shift), `activation`, `other`.
- `input`: one per tensor input of forward (positions and masks excluded); `output`: one.

Collapse rules (applied to every ATen op, in graph order)
1. Shape-only ops (view, permute, transpose, dropout, casts, getitem, slicing...) dissolve: their
   value comes from their first tensor argument.
2. An op reading a quantizable weight (linear, conv, addmm, mm...) is that layer's node.
3. Norm ops, and every op inside a plain normalisation module (e.g. a hand-written RMSNorm), are
   `norm`; activation ops are `activation`; SDPA and softmax are `attention`.
4. Any other op becomes a combine node only if its live inputs come from two or more distinct
   DAG nodes (it actually combines something); otherwise it dissolves. Ops on constants only
   (positional tables, frequency vectors) are not live and vanish.
5. Runs: a combine node is merged into the combine node feeding it when both were called by the
   same module (the deepest non-`torch.nn` module of their call stack) and the pair is
   same-kind, norm -> add/mul (-> `adanorm`), norm -> activation, add/mul -> add/mul, or
   activation -> mul (gated activation); and only when every other input of the later op was
   produced before the earlier one (so merging can never create a cycle).
6. Finally only nodes on a path from an input to the output are kept.

Each node carries static features (see `STATIC_FIELDS`) and empty per-config slots
(`method`, `bits`, `ratio`, `qerror`) filled by `apply_config`.
"""
from __future__ import annotations

import math
import operator
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx
import torch
from torch import nn

from core.params import defaults_from
from denoisers.inputs import STATIC_INPUTS
from graphs.export import Traced, export_denoiser
from core.errors import QsensError
from quant.layers import quantizable_layers

FORMAT_VERSION = 1

NODE_KINDS = ("input", "output", "weight", "combine")
WEIGHT_OPS = ("Linear", "Conv1d", "Conv2d")
COMBINE_KINDS = ("add", "mul", "concat", "attention", "matmul", "norm", "adanorm", "activation",
                 "other")

# Static attributes every node has (numbers; strings listed separately).
STATIC_FIELDS = ("in_channels", "out_channels", "kernel", "groups", "params", "macs", "uses",
                 "stage", "block", "sub_block", "depth", "depth_norm")
CONFIG_FIELDS = ("method", "bits", "ratio", "qerror")

_SHAPE_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "unsqueeze", "squeeze",
    "expand", "expand_as", "contiguous", "clone", "to", "_to_copy", "type_as", "dropout",
    "native_dropout", "feature_dropout", "alpha_dropout", "alias", "detach", "flatten",
    "unflatten", "chunk", "split", "split_with_sizes", "unbind", "slice", "select", "narrow",
    "getitem", "repeat", "movedim", "view_as", "reshape_as", "lift_fresh_copy", "float", "half",
    "bfloat16", "flip", "roll", "_assert_tensor_metadata", "copy", "squeeze_", "unsqueeze_",
})
_WEIGHT_COMPUTE = frozenset({
    "linear", "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "addmm", "mm",
    "matmul", "bmm", "baddbmm", "einsum", "conv_transpose1d", "conv_transpose2d",
})
_NORM_OPS = frozenset({
    "group_norm", "native_group_norm", "layer_norm", "native_layer_norm", "rms_norm",
    "_fused_rms_norm", "batch_norm", "_native_batch_norm_legit_no_training", "instance_norm",
})
_ACT_OPS = frozenset({
    "silu", "gelu", "relu", "sigmoid", "tanh", "mish", "hardswish", "hardsigmoid", "leaky_relu",
    "elu", "selu", "softplus", "glu", "silu_", "relu_", "gelu_",
})
_ATTN_OPS = frozenset({
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_cudnn_attention", "softmax", "_softmax", "_safe_softmax",
})
_MATMUL_OPS = frozenset({"bmm", "baddbmm", "matmul", "mm", "einsum"})
_ADD_OPS = frozenset({"add", "sub", "rsub", "add_", "sub_"})
_MUL_OPS = frozenset({"mul", "div", "mul_", "div_"})
_CAT_OPS = frozenset({"cat", "concat", "stack", "hstack", "vstack"})
_PLAIN_NORM_MODULE = re.compile(r"^(?!Ada).*(RMS|Layer|Group|Batch|Instance)Norm[0-9a-zA-Z]*$")
_ATTN_MODULE = re.compile(r"Attention|Attn")


@dataclass(frozen=True)
@defaults_from("graph")
class GraphParams:
    """The `graph:` section of params.yaml."""

    max_side: int  # latent side traced at (min with the config's sample_size): changes MACs, not the graph

    def __post_init__(self) -> None:
        if self.max_side < 1:
            raise QsensError(f"graph.max_side must be >= 1, got {self.max_side}")


def op_name(target: Any) -> str:
    """`aten.linear.default` -> `linear`; `operator.getitem` -> `getitem`."""
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "_opname", None) or getattr(target, "__name__", None) or str(target)
    return str(name).split(".")[0]


# ---------------------------------------------------------------------------------------------
# raw graph: one entry per kept ATen op (weight uses of one layer share an entry)


@dataclass
class _Raw:
    key: str
    kind: str  # input | output | weight | combine
    op: str  # layer type, combine kind, or "input"/"output"
    index: int  # position of the (first) op in the exported graph: a topological order
    module: str  # owner module path (combine: deepest non-torch.nn module; weight: itself)
    module_type: str
    site: str  # innermost module of the first op (used for naming combines)
    ops: list[str] = field(default_factory=list)
    preds: set[str] = field(default_factory=set)
    uses: int = 0
    macs: int = 0
    shape: list[int] = field(default_factory=list)  # output shape of the last op (first use)


def _stack(node: torch.fx.Node) -> list[tuple[str, str]]:
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        path, typ = value[0], value[1]
        out.append((str(path), typ if isinstance(typ, str) else f"{typ.__module__}.{typ.__qualname__}"))
    return out


def _owner(stack: list[tuple[str, str]]) -> tuple[str, str]:
    """Deepest module in the call stack that is neither a torch.nn primitive nor a plain norm
    module (so a norm and the modulation around it share an owner), and its class name."""
    for path, typ in reversed(stack):
        short = typ.rsplit(".", 1)[-1]
        if not typ.startswith("torch.nn.") and not _PLAIN_NORM_MODULE.match(short):
            return path, short
    return "", "root"


def _innermost(stack: list[tuple[str, str]]) -> tuple[str, str]:
    if not stack:
        return "", "root"
    path, typ = stack[-1]
    return path, typ.rsplit(".", 1)[-1]


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []

    def visit(a: Any) -> None:
        if isinstance(a, torch.fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for x in a:
                visit(x)
        elif isinstance(a, dict):
            for x in a.values():
                visit(x)

    visit(node.args)
    visit(node.kwargs)
    return out


_MERGE: dict[tuple[str, str], str] = {}
for _k in COMBINE_KINDS:
    _MERGE[(_k, _k)] = _k
for _a in ("norm", "adanorm"):
    for _b in ("add", "mul"):
        _MERGE[(_a, _b)] = "adanorm"
    _MERGE[(_a, "activation")] = _a
_MERGE[("norm", "adanorm")] = _MERGE[("adanorm", "norm")] = "adanorm"
_MERGE[("add", "mul")] = _MERGE[("mul", "add")] = "add"
_MERGE[("activation", "mul")] = "activation"


def merged_kind(first: str, second: str) -> str | None:
    """Kind of a run `first -> second` of combines in one module, or None if they stay apart."""
    return _MERGE.get((first, second))


@dataclass
class CollapseStats:
    """Counts of the collapse: ATen ops seen, dissolved and merged, nodes pruned, layers never used."""

    aten_ops: int = 0
    dissolved: int = 0
    merged: int = 0
    pruned: list[str] = field(default_factory=list)
    unused_layers: list[str] = field(default_factory=list)


def _collapse(program: torch.export.ExportedProgram, model: nn.Module) -> tuple[nx.DiGraph, CollapseStats]:
    layers = quantizable_layers(model)
    canonical = {id(m): name for name, m in layers.items()}
    sig = program.graph_signature
    # placeholder name -> layer name, for quantizable weights only
    weight_of: dict[str, str] = {}
    for ph, fqn in sig.inputs_to_parameters.items():
        mod_path, _, leaf = fqn.rpartition(".")
        if leaf != "weight":
            continue
        try:
            module = model.get_submodule(mod_path)
        except AttributeError:
            continue
        if id(module) in canonical:
            weight_of[ph] = canonical[id(module)]
    user_inputs = {spec.arg.name for spec in sig.input_specs
                   if spec.kind.name == "USER_INPUT" and hasattr(spec.arg, "name")}

    stats = CollapseStats()
    raw: dict[str, _Raw] = {}
    order: list[str] = []  # raw keys in creation order
    sources: dict[torch.fx.Node, frozenset[str]] = {}  # fx value -> raw producers
    weight_src: dict[torch.fx.Node, str] = {}  # fx value that is (a view of) a layer's weight
    site_count: dict[str, int] = {}
    output_node: torch.fx.Node | None = None

    def add_raw(r: _Raw) -> _Raw:
        raw[r.key] = r
        order.append(r.key)
        return r

    def live_sources(nodes: Iterable[torch.fx.Node]) -> frozenset[str]:
        acc: set[str] = set()
        for n in nodes:
            acc |= sources.get(n, frozenset())
        return frozenset(acc)

    for index, node in enumerate(program.graph.nodes):
        if node.op == "placeholder":
            if node.name in weight_of:
                weight_src[node] = weight_of[node.name]
            elif node.name in user_inputs and not node.name.startswith(tuple(STATIC_INPUTS)):
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor):
                    key = f"input/{node.name}"
                    add_raw(_Raw(key, "input", "input", index, "", "input", "", shape=_shape(val)))
                    sources[node] = frozenset({key})
            continue
        if node.op == "output":
            output_node = node
            continue
        if node.op != "call_function":
            continue
        stats.aten_ops += 1
        name = op_name(node.target)
        args = _tensor_args(node)
        stack = _stack(node)

        if name in _SHAPE_OPS:
            first = args[0] if args else None
            if first is not None and first in weight_src:
                weight_src[node] = weight_src[first]
            elif first is not None and first in sources:
                sources[node] = sources[first]
            stats.dissolved += 1
            continue

        layer = next((weight_src[a] for a in args if a in weight_src), None)
        live = live_sources(a for a in args if a not in weight_src)
        if layer is not None and name in _WEIGHT_COMPUTE:
            r = raw.get(layer)
            if r is None:
                module = layers[layer]
                r = add_raw(_Raw(layer, "weight", _layer_kind(module), index, layer,
                                 type(module).__name__, layer))
            r.uses += 1
            r.ops.append(name)
            r.preds |= live
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                r.macs += int(val.numel()) * int(layers[layer].weight[0].numel())
                r.shape = r.shape or _shape(val)
            sources[node] = frozenset({layer})
            continue
        if not live:
            continue  # constants only: positional tables, frequencies...

        owner, owner_type = _owner(stack)
        site, site_type = _innermost(stack)
        kind: str | None
        if name in _NORM_OPS or _PLAIN_NORM_MODULE.match(site_type):
            kind = "norm"
        elif name in _ACT_OPS:
            kind = "activation"
        elif name in _ATTN_OPS:
            kind = "attention"
        elif len(live) < 2:
            kind = None  # rule 4: nothing is combined here
        elif name in _MATMUL_OPS:
            kind = "attention" if _ATTN_MODULE.search(owner_type) else "matmul"
        elif name in _ADD_OPS:
            kind = "add"
        elif name in _MUL_OPS:
            kind = "mul"
        elif name in _CAT_OPS:
            kind = "concat"
        else:
            kind = "other"
        if kind is None:
            sources[node] = live
            stats.dissolved += 1
            continue
        n = site_count.get(site, 0)
        site_count[site] = n + 1
        key = f"{site or 'root'}#{n}"  # temporary; renamed after merging
        r = add_raw(_Raw(key, "combine", kind, index, owner, owner_type, site or "root",
                         ops=[name], preds=set(live), uses=1, shape=_shape(node.meta.get("val"))))
        sources[node] = frozenset({key})

    if output_node is None or not output_node.args or not output_node.args[0]:
        raise ValueError("exported program has no output")
    first_out = output_node.args[0][0] if isinstance(output_node.args[0], (list, tuple)) \
        else output_node.args[0]
    add_raw(_Raw("output", "output", "output", len(program.graph.nodes), "", "output", "",
                 preds=set(sources.get(first_out, frozenset())),
                 shape=_shape(first_out.meta.get("val") if isinstance(first_out, torch.fx.Node) else None)))

    # rule 5: merge runs of combines (process in graph order; later ops fold into earlier ones)
    rep: dict[str, str] = {}

    def find(k: str) -> str:
        while rep.get(k, k) != k:
            k = rep[k]
        return k

    for key in sorted(order, key=lambda k: raw[k].index):
        b = raw[key]
        if b.kind != "combine":
            continue
        preds = {find(p) for p in b.preds}
        best: _Raw | None = None
        for p in preds:
            a = raw[p]
            if a.kind != "combine" or a.module != b.module or merged_kind(a.op, b.op) is None:
                continue
            if all(raw[o].index < a.index for o in preds if o != p):
                if best is None or a.index > best.index:
                    best = a
        if best is not None:
            best.op = merged_kind(best.op, b.op) or best.op
            best.ops.extend(b.ops)
            best.shape = b.shape or best.shape
            best.uses += 1
            best.preds |= {p for p in preds if p != best.key}
            rep[key] = best.key
            stats.merged += 1

    graph = nx.DiGraph()
    names = _final_names(raw, rep)
    for key in order:
        if find(key) != key:
            continue
        r = raw[key]
        graph.add_node(names[key], kind=r.kind, op=r.op, module=r.module, module_type=r.module_type,
                       ops="+".join(_dedup(r.ops)), uses=r.uses, macs=r.macs, index=r.index,
                       out_shape=r.shape)
    for key in order:
        if find(key) != key:
            continue
        for p in raw[key].preds:
            src = names[find(p)]
            if src != names[key]:
                graph.add_edge(src, names[key])

    # rule 6: keep what lies on an input -> output path
    inputs = [n for n, d in graph.nodes(data=True) if d["kind"] == "input"]
    forward: set[str] = set(inputs)
    for n in inputs:
        forward |= nx.descendants(graph, n)
    backward = nx.ancestors(graph, "output") | {"output"} if "output" in graph else set()
    keep = forward & backward
    stats.pruned = sorted(n for n in graph.nodes if n not in keep)
    graph.remove_nodes_from(stats.pruned)
    stats.unused_layers = [name for name in layers if name not in graph]
    return graph, stats


def _shape(val: Any) -> list[int]:
    if isinstance(val, (list, tuple)) and val:
        val = val[0]
    if isinstance(val, torch.Tensor):
        try:
            return [int(s) for s in val.shape]
        except TypeError:  # symbolic sizes
            return []
    return []


def _dedup(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)


def _final_names(raw: dict[str, _Raw], rep: dict[str, str]) -> dict[str, str]:
    """Readable unique ids: weights keep their module path; combines become `site/kind[#k]`."""
    names: dict[str, str] = {}
    taken: dict[str, int] = {}
    for key, r in sorted(raw.items(), key=lambda kv: kv[1].index):
        if rep.get(key, key) != key:
            continue
        if r.kind == "combine":
            base = f"{r.site}/{r.op}"
            n = taken.get(base, 0)
            taken[base] = n + 1
            names[key] = base if n == 0 else f"{base}#{n}"
        else:
            names[key] = key
    for key in raw:
        if key not in names:
            k = key
            while rep.get(k, k) != k:
                k = rep[k]
            names[key] = names[k]
    return names


def _layer_kind(module: nn.Module) -> str:
    for t in (nn.Conv1d, nn.Conv2d, nn.Linear):
        if isinstance(module, t):
            return t.__name__
    return type(module).__name__


# ---------------------------------------------------------------------------------------------
# static features


_INDEX = re.compile(r"^\d+$")


def position_of(path: str) -> dict[str, Any]:
    """Position parsed from a module path: section (first name), section_kind, and the first
    three numeric indices as stage / block / sub_block (-1 when absent).

    `down_blocks.1.attentions.0.transformer_blocks.2.attn1.to_q` -> section down_blocks (down),
    stage 1, block 0, sub_block 2; `transformer_blocks.13.ff.net.2` -> stage 13.
    """
    parts = path.split(".") if path else []
    idx = [int(p) for p in parts if _INDEX.match(p)]
    idx += [-1] * (3 - len(idx))
    section = parts[0] if parts else ""
    return {"section": section, "section_kind": section_kind(section),
            "stage": idx[0], "block": idx[1], "sub_block": idx[2]}


def section_kind(section: str) -> str:
    """The U-Net / transformer role of a top-level section: down | mid | up | blocks | io (by name)."""
    s = section.lower()
    if s.startswith("down") or "encoder" in s or "input_blocks" in s:
        return "down"
    if s.startswith("mid") or "middle" in s:
        return "mid"
    if s.startswith("up") or "decoder" in s or "output_blocks" in s:
        return "up"
    if "blocks" in s or "layers" in s:
        return "blocks"
    return "io"


SECTION_KINDS = ("io", "down", "mid", "up", "blocks")


def _add_static_features(graph: nx.DiGraph, model: nn.Module) -> None:
    layers = quantizable_layers(model)
    depth: dict[str, int] = {}
    for n in nx.topological_sort(graph):
        preds = list(graph.predecessors(n))
        depth[n] = 0 if not preds else 1 + max(depth[p] for p in preds)
    max_depth = max(depth.values()) if depth else 1
    for n, d in graph.nodes(data=True):
        d["depth"] = depth[n]
        d["depth_norm"] = depth[n] / max(max_depth, 1)
        d.update(position_of(d["module"]))
        d.update(in_channels=0, out_channels=0, kernel=[], groups=1, params=0)
        if d["kind"] == "weight":
            m = layers[n]
            w = m.weight
            d["in_channels"] = int(getattr(m, "in_channels", getattr(m, "in_features", w.shape[1])))
            d["out_channels"] = int(getattr(m, "out_channels", getattr(m, "out_features", w.shape[0])))
            d["kernel"] = [int(k) for k in getattr(m, "kernel_size", ())]
            d["groups"] = int(getattr(m, "groups", 1))
            d["params"] = int(w.numel()) + (int(m.bias.numel()) if getattr(m, "bias", None) is not None else 0)
            d["n_weights"] = int(w.numel())
            d["shape"] = [int(s) for s in w.shape]
        # per-config slots; filled by apply_config
        d.update(method="fp16" if d["kind"] == "weight" else "", bits=16 if d["kind"] == "weight" else 0,
                 ratio=1.0 if d["kind"] == "weight" else 0.0, qerror=0.0)


# ---------------------------------------------------------------------------------------------
# public API


@dataclass
class BuildResult:
    """What `build_dag` returns: the DAG, the export and collapse times in seconds, the collapse counts."""

    graph: nx.DiGraph
    export_s: float
    collapse_s: float
    stats: CollapseStats


def dag_from_program(traced: Traced, model: nn.Module) -> tuple[nx.DiGraph, CollapseStats]:
    """Collapse + static features. Raises QsensError when a quantizable layer is not in the
    graph: its sensitivity could never be learned, so the graph is refused, not warned about."""
    graph, stats = _collapse(traced.program, model)
    if stats.unused_layers:
        raise QsensError(missing_layers_message(type(model).__name__, stats.unused_layers,
                                                len(quantizable_layers(model))))
    _add_static_features(graph, model)
    cfg = getattr(model, "config", {})
    graph.graph.update(
        format="qsens-graph", version=FORMAT_VERSION, model_class=type(model).__name__,
        config={k: v for k, v in dict(cfg).items() if isinstance(v, (int, float, str, bool, list, type(None)))},
        inputs=traced.inputs.describe(),
        n_weight=sum(1 for _, d in graph.nodes(data=True) if d["kind"] == "weight"),
        n_combine=sum(1 for _, d in graph.nodes(data=True) if d["kind"] == "combine"),
        unused_layers=list(stats.unused_layers),
    )
    return graph, stats


def build_dag(model: nn.Module, traced: Traced | None = None, name: str = "") -> BuildResult:
    """Trace (unless given) and collapse `model` into its module-level DAG."""
    traced = traced or export_denoiser(model)
    start = time.perf_counter()
    graph, stats = dag_from_program(traced, model)
    collapse_s = time.perf_counter() - start
    graph.graph["name"] = name or type(model).__name__
    graph.graph["export_s"] = round(traced.seconds, 3)
    graph.graph["collapse_s"] = round(collapse_s, 3)
    return BuildResult(graph, traced.seconds, collapse_s, stats)


def missing_layers_message(what: str, missing: list[str], total: int, show: int = 3) -> str:
    """One line: `what: 4 of 120 quantizable layers are not in the graph: a, b, c, ... (...)`."""
    more = ", ..." if len(missing) > show else ""
    return (f"{what}: {len(missing)} of {total} quantizable layers are not in the graph: "
            f"{', '.join(missing[:show])}{more} (forward never reaches them at the example inputs, "
            f"or their output never reaches the model's output)")


def weight_nodes(graph: nx.DiGraph) -> list[str]:
    """Weight node ids (= layer names) in graph order."""
    return [n for n, d in graph.nodes(data=True) if d["kind"] == "weight"]


def check_dag(graph: nx.DiGraph, layer_names: Iterable[str]) -> list[str]:
    """Problems with a DAG (empty list = fine): cycles, missing/extra layers, stranded nodes."""
    problems: list[str] = []
    if not nx.is_directed_acyclic_graph(graph):
        problems.append("graph has a cycle")
    expected = list(layer_names)
    got = weight_nodes(graph)
    missing = [n for n in expected if n not in set(got)]
    extra = [n for n in got if n not in set(expected)]
    if missing:
        problems.append(missing_layers_message("graph", missing, len(expected)))
    if extra:
        problems.append(f"{len(extra)} unknown weight nodes, e.g. {extra[:3]}")
    inputs = [n for n, d in graph.nodes(data=True) if d["kind"] == "input"]
    outputs = [n for n, d in graph.nodes(data=True) if d["kind"] == "output"]
    if len(outputs) != 1:
        problems.append(f"{len(outputs)} output nodes")
    else:
        reach = set(inputs)
        for i in inputs:
            reach |= nx.descendants(graph, i)
        back = nx.ancestors(graph, outputs[0]) | {outputs[0]}
        stranded = [n for n in graph.nodes if n not in reach or n not in back]
        if stranded:
            problems.append(f"{len(stranded)} nodes off every input->output path, e.g. {stranded[:3]}")
    return problems


def skip_concats(graph: nx.DiGraph) -> list[str]:
    """Concat nodes that join a long skip to the main path (U-Net skips, Hunyuan's long skips):
    at least two internal inputs, one of which also feeds something else (the skip source)."""
    out = []
    for n, d in graph.nodes(data=True):
        if d["kind"] == "combine" and d["op"] == "concat":
            internal = [p for p in graph.predecessors(n) if graph.nodes[p]["kind"] != "input"]
            if len(internal) >= 2 and any(graph.out_degree(p) > 1 for p in internal):
                out.append(n)
    return out


def skip_concat_consumers(graph: nx.DiGraph) -> list[str]:
    """Layers whose input is a skip concat, reached through norms/activations only: the layers
    Qua2SeDiMo splits into two halves along input channels."""
    found: dict[str, None] = {}
    for c in skip_concats(graph):
        frontier = list(graph.successors(c))
        seen = set()
        while frontier:
            n = frontier.pop()
            if n in seen:
                continue
            seen.add(n)
            d = graph.nodes[n]
            if d["kind"] == "weight":
                found.setdefault(n, None)
            elif d["kind"] == "combine" and d["op"] in ("norm", "activation"):
                frontier.extend(graph.successors(n))
    return list(found)


def summary(graph: nx.DiGraph) -> dict[str, Any]:
    """Node / edge counts, node counts by kind (combine nodes by op), total MACs of the weight nodes."""
    kinds: dict[str, int] = {}
    for _, d in graph.nodes(data=True):
        k = d["op"] if d["kind"] == "combine" else d["kind"]
        kinds[k] = kinds.get(k, 0) + 1
    return {"nodes": graph.number_of_nodes(), "edges": graph.number_of_edges(),
            "weight": graph.graph.get("n_weight"), "combine": graph.graph.get("n_combine"),
            "by_kind": dict(sorted(kinds.items())),
            "macs": int(sum(d.get("macs", 0) for _, d in graph.nodes(data=True)
                            if d["kind"] == "weight"))}


def total_macs(graph: nx.DiGraph) -> int:
    """The multiply-accumulates of every weight node (one forward pass at the traced input size)."""
    return int(sum(d["macs"] for _, d in graph.nodes(data=True) if d["kind"] == "weight"))


def log10p(x: float) -> float:
    """log10(1 + max(x, 0)): the scale static size features are stored on."""
    return math.log10(1.0 + max(float(x), 0.0))


def build_dag_for(spec: str, max_side: int | None = None, text_tokens: int | None = None,
                  device: str = "meta", name: str | None = None, layers: str | None = None,
                  max_layers: int = 0) -> BuildResult:
    """Graph of a model spec (known name, registered name, diffusers dir or config JSON), built
    from its config on `device` (meta: no weights are read); `layers` / `max_layers`: the
    model.layers selection (`quant.layers.restrict_layers`), so weight nodes are the chosen layers
    and the others are ordinary operations. Raises QsensError when the graph is not a valid DAG
    holding every quantizable layer exactly once (`check_dag`)."""
    from denoisers.architectures import resolve_model_source
    from denoisers.inputs import MAX_LATENT, example_input_spec
    from quant.layers import restrict_layers

    source = resolve_model_source(spec)
    model = source.build(device)
    if layers or max_layers:
        restrict_layers(model, layers, max_layers)
    inputs = example_input_spec(model, max_side or MAX_LATENT, text_tokens)
    result = build_dag(model, export_denoiser(model, inputs), name=name or source.name)
    result.graph.graph["source"] = str(source.spec)
    problems = check_dag(result.graph, quantizable_layers(model))
    if problems:
        raise QsensError(f"graph of {name or source.name}: {'; '.join(problems)}")
    result.graph.graph["problems"] = problems
    return result
