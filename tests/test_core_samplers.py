"""Sampler contract: purity, per-sample generators, evaluation counts, callbacks, identities."""
from __future__ import annotations

import pytest
import torch

from multidiff.core import (
    ODE_ORDER,
    SAMPLERS,
    evaluations,
    get_sampler,
    make_generators,
    sample,
    sigma_grid,
    steps_for_evaluations,
)
from multidiff.toy.gmm import two_d_mixture

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


@pytest.fixture(scope="module")
def gm():
    return two_d_mixture()


@pytest.fixture(scope="module")
def grid():
    return sigma_grid(10, 0.002, 80.0, "karras")


# stochastic configurations: (sampler, opts)
STOCHASTIC = {
    "ddpm": ("ddpm", {}),
    "ddim_eta": ("ddim", {"eta": 0.6}),
    "euler_ancestral": ("euler_ancestral", {}),
    "euler_churn": ("euler", {"s_churn": 10.0}),
    "heun_churn": ("heun", {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 20.0}),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}),
    "dpmpp_3m_sde": ("dpmpp_3m", {"eta": 1.0}),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_per_sample_generators_make_samples_independent_of_batch(name, gm, grid):
    method, opts = STOCHASTIC[name]
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 80.0
    batch = SAMPLERS[method](gm, x, grid, generator=make_generators(50, 6), **opts)
    for k in (0, 3, 5):
        alone = SAMPLERS[method](gm, x[k:k + 1], grid, generator=[torch.Generator().manual_seed(50 + k)], **opts)
        torch.testing.assert_close(alone, batch[k:k + 1], rtol=1e-12, atol=1e-12)
    # the noise is really used: other seeds move the samples
    other = SAMPLERS[method](gm, x, grid, generator=make_generators(60, 6), **opts)
    assert float((other - batch).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="3 generators for a batch of 6"):
        SAMPLERS[method](gm, x, grid, generator=make_generators(0, 3), **opts)


def test_ddpm_equals_euler_ancestral(gm, grid):
    """DDPM's posterior step and ancestral Euler (eta = 1) are the same update in sigma space."""
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 80.0
    a = SAMPLERS["ddpm"](gm, x, grid, generator=torch.Generator().manual_seed(3))
    b = SAMPLERS["euler_ancestral"](gm, x, grid, generator=torch.Generator().manual_seed(3), eta=1.0)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # DDIM's eta scales the same ancestral noise: the families coincide at every eta
    c = SAMPLERS["ddim"](gm, x, grid, generator=torch.Generator().manual_seed(3), eta=0.5)
    d = SAMPLERS["euler_ancestral"](gm, x, grid, generator=torch.Generator().manual_seed(3), eta=0.5)
    torch.testing.assert_close(c, d, rtol=1e-10, atol=1e-10)
    assert float((c - a).abs().max()) > 1e-3


def test_first_order_ode_samplers_agree(gm, grid):
    """Deterministic DDIM, sigma-space Euler and flow-time Euler are one update."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=F64) * 80.0
    ref = SAMPLERS["euler"](gm, x, grid)
    torch.testing.assert_close(SAMPLERS["ddim"](gm, x, grid), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(SAMPLERS["flow_euler"](gm, x, grid), ref, rtol=1e-10, atol=1e-10)


def test_dpmpp_2m_sde_at_eta_0_is_dpmpp_2m(gm, grid):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=F64) * 80.0
    torch.testing.assert_close(SAMPLERS["dpmpp_2m_sde"](gm, x, grid, eta=0.0), SAMPLERS["dpmpp_2m"](gm, x, grid),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(SAMPLERS["dpmpp_3m"](gm, x, grid, eta=0.0, generator=torch.Generator().manual_seed(0)),
                               SAMPLERS["dpmpp_3m"](gm, x, grid), rtol=0, atol=0)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
@pytest.mark.parametrize("n", [1, 2, 7])
def test_evaluations_counts_denoiser_calls(method, n, gm, counter):
    grid = sigma_grid(n, 0.002, 80.0, "karras")
    d = counter(gm)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=F64) * 80.0
    SAMPLERS[method](d, x, grid, generator=torch.Generator().manual_seed(0))
    assert len(d.calls) == evaluations(method, n)
    assert all(batch == 3 for batch, _, _ in d.calls)


def test_steps_for_evaluations_inverts_evaluations():
    for method in SAMPLERS:
        for nfe in range(1, 30):
            n = steps_for_evaluations(method, nfe)
            assert evaluations(method, n) <= nfe or n == 1
            assert evaluations(method, n + 1) > nfe
    assert evaluations("heun", 10) == 19 and evaluations("flow_midpoint", 10) == 20 and evaluations("unipc", 10) == 10


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_callback_receives_each_step(method, gm, grid):
    seen = []
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(5), dtype=F64) * 80.0
    out = SAMPLERS[method](gm, x, grid, callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert [info["i"] for info in seen] == list(range(len(grid) - 1))
    for info in seen:
        i = info["i"]
        assert info["sigma"] == pytest.approx(float(grid[i]))
        assert info["sigma_next"] == pytest.approx(float(grid[i + 1]))
        assert info["x"].shape == x.shape and info["denoised"].shape == x.shape
    torch.testing.assert_close(seen[0]["x"], x)
    if method not in ("flow_midpoint",):  # every other sampler returns the last step's denoised
        torch.testing.assert_close(out, seen[-1]["denoised"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(ODE_ORDER))
def test_deterministic_samplers_are_pure(method, gm, grid):
    """No state survives a call; dispatch through sample() is the same function; float32 works."""
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(6), dtype=F64) * 80.0
    a = SAMPLERS[method](gm, x, grid)
    b = SAMPLERS[method](gm, x.clone(), grid)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(sample(gm, x, grid, method), a, rtol=0, atol=0)
    assert get_sampler(method) is SAMPLERS[method]
    c = SAMPLERS[method](gm, x.float(), grid)
    assert c.dtype == torch.float32
    torch.testing.assert_close(c.double(), a, rtol=1e-3, atol=1e-3)


def test_samplers_land_on_the_data(gm):
    """With 40 steps every sampler draws from the mixture: the log-likelihood and the distance
    to the nearest mode match those of true samples, and every mode is visited."""
    grid = sigma_grid(40, 0.002, 80.0, "karras")
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(7), dtype=F64) * 80.0
    true = gm.sample(20000, torch.Generator().manual_seed(0))
    true_ll = float(gm.log_prob(true).mean())  # ~0.02
    for method in SAMPLERS:
        out = SAMPLERS[method](gm, x, grid, generator=torch.Generator().manual_seed(1))
        dist, mode = (out[:, None, :] - gm.means[None]).norm(dim=-1).min(dim=1)
        assert 0.06 < float(dist.median()) < 0.13, method  # Rayleigh median 0.08 sqrt(2 ln 2) = 0.094
        assert abs(float(gm.log_prob(out).mean()) - true_ll) < 0.3, method
        assert int(torch.bincount(mode, minlength=9).min()) >= 10, method


def test_sample_progress_bar_keeps_the_callback(gm, grid):
    seen = []
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(8), dtype=F64) * 80.0
    out = sample(gm, x, grid, "heun", progress=True, callback=seen.append)
    torch.testing.assert_close(out, SAMPLERS["heun"](gm, x, grid), rtol=0, atol=0)
    assert len(seen) == len(grid) - 1
