"""Shards, merge and legacy import: nothing lost, nothing duplicated, nothing unsafe loaded."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys

import pytest

from sampling.cache import CacheError, merge_shards, read_cache
from sampling.legacy import import_legacy
from sampling.shards import ShardWriter, finished_ids, scan_shards, shard_path


def record(cid: str, status: str = "ok", fid: float | None = 50.0, **extra) -> dict:
    base = {"config_id": cid, "model": "toy", "index": 0, "options": {"a": "uaq4", "b": "fp16"},
            "act_bits": None, "avg_bits": 4.1, "quantized_bytes": 10.0, "quantized_error": 0.1, "bops": 1.0,
            "fid": fid, "content": 0.9, "n_images": 8, "image_seed": 0, "sample_seed": 0, "status": status,
            "reason": "" if status == "ok" else "boom", "attempts": 1, "seconds": 0.5, "worker": "w",
            "code_version": "test"}
    return base | extra


def write_shard(path, records) -> None:
    with ShardWriter(path) as w:
        for r in records:
            w.append(r)


def test_merge_keeps_one_row_per_id_and_prefers_ok(tmp_path) -> None:
    write_shard(shard_path(tmp_path, 0), [record("b"), record("a", "failed", None)])
    write_shard(shard_path(tmp_path, 1), [record("a", fid=70.0, attempts=2), record("c", "failed", None)])
    report = merge_shards(tmp_path, tmp_path / "cache.parquet")
    df = read_cache(tmp_path / "cache.parquet")
    assert list(df["config_id"]) == ["a", "b", "c"]  # sorted, unique
    a = df.set_index("config_id").loc["a"]
    assert a["status"] == "ok" and a["fid"] == 70.0 and a["attempts"] == 2
    assert (report.ok, report.failed) == (2, 1)
    assert json.loads(a["options"]) == {"a": "uaq4"}  # canonical: fp16 dropped


def test_merge_is_byte_identical_for_identical_inputs(tmp_path) -> None:
    write_shard(shard_path(tmp_path / "s", 0), [record(f"id{i}", fid=float(i)) for i in range(20)])
    merge_shards(tmp_path / "s", tmp_path / "one.parquet")
    merge_shards(tmp_path / "s", tmp_path / "two.parquet")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "one.parquet") == digest(tmp_path / "two.parquet")


def test_truncated_line_is_named_and_not_finished(tmp_path) -> None:
    path = shard_path(tmp_path, 0)
    write_shard(path, [record("a"), record("b")])
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # kill mid-write of the last record
    scan = scan_shards(tmp_path)
    assert [r["config_id"] for r in scan.records] == ["a"]
    assert len(scan.problems) == 1 and f"{path}:2: truncated record" in scan.problems[0]
    assert finished_ids(scan.records, max_attempts=2) == {"a"}
    # the writer reopens on a fresh line: the next record is intact
    write_shard(path, [record("b")])
    assert {r["config_id"] for r in scan_shards(tmp_path).records} == {"a", "b"}


def test_cli_merge_warns_with_file_and_line(tmp_path) -> None:
    path = shard_path(tmp_path / "s", 0)
    write_shard(path, [record("a"), record("b")])
    path.write_bytes(path.read_bytes()[:-5])
    out = subprocess.run([sys.executable, "-m", "qsens", "cache", "merge", "--shards", str(tmp_path / "s"),
                          "--out", str(tmp_path / "c.parquet")], capture_output=True, text=True)
    assert out.returncode == 0
    assert f"{path}:2: truncated record" in out.stderr
    assert "1 configs (1 ok, 0 failed)" in out.stdout


def test_failures_are_finished_only_after_max_attempts() -> None:
    rows = [record("x", "failed", None), record("y", "failed", None), record("y", "failed", None)]
    assert finished_ids(rows, max_attempts=2) == {"y"}


def test_reader_rejects_foreign_parquet(tmp_path) -> None:
    import pandas as pd

    pd.DataFrame({"config_id": ["a"], "fid": ["high"]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(CacheError, match="not a quant_cache: missing column"):
        read_cache(tmp_path / "x.parquet")


def legacy_records() -> list[dict]:
    # The reference system's record format: config {model.<layer>.weight_quantizer: [method-bit,
    # fp_bytes, quant_bytes, error]}; layer names of DiT-XL/2 (a shipped architecture)
    q, k = "model.pos_embed.proj.weight_quantizer", "model.transformer_blocks.0.attn1.to_q.weight_quantizer"
    return [
        {"config": {q: ["mse-4", 1728, 460, 0.01], k: ["kmeans-3", 2048, 420, 0.03]},
         "quantized_size": 880, "quantized_error": 0.04, "FID-GT-1k": 101.5, "avg_bits": 3.6, "bops": 12345},
        {"config": {q: ["kmeans_all-3", 1728, 330, 0.05], k: ["mse-3", 2048, 390, 0.02]},
         "quantized_size": 720, "quantized_error": 0.07, "FID-GT-1k": float("nan"), "avg_bits": 3.1, "bops": 999},
    ]


def test_legacy_import_maps_methods_and_fields(tmp_path) -> None:
    from quant.accounting import layer_bits
    from sampling.legacy import model_layers

    pkl = tmp_path / "quant_cache.pkl"
    pkl.write_bytes(pickle.dumps(legacy_records()))
    report = import_legacy(pkl, tmp_path / "legacy.parquet", "dit-xl-2")
    assert (report.rows, report.ok, report.model) == (2, 1, "dit-xl-2")
    df = read_cache(tmp_path / "legacy.parquet").sort_values("index")
    first = df.iloc[0]
    assert json.loads(first["options"]) == {"pos_embed.proj": "uaq4", "transformer_blocks.0.attn1.to_q": "kmc3"}
    assert first["fid"] == 101.5 and first["quantized_error"] == 0.04 and first["bops"] == 12345
    # sizes by qsens' accounting of the translated config (every other layer fp16), not the record's
    infos = model_layers("dit-xl-2").infos
    bits = sum(layer_bits(json.loads(first["options"]).get(n, "fp16"), i) for n, i in infos.items())
    assert first["quantized_bytes"] == bits / 8
    assert first["avg_bits"] == bits / sum(i.n_weights for i in infos.values())
    second = df.iloc[1]
    assert json.loads(second["options"]) == {"pos_embed.proj": "kma3", "transformer_blocks.0.attn1.to_q": "uaq3"}
    assert second["status"] == "failed" and "finite FID" in second["reason"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/qsens_pwned",))


def test_legacy_import_refuses_non_whitelisted_globals(tmp_path) -> None:
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps([{"config": {}, "x": Evil()}]))
    with pytest.raises(CacheError, match=r"refused to unpickle (posix|os)\.system"):
        import_legacy(pkl, tmp_path / "x.parquet", "sd15")
    assert not (tmp_path / "x.parquet").exists()
    out = subprocess.run([sys.executable, "-m", "qsens", "cache", "import-legacy", str(pkl), "--out",
                          str(tmp_path / "x.parquet"), "--model", "sd15"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "refused to unpickle" in out.stderr
