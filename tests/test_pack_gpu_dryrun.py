"""bench/gpu.py's packed comparison (issue 25 item 3) runs on CPU as a dry run: pack a config with the
codes on the device, time FP / packed eager / packed under torch.compile, restore the FP modules."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from quant import QuantConfig, build_bank

ROOT = Path(__file__).resolve().parents[1]


def _gpu_module():
    sys.path.insert(0, str(ROOT / "bench"))  # bench/gpu.py imports bench/machine.py
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 3, padding=1)
        self.lin = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.conv(x).mean((2, 3)))


def test_packed_comparison_cpu_dry_run(one_torch_thread) -> None:
    gpu = _gpu_module()
    torch.manual_seed(0)
    model = Net().eval()
    bank = build_bank(model, ["uaq3", "kmc4"], model_name="net", progress=False)
    config = QuantConfig("net", {"conv": "kmc4", "lin": "uaq3"})
    fp_conv = model.conv
    x = torch.randn(2, 4, 6, 6)
    captured = gpu.capture_forward_inputs(model, lambda: model(x))
    assert torch.equal(captured[0][0], x)
    res = gpu.packed_comparison(model, bank, config, torch.device("cpu"), captured, batch_s=1.0,
                                compile_backend="eager", repeats=1)
    assert res["codes_on_device"] and res["layers_packed"] == 2 and res["restored"]
    assert model.conv is fp_conv  # FP modules back
    assert "compile_error" not in res, res.get("compile_error")
    for key in ("apply_s", "restore_s", "forward_fp_s", "forward_packed_s", "forward_packed_compiled_s",
                "apply_restore_over_batch", "packed_vs_fp_forward", "packed_compiled_vs_fp_forward"):
        assert res[key] >= 0, key
    assert res["compiled_max_abs_diff_vs_eager"] == 0.0
    assert 0 < res["max_abs_diff_vs_fp"] < 1.0  # quantized, but close
