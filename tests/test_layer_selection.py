"""`model.layers` / `model.max_layers` (issue #22 item 5): the cost knob for very large models.

The chosen layers are the model's quantizable layers for every command (bank, graph, search,
apply, fingerprint); the others keep their FP weights. Bad values are one line."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_restricted_layers_are_the_quantizable_layers_everywhere(tiny_digits_denoiser):
    from core.errors import QsensError
    from quant.layers import layer_fingerprints, quantizable_layers, restrict_layers

    model = tiny_digits_denoiser.model
    every = list(quantizable_layers(model))
    chosen = restrict_layers(model, r"^down_blocks", 3)
    downs = [n for n in every if n.startswith("down_blocks")]
    assert len(chosen) == 3 and chosen[0] == downs[0] and chosen[-1] == downs[-1]
    assert list(quantizable_layers(model)) == chosen
    assert list(quantizable_layers(copy.deepcopy(model))) == chosen  # copies keep the selection
    assert set(layer_fingerprints(model)) == set(chosen)
    assert restrict_layers(model, None, 0) == every and list(quantizable_layers(model)) == every
    with pytest.raises(QsensError, match="model.layers 'nope' matches no layer"):
        restrict_layers(model, "nope")
    with pytest.raises(QsensError, match="not a regular expression"):
        restrict_layers(model, "(")


@pytest.fixture(scope="module")
def data(tiny_prepared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layers")
    shutil.copytree(tiny_prepared_data, tmp / "data")
    return tmp


def _params(tmp: Path, **model) -> list[str]:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["model"].update(model)
    p["digits"].update({"unet_channels": [8, 16], "unet_head_dim": 8, "steps": 2, "gen_batch_size": 16})
    path = tmp / f"params-{len(model)}-{abs(hash(json.dumps(model, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return ["--params", str(path), "--data-dir", str(tmp / "data")]


def test_bank_graph_and_search_cover_only_the_chosen_layers(data, capsys):
    from qsens.cli import main
    from quant.bank import Bank
    from tests.conftest import one_thread

    some = _params(data, layers="^(down|up)_blocks", max_layers=4)
    with one_thread():
        assert main(["bank", "build", *some, "--options", "uaq3,uaq4", "--out", str(data / "b4"), "--quiet"]) == 0
        bank = Bank.load(data / "b4")
        assert len(bank.layer_names) == 4 and all(n.startswith(("down_blocks", "up_blocks")) for n in bank.layer_names)
        assert main(["graph", *some, "--out", str(data / "g4.json")]) == 0
        assert main(["search", *some, "--bank", str(data / "b4"), "--strategy", "uniform", "--budget", "3.5",
                     "--no-select", "--out", str(data / "c4.json")]) == 0
    cfg = json.loads((data / "c4.json").read_text())
    assert set(cfg["options"]) == set(bank.layer_names)
    # the whole model's bank is another model's for this selection: one line, nothing scored
    every = _params(data)
    with one_thread():
        assert main(["bank", "build", *every, "--options", "uaq3,uaq4", "--out", str(data / "ball"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", *some, "--config", str(data / "c4.json"), "--bank", str(data / "ball"),
                 "--n-images", "2", "--out", str(data / "gen")]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
    assert len(err) == 1, err


@pytest.mark.parametrize("model, words", [({"max_layers": -1}, "model.max_layers must be >= 0"),
                                          ({"layers": "("}, "not a regular expression"),
                                          ({"layers": "^nothing$"}, "matches no layer")])
def test_bad_layer_selections_are_one_line(data, capsys, model, words):
    from qsens.cli import main

    capsys.readouterr()
    assert main(["bank", "build", *_params(data, **model), "--out", str(data / "bad"), "--quiet"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
    assert len(err) == 1 and words in err[0], err
    assert not (data / "bad").exists()


def test_the_graph_of_a_restricted_model_has_the_chosen_weight_nodes_and_trains(data):
    """The graph, bank and predictor agree on the chosen layers (a new user's trial: the graph
    kept all 51 and `predictor train` refused)."""
    from graphs.io import read_graph
    from qsens.cli import main
    from quant.bank import Bank
    from tests.conftest import one_thread

    some = _params(data, max_layers=6)
    with one_thread():
        assert main(["bank", "build", *some, "--options", "uaq3,uaq4", "--out", str(data / "b6"), "--quiet"]) == 0
        assert main(["graph", *some, "--out", str(data / "g6.json")]) == 0
    weights = {n for n, d in read_graph(data / "g6.json").nodes(data=True) if d.get("kind") == "weight"}
    assert len(weights) == 6 and set(Bank.load(data / "b6").layer_names) <= weights | {
        d.get("layer") for _, d in read_graph(data / "g6.json").nodes(data=True)}
