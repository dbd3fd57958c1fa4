"""save_quantized writes a whole checkpoint or nothing (#23 item 4): a temporary sibling dir swapped in
at once, so an exception or a kill at any write point leaves the previous checkpoint loadable; any
memory layout (channels_last) is accepted; files next to the checkpoint are carried over."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from quant import QuantConfig, build_bank, pack
from quant.pack import MANIFEST, load_quantized, save_quantized

qpack = sys.modules["quant.pack"]  # `quant.pack`, the attribute, is the function

POINTS = ("weights", "rest", "manifest", "carry", "swap")
ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.lin = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.conv2(self.conv(x)).mean((2, 3)))


def _setup(option: str = "uaq4"):
    torch.manual_seed(0)
    model = Net().eval()
    bank = build_bank(model, ["uaq3", "uaq4"], model_name="net", progress=False)
    # conv2 stays FP: its weight goes to rest.safetensors
    config = QuantConfig("net", {"conv": option, "lin": option})
    return model, bank, config


def _export(model, bank, config, out: Path, channels_last: bool = False) -> Path:
    import copy

    m = copy.deepcopy(model)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return save_quantized(pack(m, config, bank, verify=False), out, config, fingerprint=bank.fingerprint)


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _output(directory: Path) -> torch.Tensor:
    model = load_quantized(directory, Net().eval(), verify=False)
    with torch.no_grad():
        return model(X)


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_channels_last_model_exports_over_an_old_checkpoint(tmp_path: Path) -> None:
    model, bank, config = _setup()
    out = tmp_path / "q"
    _export(model, bank, config, out)
    config2 = QuantConfig("net", {"conv": "uaq3", "lin": "uaq3"})
    _export(model, bank, config2, out, channels_last=True)
    fresh = tmp_path / "fresh"
    _export(model, bank, config2, fresh)  # contiguous: the same values
    assert torch.equal(_output(out), _output(fresh))
    assert (out / "weights.safetensors").read_bytes() == (fresh / "weights.safetensors").read_bytes()
    assert (out / "rest.safetensors").read_bytes() == (fresh / "rest.safetensors").read_bytes()
    assert not _leftovers(tmp_path, "q")


def test_other_files_in_the_directory_are_kept(tmp_path: Path) -> None:
    model, bank, config = _setup()
    out = tmp_path / "q"
    out.mkdir()
    (out / "torchao.json").write_text("{}\n")
    _export(model, bank, config, out)
    _export(model, bank, QuantConfig("net", {"conv": "uaq3", "lin": "uaq3"}), out)
    assert (out / "torchao.json").read_text() == "{}\n"


@pytest.mark.parametrize("point", POINTS)
def test_an_exception_at_any_write_point_leaves_the_old_checkpoint(tmp_path: Path, point: str, monkeypatch) -> None:
    model, bank, config = _setup()
    out = tmp_path / "q"
    _export(model, bank, config, out)
    before = _output(out)
    manifest = (out / MANIFEST).read_bytes()

    def fail(where: str) -> None:
        if where == point:
            raise RuntimeError(f"injected at {where}")

    monkeypatch.setattr(qpack, "_fault_point", fail)
    with pytest.raises(RuntimeError, match="injected"):
        _export(model, bank, QuantConfig("net", {"conv": "uaq3", "lin": "uaq3"}), out, channels_last=True)
    assert (out / MANIFEST).read_bytes() == manifest
    assert torch.equal(_output(out), before)
    assert not _leftovers(tmp_path, "q")


KILL_SCRIPT = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from quant import QuantConfig
    qpack = sys.modules['quant.pack']
    from test_pack_save import _setup, _export
    point, out = sys.argv[1], sys.argv[2]
    model, bank, config = _setup()
    qpack._fault_point = lambda where: os._exit(9) if where == point else None
    _export(model, bank, QuantConfig("net", {{"conv": "uaq3", "lin": "uaq3"}}), out, channels_last=True)
    os._exit(0)
''')


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_write_point_leaves_the_old_checkpoint(tmp_path: Path, point: str) -> None:
    model, bank, config = _setup()
    out = tmp_path / "q"
    _export(model, bank, config, out)
    before = _output(out)
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    rc = subprocess.run([sys.executable, str(script), point, str(out)], capture_output=True, timeout=300,
                        env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    assert rc == 9, f"the child was not killed at {point} (rc {rc})"
    assert torch.equal(_output(out), before)  # the old checkpoint, whole


def test_a_completed_export_replaces_the_checkpoint(tmp_path: Path) -> None:
    model, bank, config = _setup()
    out = tmp_path / "q"
    _export(model, bank, config, out)
    before = _output(out)
    _export(model, bank, QuantConfig("net", {"conv": "uaq3", "lin": "uaq3"}), out)
    after = _output(out)
    assert not torch.equal(before, after)
    assert not _leftovers(tmp_path, "q")


@pytest.mark.parametrize("file,edit", [("rest.safetensors", "swap"), ("weights.safetensors", "flip")])
def test_a_swapped_or_edited_tensor_is_refused_in_one_line(tmp_path: Path, file: str, edit: str) -> None:
    """Same shapes, same file size: only the manifest's per-tensor SHA-256 can tell (#28 item 4)."""
    from safetensors.torch import load_file, save_file

    from core.errors import QsensError

    model, bank, config = _setup()
    out = _export(model, bank, config, tmp_path / "q")
    path = out / file
    size = path.stat().st_size
    tensors = load_file(str(path))
    if edit == "swap":  # two biases of the same shape change places
        tensors["conv.bias"], tensors["conv2.bias"] = tensors["conv2.bias"], tensors["conv.bias"]
        bad = "conv.bias"
    else:  # one bit of one layer's codes
        codes = tensors["conv.codes"].clone()
        codes.view(-1)[0] ^= 1
        tensors["conv.codes"] = codes
        bad = "conv.codes"
    save_file(tensors, str(path), metadata={"format": f"{qpack.FORMAT}/{qpack.FORMAT_VERSION}"})
    assert path.stat().st_size == size  # the byte-size check alone would pass it
    with pytest.raises(QsensError) as err:
        _output(out)
    msg = str(err.value)
    assert "\n" not in msg and file in msg and "SHA-256" in msg and bad in msg, msg


def test_an_alias_loads_only_into_a_model_that_shares_the_tensor(tmp_path: Path) -> None:
    """rest_aliases are the model's own ties (#23 item 7): a model sharing conv2's bias with
    conv's exports one copy and loads back; into a model whose two biases are separate tensors
    of the same shape the alias is refused in one line instead of loading a wrong model."""
    import copy

    from core.errors import QsensError

    model, bank, config = _setup()
    model.conv2.bias = model.conv.bias  # tied: one (8,) tensor under two names
    bank = build_bank(model, ["uaq3", "uaq4"], model_name="net", progress=False)
    out = _export(model, bank, config, tmp_path / "q")
    assert qpack.read_manifest(out)["rest_aliases"] == {"conv2.bias": "conv.bias"}
    tied = copy.deepcopy(model)
    with torch.no_grad():
        want = pack(copy.deepcopy(model), config, bank, verify=False)(X)
        assert torch.equal(load_quantized(out, tied, verify=False)(X), want)
    with pytest.raises(QsensError, match=r"rest tensor conv2\.bias aliases 'conv\.bias', but this model does not"):
        load_quantized(out, Net().eval(), verify=False)
