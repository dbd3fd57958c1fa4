"""Stale results are never reused (issue 12, case 5 and its kind): shards, merge, code digests."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_qsens
from core.provenance import code_digest, dvc_deps, import_closure
from sampling.cache import read_cache
from sampling.shards import ShardLock, scan_shards


qsens = run_qsens  # conftest: the CLI in this process


@pytest.fixture(scope="module")
def prepared(prepared_with_bank: Path) -> Path:
    return prepared_with_bank


def sample(data: Path, shards: Path, *extra: str, n: int = 3) -> subprocess.CompletedProcess:
    return qsens("sample", "--model", "digits", "--data-dir", str(data), "--num-configs", str(n),
                 "--shards", str(shards), "--seed", "3", "--quiet", "--workers", "1", *extra)


def merged(shards: Path, out: Path):
    r = qsens("cache", "merge", "--shards", str(shards), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return read_cache(out)


def test_changed_scoring_settings_rescore_every_config_and_keep_the_old_records(prepared: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    first = sample(prepared, shards, "--images", "8", "--image-seed", "0")
    assert first.returncode == 0, first.stderr
    old = merged(shards, tmp_path / "a.parquet")
    assert set(old["n_images"]) == {8} and set(old["image_seed"]) == {0}

    second = sample(prepared, shards, "--images", "16", "--image-seed", "5")
    assert second.returncode == 0, second.stderr
    assert "moved to" in second.stdout and "3/3 configs finished" in second.stdout
    new = merged(shards, tmp_path / "b.parquet")
    assert len(new) == 3
    assert set(new["n_images"]) == {16} and set(new["image_seed"]) == {5}  # re-scored, not reused
    assert (new["fid"].to_numpy() != old["fid"].to_numpy()).all()
    stale = list((shards / "stale").rglob("*.jsonl"))  # nothing is lost
    assert stale and sum(1 for f in stale for _ in f.open()) == 3

    again = sample(prepared, shards, "--images", "16", "--image-seed", "5")
    assert "moved" not in again.stdout  # the same job resumes: nothing re-scored, nothing moved
    assert len(scan_shards(shards).records) == 3


def test_scoring_code_change_rescores(prepared: Path, tmp_path: Path, monkeypatch):
    shards = tmp_path / "shards"
    assert sample(prepared, shards, "--images", "8", n=2).returncode == 0
    keys = {r["job_key"] for r in scan_shards(shards).records}
    monkeypatch.setattr("sampling.worker.code_digest", lambda modules: "a-changed-scorer")
    r = sample(prepared, shards, "--images", "8", n=2)
    assert r.returncode == 0 and "moved to" in r.stdout
    new_keys = {r["job_key"] for r in scan_shards(shards).records}
    assert len(new_keys) == 1 and new_keys.isdisjoint(keys)


def test_code_digest_follows_lazy_imports_and_ignores_comments(tmp_path: Path):
    pkg = tmp_path / "quant"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from quant.b import g  # lazy\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    (pkg / "c.py").write_text("X = 1\n")
    files = [p.name for p in import_closure(["quant.a"], root=tmp_path)]
    assert files == ["__init__.py", "a.py", "b.py"]  # c.py is not imported by a
    before = code_digest(["quant.a"], root=tmp_path)
    (pkg / "b.py").write_text("def g():\n    # why: a comment changes nothing\n    return 1\n\n")
    assert code_digest(["quant.a"], root=tmp_path) == before
    (pkg / "b.py").write_text("def g():\n    return 2\n")
    assert code_digest(["quant.a"], root=tmp_path) != before
    (pkg / "c.py").write_text("X = 2\n")  # outside the closure
    assert code_digest(["quant.a"], root=tmp_path) == code_digest(["quant.a"], root=tmp_path)


def test_ok_records_with_impossible_values_are_not_trusted(prepared: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    assert sample(prepared, shards, "--images", "8").returncode == 0
    shard = next(shards.glob("*.jsonl"))
    records = [json.loads(line) for line in shard.read_text().splitlines()]
    poisoned = []
    for record, fid in zip(records, (-100.0, float("nan"), float("inf"))):
        record["fid"] = fid
        poisoned.append(json.dumps(record, allow_nan=True))
    shard.write_text("\n".join(poisoned) + "\n")
    r = qsens("cache", "merge", "--shards", str(shards), "--out", str(tmp_path / "c.parquet"))
    assert r.returncode == 2 and "no scored records" in r.stderr  # none of the three is trusted
    assert "3 skipped" in r.stderr and "ok record with FID -100.0" in r.stderr
    assert sample(prepared, shards, "--images", "8").returncode == 0  # ...and they are scored again
    df = merged(shards, tmp_path / "c.parquet")
    assert len(df) == 3 and (df["fid"] >= 0).all() and df["fid"].notna().all()


def test_merge_never_overwrites_with_nothing_or_eats_its_shards(prepared: Path, tmp_path: Path):
    out = tmp_path / "cache.parquet"
    out.write_bytes(b"previous cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = qsens("cache", "merge", "--shards", str(empty), "--out", str(out))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    assert out.read_bytes() == b"previous cache"
    shards = tmp_path / "shards"
    assert sample(prepared, shards, "--images", "8", n=1).returncode == 0
    shard = next(shards.glob("*.jsonl"))
    before = shard.read_bytes()
    r = qsens("cache", "merge", "--shards", str(shards), "--out", str(shard))
    assert r.returncode == 2 and "one of the shards" in r.stderr
    assert shard.read_bytes() == before


def test_merge_refuses_records_of_two_jobs(prepared: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    assert sample(prepared, shards, "--images", "8", n=1).returncode == 0
    shard = next(shards.glob("*.jsonl"))
    record = json.loads(shard.read_text().splitlines()[0])
    record.update(job_key="0123456789abcdef", config_id="another")
    (shards / "worker-009.jsonl").write_text(json.dumps(record) + "\n")  # copied in by hand
    r = qsens("cache", "merge", "--shards", str(shards), "--out", str(tmp_path / "c.parquet"))
    assert r.returncode == 2 and "2 scoring jobs" in r.stderr
    assert not (tmp_path / "c.parquet").exists()


def test_a_second_sample_on_the_same_shards_is_refused(prepared: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    with ShardLock(shards):  # as if another `qsens sample` were running
        r = sample(prepared, shards, "--images", "8", n=1)
    assert r.returncode == 2 and "another `qsens sample`" in r.stderr
    assert not list(shards.glob("*.jsonl"))
    assert sample(prepared, shards, "--images", "8", n=1).returncode == 0  # released


def test_evaluation_rows_are_keyed_with_the_search_code():
    deps = dvc_deps(["qsens.commands.evaluate"])
    assert "search/strategies.py" in deps and "search/evaluate.py" in deps and "sampling/scoring.py" in deps


def test_a_predictor_trained_on_another_bank_is_refused(tmp_path: Path):
    import dataclasses

    from graphs.io import read_graph
    from predictor.api import Ensemble
    from predictor.dataset import GraphTemplate
    from predictor.synthetic import make_synthetic
    from quant.bank import Bank
    from core.errors import QsensError

    paths = make_synthetic(tmp_path, n_configs=8, channels=(8, 16), model_name="tiny", seed=0,
                           options=("uaq3", "uaq4"))
    bank = Bank.load(paths["bank"])
    template = GraphTemplate.build(read_graph(paths["graph"]), bank)
    ens = Ensemble(template, [], [], {}, tmp_path / "predictor")
    ens.check_bank(bank)  # the bank it was built with
    layer = bank.layer_names[0]
    entry = bank.entries[layer]["uaq3"]
    rebuilt = dataclasses.replace(bank, entries={**bank.entries, layer: {
        **bank.entries[layer], "uaq3": dataclasses.replace(entry, mse=entry.mse * 2)}})
    assert rebuilt.fingerprint == bank.fingerprint  # same model weights, other quantizers
    with pytest.raises(QsensError, match="trained with another bank"):
        ens.check_bank(rebuilt)


def test_record_checks_accept_a_missing_content_metric_but_not_impossible_values():
    from sampling.shards import check_record

    ok = {"config_id": "x", "status": "ok", "fid": 3.0, "content": 0.9, "avg_bits": 3.5, "n_images": 8}
    assert check_record(ok) is None
    assert check_record({**ok, "content": float("nan")}) is None  # content_metric: none
    assert check_record({**ok, "content": None}) is None
    assert "content" in check_record({**ok, "content": float("inf")})
    assert "FID" in check_record({**ok, "fid": -0.1})
    assert "avg_bits" in check_record({**ok, "avg_bits": 0.0})
    assert "n_images" in check_record({**ok, "n_images": 1})
    assert check_record({"config_id": "x", "status": "failed", "fid": None}) is None
    assert "status" in check_record({**ok, "status": "done"})


def test_sample_defaults_come_from_params(prepared: Path, tmp_path: Path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text("score:\n  images: 6\n  seed: 7\n"  # the cache's labels: score.images on score.seed
                      "sample:\n  num_configs: 2\n  workers: 1\n  backend: local\n  seed: 4\n"
                      "  max_attempts: 1\n  paired: false\n  hifi_configs: 0\n  hifi_images: 500\n")
    r = qsens("sample", "--model", "digits", "--data-dir", str(prepared), "--params", str(params),
              "--shards", str(tmp_path / "s"), "--quiet")
    assert r.returncode == 0, r.stderr
    records = scan_shards(tmp_path / "s").records
    assert len(records) == 2 and {(x["image_seed"], x["sample_seed"], x["n_images"]) for x in records} == {(7, 4, 6)}
    params.write_text("sample:\n  num_configs: 2\n  workers: 0\n")
    r = qsens("sample", "--model", "digits", "--data-dir", str(prepared), "--params", str(params),
              "--shards", str(tmp_path / "s"))
    assert r.returncode == 2 and "sample.workers" in r.stderr and len(r.stderr.splitlines()) == 1
