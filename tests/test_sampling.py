"""End-to-end sampling on a tiny prepared `digits` model, through the real CLI and workers."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_qsens
from sampling.cache import merge_shards, read_cache
from sampling.sampler import random_config, random_configs
from sampling.shards import scan_shards

N_CONFIGS = 6


def qsens(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`conftest.run_qsens`, failing the test on a non-zero exit unless check=False."""
    result = run_qsens(*args)
    if check and result.returncode != 0:
        raise AssertionError(f"qsens {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result


@pytest.fixture(scope="module")
def prepared(prepared_with_bank: Path) -> Path:
    return prepared_with_bank


def sample_args(data: Path, shards: Path, n: int = N_CONFIGS, *extra: str) -> list[str]:
    return ["sample", "--model", "digits", "--data-dir", str(data), "--num-configs", str(n),
            "--shards", str(shards), "--images", "8", "--seed", "3", "--quiet", "--workers", "1", *extra]


def test_sampler_is_deterministic_and_follows_p3() -> None:
    names = [f"layer{i}" for i in range(400)]
    options = ["uaq3", "uaq4", "kmc3", "kmc4", "kma3", "kma4"]
    assert random_config(names, options, 7, 11) == random_config(names, options, 7, 11)
    assert random_config(names, options, 7, 11) != random_config(names, options, 7, 12)
    share3 = [sum(o.endswith("3") for o in random_config(names, options, 0, i).values()) / 400 for i in range(40)]
    assert min(share3) < 0.2 and max(share3) > 0.8  # p3 ~ U(0,1) spreads configs over the bit range
    ids = [c.config_id for _, c in random_configs("m", names[:2], ["uaq3", "uaq4"], 0, 4)]
    assert len(set(ids)) == 4  # only 4 configs exist for 2 layers × 2 options: duplicates skipped


def test_sample_resumes_after_sigkill_without_loss_or_duplicates(prepared: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    proc = subprocess.Popen([sys.executable, "-m", "qsens", *sample_args(prepared, shards)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        if shards.is_dir() and len(scan_shards(shards).records) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_with = len(scan_shards(shards).records)
    assert 2 <= killed_with < N_CONFIGS, "the worker must be killed mid-run for this test to mean anything"
    qsens(*sample_args(prepared, shards))
    report = merge_shards(shards, tmp_path / "cache.parquet")
    df = read_cache(tmp_path / "cache.parquet")
    assert report.rows == N_CONFIGS and df["config_id"].is_unique and (df["status"] == "ok").all()
    planned = {c.config_id for _, c in random_configs(
        "digits", list(read_bank_layers(prepared)), read_bank_options(prepared), 3, N_CONFIGS)}
    assert set(df["config_id"]) == planned
    ids_in_shards = [r["config_id"] for r in scan_shards(shards).records]
    assert len(ids_in_shards) == len(set(ids_in_shards)), "a finished config was scored twice"


def read_bank_layers(data: Path) -> list[str]:
    from quant.bank import Bank

    return Bank.load(data / "bank" / "digits").layer_names


def read_bank_options(data: Path) -> list[str]:
    from quant.bank import Bank

    return Bank.load(data / "bank" / "digits").options


def test_truncated_shard_line_is_rescored_on_next_run(prepared: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    qsens(*sample_args(prepared, shards, 3))
    shard = next(shards.glob("*.jsonl"))
    lines = shard.read_bytes().splitlines(keepends=True)
    shard.write_bytes(b"".join(lines[:-1]) + lines[-1][:30])  # the last record loses its tail
    merge = qsens("cache", "merge", "--shards", str(shards), "--out", str(tmp_path / "c.parquet"))
    assert f"{shard}:3: truncated record" in merge.stderr
    assert "2 configs" in merge.stdout
    qsens(*sample_args(prepared, shards, 3))
    merge = qsens("cache", "merge", "--shards", str(shards), "--out", str(tmp_path / "c.parquet"))
    assert "3 configs (3 ok, 0 failed)" in merge.stdout


@pytest.fixture(scope="module")
def one_local_worker(prepared: Path, tmp_path_factory) -> list[tuple]:
    tmp = tmp_path_factory.mktemp("one_local")
    qsens(*sample_args(prepared, tmp / "shards", 4))
    return merge_and_read(tmp / "shards", tmp / "cache.parquet")


def merge_and_read(shards: Path, out: Path) -> list[tuple]:
    merge_shards(shards, out)
    df = read_cache(out)
    return list(zip(df["config_id"], df["fid"], df["content"], df["avg_bits"], df["options"]))


def test_same_scores_twice_and_with_two_processes(prepared: Path, tmp_path: Path, one_local_worker) -> None:
    qsens(*sample_args(prepared, tmp_path / "again", 4))
    assert merge_and_read(tmp_path / "again", tmp_path / "a.parquet") == one_local_worker
    qsens(*sample_args(prepared, tmp_path / "two", 4, "--workers", "2", "--threads", "1"))
    assert merge_and_read(tmp_path / "two", tmp_path / "b.parquet") == one_local_worker
    assert len(list((tmp_path / "two").glob("worker-*.jsonl"))) == 2


def test_cache_rows_are_the_scores_of_their_configs(prepared: Path, one_local_worker) -> None:
    """A row's FID/content are its config's, applied from the bank, on the image seed set
    (`--image-seed`, 0 here; `--seed 3` is the config stream), and its size the bank's."""
    import json

    from denoisers.registry import load_denoiser
    from quant.apply import quantized
    from quant.bank import Bank
    from quant.config import QuantConfig
    from sampling.evaluator import evaluate
    from sampling.scorers import make_scorer

    den = load_denoiser("digits", data_dir=prepared)
    bank = Bank.load(prepared / "bank" / "digits")
    scorer = make_scorer(den)
    config_id, fid, content, avg_bits, options = one_local_worker[0]
    config = QuantConfig("digits", json.loads(options))
    assert config.config_id == config_id
    with quantized(den.model, config, bank):
        score, _ = evaluate(den, scorer, 8, seed=0)
    assert fid == pytest.approx(score.fid, rel=1e-9) and content == pytest.approx(score.content, abs=1e-12)
    assert avg_bits == pytest.approx(bank.summarize(config).avg_bits, rel=1e-12)
    fp, _ = evaluate(den, scorer, 8, seed=0)
    assert abs(fid - fp.fid) > 1e-6 * fp.fid


def test_ray_two_workers_match_one_local_worker(prepared: Path, tmp_path: Path, one_local_worker) -> None:
    pytest.importorskip("ray")
    qsens(*sample_args(prepared, tmp_path / "ray", 4, "--backend", "ray", "--workers", "2", "--threads", "1"))
    assert merge_and_read(tmp_path / "ray", tmp_path / "r.parquet") == one_local_worker
    assert len(list((tmp_path / "ray").glob("worker-*.jsonl"))) == 2


def test_nan_images_are_recorded_as_failures_not_dropped(prepared: Path, tmp_path: Path) -> None:
    """A bank whose weights are poisoned produces NaN images: recorded, retried, never lost."""
    import json

    from safetensors.torch import load_file, save_file

    bank = tmp_path / "bank"
    shutil.copytree(prepared / "bank" / "digits", bank)
    for shard in bank.glob("bank-*.safetensors"):
        tensors = load_file(shard)
        for key in tensors:
            if key.endswith("/params"):
                tensors[key] = tensors[key].clone().fill_(float("nan"))
        save_file(tensors, shard, metadata={"format": "qsens-bank/1"})
    shards = tmp_path / "shards"
    out = qsens(*sample_args(prepared, shards, 2, "--bank", str(bank), "--max-attempts", "2"), check=False)
    assert out.returncode == 1 and "2/2 configs finished" in out.stdout  # every config failed: not a success
    assert out.stderr.strip().startswith("error: every config failed")
    records = scan_shards(shards).records
    assert len(records) == 4 and all(r["status"] == "failed" for r in records)  # 2 configs × 2 attempts
    assert "NaN" in records[0]["reason"]
    report = merge_shards(shards, tmp_path / "c.parquet")
    assert (report.rows, report.failed) == (2, 2)
    assert json.loads(read_cache(tmp_path / "c.parquet")["attempts"].to_json(orient="values")) == [2, 2]


def test_sample_bad_input_is_one_line(prepared: Path, tmp_path: Path) -> None:
    out = qsens("sample", "--model", "nope", "--num-configs", "2", "--shards", str(tmp_path), check=False)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "unknown model 'nope'" in out.stderr
    out = qsens(*sample_args(prepared, tmp_path / "s", 0), check=False)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "--num-configs: expected a positive integer, got '0'" in out.stderr
