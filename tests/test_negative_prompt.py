"""model.negative_prompt / --negative-prompt (issue #27 item 2): passed to every pipeline whose
`__call__` takes `negative_prompt` (SD3 and Hunyuan-DiT too, not only the SD/SDXL/PixArt embedding
path), and one line on stderr, once, where it cannot act (LCM, guidance 1, the digits models)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from denoisers.spec import ModelSpec
from qsens.cli import main as qsens_main
from tests.tiny_pipelines import build_tiny_pipeline

PROMPTS = ["a red cube", "a blue ball"]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("negative")
    return {kind: build_tiny_pipeline(kind, root / kind) for kind in ("sd3", "hunyuan", "lcm")}


def _load(source: Path, kind: str, **spec):
    from denoisers.registry import load_denoiser

    den = load_denoiser(ModelSpec(source=str(source), name=kind, steps=2, batch_size=2, **spec))
    den.prompts = list(PROMPTS)
    return den


@pytest.mark.parametrize("kind", ["sd3", "hunyuan"])
def test_negative_prompt_changes_sd3_and_hunyuan_images(pipes, kind, capsys):
    den = _load(pipes[kind], kind)
    assert den.traits.guidance_kind == "cfg" and den.guidance > 1  # the pipeline's own default
    base = den.generate(2, 0).images
    assert np.array_equal(base, den.generate(2, 0).images)  # deterministic
    neg = _load(pipes[kind], kind, negative_prompt="blurry, low quality")
    assert neg.negative_prompt_unused() is None
    images = neg.generate(2, 0).images
    assert not np.array_equal(base, images)
    neg.negative_prompt = "watermark"  # another negative prompt: other images again
    assert not np.array_equal(images, neg.generate(2, 0).images)
    assert "negative prompt" not in capsys.readouterr().err  # used: nothing to say


def test_lcm_says_once_that_it_cannot_use_a_negative_prompt(pipes, capsys):
    plain = _load(pipes["lcm"], "lcm")
    base = plain.generate(2, 0).images
    assert capsys.readouterr().err == ""
    den = _load(pipes["lcm"], "lcm", negative_prompt="blurry")
    assert "takes no negative prompt" in den.negative_prompt_unused()
    images = den.generate(2, 0).images
    den.generate(2, 1)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err  # one line, once
    assert err[0].startswith("warning: lcm: the negative prompt")
    assert "LatentConsistencyModelPipeline takes no negative prompt" in err[0]
    assert np.array_equal(base, images)  # drawn without it, as the line says


def test_guidance_one_says_the_negative_prompt_is_off(pipes, capsys):
    den = _load(pipes["sd3"], "sd3", negative_prompt="blurry", guidance=1.0)
    base = _load(pipes["sd3"], "sd3", guidance=1.0).generate(1, 0).images
    assert np.array_equal(base, den.generate(1, 0).images)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "guidance 1 turns classifier-free guidance off" in err


def _generate(tmp: Path, source: Path, out: str, *extra: str) -> list[np.ndarray]:
    argv = ["generate", "--model", source, "--params", tmp / "params.yaml", "--steps", "2",
            "--batch-size", "2", "--n-images", "2", "--prompt", PROMPTS[0], "--out", tmp / out,
            *extra]
    assert qsens_main([str(a) for a in argv]) == 0
    return [np.asarray(Image.open(p)) for p in sorted((tmp / out).glob("*.png"))]


def test_negative_prompt_flag_reaches_the_pipeline(pipes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"source": "digits"}}))
    base = _generate(tmp_path, pipes["sd3"], "base")
    flag = _generate(tmp_path, pipes["sd3"], "neg", "--negative-prompt", "blurry")
    assert len(base) == len(flag) == 2
    assert not all(np.array_equal(a, b) for a, b in zip(base, flag))
    # the flag's images are those of model.negative_prompt in params
    den = _load(pipes["sd3"], "sd3", negative_prompt="blurry")
    den.prompts = [PROMPTS[0]]
    expected = den.generate(2, 0).images
    assert all(np.array_equal(a, b) for a, b in zip(expected, flag))
    # an empty flag overrides a params negative prompt
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"model": {"source": "digits", "negative_prompt": "blurry"}}))
    empty = _generate(tmp_path, pipes["sd3"], "empty", "--negative-prompt", "")
    assert all(np.array_equal(a, b) for a, b in zip(base, empty))
    capsys.readouterr()
    _generate(tmp_path, pipes["lcm"], "lcm", "--negative-prompt", "blurry")
    lines = [line for line in capsys.readouterr().err.splitlines() if "negative prompt" in line]
    assert len(lines) == 1 and "takes no negative prompt" in lines[0]
