"""Faults of issue #23/#28 (one kind per section): each test states the right behaviour for the
whole kind, not only for the case that found it."""
from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from core.errors import QsensError


def _tiny_model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 4))
    return m.to(dtype)


# ---------------------------------------------------------------- #23.1 non-finite weights
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_named_before_any_work(value, monkeypatch):
    import quant.bank as bank_mod
    from quant.layers import check_finite_weights, non_finite_layers

    model = _tiny_model()
    with torch.no_grad():
        model[1].weight.view(-1)[3] = value
        model[3].weight.view(-1)[0] = value
    assert non_finite_layers(model) == {"1": 1, "3": 1}
    with pytest.raises(QsensError, match=r"2 layer\(s\): 1 \(1 value\), 3 \(1 value\)"):
        check_finite_weights(model)
    calls = []
    monkeypatch.setattr(bank_mod, "quantize", lambda *a, **k: calls.append(a))
    with pytest.raises(QsensError, match="non-finite") as err:
        bank_mod.build_bank(model, ["uaq3", "kmc3"], progress=False)  # k-means and UAQ alike
    assert "\n" not in str(err.value) and "1 (1 value)" in str(err.value)
    assert calls == [], "the bank quantized something before refusing"


def test_quantizer_refuses_non_finite_input():
    from quant.quantizers import quantize

    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    for opt in ("uaq3", "kmc3", "kma4"):
        with pytest.raises(QsensError, match="non-finite"):
            quantize(w, opt)


def test_bank_with_nan_errors_is_refused_on_load(tmp_path):
    from quant.bank import Bank, build_bank
    from core.errors import BankFormatError

    build_bank(_tiny_model(), ["uaq3"], progress=False).save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bank.json").read_text())
    meta["entries"]["1"]["uaq3"]["mse"] = float("nan")  # a bank built by an older qsens from NaN weights
    (tmp_path / "b" / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankFormatError, match=r"non-finite quantization error for 1 layer\(s\) \(1\)"):
        Bank.load(tmp_path / "b")


def test_check_model_names_nan_layers_not_another_model(tmp_path):
    from quant.bank import build_bank

    model = _tiny_model()
    bank = build_bank(model, ["uaq3"], progress=False)
    with torch.no_grad():
        model[0].weight.view(-1)[0] = float("nan")
    with pytest.raises(QsensError, match=r"non-finite .* 0 \(1 value\)"):
        bank.check_model(model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("opt", ["uaq3", "uaq4", "kmc3", "kma3"])
def test_quantization_arithmetic_is_fp32_for_half_models(dtype, opt):
    """An fp16/bf16 weight quantizes exactly like its float32 upcast (codes and stored params)."""
    from quant.quantizers import fake_quantize, quantize

    torch.manual_seed(1)
    w = (torch.randn(16, 40) * 0.05).to(dtype)
    q_half, q_32 = quantize(w, opt), quantize(w.to(torch.float32), opt)
    assert torch.equal(q_half.codes, q_32.codes) and torch.equal(q_half.params, q_32.params)
    assert q_half.params.dtype == torch.float32
    fq = fake_quantize(w, opt)
    assert fq.dtype == dtype and bool(torch.isfinite(fq).all())


def test_half_edge_values():
    """fp16 subnormals (scale underflow) quantize to finite values; bf16 weights beyond the fp16
    range cannot be stored with fp16 scales: the bank refuses naming the layer instead of inf."""
    from quant.bank import build_bank
    from quant.quantizers import quantize

    tiny = torch.full((2, 8), 1e-7, dtype=torch.float16)  # subnormal in fp16
    tiny[0, 0] = 0
    for opt in ("uaq3", "kmc3", "kma3"):
        assert bool(torch.isfinite(quantize(tiny, opt).dequantize()).all())
    model = _tiny_model(torch.bfloat16)
    with torch.no_grad():
        model[3].weight.view(-1)[0] = 1e6  # finite in bf16; its scale is beyond fp16 65504
    with pytest.raises(QsensError, match=r"layer 3: uaq3 .* overflow fp16"):
        build_bank(model, ["uaq3"], progress=False)


def test_fp32_bank_unchanged_by_the_fp32_cast():
    """The cast is a no-op for float32 models: same codes/params as quantizing the raw tensor."""
    from quant.quantizers import quantize_kmeans, quantize_uaq, quantize

    torch.manual_seed(2)
    w = torch.randn(8, 27)
    c, p = quantize_uaq(w, 3)
    q = quantize(w.reshape(8, 3, 3, 3), "uaq3")
    assert torch.equal(q.codes, c) and torch.equal(q.params, p)
    c, p = quantize_kmeans(w, 3, per_row=True)
    q = quantize(w, "kmc3")
    assert torch.equal(q.codes, c) and torch.equal(q.params, p)


# ---------------------------------------------------------------- #23.3 skip lists by the consumer's rule
_NAMES = ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_q",
          "single_transformer_blocks.1.attn.to_q", "transformer_blocks.1.attn.to_q", "transformer_blocks.10.attn.to_q",
          "transformer_blocks.1.ff.net.0.proj", "transformer_blocks.1.ff.net.2", "proj_out", "x_embedder",
          "mlp.gate", "mlp.gate_proj", "blocks.0.proj_out", "blocks.0.mlp.gate"]


def _ranking(first: list[str], layers: list[str]):
    import pandas as pd

    order = first + [n for n in layers if n not in first]
    return pd.DataFrame({"sens_low": [float(len(order) - i) for i in range(len(order))], "sens_high": 0.0,
                         "rank": list(range(1, len(order) + 1))}, index=order)


@pytest.mark.parametrize("keep", [["transformer_blocks.0.attn.to_q"], ["transformer_blocks.1.attn.to_q"],
                                  ["proj_out", "mlp.gate"], ["mlp.gate_proj"], ["single_transformer_blocks.0.attn.to_q"],
                                  ["blocks.0.mlp.gate", "transformer_blocks.1.ff.net.0.proj"]])
def test_transformers_list_keeps_exactly_the_ranked_layers(keep):
    """The transformers entry, fed to the installed transformers' should_convert_module, keeps
    exactly the ranked layers (suffix and prefix-regex matches anchored away)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    from search.export import skip_list

    sl = skip_list(_ranking(keep, _NAMES), len(keep), _NAMES)
    real = [n for n in _NAMES if not should_convert_module(n, sl["transformers"]["llm_int8_skip_modules"])]
    assert real == sl["transformers"]["keeps"] and set(real) == set(keep)
    for tool in ("diffusers", "quanto", "bitsandbytes", "diffusers_quanto"):  # exact, or refused with reason
        entry = sl[tool]
        assert entry.get("refused") or set(entry["keeps"]) == set(keep), tool


def test_diffusers_torchao_list_keeps_exactly_the_ranked_layers(tmp_path):
    """The case skiplist_diffusers_torchao.py, checked by what diffusers' own loader (TorchAoConfig,
    CPU) leaves in full precision: exactly the ranked layer, not its single_ namesake."""
    from diffusers import FluxTransformer2DModel, TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    from quant.layers import quantizable_layers
    from search.export import consumer_keeps, skip_list

    torch.manual_seed(0)
    FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
                           num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
                           guidance_embeds=False, axes_dims_rope=(2, 2, 4)).save_pretrained(tmp_path)
    layers = list(quantizable_layers(FluxTransformer2DModel.from_pretrained(tmp_path)))
    for top in (["transformer_blocks.0.attn.to_q"], ["single_transformer_blocks.1.attn.to_q", "proj_out"]):
        sl = skip_list(_ranking(top, layers), len(top), layers)
        keys = sl["diffusers"]["modules_to_not_convert"]
        q = FluxTransformer2DModel.from_pretrained(
            tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=list(keys)))
        kept = [n for n, m in quantizable_layers(q).items()
                if isinstance(m, nn.Linear) and type(m.weight.data) is torch.Tensor]
        assert kept == sl["diffusers"]["keeps"] == [n for n in layers if n in top], (keys, kept)
        # the unanchored name really does stretch under diffusers' rule (the fault this guards)
        assert "single_transformer_blocks.0.attn.to_q" in consumer_keeps("diffusers", ["transformer_blocks.0.attn.to_q"],
                                                                         layers)


# ---------------------------------------------------------------- #23.5 OS errors are not "busy"
def _flock_raising(code):
    def flock(fd, op):
        raise OSError(code, os.strerror(code))
    return flock


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EIO])
def test_lock_errors_other_than_busy_say_what_the_os_said(tmp_path, monkeypatch, code):
    import fcntl

    from sampling.shards import NO_LOCK_ENV, ShardLock

    monkeypatch.delenv(NO_LOCK_ENV, raising=False)
    monkeypatch.setattr(fcntl, "flock", _flock_raising(code))
    with pytest.raises(QsensError) as err:
        with ShardLock(tmp_path / "s"):
            pass
    msg = str(err.value)
    assert os.strerror(code) in msg and errno.errorcode[code] in msg and "--no-lock" in msg
    assert "another" not in msg.split(";")[0] and "pid" not in msg and "\n" not in msg
    with ShardLock(tmp_path / "s", no_lock=True):  # the explicit way on: no flock call at all
        pass
    monkeypatch.setenv(NO_LOCK_ENV, "1")
    with ShardLock(tmp_path / "s"):
        pass


@pytest.mark.parametrize("code", [errno.EWOULDBLOCK, errno.EAGAIN])
def test_only_ewouldblock_means_busy(tmp_path, monkeypatch, code):
    import fcntl

    from sampling.shards import NO_LOCK_ENV, ShardLock

    monkeypatch.delenv(NO_LOCK_ENV, raising=False)
    monkeypatch.setattr(fcntl, "flock", _flock_raising(code))
    with pytest.raises(QsensError, match=r"another `qsens sample` \(pid \?\)"):
        with ShardLock(tmp_path / "s"):
            pass


def test_sample_cli_on_a_file_system_without_locks(tiny_prepared_data, tmp_path, monkeypatch, capsys):
    """nfs_no_locks.py through the CLI: one error line, exit 2, before any work."""
    import fcntl

    from qsens.cli import main
    from sampling.shards import NO_LOCK_ENV

    monkeypatch.delenv(NO_LOCK_ENV, raising=False)
    monkeypatch.setattr(fcntl, "flock", _flock_raising(errno.ENOLCK))
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parent.parent / "params.yaml").read_text())
    params.setdefault("sample", {})["paired"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    M = ["--model", "digits", "--data-dir", str(tiny_prepared_data)]
    assert main(["bank", "build", *M, "--options", "uaq3,uaq4", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    capsys.readouterr()
    code = main(["sample", *M, "--bank", str(tmp_path / "b"), "--num-configs", "2",
                 "--images", "4", "--shards", str(tmp_path / "s"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No locks available" in err[0], err
    assert not list((tmp_path / "s").glob("*.jsonl"))


# ---------------------------------------------------------------- #23.6 caches in any lossless encoding
def _cache_file(path: Path, n: int = 4) -> Path:
    import pyarrow as pa

    from sampling.cache import CACHE_SCHEMA, normalise_record, write_cache

    rows = [normalise_record({"config_id": f"c{i:03d}", "model": "digits", "index": i,
                              "options": {"conv_in": "uaq3", "x": "fp16"}, "act_bits": None if i % 2 else 8,
                              "avg_bits": 3.5 + i / 8, "quantized_bytes": 1000.0 + i, "quantized_error": 0.01 * i,
                              "bops": 1e6, "fid": 10.0 + i, "content": 0.5, "n_images": 8, "image_seed": 0,
                              "sample_seed": 0, "status": "failed" if i == n - 1 else "ok",
                              "reason": "boom" if i == n - 1 else "", "attempts": 1, "seconds": 0.25,
                              "worker": "w0", "code_version": "t", "job_key": "k", "provenance": None})
            for i in range(n)]
    write_cache(pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), path)
    return path


def test_cache_written_back_by_pandas_reads_the_same(tmp_path):
    """cache_pandas_roundtrip.py: filtered / concatenated and written back with to_parquet
    (pandas 3: large_string text, an all-null integer column as double) reads the same values."""
    import pandas as pd
    import pyarrow.parquet as pq

    from sampling.cache import read_cache

    src = _cache_file(tmp_path / "c.parquet")
    ref = read_cache(src)
    df = pd.read_parquet(src)
    df[df["status"] == "ok"].to_parquet(tmp_path / "f.parquet")
    pd.concat([df, df.iloc[:0]]).to_parquet(tmp_path / "cc.parquet")
    df[df["act_bits"].isna()].to_parquet(tmp_path / "null.parquet")  # act_bits all null -> double
    assert str(pq.read_schema(tmp_path / "null.parquet").field("act_bits").type) == "double"
    pd.testing.assert_frame_equal(read_cache(tmp_path / "cc.parquet"), ref)
    pd.testing.assert_frame_equal(read_cache(tmp_path / "f.parquet"), read_cache(src, ok_only=True))
    got = read_cache(tmp_path / "null.parquet")
    assert got["act_bits"].isna().all() and list(got["config_id"]) == ["c001", "c003"]


def _alt_encodings(col, t):
    """Lossless other encodings of one column of type t."""
    import pyarrow as pa

    out = []
    if pa.types.is_string(t):
        out += [col.cast(pa.large_string()), col.dictionary_encode() if col.null_count < len(col) else col]
        if hasattr(pa, "string_view"):
            out.append(col.cast(pa.string_view()))
    elif pa.types.is_integer(t):
        out += [col.cast(pa.int32()), col.cast(pa.float64())]
    elif pa.types.is_floating(t):
        f32 = col.cast(pa.float32())
        if f32.cast(pa.float64()).equals(col):  # float32 holds these values exactly: a lossless encoding
            out.append(f32)
    if col.null_count == len(col):
        out.append(pa.nulls(len(col)))
    return out


def test_every_schema_column_accepts_lossless_encodings(tmp_path):
    """Whatever columns CACHE_SCHEMA lists: each one re-encoded losslessly reads the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sampling.cache import CACHE_SCHEMA, read_cache

    src = _cache_file(tmp_path / "c.parquet")
    ref = read_cache(src)
    table = pq.read_table(src)
    for f in CACHE_SCHEMA:
        for alt in _alt_encodings(table.column(f.name), f.type):
            t2 = table.set_column(table.schema.get_field_index(f.name), f.name, alt)
            pq.write_table(t2, tmp_path / "alt.parquet")
            pd_equal = read_cache(tmp_path / "alt.parquet").equals(ref)
            assert pd_equal, (f.name, alt.type)


@pytest.mark.parametrize("column,values,why", [
    ("act_bits", [7.5, None, 8.0, None], "act_bits"),  # a fraction in an integer column
    ("index", ["0", "1", "2", "3"], "index"),  # text for a number
    ("n_images", [2.0 ** 70, 8.0, 8.0, 8.0], "n_images"),  # out of int64 range
    ("fid", [2 ** 53 + 1, 1, 1, 1], "fid"),  # an integer float64 cannot hold exactly
    ("model", [1, 2, 3, 4], "model"),  # a number for text
])
def test_lossy_columns_are_refused_by_name(tmp_path, column, values, why):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sampling.cache import CacheError, read_cache

    table = pq.read_table(_cache_file(tmp_path / "c.parquet"))
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(CacheError, match=rf"wrong type\(s\) {why} \(") as err:
        read_cache(tmp_path / "bad.parquet")
    assert "\n" not in str(err.value)
    pq.write_table(table.drop_columns([column]), tmp_path / "missing.parquet")
    with pytest.raises(CacheError, match=rf"missing column\(s\) {column}"):
        read_cache(tmp_path / "missing.parquet")


# ---------------------------------------------------------------- #28.3 whole-directory writes are atomic
class _Fault(Exception):
    pass


def _faulty(real, k: int, sticky: bool):
    """`real`, raising _Fault at its k-th call (and every later one when sticky: a dead process)."""
    calls = {"n": 0}

    def f(*a, **kw):
        calls["n"] += 1
        if calls["n"] == k or (sticky and calls["n"] > k):
            raise _Fault(f"injected at call {calls['n']}")
        return real(*a, **kw)
    f.calls = calls
    return f


def _ref_files(value: float) -> dict:
    import numpy as np

    from denoisers.base import REFERENCE_FORMAT, REFERENCE_JSON
    from sampling.scoring import STATS_FILE

    info = {"format": REFERENCE_FORMAT, "kind": "inception", "resolution": 8, "n_images": 2,
            "feature_network": {"name": "t", "file": "t.pt", "file_abs": "/t.pt", "sha256": "ab", "dim": 4},
            "mode": "clean", "clip_model": None, "prompts_file": None, "images_file": "images.txt"}
    return {STATS_FILE: (np.full(4, value), np.eye(4)), "images.txt": b"a.png\nb.png\n",
            REFERENCE_JSON: (json.dumps(info) + "\n").encode()}


def _reference_value(out: Path) -> float:
    from sampling.reference import load_reference

    return float(load_reference(out).mu[0])


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("sticky", [False, True], ids=["error", "killed"])
def test_reference_rebuild_leaves_old_or_new_at_every_fault(tmp_path, monkeypatch, exchange, sticky):
    import core.atomicdir as ad
    from sampling.reference import _write_atomic

    out = tmp_path / "ref"
    _write_atomic(out, _ref_files(1.0))
    if not exchange:
        monkeypatch.setattr(ad, "_exchange", lambda a, b: False)
    real_rename, real_write, real_exchange = os.rename, Path.write_bytes, ad._exchange
    points = [("rename", k) for k in (1, 2, 3)] + [("write", k) for k in (1, 2)] + \
             ([("exchange", 1)] if exchange else [])
    for what, k in points:
        if what == "rename":
            monkeypatch.setattr(os, "rename", _faulty(real_rename, k, sticky))
        elif what == "write":
            monkeypatch.setattr(Path, "write_bytes", _faulty(real_write, k, sticky))
        else:
            monkeypatch.setattr(ad, "_exchange", _faulty(real_exchange, k, sticky))
        try:
            _write_atomic(out, _ref_files(2.0))
            done = True
        except _Fault:
            done = False
        monkeypatch.setattr(os, "rename", real_rename)
        monkeypatch.setattr(Path, "write_bytes", real_write)
        monkeypatch.setattr(ad, "_exchange", real_exchange if exchange else (lambda a, b: False))
        assert _reference_value(out) == (2.0 if done else 1.0) or (not done and _reference_value(out) == 2.0), \
            (what, k)
        _write_atomic(out, _ref_files(1.0))  # a successful re-run: the old value again, no leftovers
        assert _reference_value(out) == 1.0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"], (what, k)


@pytest.mark.parametrize("sticky", [False, True], ids=["error", "killed"])
def test_bank_save_leaves_old_or_new_at_every_fault(tmp_path, monkeypatch, sticky):
    import core.atomicdir as ad
    import quant.bank as bank_mod
    from quant.bank import Bank, build_bank

    model = _tiny_model()
    old = build_bank(model, ["uaq3"], progress=False)
    old.save(tmp_path / "b")
    (tmp_path / "b" / "notes.txt").write_text("mine")  # not the bank's: carried over
    with torch.no_grad():
        model[1].weight.mul_(2)
    new = build_bank(model, ["uaq3"], progress=False)
    monkeypatch.setattr(ad, "_exchange", lambda a, b: False)  # the two-rename path (the harder one)
    real_rename, real_save = os.rename, bank_mod.save_file
    for what, k in [("rename", 1), ("rename", 2), ("rename", 3), ("save", 1)]:
        if what == "rename":
            monkeypatch.setattr(os, "rename", _faulty(real_rename, k, sticky))
        else:
            monkeypatch.setattr(bank_mod, "save_file", _faulty(real_save, k, sticky))
        try:
            new.save(tmp_path / "b")
            done = True
        except _Fault:
            done = False
        monkeypatch.setattr(os, "rename", real_rename)
        monkeypatch.setattr(bank_mod, "save_file", real_save)
        loaded = Bank.load(tmp_path / "b")
        assert loaded.fingerprint in (old.fingerprint, new.fingerprint), (what, k)
        if done:
            assert loaded.fingerprint == new.fingerprint
        want = new if loaded.fingerprint == new.fingerprint else old
        assert torch.equal(loaded.dequantize("1", "uaq3"), want.dequantize("1", "uaq3"))  # shards match bank.json
        assert (tmp_path / "b" / "notes.txt").read_text() == "mine"
        old.save(tmp_path / "b")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], (what, k)


# ---------------------------------------------------------------- #28.5 a full disk is not a damaged input
class SafetensorError(Exception):  # what safetensors raises (by name) when a write fails
    pass


@pytest.mark.parametrize("exc,where,code", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/bank/x.safetensors"), "/data/bank/x.safetensors", "ENOSPC"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/home/u/c.parquet"), "/home/u/c.parquet", "EDQUOT"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/out"), "/ro/out", "EROFS"),
    (OSError(errno.EFBIG, os.strerror(errno.EFBIG), "/big"), "/big", "EFBIG"),
    (SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                     '"No space left on device" })'), None, "ENOSPC"),
    (OSError("IOError: Failed to write: No space left on device"), None, "ENOSPC"),  # Arrow's, no errno
])
def test_storage_errors_name_the_os_error_and_path(exc, where, code):
    from qsens.cli import _expected_error

    msg = _expected_error(exc)
    assert msg is not None and code in msg and "damaged" not in msg and "\n" not in msg
    assert (where in msg) if where else "a write failed" in msg


def test_storage_error_raised_inside_a_qsens_error_keeps_its_message():
    from qsens.cli import _expected_error

    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise QsensError(f"/x/y.json: cannot write ({exc.strerror}); the previous file is unchanged") from None
    except QsensError as exc:
        assert _expected_error(exc).startswith("/x/y.json: cannot write (No space left on device)")


def test_bank_build_past_the_file_size_limit_is_one_line_and_keeps_the_old_bank(tiny_prepared_data, tmp_path):
    """A real write failure (RLIMIT_FSIZE: EFBIG, as ENOSPC/EDQUOT would be) through the CLI."""
    import resource
    import signal
    import subprocess
    import sys

    bank = tmp_path / "bank"
    argv = [sys.executable, "-m", "qsens", "bank", "build", "digits", "--data-dir", str(tiny_prepared_data),
            "--options", "uaq3,uaq4", "--out", str(bank), "--quiet"]
    first = [a if a != "uaq3,uaq4" else "uaq3" for a in argv]
    assert subprocess.run(first, capture_output=True).returncode == 0
    before = {p.name: p.read_bytes() for p in bank.iterdir()}

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    r = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limit, timeout=600)
    err = [line for line in r.stderr.strip().splitlines() if line.startswith("error")]
    assert r.returncode == 2 and len(err) == 1, r.stderr[-2000:]
    assert "File too large (EFBIG)" in err[0] and str(bank) in err[0] and "damaged" not in err[0]
    assert {p.name: p.read_bytes() for p in bank.iterdir()} == before  # the old bank, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]  # no leftovers


# ---------------------------------------------------------------- #28.5 the IP's limit is deterministic
def _spin(seconds: float) -> None:
    import time

    end = time.time() + seconds
    while time.time() < end:
        pass


def test_ip_limit_is_deterministic_time_and_load_changes_nothing():
    import multiprocessing as mp

    import numpy as np

    from search.ip import WALL_FACTOR, _cp_sat, solve

    rng = np.random.default_rng(3)
    L, K = 400, 6
    n = rng.integers(1000, 100000, size=L)
    bits = rng.integers(2, 9, size=(L, K)) * n[:, None] + rng.integers(0, 500, size=(L, K))
    scores = rng.normal(size=(L, K)) * rng.lognormal(0, 1, size=(L, 1))
    budget = float(bits.min(1).sum() + 0.4 * (bits.max(1).sum() - bits.min(1).sum())) / n.sum()
    allowed = np.ones((L, K), bool)
    solver, _, _ = _cp_sat(allowed, bits, np.zeros((L, K), np.int64), int(bits.max(1).sum()), None, None, 0.5, 1,
                           cut=False)
    assert solver.parameters.max_deterministic_time == 0.5
    assert solver.parameters.max_time_in_seconds >= 0.5 * WALL_FACTOR  # wall clock: only a safety net
    runs = [solve(scores, bits, int(n.sum()), budget, 0.05, time_limit_s=0.05)]
    procs = [mp.get_context("spawn").Process(target=_spin, args=(20.0,)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        runs.append(solve(scores, bits, int(n.sum()), budget, 0.05, time_limit_s=0.05))  # under load
    finally:
        for p in procs:
            p.terminate()
            p.join()
    runs.append(solve(scores, bits, int(n.sum()), budget, 0.05, time_limit_s=0.05))
    assert all(np.array_equal(r.choice, runs[0].choice) for r in runs), [r.status for r in runs]
    assert len({r.extra["deterministic_s"] for r in runs}) == 1


# ---------------------------------------------------------------- #23.2 layers are what forward runs
def _fused_tiny_sd():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_pipelines import tiny_sd

    torch.manual_seed(0)
    unet = tiny_sd().unet.eval()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    enc = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    return unet, (x, 10), {"encoder_hidden_states": enc}


def test_fused_qkv_layers_that_never_run_are_not_layers():
    """fused_qkv_bank.py: after fuse_qkv_projections the old to_q/to_k/to_v are not offered,
    banked, counted or fingerprinted; the static rule agrees with a real forward (hooks); a
    config naming them is refused in one line."""
    from quant import QuantConfig, build_bank
    from core.errors import ConfigError
    from quant.layers import dead_layers, executed_layers, layer_fingerprints, quantizable_layers

    unet, args, kwargs = _fused_tiny_sd()
    before = list(quantizable_layers(unet))
    assert dead_layers(unet) == {} and set(executed_layers(unet, *args, **kwargs)) == set(before)
    unet.fuse_qkv_projections()
    everything = list(quantizable_layers(unet, include_dead=True))
    ran = set(executed_layers(unet, *args, **kwargs))
    dead = dead_layers(unet)
    assert dead and set(dead) == set(everything) - ran  # exactly the layers forward never runs
    live = list(quantizable_layers(unet))
    assert live == [n for n in everything if n in ran]  # module order kept
    assert set(layer_fingerprints(unet)) == set(live)
    bank = build_bank(unet, ["uaq2", "uaq8"], model_name="fused", progress=False)
    assert list(bank.layers) == live and bank.dead == dead
    with pytest.raises(ConfigError, match=r"never run: .*to_[qkv] \(replaced by .*to_(qkv|kv)") as err:
        bank.summarize(QuantConfig("fused", {n: "uaq2" for n in dead}))
    assert "\n" not in str(err.value)


def test_fused_bank_round_trips_its_dead_layers(tmp_path):
    from quant import QuantConfig, build_bank
    from quant.bank import Bank
    from core.errors import ConfigError

    unet, _, _ = _fused_tiny_sd()
    unet.fuse_qkv_projections()
    bank = build_bank(unet, ["uaq4"], model_name="fused", progress=False)
    bank.save(tmp_path / "b")
    loaded = Bank.load(tmp_path / "b")
    assert loaded.dead == bank.dead and list(loaded.layers) == list(bank.layers)
    loaded.check_model(unet)
    with pytest.raises(ConfigError, match="never run"):
        loaded.validate(QuantConfig("fused", {next(iter(bank.dead)): "uaq4"}))


def test_unfused_models_keep_their_exact_layer_list_and_bank(tmp_path):
    """No dead layers, no wrapper: the list is every Conv/Linear in module order, as before, and
    the bank has no `dead` key (byte-identical bank.json)."""
    from quant.bank import build_bank
    from quant.layers import QUANTIZABLE_TYPES, quantizable_layers

    unet, _, _ = _fused_tiny_sd()
    old = []
    seen = set()
    for name, m in unet.named_modules():
        if isinstance(m, QUANTIZABLE_TYPES) and id(m) not in seen:
            seen.add(id(m))
            old.append(name)
    assert list(quantizable_layers(unet)) == old
    build_bank(_tiny_model(), ["uaq3"], progress=False).save(tmp_path / "b")
    assert "dead" not in json.loads((tmp_path / "b" / "bank.json").read_text())


def test_wrappers_are_seen_through():
    """torch.compile's OptimizedModule and channels_last give the same layers, names and
    fingerprints as the model itself, so a bank built from one fits the other."""
    from quant.bank import build_bank
    from quant.layers import layer_fingerprints, quantizable_layers, tied_groups

    unet, _, _ = _fused_tiny_sd()
    bank = build_bank(unet, ["uaq3"], model_name="m", progress=False)
    compiled = torch.compile(unet)  # no forward: names only
    assert list(quantizable_layers(compiled)) == list(quantizable_layers(unet))
    bank.check_model(compiled)
    cl = unet.to(memory_format=torch.channels_last)
    assert layer_fingerprints(cl) == bank.layer_fingerprints and tied_groups(cl) == []
    bank.check_model(cl)
    cbank = build_bank(compiled, ["uaq3"], model_name="m", progress=False)
    assert list(cbank.layers) == list(bank.layers)
    assert all(torch.equal(cbank.dequantize(n, "uaq3"), bank.dequantize(n, "uaq3")) for n in bank.layers)


def test_active_run_state_read_error_is_not_taken_for_absent(tmp_path, monkeypatch):
    """#23.5's kind elsewhere: an OS error reading rounds.json is the machine's, not 'no run'."""
    from search.active import current_run

    (tmp_path / "predictor").mkdir()
    (tmp_path / "predictor" / "ensemble.json").write_text("{}")
    (tmp_path / "rounds.json").write_text("{not json")
    assert current_run(tmp_path, tmp_path / "c.parquet", tmp_path / "b") is None  # damaged: not this run
    real = Path.read_text

    def eio(self, *a, **k):
        if self.name == "rounds.json":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", eio)
    with pytest.raises(OSError, match="Input/output error"):
        current_run(tmp_path, tmp_path / "c.parquet", tmp_path / "b")


def test_shard_write_failure_names_the_shard(tmp_path, monkeypatch):
    from qsens.cli import _expected_error
    from sampling.shards import ShardWriter

    w = ShardWriter(tmp_path / "worker-000.jsonl")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as err:
        w.append({"config_id": "x", "status": "ok"})
    msg = _expected_error(err.value)
    assert str(tmp_path / "worker-000.jsonl") in msg and "ENOSPC" in msg
    w.close()


def test_every_command_checks_the_reference_json_before_loading(tmp_path, monkeypatch):
    """#23.7 through the model load every command uses (Context.load_denoiser), before the
    model's adapter reads reference.json (where a wrong type was an internal error, rc 3)."""
    from denoisers.spec import ModelSpec
    from core.layout import Layout
    from qsens.context import Context

    d = tmp_path / "ref"
    d.mkdir()
    (d / "reference.json").write_text(json.dumps({"format": 1, "kind": "inception", "resolution": "512",
                                                  "n_images": 2, "feature_network": {}}))
    spec = ModelSpec(source="digits", name="digits", reference=str(d))
    monkeypatch.setattr("denoisers.registry.load_denoiser", lambda *a, **k: pytest.fail("the model was loaded first"))
    ctx = Context(tmp_path / "params.yaml", spec, Layout(tmp_path, "digits"))
    with pytest.raises(QsensError, match=r"resolution '512' is not an integer"):
        ctx.load_denoiser()
