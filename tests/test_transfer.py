"""Sensitivity that carries over (#24): derived checkpoints, `qsens transfer`, `qsens predictor diff`.

Everything runs through the CLI on the tiny digits data (conftest `tiny_prepared_data`): the base
pipeline's bank, graph, a 12-config cache and a 2-member predictor, then a derived checkpoint."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "digits": {"unet_channels": [8, 16], "unet_head_dim": 8, "train_steps": 3, "train_batch": 16,
               "classifier_epochs": 1, "steps": 2, "gen_batch_size": 16},
    "derive": {"steps": 6, "sampler_steps": 1},
    "score": {"images": 8},
    "sample": {"num_configs": 12, "workers": 1},
    "train": {"folds": 2, "epochs": 2, "patience": 2, "hidden": 8, "layers": 1, "heads": 1, "baselines": [],
              "probe": False},
    "search": {"budgets": [3.5, 4.0], "candidates_scored": 1, "select_images": 4, "relinearise_rounds": 2},
    "transfer": {"random_configs": 8, "rounds": 1, "per_budget": 1, "disagreement": 0, "epochs": 2,
                 "relinearise_rounds": 2},
}


def _params(tmp: Path) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        p[section].update(values)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def _weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def project(tiny_prepared_data, tmp_path_factory):
    """A data dir with the tiny base model's bank, graph, cache and predictor."""
    from qsens.cli import main
    from tests.conftest import one_thread

    tmp = tmp_path_factory.mktemp("transfer")
    data = tmp / "data"
    shutil.copytree(tiny_prepared_data, data)
    params = _params(tmp)
    base = ["--params", str(params), "--data-dir", str(data)]
    with one_thread():
        assert main(["bank", "build", *base, "--quiet"]) == 0
        assert main(["graph", *base]) == 0
        assert main(["sample", *base, "--shards", str(data / "shards" / "digits"), "--quiet"]) == 0
        assert main(["cache", "merge", "--shards", str(data / "shards" / "digits"),
                     "--out", str(data / "quant_cache" / "digits.parquet")]) == 0
        assert main(["predictor", "train", *base, "--quiet", "--metrics", str(tmp / "m.json")]) == 0
    return tmp, base, data


def test_derived_checkpoints_are_deterministic_from_params(project):
    from qsens.cli import main
    from tests.conftest import one_thread

    tmp, base, data = project
    digests = {}
    with one_thread():
        for kind in ("finetune", "lora", "fewstep"):
            assert main(["prepare", *base, "--derive", kind, "--quiet"]) == 0
            first = _weights_digest(data / "models" / f"digits-{kind}")
            assert main(["prepare", *base, "--derive", kind, "--quiet"]) == 0
            assert _weights_digest(data / "models" / f"digits-{kind}") == first, kind
            digests[kind] = first
    base_digest = _weights_digest(data / "models" / "digits")
    assert digests["finetune"] != base_digest and digests["lora"] != base_digest
    assert digests["fewstep"] == base_digest  # same weights, fewer sampler steps
    meta = json.loads((data / "models" / "digits-fewstep" / "qsens_digits.json").read_text())
    assert meta["params"]["steps"] == 1 and meta["info"]["derived"]["kind"] == "fewstep"
    assert (data / "reference" / "digits-finetune" / "classifier.json").is_file()
    # a fine-tune is measured against the data it was tuned to; a few-step variant against the base's
    from sampling.scoring import load_reference_stats

    mu = {k: load_reference_stats(data / "reference" / k)[0] for k in ("digits", "digits-finetune", "digits-fewstep")}
    assert not np.allclose(mu["digits-finetune"], mu["digits"]) and np.array_equal(mu["digits-fewstep"], mu["digits"])
    assert "thicken" in load_reference_stats(data / "reference" / "digits-lora")[2]["source"]


def test_transfer_labels_a_few_configs_then_searches_and_the_diff_reads_it(project, capsys, monkeypatch):
    from qsens.cli import main
    from tests.conftest import one_thread

    tmp, base, data = project

    def rebuilt(*a, **k):  # the rounds must train on transfer's template (the base's probe rows)
        raise AssertionError("run_active rebuilt the template transfer handed it")

    monkeypatch.setattr("search.active._build_template", rebuilt)
    with one_thread():
        if not (data / "models" / "digits-finetune").is_dir():
            assert main(["prepare", *base, "--derive", "finetune", "--quiet"]) == 0
        ft = [*base, "--name", "digits-finetune"]
        assert main(["bank", "build", *ft, "--quiet"]) == 0
        assert main(["graph", *ft]) == 0
        out = tmp / "tr"
        assert main(["transfer", *ft, "--base-predictor", str(data / "predictor" / "digits"), "--out", str(out),
                     "--threads", "1", "--quiet"]) == 0
    summary = json.loads((out / "transfer.json").read_text())
    # 8 random + per round and budget one pick (the search's own), 2 rounds (0 and 1) x 2 budgets at most
    assert 8 < summary["labelled_configs"] <= 8 + 2 * 2
    assert summary["label_images"] == summary["labelled_configs"] * 8
    assert summary["spend"]["images"] >= summary["label_images"]
    assert set(summary["configs"]) == {"3.5", "4"}
    for b, c in summary["configs"].items():
        assert c["avg_bits"] <= float(b) + 1e-9
    family = json.loads((out / "family" / "family.json").read_text())
    assert {r["budget"] for r in family} == {3.5, 4.0}
    # random labels scored against another reference are never reused: moved to stale/, scored again
    from sampling.scoring import load_reference_stats, save_reference_stats

    before = pd.read_parquet(out / "random.parquet").set_index("config_id")["fid"]
    ref = data / "reference" / "digits-finetune"
    mu, sigma, info = load_reference_stats(ref)
    save_reference_stats(ref, mu + 0.5, sigma, info)
    with one_thread():
        assert main(["transfer", *ft, "--base-predictor", str(data / "predictor" / "digits"), "--out", str(out),
                     "--threads", "1", "--quiet"]) == 0
    after = pd.read_parquet(out / "random.parquet").set_index("config_id")["fid"]
    assert list(after.index) == list(before.index) and not np.allclose(after.values, before.values)
    assert len(list((out / "stale").glob("*/random.parquet"))) == 1
    # the sensitivity diff: a predictor against itself changes nothing; base vs transfer is a report
    capsys.readouterr()
    pred = data / "predictor" / "digits"
    assert main(["predictor", "diff", str(pred), str(pred), "--out", str(tmp / "self.json")]) == 0
    same = json.loads((tmp / "self.json").read_text())
    assert same["summary"]["max_abs_change"] == 0.0 and same["summary"]["more_sensitive"] == 0
    assert all(r["change"] == 0.0 for r in same["layers"])
    assert main(["predictor", "diff", str(pred), str(out / "active" / "predictor"), "--out",
                 str(tmp / "diff.json")]) == 0
    diff = json.loads((tmp / "diff.json").read_text())
    assert diff["summary"]["layer_options"] == len(same["layers"]) and (tmp / "diff.png").is_file()


def test_transfer_refuses_another_architecture_in_one_line(project, capsys):
    """A DiT's layers are not the U-Net predictor's: one error line naming a layer, nothing written."""
    from qsens.cli import main
    from tests.conftest import one_thread

    tmp, base, data = project
    dit = [*base, "--model", "digits-dit"]
    with one_thread():
        assert main(["prepare", *dit, "--quiet"]) == 0
        assert main(["bank", "build", *dit, "--quiet"]) == 0
        assert main(["graph", *dit]) == 0
        capsys.readouterr()
        out = tmp / "tr-dit"
        assert main(["transfer", *dit, "--base-predictor", str(data / "predictor" / "digits"), "--out", str(out),
                     "--quiet"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
    assert len(err) == 1 and "the graphs differ" in err[0] and "layer " in err[0], err
    assert not (out / "transfer.json").exists()
    # and a diff of two predictors of different architectures is refused the same way
    capsys.readouterr()
    assert main(["transfer", *dit, "--scratch", "--base-predictor", str(data / "predictor" / "digits"),
                 "--out", str(out)]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_transfer_checks_its_inputs_before_scoring_anything(project, capsys):
    """Forgetting --name (the base onto itself) and another model's bank are one line each, before
    any config is scored, and no output dir is left behind."""
    from qsens.cli import main
    from tests.conftest import one_thread

    tmp, base, data = project
    pred = str(data / "predictor" / "digits")
    with one_thread():
        if not (data / "models" / "digits-finetune").is_dir():
            assert main(["prepare", *base, "--derive", "finetune", "--quiet"]) == 0
        if not (data / "graphs" / "digits-finetune.json").is_file():
            assert main(["graph", *base, "--name", "digits-finetune"]) == 0
        cases = [([], "own predictor"),
                 (["--name", "digits-finetune", "--bank", str(data / "bank" / "digits")], "conv_in")]
        for extra, words in cases:
            out = tmp / "tr-refused"
            capsys.readouterr()
            assert main(["transfer", *base, *extra, "--base-predictor", pred, "--out", str(out), "--quiet"]) == 2
            err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
            assert len(err) == 1 and words in err[0], err
            assert not out.exists()


def test_the_dvc_stage_list_names_only_derived_kinds():
    from core.errors import QsensError
    from search.transfer import TransferParams

    assert TransferParams(derived=("finetune", "fewstep")).derived == ("finetune", "fewstep")
    for bad in (("finetuned",), ("lora", "lora")):
        with pytest.raises(QsensError, match="transfer.derived"):
            TransferParams(derived=bad)
