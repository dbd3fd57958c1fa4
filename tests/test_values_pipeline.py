"""The diffusers-pipeline adapter draws exactly what the pipeline itself draws.

`DiffusersPipelineDenoiser.generate` caches prompt embeddings, batches images and seeds one
generator per image; none of that may change the images: they must equal a plain `pipe(...)` call
with the same prompts / classes, guidance scale, steps and per-image generators. Tiny random
pipelines of the real classes (tests/tiny_pipelines.py), built in memory.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from denoisers.base import image_seeds, to_uint8
from tests.tiny_pipelines import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _direct(pipe, n: int, seed: int, guidance: float, **cond) -> np.ndarray:
    gens = [torch.Generator().manual_seed(int(s)) for s in image_seeds(n, seed)]
    with torch.no_grad():
        out = pipe(num_inference_steps=2, guidance_scale=guidance, generator=gens, output_type="pt",
                   **cond).images
    return to_uint8(out.float() * 2 - 1)[0]


@pytest.mark.parametrize("kind", ["sd", "dit"])
def test_adapter_images_equal_the_pipeline_call_at_each_guidance(kind):
    from denoisers.pipeline import DiffusersPipelineDenoiser

    pipe = tiny_pipeline(kind)
    if kind == "sd":
        prompts = ["a red cube", "a lion riding a bike"]
        den = DiffusersPipelineDenoiser(pipe, kind, prompts=prompts, steps=2, batch_size=2)
        cond = {"prompt": prompts}
    else:
        den = DiffusersPipelineDenoiser(pipe, kind, num_classes=1000, steps=2, batch_size=2)
        cond = {"class_labels": [0, 1]}
    assert den.guidance == {"sd": 7.5, "dit": 4.0}[kind]  # the pipeline's own __call__ default
    images = {}
    for guidance in (1.0, 3.0):
        images[guidance] = den.generate(2, seed=0, guidance=guidance).images
        np.testing.assert_array_equal(images[guidance], _direct(pipe, 2, 0, guidance, **cond))
    assert not np.array_equal(images[1.0], images[3.0])  # the guidance scale reached the sampler
    # configure_generation sets the default the next generate uses
    den.configure_generation(guidance=3.0)
    np.testing.assert_array_equal(den.generate(2, seed=0).images, images[3.0])
