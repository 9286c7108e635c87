"""Noise schedules and sigma grids: closed forms, round trips, and diffusers / k-diffusion parity."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from multidiff.core import (
    EDM,
    SCHEDULES,
    SPACINGS,
    VE,
    RectifiedFlow,
    ScheduleConfig,
    VPContinuous,
    VPDiscrete,
    rescale_zero_terminal_snr,
    sigma_grid,
)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


# ------------------------------------------------------------------ VP discrete vs diffusers
@pytest.mark.parametrize("kwargs", [
    dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
], ids=["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_vp_discrete_alphas_cumprod_equal_diffusers(kwargs, zero_snr):
    ours = VPDiscrete(1000, **kwargs, rescale_zero_terminal_snr=zero_snr)
    theirs = DDPMScheduler(num_train_timesteps=1000, **kwargs, rescale_betas_zero_snr=zero_snr)
    # diffusers works in float32: agreement to float32 cumprod rounding
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.to(F64), rtol=2e-5, atol=1e-7)
    if not zero_snr:  # (diffusers' float32 rescale loses the small betas' digits; see the next test)
        torch.testing.assert_close(ours.betas, theirs.betas.to(F64), rtol=1e-5, atol=1e-8)
    else:
        assert float(ours.alphas_cumprod[-1]) == 0.0 and math.isfinite(ours.sigma_max)


def test_rescale_zero_terminal_snr_matches_diffusers_function():
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as theirs

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
    ours = rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(ours, theirs(betas.clone()), rtol=1e-12, atol=1e-14)
    abar = torch.cumprod(1 - ours, 0)
    assert float(abar[-1]) == pytest.approx(0.0, abs=1e-15)
    # the first abar is unchanged (Lin et al. 2023, Alg. 1 keeps sqrt(abar_0))
    assert float(abar[0]) == pytest.approx(float(1 - betas[0]), rel=1e-12)


# ------------------------------------------------------------------ every schedule
ALL_SCHEDULES = {
    "vp_linear": lambda: VPDiscrete(1000, "linear"),
    "vp_cosine": lambda: VPDiscrete(1000, "squaredcos_cap_v2"),
    "vp_zero_snr": lambda: VPDiscrete(1000, "scaled_linear", 0.00085, 0.012, rescale_zero_terminal_snr=True),
    "vp_cont_cosine": lambda: VPContinuous("cosine"),
    "vp_cont_logsnr": lambda: VPContinuous("linear_logsnr", 0.01, 100.0),
    "ve": lambda: VE(0.01, 80.0),
    "edm": lambda: EDM(),
    "flow": lambda: RectifiedFlow(),
}


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_t_sigma_round_trip(name):
    schedule = ALL_SCHEDULES[name]()
    t_lo, t_hi = schedule.t_range
    t = torch.linspace(t_lo, t_hi, 301, dtype=F64)
    sigma = schedule.sigma_of_t(t)
    assert (sigma[1:] > sigma[:-1]).all()  # sigma increases with t
    torch.testing.assert_close(schedule.t_of_sigma(sigma), t, rtol=1e-9, atol=1e-9)
    s = torch.logspace(math.log10(schedule.sigma_min), math.log10(schedule.sigma_max), 97, dtype=F64)
    torch.testing.assert_close(schedule.sigma_of_t(schedule.t_of_sigma(s)), s, rtol=1e-9, atol=0)
    assert float(schedule.sigma_of_t(torch.tensor(t_lo, dtype=F64))) == pytest.approx(schedule.sigma_min, rel=1e-9)
    assert float(schedule.sigma_of_t(torch.tensor(t_hi, dtype=F64))) == pytest.approx(schedule.sigma_max, rel=1e-9)


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_alpha_sigma_identities(name):
    schedule = ALL_SCHEDULES[name]()
    t_lo, t_hi = schedule.t_range
    t = torch.linspace(t_lo, t_hi, 51, dtype=F64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    torch.testing.assert_close(s / a, schedule.sigma_of_t(t), rtol=1e-12, atol=0)  # sigma space
    if schedule.path == "vp":
        torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), rtol=1e-12, atol=1e-12)
    elif schedule.path == "flow":
        torch.testing.assert_close(a + s, torch.ones_like(t), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s, t, rtol=1e-12, atol=1e-12)  # x_t = (1 - t) x0 + t n
    else:
        torch.testing.assert_close(a, torch.ones_like(t))
    torch.testing.assert_close(schedule.log_snr(t), torch.log(a**2 / s**2), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["vp_cont_cosine", "vp_cont_logsnr", "ve", "flow", "vp_linear"])
def test_d_alpha_sigma_dt_matches_finite_differences(name):
    schedule = ALL_SCHEDULES[name]()
    t_lo, t_hi = schedule.t_range
    # interior, away from VPDiscrete's integer knots where the derivative is one-sided
    t = t_lo + (t_hi - t_lo) * torch.tensor([0.113, 0.5071, 0.8137], dtype=F64)
    da, ds = schedule.d_alpha_sigma_dt(t)
    h = 1e-6 * (t_hi - t_lo)
    torch.testing.assert_close(da, (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ds, (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h), rtol=1e-5, atol=1e-9)
    if name == "flow":
        torch.testing.assert_close(da, -torch.ones_like(t))
        torch.testing.assert_close(ds, torch.ones_like(t))


def test_schedule_closed_forms():
    vp = VPContinuous("cosine", 0.002, 160.0)
    assert float(vp.sigma_of_t(torch.tensor(0.5, dtype=F64))) == pytest.approx(
        math.tan(math.atan(0.002) + 0.5 * (math.atan(160.0) - math.atan(0.002))))
    ve = VE(0.01, 80.0)
    assert float(ve.sigma_of_t(torch.tensor(0.25, dtype=F64))) == pytest.approx(0.01 * 8000**0.25)
    edm = EDM()
    assert float(edm.model_time(torch.tensor(2.0, dtype=F64))) == pytest.approx(math.log(2.0) / 4)
    flow = RectifiedFlow(shift=3.0)
    assert float(flow.model_time(torch.tensor(1.0, dtype=F64))) == pytest.approx(500.0)
    assert float(flow.shift_t(torch.tensor(0.5, dtype=F64))) == pytest.approx(0.75)
    vpd = VPDiscrete()
    abar = vpd.alphas_cumprod[417]
    assert float(vpd.sigma_of_t(torch.tensor(417.0, dtype=F64))) == pytest.approx(float(((1 - abar) / abar).sqrt()))
    assert float(vpd.model_time(vpd.sigma_of_t(torch.tensor(417.0, dtype=F64)))) == pytest.approx(417.0, abs=1e-9)


def test_schedule_config_builds_every_schedule():
    for name in SCHEDULES:
        schedule = ScheduleConfig(name=name).build()
        assert isinstance(schedule, SCHEDULES[name])
    zero = ScheduleConfig(name="vp_discrete", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          rescale_zero_terminal_snr=True).build()
    assert float(zero.alphas_cumprod[-1]) == 0.0


# ------------------------------------------------------------------------ sigma grids
def test_spacings_listed():
    assert set(SPACINGS) == {"karras", "loglinear", "linear_t", "trailing", "flow_shift", "nested"}


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_every_spacing_gives_a_valid_grid(spacing, n):
    schedule = VPDiscrete()
    lo, hi = (schedule.sigma_min, schedule.sigma_max) if spacing != "flow_shift" else (0.01, 100.0)
    grid = sigma_grid(n, lo, hi, spacing, schedule=schedule)
    assert grid.dtype == F64 and grid.shape == (n + 1,)
    assert float(grid[-1]) == 0.0
    assert (grid[1:] < grid[:-1]).all()
    assert float(grid[0]) == pytest.approx(hi, rel=1e-9)
    if spacing == "nested":  # runs down to 0 itself: sigma_min is not used
        return
    assert float(grid[:-1].min()) >= lo * (1 - 1e-9)
    if spacing != "trailing" and n > 1:  # trailing leaves out the low end by design
        assert float(grid[-2]) == pytest.approx(lo, rel=1e-9)


def test_nested_grids_hold_every_level_of_the_halved_grid():
    for n in (2, 4, 8, 16):
        fine, coarse = sigma_grid(n, 0.002, 80.0, "nested").tolist(), sigma_grid(n // 2, 0.002, 80.0, "nested").tolist()
        assert fine[::2] == pytest.approx(coarse, rel=1e-12, abs=0)
    assert sigma_grid(2, 0.002, 80.0, "nested").tolist() == pytest.approx([80.0, 80.0 * 0.5**7, 0.0])


def test_karras_closed_form():
    grid = sigma_grid(5, 0.002, 80.0, "karras", rho=7.0)
    i = torch.arange(5, dtype=F64)
    expected = (80.0 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(grid[:-1], expected, rtol=1e-12, atol=0)


def test_loglinear_is_uniform_in_log_sigma():
    grid = sigma_grid(9, 0.01, 50.0, "loglinear")
    steps = torch.diff(grid[:-1].log())
    torch.testing.assert_close(steps, torch.full_like(steps, math.log(0.01 / 50.0) / 8), rtol=1e-10, atol=0)


@pytest.mark.parametrize("n", [3, 7, 10, 16, 40, 50, 400])
def test_trailing_and_linear_t_equal_diffusers_ddim_timesteps(n):
    """16 and 400 steps hit rounding ties (stride 62.5 / 2.5): diffusers rounds t + 1, then subtracts 1."""
    schedule = VPDiscrete()
    for ours, theirs in (("trailing", "trailing"), ("linear_t", "linspace")):
        ddim = DDIMScheduler(timestep_spacing=theirs)
        ddim.set_timesteps(n)
        grid = sigma_grid(n, schedule.sigma_min, schedule.sigma_max, ours, schedule=schedule)
        torch.testing.assert_close(schedule.t_of_sigma(grid[:-1]), ddim.timesteps.to(F64), rtol=0, atol=1e-6)


def test_trailing_continuous_schedule():
    schedule = VPContinuous("cosine")
    grid = sigma_grid(4, schedule.sigma_min, schedule.sigma_max, "trailing", schedule=schedule)
    torch.testing.assert_close(schedule.t_of_sigma(grid[:-1]), torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=F64))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [4, 8, 28])
def test_flow_shift_equals_diffusers_flow_match(shift, n):
    """diffusers starts at t = 1 (sigma = inf), so sigma_max -> inf here; sigma_min is its last nonzero level."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(n)
    t_theirs = scheduler.sigmas.to(F64)
    t_min = float(t_theirs[-2])
    grid = sigma_grid(n, t_min / (1 - t_min), 1e9, "flow_shift", shift=shift)
    torch.testing.assert_close(grid / (1 + grid), t_theirs, rtol=0, atol=1e-6)


def test_flow_shift_keeps_the_ends():
    grid = sigma_grid(6, 0.05, 20.0, "flow_shift", shift=3.0)
    assert float(grid[0]) == pytest.approx(20.0) and float(grid[-2]) == pytest.approx(0.05)
    # a larger shift moves the interior toward high noise
    t1 = sigma_grid(6, 0.05, 20.0, "flow_shift", shift=1.0)
    assert (grid[1:-2] > t1[1:-2]).all()
