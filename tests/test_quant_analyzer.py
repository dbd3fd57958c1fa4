"""analysis.quant_analyzer (seed 004): sweeps against values computed by hand, static ranges,
per-layer MSE, offline HTML, resume/determinism, layer selection and the CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from analysis.quant_analyzer import QuantAnalyzerParams, run_quant_analyzer, select_layers
from core.errors import QsensError

PARAMS = QuantAnalyzerParams(weight_option="uaq4", act_bits=6, act_mode="static", images=10, image_seed=2,
                             max_layers=3, sqnr_bits=(8,), calib_samples=8, calib_trajectories=4,
                             calib_seed=3, hist_bins=8, chunk=8)


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_digits_scorer):
    """One analyzer run on the untrained tiny digits model: (denoiser, bank, scorer, out dir)."""
    from conftest import one_thread
    from denoisers.digits import tiny_digits_denoiser as make
    from quant.bank import build_bank

    scorer = tiny_digits_scorer
    with one_thread():
        den = make("unet", seed=0)
        bank = build_bank(den.model, ["uaq4"], model_name="digits", progress=False)
        out = tmp_path_factory.mktemp("qa")
        run_quant_analyzer(den, bank, scorer, PARAMS, out, progress=False)
    return den, bank, scorer, out


def _json(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def _calibration_ranges(den):
    from sampling.calibration import activation_ranges, collect_calibration

    calib = collect_calibration(den, PARAMS.calib_samples, trajectories=PARAMS.calib_trajectories,
                                seed=PARAMS.calib_seed, how=PARAMS.calib_timesteps)
    return calib, activation_ranges(den.model, calib, PARAMS.chunk)


def test_sweeps_equal_settings_scored_by_hand(report, one_torch_thread) -> None:
    from quant.activations import activation_quant
    from quant.apply import quantized
    from quant.config import QuantConfig

    den, bank, scorer, out = report
    layers = den.layer_names()
    swept = [layers[0], layers[25], layers[-1]]  # 3 of 51, evenly spaced
    _, ranges = _calibration_ranges(den)

    def fid(w_layers=(), a_layers=()):
        with quantized(den.model, QuantConfig("digits", {l: "uaq4" for l in w_layers}), bank):
            with activation_quant(den.model, {l: 6 for l in a_layers}, ranges={l: ranges[l] for l in a_layers}):
                return scorer.score(den.generate(10, 2)).fid

    enabled, disabled = _json(out, "per_layer_quant_enabled.json"), _json(out, "per_layer_quant_disabled.json")
    assert list(enabled["weight"]) == swept and list(disabled["activation"]) == swept
    fp = scorer.score(den.generate(10, 2)).fid
    assert enabled["fp"]["fid"] == fp == enabled["all_off"]["fid"]
    for layer in (swept[0], swept[2]):
        others = [l for l in layers if l != layer]
        assert enabled["weight"][layer]["fid"] == fid(w_layers=[layer])
        assert disabled["weight"][layer]["fid"] == fid(w_layers=others)
        assert enabled["activation"][layer]["fid"] == fid(a_layers=[layer])
        assert disabled["activation"][layer]["fid"] == fid(a_layers=others)
    summary = _json(out, "weight_activation_sensitivity.json")
    assert summary["FP"]["fid"] == fp
    assert summary["weights_only"]["fid"] == fid(w_layers=layers) == disabled["all_on"]["weight"]["fid"]
    assert summary["activations_only"]["fid"] == fid(a_layers=layers)
    assert summary["weights_and_activations"]["fid"] == fid(w_layers=layers, a_layers=layers)
    # quantizing changes things: the sweep is not a list of FP scores
    assert summary["weights_only"]["fid"] != fp and enabled["weight"][swept[0]]["fid"] != fp


def test_ranges_histograms_and_mse_by_hand(report, one_torch_thread) -> None:
    from quant.activations import fake_quantize_static

    den, bank, _, out = report
    calib, ranges = _calibration_ranges(den)
    act = _json(out, "min_max_ranges/activations.json")
    # static ranges = min/max of each layer's input over the calibration inputs
    x = calib.args[0]
    assert act["ranges"]["conv_in"] == {"min": float(x.min()), "max": float(x.max())}
    assert {l: (r["min"], r["max"]) for l, r in act["ranges"].items()} == ranges
    assert sum(act["calibration"]["step_histogram"]) == PARAMS.calib_samples
    # histograms count every calibration value once
    hist = _json(out, "activations_pdf/activations_pdf.json")["histograms"]["conv_in"]
    assert sum(hist["counts"]) == x.numel() and len(hist["edges"]) == PARAMS.hist_bins + 1
    w = den.model.conv_in.weight.detach()
    wh = _json(out, "weights_pdf/weights_pdf.json")["histograms"]["conv_in"]
    assert sum(wh["counts"]) == w.numel() and wh["edges"][0] == float(w.min()) and wh["edges"][-1] == float(w.max())
    wr = _json(out, "min_max_ranges/weights.json")["ranges"]["conv_in"]
    assert wr["max"] == w.reshape(w.shape[0], -1).amax(1).tolist()
    wq = bank.dequantize("conv_in", "uaq4")
    assert wr["encoding_min"] == wq.reshape(w.shape[0], -1).amin(1).tolist()
    # conv_in sees the raw input, so its output MSE is the layer's own error, computable alone
    conv = den.model.conv_in
    with torch.no_grad():
        y = conv(x).double()
        y_w = conv._conv_forward(x, wq, conv.bias).double()
        y_a = conv(fake_quantize_static(x, 6, *ranges["conv_in"])).double()
    mse = _json(out, "per_layer_mse_loss.json")["mse"]["conv_in"]
    assert mse["weight"] == pytest.approx(float(((y_w - y) ** 2).mean()), rel=1e-9)
    assert mse["activation"] == pytest.approx(float(((y_a - y) ** 2).mean()), rel=1e-9)
    assert mse["both_relative"] == pytest.approx(mse["both"] / float((y ** 2).mean()), rel=1e-9)
    sqnr = _json(out, "per_layer_act_sqnr.json")["sqnr_db"]
    assert set(sqnr) == set(den.layer_names()) and all(isinstance(v["8"], float) for v in sqnr.values())


def test_html_opens_offline_with_plotly_inlined(report) -> None:
    _, _, _, out = report
    pages = sorted(out.rglob("*.html"))
    names = {p.relative_to(out).as_posix() for p in pages}
    assert {"index.html", "per_layer_quant_enabled.html", "per_layer_quant_disabled.html", "per_layer_mse_loss.html",
            "min_max_ranges/weights.html", "min_max_ranges/activations.html", "weights_pdf/weights_pdf.html",
            "activations_pdf/activations_pdf.html"} <= names
    remote = re.compile(r"""<(script|link|img|iframe|source|embed)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""",
                        re.I)
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not remote.search(text), page
        assert "mathjax" not in text.lower().split("</script>")[-1], page
        if page.name != "index.html":
            assert "<script" in text and "Plotly.newPlot" in text and len(text) > 1_000_000, page  # inlined
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "<script" not in index
    links = re.findall(r'href="([^"]+)"', index)
    assert len(links) == 9 and all((out / l).is_file() for l in links)
    assert "more sensitive to" in index and "ΔFID" in index


def test_resume_and_same_json(report, monkeypatch, tmp_path: Path, one_torch_thread) -> None:
    den, bank, scorer, out = report
    before = {p: p.read_bytes() for p in out.rglob("*.json") if p.name != "run.json"}
    assert len(before) == 9

    def boom(*a, **k):
        raise AssertionError("a finished setting was scored again")

    monkeypatch.setattr(scorer, "score", boom)
    run_quant_analyzer(den, bank, scorer, PARAMS, out, progress=False)
    assert {p: p.read_bytes() for p in before} == before  # resumed; the rest recomputed identically
    # other generation settings (here the batch size) are another key: nothing is reused
    # (the run stops at its first scoring; the JSON files stay as they were)
    den.configure_generation(batch_size=4)
    try:
        with pytest.raises(AssertionError, match="scored again"):
            run_quant_analyzer(den, bank, scorer, PARAMS, out, progress=False)
    finally:
        den.configure_generation(batch_size=8)
    # another setting is a new key: the old rows are not reused
    monkeypatch.undo()
    calls = []
    orig = scorer.score
    monkeypatch.setattr(scorer, "score", lambda g: calls.append(1) or orig(g))
    from dataclasses import replace

    run_quant_analyzer(den, bank, scorer, replace(PARAMS, layers="conv_out$", sqnr_max_layers=1), tmp_path,
                       progress=False)
    assert len(calls) == 4 + 4  # baselines + one layer × 4 sweeps
    assert list(_json(tmp_path, "per_layer_act_sqnr.json")["sqnr_db"]) == ["conv_out"]


def test_select_layers_and_params_errors(tmp_path: Path) -> None:
    names = list("abcdefghij")
    assert select_layers(names, None, 4) == ["a", "d", "g", "j"]
    assert select_layers(names, None, 0) == names
    assert select_layers(names, "^[ace]$", 2) == ["a", "e"]
    with pytest.raises(QsensError, match="matches no layer"):
        select_layers(names, "zz")
    for bad, msg in (({"act_bits": 9}, "act_bits"), ({"weight_option": "fp16"}, "weight_option"),
                     ({"act_mode": "both"}, "act_mode"), ({"layers": "("}, "not a regular expression"),
                     ({"sqnr_bits": (1,)}, "sqnr_bits"), ({"max_layers": -1}, "max_layers")):
        with pytest.raises(QsensError, match=msg) as exc:
            QuantAnalyzerParams(**bad)
        assert "\n" not in str(exc.value)
    p = tmp_path / "params.yaml"
    p.write_text("quant_analyzer:\n  images: 32\n  sqnr_bits: 6\n")
    got = QuantAnalyzerParams.from_yaml(p)
    assert got.images == 32 and got.sqnr_bits == (6,)
    p.write_text("quant_analyzer:\n  imagez: 32\n")
    with pytest.raises(QsensError, match="unknown quant_analyzer params"):
        QuantAnalyzerParams.from_yaml(p)


def test_cli_quant_analyzer(tiny_prepared_data, tmp_path: Path, capsys, one_torch_thread) -> None:
    from qsens.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("model:\n  source: digits\n  name: digits\n"
                      "quant_analyzer:\n  images: 10\n  max_layers: 2\n  sqnr_bits: [8]\n"
                      "  calib_samples: 8\n  calib_trajectories: 4\n  hist_bins: 8\n")
    out = tmp_path / "qa"
    rc = main(["analyze", "quant-analyzer", "--params", str(params), "--data-dir", str(tiny_prepared_data),
               "--out", str(out), "--act-mode", "dynamic", "--threads", "1", "--quiet"])
    assert rc == 0
    assert "2 layers swept" in capsys.readouterr().out
    assert _json(out, "weight_activation_sensitivity.json")["settings"]["act_mode"] == "dynamic"
    assert (out / "index.html").is_file()
    rc = main(["analyze", "quant-analyzer", "--params", str(params), "--data-dir", str(tiny_prepared_data),
               "--out", str(out), "--layers", "nothing_like_this", "--threads", "1", "--quiet"])
    assert rc == 2 and "error: quant_analyzer.layers 'nothing_like_this' matches no layer" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["sd", "pixart-sigma"])
def test_any_pipeline_family(kind, tmp_path: Path, one_torch_thread) -> None:
    """Text-conditioned UNet (encoder_hidden_states) and DiT-style transformer (added_cond_kwargs):
    calibration reaches every layer and every analysis runs (a stand-in scorer: mean pixel)."""
    import numpy as np

    from denoisers.pipeline import DiffusersPipelineDenoiser
    from sampling.scoring import Score
    from tests.tiny_pipelines import tiny_pipeline

    class MeanPixel:
        def score(self, gen):
            m = float(gen.images.astype(np.float64).mean())
            return Score("ok", fid=m, content=m / 255, n_images=len(gen))

    den = DiffusersPipelineDenoiser(tiny_pipeline(kind), f"tiny-{kind}", prompts=["a cat", "a dog"], steps=2,
                                    batch_size=2)
    p = QuantAnalyzerParams(images=2, max_layers=2, sqnr_bits=(8,), sqnr_max_layers=2, calib_samples=4,
                            calib_trajectories=2, hist_bins=8, chunk=4, steps=2)
    res = run_quant_analyzer(den, None, MeanPixel(), p, tmp_path, progress=False)  # no bank: uaq4 in memory
    layers = den.layer_names()
    assert res["weights_only"]["fid"] != res["FP"]["fid"]
    assert set(_json(tmp_path, "min_max_ranges/activations.json")["ranges"]) == set(layers)
    mse = _json(tmp_path, "per_layer_mse_loss.json")["mse"]
    assert set(mse) == set(layers) and all(v["both"] >= 0 for v in mse.values())
    enabled = _json(tmp_path, "per_layer_quant_enabled.json")
    assert list(enabled["weight"]) == [layers[0], layers[-1]]
