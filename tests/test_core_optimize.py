"""optimize_sigmas: a valid grid that beats the Karras grid on noise it was not calibrated on,
with no collapsed step, from a spacing or from a given grid."""
from __future__ import annotations

import math

import pytest
import torch

from multidiff.core import SAMPLERS, VPContinuous, check_sigmas, optimize_sigmas, sigma_grid
from multidiff.core.optimize import reference_solution
from multidiff.toy.gmm import two_d_mixture

pytestmark = pytest.mark.usefixtures("single_thread")

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
F64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    gm = two_d_mixture()
    calibration = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * SIGMA_MAX
    fresh = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * SIGMA_MAX
    reference = reference_solution(gm, fresh, sigma_grid(300, SIGMA_MIN, SIGMA_MAX, "karras"))
    return gm, calibration, fresh, reference


@pytest.mark.parametrize("n_steps", [6, 9])
def test_optimized_grid_beats_karras_on_fresh_noise(n_steps, problem):
    gm, calibration, fresh, reference = problem
    grid = optimize_sigmas(gm, calibration, n_steps, "dpmpp_2m", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                           max_evals=300, reference_steps=150)
    assert grid.shape == (n_steps + 1,) and grid.dtype == F64
    check_sigmas(grid)  # 1-D, strictly descending, ends in 0
    assert float(grid[0]) == pytest.approx(SIGMA_MAX)
    assert float(grid[:-1].min()) >= SIGMA_MIN * (1 - 1e-9)

    def error(sigmas):
        return float(((SAMPLERS["dpmpp_2m"](gm, fresh, sigmas) - reference) ** 2).mean())

    optimized, karras = error(grid), error(sigma_grid(n_steps, SIGMA_MIN, SIGMA_MAX, "karras"))
    assert optimized < 0.5 * karras, (optimized, karras)


def test_single_step_returns_the_trivial_grid(problem):
    gm, calibration, _, _ = problem
    grid = optimize_sigmas(gm, calibration, 1, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    torch.testing.assert_close(grid, torch.tensor([SIGMA_MAX, 0.0], dtype=F64))


def test_no_step_collapses_and_the_last_sigma_stays_in_range(problem):
    """Heun's and dpmpp_2m's optima push the last steps together; the floor holds them apart."""
    gm, calibration, _, _ = problem
    for method, n_steps in (("heun", 5), ("dpmpp_2m", 9)):
        grid = optimize_sigmas(gm, calibration, n_steps, method, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                               max_evals=200, reference_steps=150)
        assert grid.shape == (n_steps + 1,) and grid.dtype == F64 and float(grid[-1]) == 0.0
        log_steps = -torch.diff(grid[:-1].log())
        floor = 1e-2 * math.log(SIGMA_MAX / SIGMA_MIN) / n_steps
        assert float(log_steps.min()) >= floor * (1 - 1e-9), (method, grid.tolist())
        assert SIGMA_MIN * (1 - 1e-9) <= float(grid[-2]) < SIGMA_MAX


def test_starts_from_a_given_grid(problem):
    """init=: the search starts from that grid (a trailing grid of a VP schedule here), and
    with no evaluations to spend it returns it (up to the parametrisation's rounding)."""
    gm, calibration, _, _ = problem
    schedule = VPContinuous("cosine", SIGMA_MIN, SIGMA_MAX)
    init = sigma_grid(6, SIGMA_MIN, SIGMA_MAX, "trailing", schedule=schedule)
    assert float(init[-2]) > 2 * SIGMA_MIN  # trailing leaves out the low end: the last sigma is free
    reference = reference_solution(gm, calibration, sigma_grid(150, SIGMA_MIN, SIGMA_MAX, "karras"))
    same = optimize_sigmas(gm, calibration, 6, "dpmpp_2m", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                           reference=reference, init=init, max_evals=1)
    torch.testing.assert_close(same, init, rtol=1e-3, atol=0)
    tuned = optimize_sigmas(gm, calibration, 6, "dpmpp_2m", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                            reference=reference, init=init, max_evals=150)

    def error(sigmas):
        return float(((SAMPLERS["dpmpp_2m"](gm, calibration, sigmas) - reference) ** 2).mean())

    assert error(tuned) <= error(init)
    check_sigmas(tuned)


def test_init_and_options_are_checked(problem):
    gm, calibration, _, _ = problem
    kw = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, max_evals=1, reference_steps=10)
    with pytest.raises(ValueError, match="init has 5 entries; an 6-step grid has 7"):
        optimize_sigmas(gm, calibration, 6, init=sigma_grid(4, SIGMA_MIN, SIGMA_MAX), **kw)
    with pytest.raises(ValueError, match="start at sigma_max=80"):
        optimize_sigmas(gm, calibration, 4, init=sigma_grid(4, SIGMA_MIN, 50.0), **kw)
    with pytest.raises(ValueError, match="below sigma_min"):
        optimize_sigmas(gm, calibration, 4, init=sigma_grid(4, 1e-4, SIGMA_MAX), **kw)
    with pytest.raises(ValueError, match="strictly descending"):
        optimize_sigmas(gm, calibration, 2, init=[80.0, 90.0, 0.0], **kw)
    with pytest.raises(ValueError, match="min_log_step"):
        optimize_sigmas(gm, calibration, 4, min_log_step=1.0, **kw)
