"""Prediction types (ε, v, flow matching) in everything that computes a loss or calibrates.

The fisher strategy's denoising loss (search/fisher.py), the calibration set
(sampling/calibration.py: `eps_scale` per sample) and the output-error proxy `run_model` state
everything in ε space: ε̂ = c_t·output + (x_t terms), c_t = 1 (ε), √ᾱ_t (v), 1 − σ (flow).
Each type is checked against a by-hand value: the factor itself from the scheduler's own
numbers, and the fisher score of one layer by torch.autograd of L = ½‖c_t·o − (sg(c_t·o) + n)‖².
"""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from tests.test_fisher import _by_hand, _table, tiny_bank  # noqa: F401 - fixture


def _set_prediction(den, prediction: str):
    """The digits denoiser as if it were a `prediction` model (its weights do not care: the
    loss and its weighting are what is tested)."""
    from denoisers.traits import eps_scale

    from diffusers import FlowMatchEulerDiscreteScheduler

    # v: the digits sampler (DPM-Solver++ over a 1000-step DDPM schedule); flow: a flow scheduler
    sched = FlowMatchEulerDiscreteScheduler() if prediction == "flow" else den._scheduler()
    den.prediction_type = prediction
    den.eps_scale = lambda t: eps_scale(prediction, sched, t)
    return sched


def test_eps_scale_per_type_against_by_hand_values():
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from denoisers.traits import eps_scale, prediction_type

    ddpm = DDPMScheduler(beta_schedule="linear", prediction_type="v_prediction")
    assert prediction_type(ddpm) == "v_prediction"
    t = torch.tensor([0.0, 499.0, 999.0])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    got = eps_scale("v_prediction", ddpm, t)
    for i, ti in enumerate((0, 499, 999)):
        assert float(got[i]) == pytest.approx(math.sqrt(float(abar[ti])), rel=1e-5)
    assert eps_scale("epsilon", ddpm, t) is None  # ε models: nothing is multiplied
    x0 = eps_scale("sample", ddpm, t)
    assert float(x0[1]) == pytest.approx(math.sqrt(float(abar[499] / (1 - abar[499]))), rel=1e-5)

    flow = FlowMatchEulerDiscreteScheduler()
    assert prediction_type(flow) == "flow"
    flow.set_timesteps(4)
    sig = flow.sigmas[:4].double()
    # SD3 passes the scheduler's timesteps (σ·1000), FLUX passes timestep / 1000 (= σ)
    for passed in (flow.timesteps, flow.timesteps / 1000):
        got = eps_scale("flow", flow, passed)
        torch.testing.assert_close(got, 1 - sig, rtol=1e-6, atol=1e-6)


def test_pipeline_prediction_types_come_from_the_scheduler():
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    from denoisers.traits import prediction_type

    assert prediction_type(EulerDiscreteScheduler()) == "epsilon"
    assert prediction_type(DPMSolverMultistepScheduler(prediction_type="flow_prediction",
                                                       use_flow_sigmas=True)) == "flow"


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow"])
def test_fisher_loss_per_prediction_type_against_by_hand(prediction, tiny_digits_denoiser, tiny_bank):
    den, bank = tiny_digits_denoiser, tiny_bank
    sched = _set_prediction(den, prediction)
    if prediction != "epsilon" and prediction != "flow":
        assert getattr(sched, "alphas_cumprod", None) is not None
    df = _table(den, bank, layers=["up_blocks.0.resnets.0.conv1"])
    got = df.set_index("option")["score"]
    want = _by_hand(den, bank, "up_blocks.0.resnets.0.conv1", "uaq4", chunk=5)
    assert want > 0
    assert float(got["uaq4"]) == pytest.approx(want, rel=1e-5)  # float32 order of products
    if prediction != "epsilon":  # the factor is used: c_t < 1 scales the score down
        _set_prediction(den, "epsilon")
        eps_score = float(_table(den, bank, layers=["up_blocks.0.resnets.0.conv1"])
                          .set_index("option")["score"]["uaq4"])
        assert float(got["uaq4"]) < eps_score


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow"])
def test_calibration_outputs_are_in_eps_space(prediction, tiny_digits_denoiser, one_torch_thread):
    from sampling.calibration import collect_calibration, model_output, run_model, sample_timesteps

    den = tiny_digits_denoiser
    _set_prediction(den, prediction)
    calib = collect_calibration(den, 6, trajectories=4, seed=1, steps=2)
    assert calib.prediction == prediction
    raw = torch.cat([model_output(den.model(*a, **k)).double() for a, k in calib.chunks(3)])
    got = run_model(den.model, calib, chunk=4)
    if prediction == "epsilon":
        assert calib.eps_scale is None
        torch.testing.assert_close(got, raw)
        return
    t = sample_timesteps(calib.args, calib.kwargs)
    if prediction == "flow":  # σ = t / num_train_timesteps on an unset flow scheduler
        want_c = 1 - t.double() / 1000
    else:
        want_c = den._scheduler().alphas_cumprod.double()[t.round().long()].sqrt()
    torch.testing.assert_close(calib.eps_scale, want_c)
    torch.testing.assert_close(got, raw * want_c.reshape(-1, 1, 1, 1))


def test_calibration_keeps_per_call_inputs_whole():
    """Rotary embeddings / position ids are one tensor per call (Hunyuan-DiT's is (1, D) on a
    small model, FLUX's ids (N, 3)): never split into samples, passed whole to every chunk."""
    from sampling.calibration import CalibrationSet, _gather

    rot = (torch.ones(1, 8), torch.zeros(1, 8))
    ids = torch.arange(12.0).reshape(4, 3)  # 4 tokens: the batch is 2
    calls = [((torch.full((2, 3), float(s)), torch.tensor(float(s))),
              {"image_rotary_emb": rot, "img_ids": ids, "scale": torch.ones(2, 1)}) for s in range(3)]
    args, kwargs = _gather(calls, [(0, 1), (2, 0), (1, 1)], batch=2)
    assert args[0].shape == (3, 3) and args[1].tolist() == [0.0, 2.0, 1.0]
    calib = CalibrationSet(args, kwargs, np.array([0, 2, 1]), np.array([1, 0, 1]), 3)
    for a, k in calib.chunks(2):
        assert k["image_rotary_emb"][0] is rot[0] and k["img_ids"] is ids
        assert k["scale"].shape[0] == a[0].shape[0]
