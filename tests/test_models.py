"""Several models in one project (#27 item 3): params `models:` entries over the `model:` defaults,
picked by `--model NAME`, each with its own data paths, metrics and settings file."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from denoisers.spec import model_names, resolve_spec
from qsens.context import context
from core.errors import QsensError

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp: Path, models: dict | None, **model) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["model"].update(model)
    if models is None:
        p.pop("models")
    else:
        p["models"] = models
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def test_the_shipped_params_run_digits(tmp_path):
    spec = resolve_spec(ROOT / "params.yaml")
    assert (spec.source, spec.name) == ("digits", "digits")
    assert model_names(ROOT / "params.yaml") == ["digits"]


def test_an_entry_is_its_fields_over_the_model_defaults(tmp_path):
    pipe = tmp_path / "sd15"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    params = _params(tmp_path, {"digits": {}, "sd15": {"source": str(pipe), "steps": 30}, "digits-dit": None},
                     steps=20, guidance=5.0)
    assert model_names(params) == ["digits", "sd15", "digits-dit"]
    first = resolve_spec(params)  # no --model: the first entry
    assert (first.name, first.source, first.steps, first.guidance) == ("digits", "digits", 20, 5.0)
    sd = resolve_spec(params, model="sd15")
    assert (sd.name, sd.source, sd.steps, sd.guidance) == ("sd15", str(pipe), 30, 5.0)
    dit = resolve_spec(params, model="digits-dit")  # a built-in's name is its source
    assert (dit.name, dit.source) == ("digits-dit", "digits-dit")
    # commands that only read data products take the name the same way (loads_model=False)
    ns = argparse.Namespace(params=params, model="sd15", name=None, data_dir=tmp_path / "data")
    ctx = context(ns, loads_model=False)
    assert ctx.layout.bank == tmp_path / "data" / "bank" / "sd15"
    assert ctx.layout.metrics == Path("metrics") / "sd15"
    # a derived checkpoint named after its base keeps the base entry's settings
    derived = resolve_spec(params, model="sd15", name="sd15-finetune")
    assert (derived.name, derived.steps) == ("sd15-finetune", 30)


def test_a_source_that_is_no_entry_still_works(tmp_path):
    params = _params(tmp_path, {"digits": {}})
    spec = resolve_spec(params, model="digits-dit")
    assert (spec.name, spec.source) == ("digits-dit", "digits-dit")


def test_params_without_models_keep_the_single_model_form(tmp_path):
    params = _params(tmp_path, None, source="digits-dit", name="dit")
    assert model_names(params) == ["dit"]
    assert resolve_spec(params).name == "dit"


@pytest.mark.parametrize("models,model,message", [
    ({"digits": {"stepz": 3}}, {}, "unknown models.digits params"),
    ({"digits": {"steps": "many"}}, {}, "models.digits.steps = 'many'"),
    ({"digits": ["x"]}, {}, "models.digits must be a mapping"),
    ({"digits": {"name": "other"}}, {}, "models.digits.name"),
    ({"bad name": {}}, {}, "models.bad name: not a short name"),
    ({"digits": {}}, {"name": "digits"}, "model.name: with a `models:` section"),
])
def test_bad_entries_are_one_line_naming_the_entry(tmp_path, models, model, message):
    params = _params(tmp_path, models, **model)
    with pytest.raises(QsensError) as err:
        resolve_spec(params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_settings_file_holds_the_settings_not_where_the_model_lies(tmp_path):
    """What the stages after prepare depend on: two sources at different paths with the same
    settings give the same bytes; a changed setting of the entry changes them."""
    from qsens.commands.prepare import SETTINGS, write_settings

    def settings(models: dict) -> bytes:
        params = _params(tmp_path, models)
        ns = argparse.Namespace(params=params, model="m", name=None, data_dir=tmp_path / "data",
                                reference=None, device=None, dtype=None, negative_prompt=None)
        ctx = context(ns, installed_reference=False, loads_model=False)
        write_settings(ctx)
        return (tmp_path / "data" / "models" / "m" / SETTINGS).read_bytes()

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "model_index.json").write_text("{}")
    here = settings({"m": {"source": str(tmp_path / "a"), "reference": "ref-a", "steps": 4}})
    moved = settings({"m": {"source": str(tmp_path / "b"), "reference": "ref-b", "steps": 4}})
    assert here == moved and b"ref-a" not in here and str(tmp_path).encode() not in here
    assert settings({"m": {"source": str(tmp_path / "a"), "steps": 5}}) != here


def test_an_unknown_model_names_the_entries_and_an_entry_is_not_offered_a_name(tmp_path):
    params = _params(tmp_path, {"digits": {}, "digits-dit": {}})
    with pytest.raises(QsensError, match=r"nor an entry of .*`models:` \(digits, digits-dit\)"):
        resolve_spec(params, model="nosuchmodel")
    params = _params(tmp_path, {"digits": {"stesp": 3}})
    with pytest.raises(QsensError) as err:
        resolve_spec(params)
    assert "'stesp'" in str(err.value) and "'name'" not in str(err.value)


def test_cost_takes_the_model_name(tmp_path, monkeypatch):
    """`qsens cost --model NAME` reads data/cost/NAME and writes metrics/NAME/cost.json."""
    import json

    from conftest import run_qsens

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "gpu_sd15.json").write_text((ROOT / "bench" / "results" / "gpu_sd15.json").read_text())
    costs = tmp_path / "data" / "cost" / "m"
    costs.mkdir(parents=True)
    (costs / "sample.json").write_text(json.dumps({"stage": "sample", "images": 10, "forwards": 5,
                                                   "forward_samples": 60, "seconds": 1.0}))
    done = run_qsens("cost", "--model", "m")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "metrics" / "m" / "cost.json").read_text())["stages"]["sample"]["images"] == 10
    assert run_qsens("cost").returncode == 2


def test_a_registered_model_adapter_loads_its_sources_for_every_command(tmp_path, tiny_digits_denoiser):
    """Issue #26 item 3: a new model family is one `register_adapter` call — its marker file makes
    a directory its kind, `models:` entries name it, and the one loader gives its denoiser (layer
    restriction included) to the bank like any other."""
    from denoisers.adapters import ModelAdapter, register_adapter, unregister_adapter
    from denoisers.registry import load_denoiser
    from denoisers.spec import classify_source
    from quant.bank import build_bank

    toy = tmp_path / "toy-model"
    toy.mkdir()
    with pytest.raises(QsensError, match="is a directory but no model"):
        classify_source(toy / ".." / "toy-model")
    (toy / "toy_model.json").write_text("{}")
    loaded = []

    def load(spec, data_dir):
        loaded.append((spec.source, spec.device))
        return tiny_digits_denoiser

    register_adapter(ModelAdapter("toy-dir", load, "a toy family", marker="toy_model.json"))
    try:
        assert classify_source(toy) == "toy-dir"
        params = _params(tmp_path, {"toy": {"source": str(toy), "max_layers": 3}})
        spec = resolve_spec(params, model="toy")
        den = load_denoiser(spec, tmp_path / "data")
        assert loaded == [(str(toy), "cpu")] and den is tiny_digits_denoiser
        bank = build_bank(den.model, ["uaq4"], model_name="toy", progress=False)
        assert len(bank.layers) == 3  # the entry's max_layers reached the adapter's model
        with pytest.raises(QsensError, match="already registered"):
            register_adapter(ModelAdapter("toy-dir", load))
    finally:
        unregister_adapter("toy-dir")
    with pytest.raises(QsensError, match="is a directory but no model"):
        classify_source(toy)
