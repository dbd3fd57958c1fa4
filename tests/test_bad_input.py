"""A careless user's bad inputs across the CLI (issue 12, case 10): each gets one `error:` line and
exit code 2, and no file under the data dir changes. Rows are (id, argv, setup); `{data}`, `{tmp}`,
`{bank}` and `{shards}` are filled in, and `setup(tmp)` writes the bad file a row needs."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import run_qsens


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    done = run_qsens(*argv)  # conftest: the CLI in this process
    return done.returncode, done.stdout, done.stderr


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _write(name: str, data: bytes | str):
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _config(name: str, **changes):
    """A valid one-layer digits config (from the bank), then `changes` applied."""
    def setup(tmp: Path) -> None:
        bank = json.loads((tmp / "data" / "bank" / "digits" / "bank.json").read_text())
        layer = bank["layers"][0]["name"]
        cfg = {"model": "digits", "options": {layer: "uaq4"}, "avg_bits": None, "act_bits": None}
        cfg.update(changes)
        if "options" in changes and changes["options"] == "UNKNOWN_LAYER":
            cfg["options"] = {"down_blocks.9.nothing": "uaq4"}
        (tmp / name).write_text(json.dumps(cfg))
    return setup


def _params(text: str):
    return _write("params.yaml", text)


def _bank_option_without_entries(tmp: Path) -> None:
    _bank_copy(tmp)
    dst = tmp / "badbank"
    meta = json.loads((dst / "bank.json").read_text())
    meta["options"] = list(meta["options"]) + ["uaq5"]  # listed, but no layer has it
    (dst / "bank.json").write_text(json.dumps(meta))


def _truncated_bank(tmp: Path) -> None:
    _bank_copy(tmp)
    st = next((tmp / "badbank").glob("*.safetensors"))
    st.write_bytes(st.read_bytes()[:100])


def _bank_copy(tmp: Path) -> None:
    src = tmp / "data" / "bank" / "digits"
    dst = tmp / "badbank"
    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())


def _nan_mse(bank: Path) -> None:
    meta = json.loads((bank / "bank.json").read_text())
    first = next(iter(meta["entries"].values()))
    first[next(iter(first))]["mse"] = float("nan")
    (bank / "bank.json").write_text(json.dumps(meta))


def _lossy_cache(tmp: Path) -> None:
    """A quant_cache whose integer act_bits column holds a fraction (written back by pandas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sampling.cache import CACHE_SCHEMA, normalise_record, write_cache

    row = normalise_record({"config_id": "c", "model": "digits", "options": {}, "status": "ok", "avg_bits": 4.0})
    write_cache(pa.Table.from_pylist([row], schema=CACHE_SCHEMA), tmp / "lossy.parquet")
    t = pq.read_table(tmp / "lossy.parquet")
    t = t.set_column(t.schema.get_field_index("act_bits"), "act_bits", pa.array([7.5]))
    pq.write_table(t, tmp / "lossy.parquet")


def _reference(**changes):
    """A small valid reference dir at tmp/ref, then `changes` (info keys; `mu`/`sigma` arrays)."""
    def setup(tmp: Path) -> None:
        import numpy as np
        from safetensors.numpy import save_file

        d = tmp / "ref"
        d.mkdir()
        info = {"format": 1, "kind": "inception", "resolution": 8, "n_images": 2,
                "feature_network": {"name": "t", "file": "t.pt", "file_abs": "/t.pt", "sha256": "ab", "dim": 4},
                "mode": "clean", "clip_model": None, "prompts_file": None, "images_file": "images.txt"}
        mu, sigma = changes.pop("mu", np.zeros(4)), changes.pop("sigma", np.eye(4))
        info.update(changes)
        (d / "reference.json").write_text(json.dumps(info))
        (d / "images.txt").write_text("a.png\nb.png\n")
        (tmp / "secret.txt").write_text("x\ny\n")
        save_file({"mu": np.asarray(mu, dtype=np.float64), "sigma": np.asarray(sigma, dtype=np.float64)},
                  str(d / "stats.safetensors"))
    return setup


def _nan_sigma():
    import numpy as np

    s = np.eye(4)
    s[1, 2] = np.nan
    return s


def _asym_sigma():
    import numpy as np

    s = np.eye(4)
    s[0, 1] = 0.5
    return s


def _vae_dir(tmp: Path) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4,
                  layers_per_block=1).save_pretrained(tmp / "vae")


def _poisoned_data(kind: str, layer: str = "mid_block.resnets.0.conv2"):
    """A copy of the data dir (models + reference) whose U-Net holds one NaN/inf weight."""
    def setup(tmp: Path) -> None:
        import shutil

        import torch
        from safetensors.torch import load_file, save_file

        src = (tmp / "data").resolve()
        for sub in ("models", "reference"):
            shutil.copytree(src / sub, tmp / "pdata" / sub)
        f = tmp / "pdata" / "models" / "digits" / "unet" / "diffusion_pytorch_model.safetensors"
        sd = load_file(f)
        sd[f"{layer}.weight"].view(-1)[0] = float(kind)
        save_file(sd, f, metadata={"format": "pt"})
    return setup


def _packed(edit):
    """A packed checkpoint at tmp/q (`qsens export` of uaq4 on the bank's first 10 layers), then
    `edit(manifest, layers)` applied to its manifest."""
    def setup(tmp: Path) -> None:
        bank = json.loads((tmp / "data" / "bank" / "digits" / "bank.json").read_text())
        names = [layer["name"] for layer in bank["layers"][:10]]
        (tmp / "c.json").write_text(json.dumps({"model": "digits", "options": {n: "uaq4" for n in names}}))
        code, _, err = run_cli(["export", "--model", "digits", "--data-dir", str(tmp / "data"), "--config",
                                str(tmp / "c.json"), "--out", str(tmp / "q"), "--params",
                                str(Path(__file__).resolve().parent.parent / "params.yaml")])
        assert code == 0, err
        manifest = json.loads((tmp / "q" / "manifest.json").read_text())
        edit(manifest, manifest["layers"])
        (tmp / "q" / "manifest.json").write_text(json.dumps(manifest))
    return setup


_CONV1, _CONV2 = "down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv2"  # same shape, both packed


def _codes_of_another_layer(manifest, layers) -> None:
    layers[_CONV1]["codes"], layers[_CONV1]["params"] = f"{_CONV2}.codes", f"{_CONV2}.params"


def _tie_not_in_the_model(manifest, layers) -> None:
    layers[_CONV1]["tied_to"] = _CONV2
    del layers[_CONV1]["codes"], layers[_CONV1]["params"]


M = ["--model", "digits", "--data-dir", "{data}"]
PM = ["--model", "digits", "--data-dir", "{tmp}/pdata"]
ROWS = [
    # files that are not what they claim
    ("config not UTF-8", ["score", *M, "--config", "{tmp}/b.json"], _write("b.json", b"\xff\xfe")),
    ("config 100k deep", ["score", *M, "--config", "{tmp}/deep.json"], _write("deep.json", "[" * 100_000)),
    ("config not JSON", ["score", *M, "--config", "{tmp}/t.json"], _write("t.json", "{'a': 1")),
    ("config is a dir", ["score", *M, "--config", "{tmp}"], None),
    ("config missing", ["score", *M, "--config", "{tmp}/none.json"], None),
    ("config unknown layer", ["score", *M, "--config", "{tmp}/c.json"], _config("c.json", options="UNKNOWN_LAYER")),
    ("config another model", ["score", *M, "--config", "{tmp}/c.json"], _config("c.json", model="sd15")),
    ("config act_bits 7", ["score", *M, "--config", "{tmp}/c.json"], _config("c.json", act_bits=7)),
    ("config act_bits text", ["score", *M, "--config", "{tmp}/c.json"], _config("c.json", act_bits="8")),
    ("config avg_bits wrong", ["score", *M, "--config", "{tmp}/c.json"], _config("c.json", avg_bits=2.0)),
    ("config show not JSON", ["config", "show", "{tmp}/t.json"], _write("t.json", "nope")),
    ("params missing", ["score", *M, "--params", "{tmp}/nope.yaml"], None),
    ("params not YAML", ["score", *M, "--params", "{tmp}/params.yaml"], _params("a: [1, 2\n")),
    ("params wrong type", ["search", *M, "--params", "{tmp}/params.yaml", "--budgets", "params"],
     _params("search:\n  budgets: {a: 1}\n")),
    ("bank option without entries", ["score", *M, "--bank", "{tmp}/badbank"], _bank_option_without_entries),
    ("bank truncated safetensors", ["score", *M, "--bank", "{tmp}/badbank", "--config", "{tmp}/c.json"],
     lambda tmp: (_truncated_bank(tmp), _config("c.json")(tmp))),
    ("bank missing", ["bank", "show", "{tmp}/nobank"], None),
    ("cache not parquet", ["cache", "show", "{tmp}/x.parquet"], _write("x.parquet", b"PAR1 not really")),
    ("cache merge empty", ["cache", "merge", "--shards", "{tmp}/empty", "--out", "{tmp}/c.parquet"],
     lambda tmp: (tmp / "empty").mkdir()),
    ("cache merge no dir", ["cache", "merge", "--shards", "{tmp}/nodir", "--out", "{tmp}/c.parquet"], None),
    # outputs that cannot be written, found before any work
    ("graph out is a dir", ["graph", *M, "--out", "{tmp}"], None),
    ("bank out unwritable", ["bank", "build", *M, "--out", "/proc/qsens-bank"], None),
    # arguments out of range or of the wrong type
    ("sample workers 0", ["sample", *M, "--num-configs", "2", "--workers", "0"], None),
    ("sample images 0", ["sample", *M, "--num-configs", "2", "--images", "0", "--shards", "{tmp}/s"], None),
    ("sample max-attempts 0", ["sample", *M, "--num-configs", "2", "--max-attempts", "0"], None),
    ("sample num-configs 1e12", ["sample", *M, "--num-configs", "1e12"], None),
    ("sample num-configs huge", ["sample", *M, "--num-configs", "1000000000000", "--shards", "{tmp}/s"], None),
    ("sample seed -1", ["sample", *M, "--num-configs", "2", "--seed", "-1"], None),
    ("sample unknown backend", ["sample", *M, "--num-configs", "2", "--backend", "slurm"], None),
    ("sample unknown flag", ["sample", *M, "--num-configs", "2", "--gpus", "8"], None),
    ("score steps -3", ["score", *M, "--steps", "-3"], None),
    ("score guidance nan", ["score", *M, "--guidance", "nan"], None),
    ("score device cuda", ["score", *M, "--device", "cuda"], None),
    ("score dtype fp8", ["score", *M, "--dtype", "fp8"], None),
    ("score images 1", ["score", *M, "--images", "1"], None),
    ("graph max-side -5", ["graph", *M, "--max-side", "-5"], None),
    ("search tolerance nan", ["search", *M, "--tolerance", "nan"], None),
    ("search time-limit 0", ["search", *M, "--time-limit", "0"], None),
    ("search budgets text", ["search", *M, "--budgets", "three"], None),
    ("evaluate images 1", ["evaluate", *M, "--images", "1"], None),
    ("predictor inspect top 0", ["predictor", "inspect", *M, "--top", "0"], None),
    ("reference show missing", ["reference", "show", "{tmp}/noref"], None),
    ("unknown model", ["score", "--model", "sd99", "--data-dir", "{data}"], None),
    ("data-dir is a file", ["score", "--model", "digits", "--data-dir", "{tmp}/f"], _write("f", "x")),
    ("unknown command", ["quantise"], None),
    ("graph of a VAE", ["graph", "{tmp}/vae", "--out", "{tmp}/g.json"], _vae_dir),
    ("generate n-images 0", ["generate", *M, "--n-images", "0", "--out", "{tmp}/g"], None),
    ("generate class-id -1", ["generate", *M, "--class-id", "-1", "--out", "{tmp}/g"], None),
    ("export unknown format", ["export", *M, "--config", "{tmp}/c.json", "--out", "{tmp}/e", "--format", "zip"],
     _config("c.json")),
    ("export keep-top > layers", ["export", *M, "--format", "skip-list", "--keep-top", "999", "--out", "{tmp}/e"], None),
    ("export keep-top with torchao", ["export", *M, "--config", "{tmp}/c.json", "--format", "torchao", "--keep-top",
                                      "3", "--out", "{tmp}/e"], _config("c.json")),
    ("sample params workers 0", ["sample", *M, "--params", "{tmp}/params.yaml"],
     _params("sample:\n  num_configs: 2\n  workers: 0\n")),
    ("export keep-top 0", ["export", *M, "--format", "skip-list", "--keep-top", "0", "--out", "{tmp}/e"], None),
    ("generate quantized truncated", ["generate", *M, "--quantized", "{tmp}/q", "--out", "{tmp}/g"],
     _write("q/manifest.json", '{"format": "qsens-packed"')),
    ("quant-analyzer act-bits 9", ["analyze", "quant-analyzer", *M, "--act-bits", "9"], None),
    # damaged inputs that used to be accepted (#23)
    ("bank build NaN weight", ["bank", "build", *PM, "--options", "uaq3,uaq4", "--out", "{tmp}/b"],
     _poisoned_data("nan")),
    ("bank build kmeans inf weight", ["bank", "build", *PM, "--options", "kmc3", "--out", "{tmp}/b"],
     _poisoned_data("inf")),
    ("generate NaN weight", ["generate", *PM, "--n-images", "2", "--out", "{tmp}/g"], _poisoned_data("nan")),
    ("bank show NaN errors", ["bank", "show", "{tmp}/badbank"],
     lambda tmp: (_bank_copy(tmp), _nan_mse(tmp / "badbank"))),
    ("cache lossy column", ["cache", "show", "{tmp}/lossy.parquet"], lambda tmp: _lossy_cache(tmp)),
    ("reference n_images text", ["reference", "show", "{tmp}/ref"], _reference(n_images="2")),
    ("reference resolution list", ["reference", "show", "{tmp}/ref"], _reference(resolution=[8, 8])),
    ("reference n_images float", ["reference", "show", "{tmp}/ref"], _reference(n_images=2.5)),
    ("reference feature_network text", ["reference", "show", "{tmp}/ref"], _reference(feature_network="incv3")),
    ("reference prompts_file number", ["reference", "show", "{tmp}/ref"], _reference(prompts_file=7)),
    ("reference prompts_file outside", ["reference", "show", "{tmp}/ref"], _reference(prompts_file="../secret.txt")),
    ("reference prompts_file absolute", ["reference", "show", "{tmp}/ref"],
     lambda tmp: _reference(prompts_file=str(tmp / "secret.txt"))(tmp)),
    ("reference stats wrong dim", ["reference", "show", "{tmp}/ref"],
     lambda tmp: _reference(mu=[0.0] * 3, sigma=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])(tmp)),
    ("reference stats NaN", ["reference", "show", "{tmp}/ref"], lambda tmp: _reference(sigma=_nan_sigma())(tmp)),
    ("reference sigma asymmetric", ["reference", "show", "{tmp}/ref"],
     lambda tmp: _reference(sigma=_asym_sigma())(tmp)),
    ("reference build device bogus", ["reference", "build", "--images", "{tmp}", "--resolution", "8",
                                      "--inception", "{tmp}/x.pt", "--out", "{tmp}/r", "--device", "bogus"], None),
    ("reference build device cuda:99", ["reference", "build", "--images", "{tmp}", "--resolution", "8",
                                        "--inception", "{tmp}/x.pt", "--out", "{tmp}/r", "--device", "cuda:99"], None),
    ("quant-analyzer images 1", ["analyze", "quant-analyzer", *M, "--images", "1"], None),
    # quantized checkpoints whose manifest points a layer at another layer's tensors (#23 item 7)
    ("packed codes of another layer", ["generate", *M, "--quantized", "{tmp}/q", "--out", "{tmp}/g"],
     _packed(_codes_of_another_layer)),
    ("packed tie the model lacks", ["generate", *M, "--quantized", "{tmp}/q", "--out", "{tmp}/g"],
     _packed(_tie_not_in_the_model)),
    ("packed bogus tie", ["generate", *M, "--quantized", "{tmp}/q", "--out", "{tmp}/g"],
     _packed(lambda m, layers: layers[_CONV1].update(tied_to=["conv_in"]))),
    ("generate out foreign dir", ["generate", *M, "--n-images", "2", "--out", "{tmp}/mine"],
     _write("mine/notes.txt", "not qsens's")),
    ("export out foreign dir", ["export", *M, "--config", "{tmp}/c.json", "--out", "{tmp}/mine"],
     lambda tmp: (_write("mine/notes.txt", "not qsens's")(tmp), _config("c.json")(tmp))),
    ("bank params options number", ["bank", "build", *M, "--params", "{tmp}/params.yaml", "--out", "{tmp}/b"],
     _params("model:\n  source: digits\nbank:\n  options: 7\n")),
    ("models entry unknown field", ["bank", "build", "--params", "{tmp}/params.yaml", "--out", "{tmp}/b"],
     _params("model:\n  source: digits\nmodels:\n  digits:\n    stepz: 3\n")),
    ("models entry not a mapping", ["bank", "build", "--params", "{tmp}/params.yaml", "--out", "{tmp}/b"],
     _params("model:\n  source: digits\nmodels:\n  digits: /models/sd15\n")),
    ("models and model.name", ["bank", "build", "--params", "{tmp}/params.yaml", "--out", "{tmp}/b"],
     _params("model:\n  source: digits\n  name: digits\nmodels:\n  digits: {}\n")),
    ("models entry bad name", ["bank", "build", "--params", "{tmp}/params.yaml", "--out", "{tmp}/b"],
     _params("model:\n  source: digits\nmodels:\n  my model: {}\n")),
    ("packed bogus alias", ["generate", *M, "--quantized", "{tmp}/q", "--out", "{tmp}/g"],
     _packed(lambda m, layers: m.update(rest_aliases={"conv_out.bias": ["conv_in.bias"]}))),
]


@pytest.fixture(scope="module")
def workspace(prepared_with_bank: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "data").symlink_to(prepared_with_bank)
    return tmp


@pytest.mark.parametrize("name,argv,setup", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_error_line_and_changes_nothing(workspace: Path, tmp_path: Path, name, argv, setup,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here unless the row writes one
    (tmp_path / "data").symlink_to(workspace / "data")
    default_params = Path(__file__).resolve().parent.parent / "params.yaml"
    if setup is not None:
        setup(tmp_path)
    if not (tmp_path / "params.yaml").exists() and "--params" not in argv:
        (tmp_path / "params.yaml").write_text(default_params.read_text())
    fill = {"data": str(workspace / "data"), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    before = snapshot(workspace / "data")
    code, out, err = run_cli(argv)
    lines = err.strip().splitlines()
    assert code == 2, f"{name}: exit {code}\nstdout: {out[-500:]}\nstderr: {err[-1500:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {err[-1500:]}"
    assert "Traceback" not in err and "internal error" not in err
    assert snapshot(workspace / "data") == before, f"{name} changed files under data/"
    table = os.environ.get("QSENS_BAD_INPUT_TABLE")  # docs/bad_input.md is made from these lines
    if table:
        shown = lines[0].replace(str(tmp_path), "TMP").replace(str(workspace / "data"), "DATA")
        with open(table, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"row": name, "argv": [a.replace(str(tmp_path), "TMP").replace(
                str(workspace / "data"), "DATA") for a in argv], "error": shown}) + "\n")


def test_generate_and_export_rerun_into_their_own_out(workspace: Path, tmp_path: Path, monkeypatch):
    """#23 item 7: a foreign --out is refused (rows above), but each command's own previous output
    is written over: generate leaves exactly the PNGs its generate.json lists, export keeps the
    torchao.json it wrote beside the checkpoint."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parent.parent / "params.yaml").read_text())
    (tmp_path / "data").symlink_to(workspace / "data")
    m = ["--model", "digits", "--data-dir", str(workspace / "data")]
    g = tmp_path / "g"
    for n in (3, 2):
        code, _, err = run_cli(["generate", *m, "--n-images", str(n), "--out", str(g)])
        assert code == 0, err
    listed = json.loads((g / "generate.json").read_text())["files"]
    assert sorted(p.name for p in g.iterdir()) == sorted(listed + ["generate.json"]) and len(listed) == 2
    _config("c.json")(tmp_path)
    e = tmp_path / "e"
    for fmt in ("torchao", "packed", "packed"):
        code, _, err = run_cli(["export", *m, "--config", str(tmp_path / "c.json"), "--out", str(e), "--format", fmt])
        assert code == 0, err
    assert sorted(p.name for p in e.iterdir()) == ["manifest.json", "rest.safetensors", "torchao.json",
                                                   "weights.safetensors"]


def test_closed_stdout_ends_quietly(workspace: Path):
    import subprocess
    import sys

    cmd = f"{sys.executable} -m qsens bank show {workspace / 'data' / 'bank' / 'digits'} | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.stdout.count("\n") == 1 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_sigterm_to_the_launcher_stops_its_workers(workspace: Path, tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys
    import time

    shards = tmp_path / "shards"
    proc = subprocess.Popen([sys.executable, "-m", "qsens", "sample", "--model", "digits", "--data-dir",
                             str(workspace / "data"), "--num-configs", "400", "--images", "8", "--workers", "2",
                             "--threads", "1", "--shards", str(shards), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def children() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    deadline = time.time() + 240
    while time.time() < deadline and not list(shards.glob("*.jsonl")):
        time.sleep(0.5)
    kids = children()
    assert kids, "the launcher started no worker processes"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("error: terminated")
    time.sleep(1.0)
    alive = [k for k in kids if os.path.exists(f"/proc/{k}") and
             open(f"/proc/{k}/stat").read().split()[2] != "Z"]
    assert not alive, f"workers {alive} outlived the launcher"
    assert "Traceback" not in err
