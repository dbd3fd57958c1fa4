"""Denoiser -> module-level DAG: validity on tiny models of real classes, features, PyG, I/O, CLI.

Full-size architectures (built on meta from the shipped configs) are marked slow; the default
run traces tiny random models of the same classes, diffusers-test style.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import networkx as nx
import pytest
import torch
from diffusers import DiTTransformer2DModel, UNet2DModel

import denoisers.inputs
from denoisers.architectures import build_from_config
from denoisers.inputs import example_input_spec, example_inputs
from graphs.dag import (build_dag, build_dag_for, check_dag, position_of, skip_concat_consumers,
                        skip_concats, weight_nodes)
from graphs.draw import block_subgraph, draw_graph
from graphs.export import export_denoiser
from graphs.features import CONFIG_COLUMNS, apply_config
from graphs.io import read_graph, write_graph
from graphs.pyg import CONFIG_SLICE, FEATURE_NAMES, layer_scores, node_layer, set_config, to_pyg
from qsens.cli import main
from core.errors import QsensError
from quant.layers import LayerInfo, count_macs, layer_info, quantizable_layers


def tiny_unet() -> UNet2DModel:
    """Like `digits`: class-conditional UNet2DModel at 16x16."""
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=10,
                       norm_num_groups=8, attention_head_dim=8)


def tiny_dit() -> DiTTransformer2DModel:
    return DiTTransformer2DModel(sample_size=16, patch_size=2, in_channels=1, out_channels=1,
                                 num_layers=2, num_attention_heads=2, attention_head_dim=8,
                                 num_embeds_ada_norm=10)


SD3_CONFIG = {"_class_name": "SD3Transformer2DModel", "sample_size": 16, "patch_size": 2,
              "in_channels": 4, "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2,
              "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 8,
              "out_channels": 4, "pos_embed_max_size": 32}
# an SD2-like UNet variant: per-block heads, linear projections, class embedding of a timestep,
# scale-shift time conditioning (AdaGroupNorm-style modulation), 2 transformer layers
UNET_VARIANT_CONFIG = {"_class_name": "UNet2DConditionModel", "sample_size": 16, "in_channels": 4,
                       "out_channels": 4, "block_out_channels": [16, 32], "layers_per_block": 1,
                       "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                       "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
                       "cross_attention_dim": 16, "attention_head_dim": [2, 4],
                       "use_linear_projection": True, "norm_num_groups": 8,
                       "class_embed_type": "timestep", "resnet_time_scale_shift": "scale_shift",
                       "transformer_layers_per_block": [2, 1]}

# shaped like the kandinsky-2-2-decoder unet: image-conditioned, no text (encoder_hidden_states is
# None; the image embedding feeds both the cross-attention and the time embedding)
KANDINSKY22_CONFIG = {"_class_name": "UNet2DConditionModel", "sample_size": 16, "in_channels": 4,
                      "out_channels": 8, "block_out_channels": [32, 64], "layers_per_block": 1,
                      "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
                      "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
                      "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "cross_attention_dim": 32,
                      "encoder_hid_dim": 48, "encoder_hid_dim_type": "image_proj",
                      "addition_embed_type": "image", "attention_head_dim": 8,
                      "resnet_time_scale_shift": "scale_shift", "norm_num_groups": 8}

# UNet2DConditionModel config branches that switch extra inputs on (diffusers' forward,
# get_aug_embed, process_encoder_hidden_states), each with the layers only that input reaches
_UNET_BASE = {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4,
              "out_channels": 4, "block_out_channels": [16, 32], "layers_per_block": 1,
              "norm_num_groups": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 16,
              "attention_head_dim": 4}
_SIMPLE_ATTN = {"down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
                "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
                "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}
UNET_BRANCHES = {
    "image_hint": ({**_SIMPLE_ATTN, "in_channels": 8, "encoder_hid_dim": 24,
                    "encoder_hid_dim_type": "image_proj", "addition_embed_type": "image_hint"},
                   ["add_embedding.input_hint_block.0", "encoder_hid_proj.image_embeds"]),
    "text_image": ({**_SIMPLE_ATTN, "encoder_hid_dim": 24, "encoder_hid_dim_type": "text_image_proj",
                    "addition_embed_type": "text_image"},
                   ["add_embedding.text_proj", "add_embedding.image_proj",
                    "encoder_hid_proj.image_embeds", "encoder_hid_proj.text_proj"]),
    "text": ({"encoder_hid_dim": 24, "addition_embed_type": "text", "addition_embed_type_num_heads": 4},
             ["add_embedding.pool.q_proj", "encoder_hid_proj"]),
    "lcm_projection": ({"time_cond_proj_dim": 12, "class_embed_type": "projection",
                        "projection_class_embeddings_input_dim": 8},
                       ["time_embedding.cond_proj", "class_embedding.linear_1"]),
    "simple_projection_fourier": ({"class_embed_type": "simple_projection", "time_embedding_type": "fourier",
                                   "projection_class_embeddings_input_dim": 8}, ["class_embedding"]),
    "gligen": ({"attention_type": "gated"},
               ["position_net.linears.0", "down_blocks.0.attentions.0.transformer_blocks.0.fuser.linear"]),
    "sdxl_text_time": ({"addition_embed_type": "text_time", "addition_time_embed_dim": 4,
                        "projection_class_embeddings_input_dim": 8 + 6 * 4}, ["add_embedding.linear_1"]),
}


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "unet":
        return tiny_unet().eval()
    if name == "dit":
        return tiny_dit().eval()
    cfg = {"sd3": SD3_CONFIG, "unet-variant": UNET_VARIANT_CONFIG, "kandinsky22": KANDINSKY22_CONFIG,
           **{k: {**_UNET_BASE, **v[0]} for k, v in UNET_BRANCHES.items()}}[name]
    from denoisers.architectures import build_from_config
    return build_from_config(cfg, device="cpu")


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            model = _tiny(name)
            cache[name] = (model, build_dag(model, name=name).graph)
        return cache[name]
    return get


def assert_valid(graph: nx.DiGraph, model: torch.nn.Module) -> None:
    layers = list(quantizable_layers(model))
    assert nx.is_directed_acyclic_graph(graph)
    weights = weight_nodes(graph)
    assert sorted(weights) == sorted(layers)  # every layer exactly once (node ids are unique)
    assert len(weights) == len(set(weights))
    inputs = [n for n, d in graph.nodes(data=True) if d["kind"] == "input"]
    reach = set(inputs).union(*(nx.descendants(graph, i) for i in inputs))
    back = nx.ancestors(graph, "output") | {"output"}
    assert set(graph.nodes) == reach & back  # every node on an input -> output path
    assert check_dag(graph, layers) == []


@pytest.mark.parametrize("name", ["unet", "dit", "sd3", "unet-variant"])
def test_dag_is_valid(built, name):
    model, graph = built(name)
    assert_valid(graph, model)
    kinds = {d["op"] for _, d in graph.nodes(data=True) if d["kind"] == "combine"}
    assert {"add", "attention"} <= kinds


@pytest.mark.parametrize("name", list(UNET_BRANCHES))
def test_config_switched_inputs_reach_every_layer(built, name):
    """Each config branch gets the inputs it needs, so the layers only they reach are traced."""
    model, graph = built(name)
    assert_valid(graph, model)
    for layer in UNET_BRANCHES[name][1]:
        assert layer in graph
        assert nx.has_path(graph, layer, "output")


def test_kandinsky22_image_conditioned_unet(built, tmp_path):
    model, graph = built("kandinsky22")
    assert_valid(graph, model)
    inputs = {n for n, d in graph.nodes(data=True) if d["kind"] == "input"}
    assert inputs == {"input/sample", "input/timestep", "input/added_cond_kwargs_image_embeds"}
    # the image embedding drives both the cross-attention context and the time embedding
    src = "input/added_cond_kwargs_image_embeds"
    for layer in ("encoder_hid_proj.image_embeds", "add_embedding.image_proj",
                  "down_blocks.1.attentions.0.to_k", "up_blocks.0.resnets.0.time_emb_proj"):
        assert nx.has_path(graph, src, layer)
    assert graph.graph["inputs"]["text_tokens"] is None
    path = tmp_path / "k.json"
    path.write_text(json.dumps(KANDINSKY22_CONFIG))
    assert main(["graph", str(path), "--out", str(tmp_path / "k_graph.json")]) == 0
    assert sorted(weight_nodes(read_graph(tmp_path / "k_graph.json"))) == sorted(quantizable_layers(model))


def test_missing_layer_is_an_error(tmp_path, capsys, monkeypatch):
    """Without `timestep_cond`, time_embedding.cond_proj never runs: refused, naming the layer."""
    model = _tiny("lcm_projection")
    spec = example_input_spec(model, 8)
    del spec.kwargs["timestep_cond"]
    n = len(quantizable_layers(model))
    with pytest.raises(QsensError, match=rf"1 of {n} quantizable layers are not in the graph: "
                                         r"time_embedding\.cond_proj \("):
        build_dag(model, export_denoiser(model, spec))
    # the CLI: exit 2, one line, nothing written
    monkeypatch.setattr(denoisers.inputs, "_SKIP", denoisers.inputs._SKIP | {"timestep_cond"})
    path = tmp_path / "lcm.json"
    path.write_text(json.dumps({**_UNET_BASE, **UNET_BRANCHES["lcm_projection"][0]}))
    assert main(["graph", str(path), "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "time_embedding.cond_proj" in err and "Traceback" not in err
    assert not (tmp_path / "g.json").exists()


def test_example_inputs_size_batch_seed_dtype():
    model = _tiny("kandinsky22")  # sample_size 16
    args, kw = example_inputs(model, batch_size=3)
    assert args[0].shape == (3, 4, 16, 16)  # real latent size by default
    assert kw["added_cond_kwargs"]["image_embeds"].shape == (3, 48)  # encoder_hid_dim
    assert kw["encoder_hidden_states"] is None and kw["timestep"].shape == (3,)
    assert model(*args, **kw)[0].shape == (3, 8, 16, 16)
    assert example_inputs(model, max_side=8)[0][0].shape == (1, 4, 8, 8)  # capped (graph tracing)
    # seeded normals: same seed same values, another seed other values, not a constant
    again = example_inputs(model, batch_size=3)[0][0]
    assert torch.equal(args[0], again) and not torch.equal(args[0], example_inputs(model, 3, seed=1)[0][0])
    assert 0.8 < args[0].std().item() < 1.2
    # MACs at the real size: every layer of the spatial path sees 4x the positions of side 8
    full = count_macs(model, *args, **kw)
    half = count_macs(model, *example_inputs(model, batch_size=3, max_side=8)[0],
                      **example_inputs(model, batch_size=3, max_side=8)[1])
    assert full["conv_in"] == 4 * half["conv_in"] and full["add_embedding.image_proj"] == half["add_embedding.image_proj"]
    # floats follow the model's dtype; time steps stay float32; meta models get meta inputs
    meta = build_from_config(KANDINSKY22_CONFIG).to(torch.bfloat16)
    args, kw = example_inputs(meta, batch_size=2)
    assert args[0].device.type == "meta" and args[0].dtype == torch.bfloat16
    assert kw["added_cond_kwargs"]["image_embeds"].dtype == torch.bfloat16 and kw["timestep"].dtype == torch.float32


def test_unet_structure(built):
    _, graph = built("unet")
    # the up path concatenates 4 skips; each feeds its resnet's conv1 (via norm) and shortcut
    assert len(skip_concats(graph)) == 4
    fed = skip_concat_consumers(graph)
    assert sorted(fed) == sorted(f"up_blocks.{b}.resnets.{r}.{c}" for b in (0, 1) for r in (0, 1)
                                 for c in ("conv1", "conv_shortcut"))
    # time embedding reaches every resnet's time_emb_proj; class labels feed the embedding add
    assert nx.has_path(graph, "input/timestep", "up_blocks.1.resnets.1.time_emb_proj")
    assert nx.has_path(graph, "input/class_labels", "time_embedding.linear_2") is False
    assert nx.has_path(graph, "input/class_labels", "down_blocks.0.resnets.0.time_emb_proj")


def test_dit_block_structure(built):
    _, graph = built("dit")
    attn = "transformer_blocks.1.attn1/attention"
    assert set(graph.predecessors(attn)) == {f"transformer_blocks.1.attn1.to_{x}" for x in "qkv"}
    norm = graph.nodes["transformer_blocks.1.norm1.norm/adanorm"]
    assert norm["op"] == "adanorm" and "layer_norm" in norm["ops"]  # norm + modulation merged
    assert "transformer_blocks.1.norm1.linear" in graph.predecessors("transformer_blocks.1.norm1.norm/adanorm")
    # diffusers reuses block 0's timestep embedder for the final modulation: one node, two uses
    assert graph.nodes["transformer_blocks.0.norm1.emb.timestep_embedder.linear_1"]["uses"] == 2


def test_static_features_match_modules(built):
    model, graph = built("unet")
    args, kwargs = example_input_spec(model).args, example_input_spec(model).kwargs
    macs = count_macs(model, *args, **kwargs)
    for name, module in quantizable_layers(model).items():
        d = graph.nodes[name]
        info = layer_info(name, module)
        assert d["op"] == info.kind
        assert d["shape"] == list(info.shape)
        assert d["out_channels"] == info.c_out
        assert d["macs"] == macs[name]
        assert d["params"] >= info.n_weights
        assert 0.0 <= d["depth_norm"] <= 1.0
    assert graph.graph["inputs"]["resolution"] == [16, 16]
    # depth: the longest path from an input, in nodes; depth_norm divides by the deepest node
    longest = {}
    for n in nx.topological_sort(graph):
        longest[n] = max((longest[p] + 1 for p in graph.predecessors(n)), default=0)
    deepest = max(longest.values())
    assert longest["output"] == deepest and graph.nodes["output"]["depth_norm"] == 1.0
    for n, d in graph.nodes(data=True):
        assert d["depth"] == longest[n] and d["depth_norm"] == pytest.approx(longest[n] / deepest), n
    assert graph.nodes["conv_in"]["depth"] < graph.nodes["conv_out"]["depth"]


def test_position_parsing():
    pos = position_of("down_blocks.1.attentions.0.transformer_blocks.2.attn1.to_q")
    assert (pos["section"], pos["section_kind"], pos["stage"], pos["block"], pos["sub_block"]) == \
        ("down_blocks", "down", 1, 0, 2)
    assert position_of("transformer_blocks.13.ff.net.2")["stage"] == 13
    assert position_of("conv_in")["section_kind"] == "io"
    assert position_of("mid_block.resnets.0.conv1")["section_kind"] == "mid"


@dataclass
class FakeBank:
    """Stands in for quant.bank.Bank: only .layers, .error and .quantized_bits are used."""

    layers: dict[str, LayerInfo]

    def error(self, layer: str, option: str) -> float:
        bits = int(option[3:])
        return 10.0 ** (-bits) * (1.5 if option.startswith("kma") else 1.0)

    def quantized_bits(self, layer: str, option: str) -> int:
        info = self.layers[layer]
        bits = int(option[3:])
        return info.n_weights * bits + 2 * 16 * info.c_out


def test_pyg_config_swap_touches_only_config_columns(built):
    model, graph = built("dit")
    bank = FakeBank({n: layer_info(n, m) for n, m in quantizable_layers(model).items()})
    data = to_pyg(graph)
    assert data.x.shape == (graph.number_of_nodes(), len(FEATURE_NAMES))
    assert data.edge_index.shape == (2, graph.number_of_edges())
    before = data.x.clone()
    layers = data.layer_names
    config = {layers[0]: "uaq3", layers[5]: "kmc4", layers[-1]: "kma3"}
    set_config(data, config, bank)
    changed = (data.x != before).any(dim=0)
    assert not changed[: CONFIG_SLICE.start].any()  # static columns untouched
    rows_changed = (data.x != before).any(dim=1).nonzero().flatten().tolist()
    assert sorted(data.node_names[i] for i in rows_changed) == sorted(config)
    method_cols = {m: FEATURE_NAMES.index(f"method_{m}") for m in ("fp16", "uaq", "kmc", "kma")}
    for i in data.weight_index.tolist():
        layer = node_layer(data, i)
        want = config.get(layer, "fp16")[:3] if layer in config else "fp16"
        assert data.x[i, method_cols[want]] == 1.0
    # the ratio column follows the bank: 1 / ratio = quantized bits / (16 n)
    i = data.node_names.index(layers[0])
    info = bank.layers[layers[0]]
    inv = data.x[i, FEATURE_NAMES.index("inv_ratio")].item()
    assert inv == pytest.approx(bank.quantized_bits(layers[0], "uaq3") / (16 * info.n_weights), rel=1e-5)
    assert node_layer(data, data.node_names.index("output")) is None
    scores = layer_scores(data, torch.arange(data.num_nodes, dtype=torch.float32))
    assert scores[layers[5]] == float(data.node_names.index(layers[5]))
    # back to fp16: the config block returns exactly to its initial value
    set_config(data, {}, bank)
    assert torch.equal(data.x, before)
    assert len(CONFIG_COLUMNS) == CONFIG_SLICE.stop - CONFIG_SLICE.start


def test_apply_config_on_digraph(built):
    model, graph = built("unet")
    graph = graph.copy()
    bank = FakeBank({n: layer_info(n, m) for n, m in quantizable_layers(model).items()})
    apply_config(graph, {"conv_in": "kmc3"}, bank)
    assert graph.nodes["conv_in"]["method"] == "kmc" and graph.nodes["conv_in"]["bits"] == 3
    assert graph.nodes["conv_in"]["ratio"] > 1.0 and graph.nodes["conv_in"]["qerror"] == pytest.approx(1e-3)
    assert graph.nodes["conv_out"]["method"] == "fp16"


def test_node_link_roundtrip(built, tmp_path):
    _, graph = built("unet")
    path = write_graph(graph, tmp_path / "g.json")
    data = json.loads(path.read_text())
    assert {"nodes", "edges", "graph"} <= set(data)
    back = read_graph(path)
    assert list(back.nodes) == list(graph.nodes)
    assert set(back.edges) == set(graph.edges)
    for n in graph.nodes:
        assert back.nodes[n] == graph.nodes[n]
    assert back.graph["model_class"] == "UNet2DModel"
    assert torch.equal(to_pyg(back).x, to_pyg(graph).x)


def test_draw(built, tmp_path):
    model, graph = built("unet")
    scores = {n: float(i) for i, n in enumerate(quantizable_layers(model))}
    out = draw_graph(graph, tmp_path / "u.png", scores=scores, title="scores")
    assert out.stat().st_size > 10_000
    _, dit = built("dit")
    out = draw_graph(block_subgraph(dit, "transformer_blocks.1"), tmp_path / "b.svg",
                     prefix="transformer_blocks.1")
    assert out.read_text().lstrip().startswith("<?xml")


# --- CLI -----------------------------------------------------------------------------------


def test_cli_on_saved_model_dir(tmp_path, capsys):
    model = _tiny("unet")
    model.save_pretrained(tmp_path / "pipe" / "unet")  # a pipeline dir with a unet/ subfolder
    out = tmp_path / "g.json"
    rc = main(["graph", str(tmp_path / "pipe"), "--out", str(out), "--draw", str(tmp_path / "g.png")])
    assert rc == 0
    graph = read_graph(out)
    assert sorted(weight_nodes(graph)) == sorted(quantizable_layers(model))
    assert all(graph.nodes[n]["module"] == n for n in weight_nodes(graph))
    assert (tmp_path / "g.png").stat().st_size > 0
    assert "weight" in capsys.readouterr().out


def test_cli_on_config_json(tmp_path):
    path = tmp_path / "sd3.json"
    path.write_text(json.dumps(SD3_CONFIG))
    out = tmp_path / "sd3_graph.json"
    assert main(["graph", str(path), "--out", str(out)]) == 0
    graph = read_graph(out)
    assert graph.graph["model_class"] == "SD3Transformer2DModel"
    assert graph.graph["n_weight"] == len(quantizable_layers(_tiny("sd3")))


@pytest.mark.parametrize("spec, message", [("no-such-model", "unknown model 'no-such-model'"),
                                           ("BADJSON", "not valid JSON")])
def test_cli_bad_input_is_one_line(tmp_path, capsys, spec, message):
    if spec == "BADJSON":
        spec = str(tmp_path / "bad.json")
        (tmp_path / "bad.json").write_text("{")
    rc = main(["graph", spec, "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


# --- full-size architectures (meta device) ----------------------------------------------------

REAL = ["dit-xl-2", "pixart-alpha", "pixart-sigma", "sd15", "hunyuan-dit", "sdxl"]


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_real_architecture_dag(name):
    from denoisers.architectures import build_from_config

    result = build_dag_for(name)
    model = build_from_config(name)
    assert_valid(result.graph, model)
