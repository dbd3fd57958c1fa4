"""params.yaml is the only source of defaults (issue #26 item 2): every section of the shipped file
is read by a dataclass that takes its defaults from it (`core.params.defaults_from`), a knob given a
second default in a class is refused, and the one `calibration:` section reaches every stage that
calibrates while a stage may still override one field."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import pytest
import yaml

from core.params import CALIBRATION, SECTIONS, SHIPPED_PARAMS, check_types, defaults_from, field_default

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "quant", "denoisers", "sampling", "graphs", "predictor", "search", "analysis", "qsens")
# read by the pipeline's own machinery, not a dataclass: `models:` (denoisers.spec.read_models_section,
# entries over `model:`)
NOT_A_DATACLASS = {"models"}


def _import_everything() -> None:
    for pkg in PACKAGES:
        module = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(module.__path__, pkg + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


def _shipped() -> dict:
    return yaml.safe_load(SHIPPED_PARAMS.read_text())


def test_the_shipped_params_file_is_the_repositorys():
    assert SHIPPED_PARAMS == ROOT / "params.yaml"


def test_every_shipped_section_is_read_by_a_dataclass_with_a_field_per_key():
    _import_everything()
    shipped = _shipped()
    missing = sorted(set(shipped) - NOT_A_DATACLASS - set(SECTIONS))
    assert not missing, f"params sections no dataclass reads (use @defaults_from): {missing}"
    for section, classes in SECTIONS.items():
        known = {f.name for cls in classes for f in fields(cls)}
        assert set(shipped[section]) <= known, (section, sorted(set(shipped[section]) - known))


def test_every_knob_has_one_default_and_it_is_the_shipped_value():
    _import_everything()
    shipped = _shipped()
    problems = []
    for section, classes in SECTIONS.items():
        for cls in classes:
            calib = cls.__params_calibration__
            for f in fields(cls):
                if f.name in cls.__params_not_knobs__:
                    continue
                if f.name in shipped[section]:
                    raw = shipped[section][f.name]
                elif f.name in calib:
                    raw = shipped[CALIBRATION][calib[f.name]]
                else:
                    problems.append(f"{cls.__name__}.{f.name}: a knob with no value in params.yaml `{section}`")
                    continue
                want = check_types(cls, {f.name: raw}, section)[f.name]
                if field_default(cls, f.name) != want:
                    problems.append(f"{cls.__name__}.{f.name}: default {field_default(cls, f.name)!r} != params {want!r}")
    assert not problems, problems


def test_every_calibration_mapping_names_a_key_of_the_section_and_every_key_is_used():
    _import_everything()
    shared = set(_shipped()[CALIBRATION])
    used = set()
    for classes in SECTIONS.values():
        for cls in classes:
            assert set(cls.__params_calibration__.values()) <= shared, cls.__name__
            used |= set(cls.__params_calibration__.values())
    assert used == shared


def test_a_second_default_in_the_class_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"\['epochs'\] have a default in the class and in params.yaml"):
        @dataclass(frozen=True)
        @defaults_from("train")
        class Twice:  # noqa: F841 - defining it is the test
            epochs: int = 5


def test_a_field_without_a_shipped_value_stays_required():
    @dataclass(frozen=True)
    @defaults_from("score")
    class Partly:
        extra: int  # first: a field without a default cannot follow one with a default
        images: int

    SECTIONS["score"].remove(Partly)  # a test class: not one of the pipeline's sections' readers
    assert field_default(Partly, "images") == _shipped()["score"]["images"]
    assert field_default(Partly, "extra") is MISSING
    with pytest.raises(TypeError):
        Partly()
    assert Partly(extra=1).images == _shipped()["score"]["images"]


def test_one_calibration_edit_reaches_every_stage_and_a_stage_may_override_a_field(tmp_path: Path):
    from analysis.act_calibration import ActCalibrationParams
    from analysis.metric_validity import MetricValidityParams
    from analysis.params import AnalysisParams
    from analysis.quant_analyzer import QuantAnalyzerParams
    from core.params import load_section
    from search.activation import evaluate_params
    from search.params import SearchParams

    p = _shipped()
    p[CALIBRATION].update(samples=7, trajectories=5, chunk=3, timesteps="normal")
    p["search"]["fisher_calib_seed"] = 9  # the search stage's own value wins over calibration.seed
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))

    analysis = AnalysisParams.from_yaml(path)
    assert (analysis.calib_samples, analysis.calib_trajectories, analysis.calib_timesteps) == (7, 5, "normal")
    qa = QuantAnalyzerParams.from_yaml(path)
    assert (qa.calib_samples, qa.chunk) == (7, 3)
    search = SearchParams.from_yaml(path)
    assert (search.fisher_samples, search.fisher_calib_seed, search.fisher_timesteps) == (7, 9, "normal")
    assert evaluate_params(path)[1].act_calib_samples == 7
    assert ActCalibrationParams.from_yaml(path).calib_trajectories == 5
    mv = load_section(MetricValidityParams, path, "metric_validity")
    assert (mv.calib_samples, mv.chunk, mv.calib_seed) == (7, 3, p[CALIBRATION]["seed"])


def test_sample_labels_use_the_score_section(tmp_path: Path):
    """`score.images` / `score.seed` are the cache's label knobs for `qsens sample` too (no second
    `sample.images`): a sample section that still sets them is an unknown key, one line."""
    import argparse

    from core.errors import QsensError
    from qsens.commands.sample import fill_from_params

    p = _shipped()
    p["score"].update(images=32, seed=4)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    keys = ("num_configs", "workers", "backend", "seed", "max_attempts", "paired", "hifi_configs", "hifi_images",
            "images", "image_seed")
    args = argparse.Namespace(**dict.fromkeys(keys))
    fill_from_params(args, path)
    assert (args.images, args.image_seed, args.num_configs) == (32, 4, p["sample"]["num_configs"])
    p["sample"]["images"] = 64
    path.write_text(yaml.safe_dump(p))
    with pytest.raises(QsensError, match=r"sample.images: the quant_cache's labels are score.images"):
        fill_from_params(argparse.Namespace(**dict.fromkeys(keys)), path)


def test_every_params_dataclass_loads_the_shipped_file():
    """`load_section` of every registered dataclass reads the shipped params.yaml (a section split
    over two dataclasses, like `evaluate`, included)."""
    from core.params import load_section

    _import_everything()
    for section, classes in SECTIONS.items():
        for cls in classes:
            load_section(cls, SHIPPED_PARAMS, section)


@pytest.mark.parametrize("calibration, message", [
    ({"sampels": 32}, r"unknown calibration params \['sampels'\] in .*params.yaml; known: \['chunk'"),
    ({"samples": "many"}, r"params.yaml: calibration.samples = 'many': expected an integer"),
    ({"timesteps": 3}, r"calibration.timesteps = 3: expected a string"),
])
def test_a_bad_calibration_section_is_one_line_naming_its_key(tmp_path: Path, calibration, message):
    from analysis.params import AnalysisParams
    from core.errors import QsensError
    from search.params import SearchParams

    p = _shipped()
    p[CALIBRATION].update(calibration)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    for load in (AnalysisParams.from_yaml, SearchParams.from_yaml):
        with pytest.raises(QsensError, match=message):
            load(path)
