"""optimize_sigmas: a valid grid that beats the Karras grid on noise it was not calibrated on."""
from __future__ import annotations

import pytest
import torch

from multidiff.core import SAMPLERS, check_sigmas, optimize_sigmas, sigma_grid
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
