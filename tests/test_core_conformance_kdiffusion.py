"""Our samplers against k-diffusion's on identical inputs.

Denoiser: the exact Gaussian-mixture denoiser (float64); grid: Karras. Stochastic
samplers: k-diffusion gets a noise_sampler that yields the torch.randn draws our
generator produces (our samplers draw torch.randn(x.shape, generator=g) in step order);
for churn, k-diffusion draws from the global RNG at every step, so churn is switched on
for every step and the global RNG is seeded like our generator.
"""
from __future__ import annotations

import pytest
import torch

from multidiff.core import SAMPLERS, sigma_grid
from multidiff.toy.gmm import two_d_mixture

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    gm = two_d_mixture()
    sigmas = sigma_grid(12, 0.002, 80.0, "karras")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    return gm, sigmas, x


def noise_sampler(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(shape, generator=g, dtype=torch.float64)


# ours, theirs, k-diffusion kwargs, our kwargs; "noise" marks the samplers that draw noise
CASES = {
    "euler": ("euler", "sample_euler", {}, {}),
    "heun": ("heun", "sample_heun", {}, {}),
    "dpmpp_2m": ("dpmpp_2m", "sample_dpmpp_2m", {}, {}),
    "dpmpp_3m": ("dpmpp_3m", "sample_dpmpp_3m_sde", {"eta": 0.0}, {}),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 1.0, "solver_type": "midpoint", "noise": 5},
                     {"eta": 1.0, "solver_type": "midpoint"}),
    "dpmpp_2m_sde_heun": ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 0.5, "solver_type": "heun", "noise": 6},
                          {"eta": 0.5, "solver_type": "heun"}),
    "euler_ancestral": ("euler_ancestral", "sample_euler_ancestral", {"noise": 7}, {}),
    "euler_ancestral_eta": ("euler_ancestral", "sample_euler_ancestral", {"eta": 0.6, "s_noise": 1.1, "noise": 8},
                            {"eta": 0.6, "s_noise": 1.1}),
    "dpmpp_3m_sde": ("dpmpp_3m", "sample_dpmpp_3m_sde", {"eta": 1.0, "noise": 9}, {"eta": 1.0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_k_diffusion(case, setup, kdiff, rel_err):
    gm, sigmas, x = setup
    ours, theirs, k_kwargs, our_kwargs = CASES[case]
    k_kwargs = dict(k_kwargs)
    seed = k_kwargs.pop("noise", None)
    if seed is not None:
        k_kwargs["noise_sampler"] = noise_sampler(seed, x.shape)
        our_kwargs = {**our_kwargs, "generator": torch.Generator().manual_seed(seed)}
    k_seen, our_seen = [], []
    ref = getattr(kdiff, theirs)(gm, x.clone(), sigmas, disable=True, callback=lambda d: k_seen.append(d["x"]),
                                 **k_kwargs)
    out = SAMPLERS[ours](gm, x.clone(), sigmas, callback=lambda d: our_seen.append(d["x"]), **our_kwargs)
    assert rel_err(out, ref) < TOL
    assert len(our_seen) == len(k_seen) == len(sigmas) - 1
    for i, (a, b) in enumerate(zip(our_seen, k_seen)):
        assert rel_err(a, b) < TOL, f"step {i}"
    if seed is not None:  # the noise matters: another seed lands elsewhere
        other = SAMPLERS[ours](gm, x.clone(), sigmas, **{**our_kwargs, "generator": torch.Generator().manual_seed(seed + 100)})
        assert rel_err(other, ref) > 1e-3


@pytest.mark.parametrize("ours,theirs", [("euler", "sample_euler"), ("heun", "sample_heun")])
def test_churn_matches_k_diffusion(ours, theirs, setup, kdiff, rel_err):
    gm, sigmas, x = setup
    with torch.random.fork_rng():
        torch.manual_seed(3)
        ref = getattr(kdiff, theirs)(gm, x.clone(), sigmas, disable=True, s_churn=20.0, s_noise=1.003)
    out = SAMPLERS[ours](gm, x.clone(), sigmas, generator=torch.Generator().manual_seed(3), s_churn=20.0, s_noise=1.003)
    assert rel_err(out, ref) < TOL
    plain = SAMPLERS[ours](gm, x.clone(), sigmas)
    assert rel_err(plain, ref) > 1e-3


def test_grids_match_k_diffusion(kdiff):
    """k-diffusion builds its grids in float32, hence rtol 1e-5."""
    for n in (1, 2, 7, 30):
        torch.testing.assert_close(sigma_grid(n, 0.002, 80.0, "karras"),
                                   kdiff.get_sigmas_karras(n, 0.002, 80.0).to(torch.float64), rtol=1e-5, atol=0)
        torch.testing.assert_close(sigma_grid(n, 0.03, 14.6, "karras", rho=5.0),
                                   kdiff.get_sigmas_karras(n, 0.03, 14.6, rho=5.0).to(torch.float64), rtol=1e-5, atol=0)
        torch.testing.assert_close(sigma_grid(n, 0.002, 80.0, "loglinear"),
                                   kdiff.get_sigmas_exponential(n, 0.002, 80.0).to(torch.float64), rtol=1e-5, atol=0)
