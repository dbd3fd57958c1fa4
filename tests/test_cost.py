"""metrics/NAME/cost.json: per-stage images and forward passes, and the GPU-hours they imply."""
from __future__ import annotations

import json

import pytest


def test_cost_summary_by_hand(tmp_path):
    from sampling.cost import CostParams, summarize_costs

    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"env": {"device": "H200"}, "sd15": {"fp": {"img_s": 2.0}, "steps": 20}}))
    costs = tmp_path / "cost"
    costs.mkdir()
    stage = {"sample": (1000, 6000, 60), "probe": (200, 1200, 12), "noise": (0, 300, 3)}  # images, samples, calls
    for name, (im, fs, fw) in stage.items():
        (costs / f"{name}.json").write_text(json.dumps({"stage": name, "images": im, "forward_samples": fs,
                                                        "forwards": fw, "seconds": 1.0}))
    p = CostParams(gpu_result=str(gpu), sdxl_macs_ratio=4.0, per_layer_stages=("probe",), layers_sd15=100,
                   layers_sdxl=300)
    res = summarize_costs(costs, p, layers=50)
    assert res["forwards_per_image"] == 6.0  # the sample stage's samples per image
    s = res["stages"]
    assert s["noise"]["image_equivalents"] == 50.0  # 300 samples without an image = 50 image-equivalents
    assert s["sample"]["gpu_hours"]["sd15"] == pytest.approx(round(1000 / 2.0 / 3600, 3))
    assert s["sample"]["gpu_hours"]["sdxl"] == pytest.approx(round(1000 / 2.0 / 3600 * 4.0, 3))
    # per-layer stages scale with the layer count: 100/50 for SD v1.5, 300/50 for SDXL
    assert s["probe"]["gpu_hours"]["sd15"] == pytest.approx(round(200 / 2.0 / 3600 * 2, 3))
    assert s["probe"]["gpu_hours"]["sdxl"] == pytest.approx(round(200 / 2.0 / 3600 * 4.0 * 6, 3))
    assert res["total"]["images"] == 1200 and res["total"]["forward_samples"] == 7500
    assert res["label_images"] == {"sample": 1000, "probe": 200}


def test_cost_refuses_missing_inputs(tmp_path):
    from core.errors import QsensError
    from sampling.cost import CostParams, summarize_costs

    with pytest.raises(QsensError, match="no stage cost files"):
        summarize_costs(tmp_path, CostParams())
    (tmp_path / "sample.json").write_text(json.dumps({"images": 1, "forwards": 1, "forward_samples": 1, "seconds": 0}))
    with pytest.raises(QsensError, match="file not found"):
        summarize_costs(tmp_path, CostParams(gpu_result=str(tmp_path / "absent.json")))
    with pytest.raises(QsensError, match="sdxl_macs_ratio"):
        CostParams.from_dict({"sdxl_macs_ratio": 0})
