"""Real low-bit inference and export (quant.pack, search.export, `qsens export`, issue 15).

Packed layers must compute exactly what the fake-quant model computes (every method, bits 2-8),
checkpoints must round-trip without the bank and refuse bad input in one line, torchao must load
and run the written config, and skip lists must follow the predictor's ranking.
"""
from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from quant import Bank, QuantConfig, QsensError, build_bank, pack, quantized
from quant.layers import quantizable_layers
from quant.options import METHODS
from quant.pack import (REST_FILE, WEIGHTS_FILE, PackedLayer, load_quantized, packed_layers, read_manifest,
                        save_quantized, weight_bytes)
from quant.packing import pack_codes, unpack_codes
from tests.tiny_pipelines import tiny_pipelines  # noqa: F401 (session fixture)

ALL_OPTIONS = [f"{m}{b}" for m in METHODS for b in range(2, 9)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread (conftest)


class Toy(nn.Module):
    """Every quantizable kind, a non-default padding mode, and two Linear layers sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.mix = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 6)
        self.tied_a = nn.Linear(6, 6)
        self.tied_b = nn.Linear(6, 6)
        self.tied_b.weight = self.tied_a.weight  # one tensor, two modules (two biases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(2)  # (N, 8, H·W)
        h = self.mix(h).mean(-1)  # (N, 8)
        h = self.head(h)
        return self.tied_b(torch.tanh(self.tied_a(h)))


def toy_input() -> torch.Tensor:
    return torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def toy() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


@pytest.fixture(scope="module")
def toy_bank(toy: Toy) -> Bank:
    return build_bank(toy, ALL_OPTIONS, model_name="toy", progress=False)


def accounted_bytes(option: str, shape: tuple[int, ...]) -> int:
    """Codes rounded up to whole bytes + fp16 params, from the size accounting formula (docs/quant.md)."""
    bits, method = int(option[3:]), option[:3]
    n = int(np.prod(shape))
    floats = {"uaq": 2 * shape[0], "kmc": (1 << bits) * shape[0], "kma": 1 << bits}[method]
    return -(-n * bits // 8) + 2 * floats


# ------------------------------------------------------------------------------------ bit packing
@pytest.mark.parametrize("bits", range(1, 9))
def test_unpack_codes_inverts_the_bit_stream_layout(bits: int) -> None:
    for n in (1, 7, 8, 9, 23, 1001):
        codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        packed = pack_codes(codes, bits)
        assert packed.numel() == -(-n * bits // 8)
        # the documented layout: bit j of code i is stream bit i·bits + j, little-endian per byte
        stream = [(int(packed[p // 8]) >> (p % 8)) & 1 for p in range(n * bits)]
        expect = [sum(stream[i * bits + j] << j for j in range(bits)) for i in range(n)]
        assert codes.tolist() == expect
        assert torch.equal(unpack_codes(packed, bits, n), codes)


# ------------------------------------------------------------------ packed == fake-quant, bit for bit
@pytest.mark.parametrize("option", ALL_OPTIONS)
def test_packed_toy_equals_fake_quant_exactly(toy: Toy, toy_bank: Bank, option: str) -> None:
    config = QuantConfig.uniform("toy", toy_bank.layer_names, option)
    x = toy_input()
    with torch.no_grad(), quantized(toy, config, toy_bank):
        want = toy(x)
    packed = pack(copy.deepcopy(toy), config, toy_bank)
    with torch.no_grad():
        got = packed(x)
    assert got.dtype == want.dtype and torch.equal(got, want)
    layers = quantizable_layers(packed)
    assert all(isinstance(m, PackedLayer) for m in layers.values())
    assert not any(n.endswith("weight") for n, _ in packed.named_parameters())  # no FP weight left
    # memory: exactly the accounted bytes (codes rounded up per layer), the tied tensor once
    unique = {n: toy_bank.layers[n].shape for n in ("conv", "mix", "head", "tied_a")}
    assert weight_bytes(packed)["packed"] == sum(accounted_bytes(option, s) for s in unique.values())
    # the rebuilt weight is the bank's dequantized weight itself
    assert torch.equal(layers["mix"].weight, toy_bank.dequantize("mix", option))


def test_mixed_config_fp16_layers_and_dtype_casts(toy: Toy, toy_bank: Bank) -> None:
    config = QuantConfig("toy", {"conv": "kmc5", "mix": "fp16", "head": "kma2",
                                 "tied_a": "uaq7", "tied_b": "uaq7"})
    x = toy_input()
    packed = pack(copy.deepcopy(toy), config, toy_bank)
    assert not isinstance(packed.mix, PackedLayer)
    with torch.no_grad(), quantized(toy, config, toy_bank):
        assert torch.equal(packed(x), toy(x))
    # float64: the fp16 params are stored as bit patterns, so a dtype cast cannot round them
    fp64 = copy.deepcopy(toy).double()
    with torch.no_grad(), quantized(fp64, config, toy_bank):
        want = fp64(x.double())
    packed.double()
    assert packed.head._wdtype.dtype == torch.float64 and packed.head.params.dtype == torch.float16
    with torch.no_grad():
        got = packed(x.double())
    assert got.dtype == torch.float64 and torch.equal(got, want)


def test_activation_bits_and_earlier_hooks_go_with_the_packed_model(toy: Toy, toy_bank: Bank, tmp_path: Path) -> None:
    from quant.activations import enable_activation_quant

    config = QuantConfig.uniform("toy", toy_bank.layer_names, "uaq3")
    config.act_bits, config.act_options = 6, {"head": 3, "mix": 4}
    x = toy_input()
    with torch.no_grad(), quantized(toy, config, toy_bank):
        want = toy(x)
    model = copy.deepcopy(toy)
    handle = enable_activation_quant(model, 8)  # installed before packing, removed after
    pack(model, config, toy_bank)
    handle.remove()
    with torch.no_grad():
        assert torch.equal(model(x), want)  # the config's A6 / A3 / A4, and the A8 hooks are gone
    save_quantized(model, tmp_path / "q", config, fingerprint=toy_bank.fingerprint)
    assert read_manifest(tmp_path / "q")["config"]["act_options"] == {"head": 3, "mix": 4}
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "q", copy.deepcopy(toy))(x), want)


def test_tied_layers_stay_one_packed_tensor(toy: Toy, toy_bank: Bank, tmp_path: Path) -> None:
    config = QuantConfig.uniform("toy", toy_bank.layer_names, "kmc3")
    packed = pack(copy.deepcopy(toy), config, toy_bank)
    a, b = packed.tied_a, packed.tied_b
    assert b.__dict__["_tied_to"] is a and "codes" not in b._buffers and b.packed_nbytes == 0
    assert not torch.equal(a.bias, b.bias)  # the biases stay their own
    save_quantized(packed, tmp_path / "q", config, fingerprint=toy_bank.fingerprint)
    manifest = read_manifest(tmp_path / "q")
    assert manifest["layers"]["tied_b"]["tied_to"] == "tied_a" and "codes" not in manifest["layers"]["tied_b"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "q" / WEIGHTS_FILE), "pt") as f:
        assert sorted(f.keys()) == sorted(f"{n}.{k}" for n in ("conv", "mix", "head", "tied_a")
                                          for k in ("codes", "params"))
    loaded = load_quantized(tmp_path / "q", copy.deepcopy(toy))
    assert loaded.tied_b.__dict__["_tied_to"] is loaded.tied_a
    with torch.no_grad():
        assert torch.equal(loaded(toy_input()), packed(toy_input()))
    with pytest.raises(QsensError, match="already packed"):
        pack(packed, config, toy_bank, verify=False)


# -------------------------------------------------------------------- tiny real-class pipeline (SD)
# Every method at several bit-widths and every bit-width 2-8 (the full 21-option cross product
# runs on the toy above; k-means at 4-5 bits costs seconds per option on this UNet).
PIPE_OPTIONS = ["uaq2", "uaq3", "uaq4", "uaq5", "uaq6", "uaq7", "uaq8", "kmc3", "kmc6", "kmc8",
                "kma2", "kma7", "kma8"]


@pytest.fixture(scope="module")
def tiny_sd(tiny_pipelines):
    from denoisers.registry import load_denoiser
    from denoisers.spec import ModelSpec

    source = tiny_pipelines("sd")
    den = load_denoiser(ModelSpec(source=str(source), name="tiny-sd", steps=2, batch_size=2))
    den.prompts = ["a red cube", "a lion riding a bike"]
    bank = build_bank(den.model, PIPE_OPTIONS, model_name="tiny-sd", progress=False)
    return source, den, bank


def cyclic(bank: Bank, shift: int) -> QuantConfig:
    names = [n for n in bank.layer_names]
    return QuantConfig(bank.model, {n: PIPE_OPTIONS[(i + shift) % len(PIPE_OPTIONS)] for i, n in enumerate(names)})


def test_packed_pipeline_equals_fake_quant_exactly(tiny_sd) -> None:
    _, den, bank = tiny_sd
    fp = copy.deepcopy(den.model)
    args, kwargs = den.example_inputs(batch_size=2)
    for shift in range(3):  # each option lands on layers of several kinds and sizes
        config = cyclic(bank, shift)
        with torch.no_grad(), quantized(den.model, config, bank):
            want = den.model(*args, **kwargs)[0]
            images_fake = den.generate(2, seed=3).images
        den.model = pack(copy.deepcopy(fp), config, bank)
        den.pipe.unet = den.model
        with torch.no_grad():
            got = den.model(*args, **kwargs)[0]
        images_packed = den.generate(2, seed=3).images
        den.model = den.pipe.unet = fp
        assert torch.equal(got, want)
        assert np.array_equal(images_packed, images_fake)
    assert set(PIPE_OPTIONS) <= {o for s in range(3) for o in cyclic(bank, s).options.values()}


def test_cli_export_then_generate_without_the_bank(tiny_sd, tmp_path: Path, capsys) -> None:
    from qsens.cli import main

    source, den, bank = tiny_sd
    bank_dir = bank.save(tmp_path / "bank") if bank.path is None else bank.path
    config = cyclic(bank, 1)
    config.avg_bits = bank.summarize(config).avg_bits
    cfg = config.save(tmp_path / "c.json")
    common = ["--model", str(source), "--name", "tiny-sd", "--data-dir", str(tmp_path / "data")]
    assert main(["export", *common, "--bank", str(bank_dir), "--config", str(cfg), "--out",
                 str(tmp_path / "q")]) == 0
    assert "packed 83 layers" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "q")
    assert manifest["model"] == "tiny-sd" and manifest["fingerprint"] == bank.fingerprint
    assert manifest["config"]["options"] == config.options and manifest["dtype"] == "float32"
    assert manifest["architecture"]["class"].endswith("UNet2DConditionModel")
    # the weights file is the accounted payload, rounded up per layer, plus the safetensors header
    raw = (tmp_path / "q" / WEIGHTS_FILE).read_bytes()
    header = struct.unpack("<Q", raw[:8])[0]
    assert len(raw) - 8 - header == sum(accounted_bytes(config.option(n), bank.layers[n].shape)
                                        for n in bank.layer_names)
    assert manifest["packed_accounted_bytes"] == bank.summarize(config).quantized_bytes

    gen = ["generate", *common, "--steps", "2", "--batch-size", "2", "--prompt", "a red cube",
           "--n-images", "2"]
    assert main([*gen, "--quantized", str(tmp_path / "q"), "--out", str(tmp_path / "packed")]) == 0
    assert main([*gen, "--config", str(cfg), "--bank", str(bank_dir), "--out", str(tmp_path / "fake")]) == 0
    files = json.loads((tmp_path / "packed" / "generate.json").read_text())["files"]
    assert len(files) == 2
    for f in files:
        assert (tmp_path / "packed" / f).read_bytes() == (tmp_path / "fake" / f).read_bytes()


def test_load_without_model_rebuilds_the_architecture(tiny_sd, tmp_path: Path) -> None:
    _, den, bank = tiny_sd
    config = cyclic(bank, 2)
    packed = pack(copy.deepcopy(den.model), config, bank)
    save_quantized(packed, tmp_path / "q", config, fingerprint=bank.fingerprint)
    loaded = load_quantized(tmp_path / "q")  # no FP model, no bank
    assert type(loaded).__name__ == "UNet2DConditionModel"
    assert not any(t.device.type == "meta" for t in loaded.state_dict().values())
    assert len(packed_layers(loaded)) == len(bank.layer_names)
    mem = weight_bytes(loaded)
    assert mem["packed"] == bank.summarize(config).quantized_bytes and mem["fp_layers"] == 0
    args, kwargs = den.example_inputs(batch_size=2)
    with torch.no_grad(), quantized(den.model, config, bank):
        want = den.model(*args, **kwargs)[0]
    with torch.no_grad():
        assert torch.equal(loaded(*args, **kwargs)[0], want)


# ------------------------------------------------------------------------------- one-line errors
@pytest.fixture
def toy_checkpoint(toy: Toy, toy_bank: Bank, tmp_path: Path) -> Path:
    config = QuantConfig.uniform("toy", toy_bank.layer_names, "uaq4")
    return save_quantized(pack(copy.deepcopy(toy), config, toy_bank), tmp_path / "q", config,
                          fingerprint=toy_bank.fingerprint)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_another_models_checkpoint_is_refused(toy_checkpoint: Path) -> None:
    torch.manual_seed(5)
    other = Toy()
    with pytest.raises(QsensError) as exc:
        load_quantized(toy_checkpoint, other)
    assert "other weights" in one_line(exc) and "qsens export" in str(exc.value)
    assert isinstance(other.conv, nn.Conv2d) and not isinstance(other.conv, PackedLayer)  # untouched


def test_truncated_and_missing_files_are_one_line(toy_checkpoint: Path, toy: Toy) -> None:
    weights = toy_checkpoint / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:-40])
    with pytest.raises(QsensError) as exc:
        load_quantized(toy_checkpoint, copy.deepcopy(toy))
    assert "truncated" in one_line(exc)
    # a truncated file whose manifest was edited to match: safetensors' own check, one line
    manifest = json.loads((toy_checkpoint / "manifest.json").read_text())
    manifest["files"][WEIGHTS_FILE]["bytes"] = len(data) - 40
    (toy_checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QsensError) as exc:
        load_quantized(toy_checkpoint, copy.deepcopy(toy))
    assert "unreadable safetensors" in one_line(exc)
    (toy_checkpoint / "manifest.json").write_text(json.dumps(manifest | {"format": "gguf"}))
    with pytest.raises(QsensError) as exc:
        load_quantized(toy_checkpoint, copy.deepcopy(toy))
    assert "format 'gguf'" in one_line(exc)
    (toy_checkpoint / "manifest.json").write_text(json.dumps(manifest))
    (toy_checkpoint / REST_FILE).unlink()
    with pytest.raises(QsensError, match="missing"):
        load_quantized(toy_checkpoint, copy.deepcopy(toy))
    (toy_checkpoint / "manifest.json").unlink()
    with pytest.raises(QsensError) as exc:
        load_quantized(toy_checkpoint, copy.deepcopy(toy))
    assert "not a quantized checkpoint" in one_line(exc)


def test_a_plain_module_checkpoint_needs_the_model(toy_checkpoint: Path) -> None:
    with pytest.raises(QsensError) as exc:
        load_quantized(toy_checkpoint)  # a plain nn.Module cannot be rebuilt from the manifest
    assert "records no diffusers architecture" in one_line(exc)


def test_cli_errors_are_one_line(tiny_sd, tmp_path: Path, capsys) -> None:
    from diffusers import DiffusionPipeline

    from qsens.cli import main

    source, den, bank = tiny_sd
    bank_dir = bank.path or bank.save(tmp_path / "bank")
    config = cyclic(bank, 0)
    cfg = config.save(tmp_path / "c.json")
    common = ["--model", str(source), "--name", "tiny-sd", "--data-dir", str(tmp_path / "data")]
    assert main(["export", *common, "--bank", str(bank_dir), "--config", str(cfg), "--out", str(tmp_path / "q")]) == 0
    # another model: the same pipeline with one weight changed
    pipe = DiffusionPipeline.from_pretrained(str(source), local_files_only=True)
    with torch.no_grad():
        pipe.unet.conv_in.weight[0, 0, 0, 0] += 1
    pipe.save_pretrained(str(tmp_path / "other"))
    gen = ["generate", "--data-dir", str(tmp_path / "data"), "--steps", "2", "--prompt", "x",
           "--n-images", "1", "--out", str(tmp_path / "g")]
    cases = {
        "other weights": [*gen, "--model", str(tmp_path / "other"), "--name", "tiny-sd",
                          "--quantized", str(tmp_path / "q")],
        "unknown --format": ["export", *common, "--format", "gguf", "--config", str(cfg), "--out", str(tmp_path / "x")],
        "not a quantized checkpoint": [*gen, "--model", str(source), "--quantized", str(tmp_path)],
        "needs --keep-top": ["export", *common, "--format", "skip-list", "--out", str(tmp_path / "x")],
    }
    capsys.readouterr()
    for needle, argv in cases.items():
        assert main(argv) == 2, needle
        err = capsys.readouterr().err  # may also hold transformers' "Loading weights" bar
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, (needle, err)


# ------------------------------------------------------------------------------------------ torchao
def test_torchao_config_loads_and_runs_in_torchao(tmp_path: Path) -> None:
    from torchao.core.config import config_from_dict

    from denoisers.digits import tiny_digits_denoiser
    from search.export import TORCHAO_FILE, apply_torchao_config, torchao_plan, write_torchao_config

    den = tiny_digits_denoiser("unet", steps=2, gen_batch_size=4)  # diffusers UNet2DModel
    infos = {i.name: i for i in den.layer_infos(with_macs=False)}
    linears = [n for n, i in infos.items() if i.kind == "Linear"]
    convs = [n for n, i in infos.items() if i.kind == "Conv2d"]
    options = {n: f"uaq{2 + i % 7}" for i, n in enumerate(linears[:7])}
    options |= {n: ("kmc3", "kma4")[i % 2] for i, n in enumerate(linears[7:])}
    options |= {convs[0]: "uaq4", convs[1]: "uaq8", convs[2]: "kmc3"}
    config = QuantConfig(den.name, options)
    plan = torchao_plan(config, infos)
    assert convs[0] == "conv_in" and "conv_in" in plan.unsupported  # 1 input channel: torchao fails
    assert convs[2] in plan.unsupported and "Linear weights only" in plan.unsupported[convs[2]]
    assert set(plan.configs) == set(options) - set(plan.unsupported)
    path = write_torchao_config(plan, tmp_path / TORCHAO_FILE)
    data = json.loads(path.read_text())
    assert data["options"] == options and set(data["unsupported"]) == {"conv_in", convs[2]}
    intx = data["fqn_to_config"][linears[1]]
    assert config_from_dict(intx).weight_dtype == torch.int3  # torchao reads its own entries

    fp = copy.deepcopy(den.model)
    args, kwargs = den.example_inputs(batch_size=2)
    apply_torchao_config(den.model, tmp_path)  # torchao.quantize_ with the FqnToConfig
    mods = dict(den.model.named_modules())
    for name, option in options.items():
        w = mods[name].weight
        if name in plan.unsupported:
            assert type(w) is nn.Parameter and torch.equal(w, dict(fp.named_modules())[name].weight)
            continue
        kind = type(w).__name__
        assert kind == ("IntxUnpackedToInt8Tensor" if option.startswith("uaq") else "CodebookQuantizedTensor")
        deq = w.dequantize().reshape(w.shape[0], -1)
        bits = int(option[3:])
        if option.startswith("uaq"):  # integers at the layer's bits, per output channel
            assert max(len(torch.unique(r)) for r in deq) <= 1 << bits
            assert int(w.qdata.min()) >= -(1 << (bits - 1)) and int(w.qdata.max()) < 1 << (bits - 1)
            # torchao's own min-max range (no clipping search): every weight within half a step
            orig = dict(fp.named_modules())[name].weight.reshape(w.shape[0], -1)
            step = (orig.amax(1).clamp_min(0) - orig.amin(1).clamp_max(0)) / ((1 << bits) - 1)
            assert ((deq - orig).abs() <= step[:, None] / 2 * 1.01 + 1e-6).all()
        else:  # one codebook of 2^b entries per tensor (per-row max scales on top)
            assert w.codebook.numel() == 1 << bits
    with torch.no_grad():
        out, ref = den.model(*args, **kwargs)[0], fp(*args, **kwargs)[0]
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert den.generate(4, seed=0).images.shape == (4, 8, 8, 1)


# ---------------------------------------------------------------------------------------- skip list
def test_skip_list_follows_the_predictor_ranking(tmp_path: Path, capsys) -> None:
    from search.export import sensitivity_ranking, skip_list

    layers = ["conv_in", "proj_out", "blocks.0.proj_out", "blocks.0.ff", "blocks.1.ff", "conv_out"]
    low = {"conv_in": 1.0, "proj_out": 9.0, "blocks.0.proj_out": 0.5, "blocks.0.ff": 4.0,
           "blocks.1.ff": 0.1, "conv_out": 6.0}
    rows = []
    for name in layers:
        rows += [{"layer": name, "option": "uaq3", "delta_fid": low[name], "delta_fid_std": 0.1, "block": "x"},
                 {"layer": name, "option": "kmc3", "delta_fid": low[name] + 1, "delta_fid_std": 0.1, "block": "x"},
                 {"layer": name, "option": "uaq4", "delta_fid": 0.0, "delta_fid_std": 0.0, "block": "x"}]
    pdir = tmp_path / "pred"
    pdir.mkdir()
    pd.DataFrame(rows).to_parquet(pdir / "sensitivity.parquet", index=False)
    ranking = sensitivity_ranking(pdir)
    assert list(ranking.index) == ["proj_out", "conv_out", "blocks.0.ff", "conv_in", "blocks.0.proj_out",
                                   "blocks.1.ff"]
    data = skip_list(ranking, 3, layers, tied=[["blocks.0.ff", "blocks.1.ff"]])
    assert data["keep"] == ["proj_out", "conv_out", "blocks.0.ff", "blocks.1.ff"]  # + its tied partner
    assert data["quanto"]["exclude"] == data["keep"] and data["quanto"]["also_kept"] == []
    # each list is written for its tool's name rule: "proj_out" alone would also keep blocks.0.proj_out
    # (diffusers+torchao: a substring; transformers: a suffix), so it is anchored there; diffusers'
    # bitsandbytes and quanto rules match local names, which cannot name it alone: refused
    assert data["diffusers"]["modules_to_not_convert"] == ["proj_out.weight", "conv_out", "blocks.0.ff", "blocks.1.ff"]
    assert data["transformers"]["llm_int8_skip_modules"][0] == "proj_out$"
    for tool in ("diffusers", "transformers", "quanto"):
        assert data[tool]["keeps"] == ["proj_out", "blocks.0.ff", "blocks.1.ff", "conv_out"]
        assert data[tool]["also_kept"] == []
    for tool in ("bitsandbytes", "diffusers_quanto"):
        assert data[tool]["refused"] and data[tool]["also_kept"] == ["blocks.0.proj_out"]
    assert data["ranking"][0] == {"layer": "proj_out", "rank": 1, "sens_low": 9.5, "sens_high": 0.0}
    with pytest.raises(QsensError, match="another model"):
        skip_list(ranking, 2, layers[:-1])
    with pytest.raises(QsensError, match="at least 1"):
        skip_list(ranking, 0, layers)
