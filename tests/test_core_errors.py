"""Bad input raises ValueError naming the offending value."""
from __future__ import annotations

import pytest
import torch

from multidiff.core import (
    SAMPLERS,
    Denoiser,
    DiffusionLoss,
    LogNormal,
    ScheduleConfig,
    VPContinuous,
    VPDiscrete,
    check_sigmas,
    get_sampler,
    sample,
    sigma_grid,
    weighting,
)
from multidiff.core.schedules import alpha_from_sigma

pytestmark = pytest.mark.usefixtures("single_thread")


def denoiser(x, sigma, cond=None):
    return x * 0.5


X = torch.zeros(2, 3)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_non_descending_grid(method):
    with pytest.raises(ValueError, match=r"strictly descending: sigmas\[1\]=2 <= sigmas\[2\]=3"):
        SAMPLERS[method](denoiser, X, torch.tensor([5.0, 2.0, 3.0, 0.0]))
    with pytest.raises(ValueError, match=r"sigmas\[0\]=1 <= sigmas\[1\]=1"):
        sample(denoiser, X, [1.0, 1.0, 0.0], method)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_grid_not_ending_in_zero(method):
    with pytest.raises(ValueError, match=r"end in 0, last value is 0\.5"):
        SAMPLERS[method](denoiser, X, torch.tensor([5.0, 2.0, 0.5]))


def test_other_bad_grids():
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        check_sigmas([0.0])
    with pytest.raises(ValueError, match="non-negative"):
        check_sigmas([2.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="nan"):
        check_sigmas([float("nan"), 0.0])


def test_mismatched_mask_shape():
    with pytest.raises(ValueError, match=r"mask of shape \(4,\)"):
        sample(denoiser, X, [1.0, 0.0], "euler", cond={"known": torch.zeros(2, 3), "mask": torch.ones(4)})
    with pytest.raises(ValueError, match=r"loss mask of shape \(2, 4\)"):
        DiffusionLoss(LogNormal(), "uniform")(denoiser, X, mask=torch.ones(2, 4))


def test_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler 'dpm_fast'"):
        sample(denoiser, X, [1.0, 0.0], "dpm_fast")
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        get_sampler("nope")
    with pytest.raises(ValueError, match="order must be 1, 2 or 3, got 4"):
        SAMPLERS["unipc"](denoiser, X, [1.0, 0.0], order=4)
    with pytest.raises(ValueError, match="'trapezoid'"):
        SAMPLERS["dpmpp_2m_sde"](denoiser, X, [1.0, 0.0], solver_type="trapezoid")


def test_unknown_spacing_and_bad_grid_arguments():
    with pytest.raises(ValueError, match="unknown spacing 'cosine'"):
        sigma_grid(10, 0.01, 10.0, "cosine")
    with pytest.raises(ValueError, match="n_steps must be a positive integer, got 0"):
        sigma_grid(0, 0.01, 10.0)
    with pytest.raises(ValueError, match="sigma_min=10.0, sigma_max=0.01"):
        sigma_grid(5, 10.0, 0.01)
    with pytest.raises(ValueError, match="'trailing'.*schedule="):
        sigma_grid(5, 0.01, 10.0, "trailing")


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="unknown prediction type 'epsilon'"):
        Denoiser(torch.nn.Identity(), VPDiscrete(), "epsilon")


def test_unknown_weighting():
    with pytest.raises(ValueError, match="unknown weighting 'p2'"):
        weighting("p2")
    with pytest.raises(ValueError, match="unknown weighting 'lognormal'"):
        DiffusionLoss(LogNormal(), "lognormal")


def test_unknown_schedule_names():
    with pytest.raises(ValueError, match="unknown beta_schedule 'sigmoid'"):
        VPDiscrete(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="unknown VPContinuous kind 'linear'"):
        VPContinuous("linear")
    with pytest.raises(ValueError, match="unknown schedule name 'ddpm'"):
        ScheduleConfig(name="ddpm").build()
    with pytest.raises(ValueError, match="unknown path 'sub_vp'"):
        alpha_from_sigma(torch.ones(1), "sub_vp")
