"""Sampler contract: purity, per-sample generators, evaluation counts, callbacks, identities."""
from __future__ import annotations

import math

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
    "sde_euler": ("sde_euler", {}),
    "sde_pc": ("sde_pc", {}),
    "sde_pc_sample_norms": ("sde_pc", {"norms": "sample", "corrector_steps": 2}),
    "consistency": ("consistency", {}),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_per_sample_generators_make_samples_independent_of_batch(name, gm, grid):
    method, opts = STOCHASTIC[name]
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 80.0
    batch = SAMPLERS[method](gm, x, grid, generator=make_generators(50, 6), **opts)
    for k in (0, 3, 5):
        alone = SAMPLERS[method](gm, x[k:k + 1], grid, generator=make_generators(50, 1, start=k), **opts)
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
    for method in set(SAMPLERS) - {"consistency"}:  # that one needs a consistency model (test_core_consistency.py)
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


# ------------------------------------------------------------------ the loop's own machinery
@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_samplers_leave_their_inputs_and_the_denoiser_outputs_alone(method, gm, grid):
    """The updates run in place only on tensors the sampler made: x, the grid and every
    denoiser output are as they were."""
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(9), dtype=F64) * 80.0
    x_before, grid_before = x.clone(), grid.clone()
    outputs = []

    def recording(xi, sigma, cond=None):
        out = gm(xi, sigma, cond)
        outputs.append((out, out.clone()))
        return out

    SAMPLERS[method](recording, x, grid, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x_before) and torch.equal(grid, grid_before)
    assert all(torch.equal(out, copy) for out, copy in outputs)


def test_lerp_chain_equals_the_sum_of_differences():
    from multidiff.core.samplers import _chain_step, _lerp_chain

    gen = torch.Generator().manual_seed(10)
    for _ in range(50):
        k = int(torch.randint(1, 4, (1,), generator=gen))
        outputs = list(torch.randn(k + 1, 7, generator=gen, dtype=F64))
        x = torch.randn(7, generator=gen, dtype=F64)
        ratio = float(torch.rand(1, generator=gen))
        c = [float(v) for v in torch.randn(k, generator=gen, dtype=F64)]
        expected = ratio * x + (1 - ratio) * outputs[0] + sum(ck * (outputs[j] - outputs[j + 1]) for j, ck in enumerate(c))
        chain = _lerp_chain(ratio, c)
        torch.testing.assert_close(_chain_step(x, ratio, outputs, chain, c), expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(_chain_step(x, ratio, outputs, None, c), expected, rtol=1e-10, atol=1e-10)
    # a zero weight ahead of a nonzero one cannot be chained: the differences are added instead
    assert _lerp_chain(0.5, [0.0, 0.3]) is None
    assert _lerp_chain(0.5, [0.2, 0.0]) == (-0.4,)


def test_unipc_weights_match_a_linear_solve():
    """The Python-float UniPC weights equal torch.linalg.solve on the same Vandermonde system."""
    from multidiff.core.samplers import _unipc_weights

    gen = torch.Generator().manual_seed(11)
    for order in (1, 2, 3):
        for bh in ("bh1", "bh2"):
            for _ in range(20):
                hh = -float(torch.rand(1, generator=gen)) * 3 - 0.01
                rks = sorted((-float(v) * 3 - 0.2 for v in torch.rand(order - 1, generator=gen)), reverse=True)
                b_h, rhos_p, rhos_c = _unipc_weights(hh, rks, order, bh)
                r = torch.tensor(rks + [1.0], dtype=F64)
                rows = torch.stack([r**k for k in range(order)])
                h_phi, fact, b = math.expm1(hh) / hh - 1, 1, []
                for k in range(1, order + 1):
                    b.append(h_phi * fact / b_h)
                    fact *= k + 1
                    h_phi = h_phi / hh - 1 / fact
                b = torch.tensor(b, dtype=F64)
                if order == 3:
                    torch.testing.assert_close(torch.tensor(rhos_p, dtype=F64), torch.linalg.solve(rows[:2, :2], b[:2]))
                if order > 1:
                    torch.testing.assert_close(torch.tensor(rhos_c, dtype=F64), torch.linalg.solve(rows, b))


def test_reused_sigma_tensors_survive_a_denoiser_that_writes_into_them(gm, grid):
    """The per-step sigma tensors are reused across calls on one grid (CPU), but never once
    written into: a later call still sees the right noise levels."""
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(12), dtype=F64) * 80.0
    ref = SAMPLERS["euler"](gm, x, grid)

    def vandal(xi, sigma, cond=None):
        out = gm(xi, sigma, cond)
        sigma.mul_(0.5)
        return out

    SAMPLERS["euler"](vandal, x, grid)
    torch.testing.assert_close(SAMPLERS["euler"](gm, x, grid), ref, rtol=0, atol=0)

    def check(xi, sigma, cond=None):
        assert float(sigma[0]) in [float(v) for v in grid]
        return gm(xi, sigma, cond)

    SAMPLERS["dpmpp_2m"](check, x, grid)


def test_any_sampler_takes_the_grid_as_given(gm, grid, monkeypatch):
    from multidiff.core import check_sigmas

    received = []

    def custom(denoiser, x, sigmas, **kw):
        received.append(sigmas)
        return SAMPLERS["euler"](denoiser, x, sigmas, **kw)

    monkeypatch.setitem(SAMPLERS, "custom", custom)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(13), dtype=F64) * 80.0
    out = sample(gm, x, grid.tolist(), "custom")
    assert received[0] == grid.tolist()
    torch.testing.assert_close(out, sample(gm, x, grid, "euler"), rtol=0, atol=0)
    assert check_sigmas(grid) is grid  # already a float64 CPU tensor: no copy
    checked = check_sigmas([3.0, 1.0, 0.0])
    assert checked.dtype == F64 and checked.tolist() == [3.0, 1.0, 0.0]
    checked[1] = 5.0  # every sampler checks the grid it is given
    with pytest.raises(ValueError, match="strictly descending"):
        SAMPLERS["euler"](gm, x, checked)
    with pytest.raises(ValueError, match="strictly descending"):
        sample(gm, x, checked, "custom")
