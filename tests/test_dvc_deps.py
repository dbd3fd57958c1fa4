"""dvc.yaml's code deps are derived, not hand-listed (issue 12, case 7): the test fails on drift."""
from __future__ import annotations

from pathlib import Path

import yaml

from core.provenance import ROOT, derive_dvc_deps, dvc_deps, stage_cmd, stage_modules


def test_every_stage_depends_on_exactly_the_code_its_commands_import():
    text = (ROOT / "dvc.yaml").read_text()
    derived = derive_dvc_deps(text)
    if derived != text:
        stages = yaml.safe_load(text)["stages"]
        want = yaml.safe_load(derived)["stages"]
        def deps(stage: dict) -> set:
            return set(stage.get("deps") or (stage.get("do") or {}).get("deps", []))

        drift = {name: sorted(deps(want[name]) ^ deps(stages[name])) for name in stages
                 if deps(want[name]) != deps(stages[name])}
        raise AssertionError(f"dvc.yaml code deps drifted from the import closure: {drift}. "
                             "Run `python -m core.provenance --write-dvc dvc.yaml`.")


def test_known_members_of_the_kind_are_listed():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    def deps(name: str) -> list:
        return stages[name].get("deps") or stages[name]["do"]["deps"]

    assert "predictor/metrics.py" in deps("train")  # computes the reported Spearman
    assert "sampling/cache.py" in deps("cache")  # the cache stage listed no code at all
    assert "data/quant_cache/${key}.parquet" in deps("search")
    for name, stage in stages.items():
        assert stage_modules(stage_cmd(stage)), f"stage {name} runs no qsens command"


def test_derivation_adds_a_new_import_and_drops_a_removed_one(tmp_path: Path):
    for pkg in ("quant", "qsens", "qsens/commands"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "quant" / "a.py").write_text("A = 1\n")
    (tmp_path / "quant" / "b.py").write_text("B = 1\n")
    (tmp_path / "qsens" / "commands" / "x.py").write_text("def run():\n    from quant.a import A\n")
    text = ("stages:\n  x:\n    cmd: qsens x --out o\n    deps:\n      - data/in\n      - quant/b.py\n"
            "    outs:\n      - o\n")
    derived = derive_dvc_deps(text, root=tmp_path)
    deps = yaml.safe_load(derived)["stages"]["x"]["deps"]
    assert deps[0] == "data/in" and "quant/a.py" in deps and "quant/b.py" not in deps
    assert deps[1:] == dvc_deps(["qsens.commands.x"], root=tmp_path)


def test_a_foreach_stage_gets_the_closure_of_its_do_commands(tmp_path: Path):
    for pkg in ("quant", "qsens", "qsens/commands"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "quant" / "a.py").write_text("A = 1\n")
    (tmp_path / "qsens" / "commands" / "x.py").write_text("def run():\n    from quant.a import A\n")
    text = ("stages:\n  t:\n    foreach: ${kinds}\n    do:\n      cmd: qsens x --out o-${item}\n"
            "      deps:\n        - data/in\n        - quant/gone.py\n      outs:\n        - o-${item}\n")
    do = yaml.safe_load(derive_dvc_deps(text, root=tmp_path))["stages"]["t"]["do"]
    assert do["deps"] == ["data/in", *dvc_deps(["qsens.commands.x"], root=tmp_path)]
    assert "quant/a.py" in do["deps"] and do["outs"] == ["o-${item}"]


def test_only_prepare_depends_on_the_model_params():
    """#27 item 4: moving a model dir re-runs prepare only; the others see what the model is and
    its settings through prepare's outputs (model.json's content identity, settings.json), never
    params `model:` / `models:` (whose `source` and `reference` are paths)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        params = stage.get("params") or (stage.get("do") or {}).get("params", [])
        if name in ("prepare", "transfer"):  # transfer@KIND runs prepare --derive itself
            continue
        assert not [p for p in params if p == "model" or str(p).startswith(("model.", "models"))], name
    assert {"model", "models.${key}"} <= set(stages["prepare"]["do"]["params"])


def test_every_model_stage_runs_once_per_model_with_its_own_outputs():
    """#27: stages over params `models:` (DVC foreach), each command told which model, every
    output path carrying the model's name."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "transfer":  # over transfer.derived, of the model transfer.base
            continue
        assert stage.get("foreach") == "${models}", name
        do = stage["do"]
        outs = [next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics", "plots")
                for o in do.get(k, [])]
        assert outs and all("${key}" in o for o in outs), (name, outs)
        for part in do["cmd"].split("&&"):
            if any(c in part for c in ("qsens cache", "qsens cost")):
                continue
            assert "--model ${key}" in part, (name, part)
