"""Score-SDE samplers (Song et al. 2021) against known answers: the exact denoiser of a Gaussian
mixture must give draws whose component weights, means and covariances are the mixture's within
sampling error; the error falls as the grid gets finer; and the predictor / corrector steps agree
with diffusers' ScoreSdeVeScheduler on identical inputs."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from multidiff.core import SAMPLERS, evaluations, make_generators, sigma_grid, steps_for_evaluations
from multidiff.core.samplers import langevin_step, reverse_diffusion_step
from multidiff.toy.gmm import GaussianMixture, two_d_mixture

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def mixture_64d() -> GaussianMixture:
    """Four components of unequal width and weight in 64 dimensions (well separated)."""
    means = torch.randn(4, 64, generator=torch.Generator().manual_seed(0), dtype=F64) * 0.5
    return GaussianMixture(means, torch.tensor([0.1, 0.2, 0.15, 0.1], dtype=F64),
                           torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64))


def draw(gm, method, n_points, n_steps, seed=1, **opts):
    x = torch.randn(n_points, gm.dim, generator=torch.Generator().manual_seed(0), dtype=F64) * 80.0
    return SAMPLERS[method](gm, x, sigma_grid(n_steps, 0.002, 80.0, "karras"),
                            generator=torch.Generator().manual_seed(seed), **opts)


def mixture_z_scores(gm, x) -> dict:
    """Largest |z| of the draws' statistics against the mixture's, each over its sampling error:
    component counts (binomial), per-dimension means, the mean per-dimension variance
    (chi-square) and the off-diagonal covariances. Points go to their most likely component."""
    n, d = x.shape
    var = gm.stds**2
    log_lik = -0.5 * ((x[:, None] - gm.means[None]) ** 2).sum(-1) / var - 0.5 * d * var.log() + gm.weights.log()
    comp = log_lik.argmax(1)
    counts = torch.bincount(comp, minlength=len(gm.weights)).to(F64)
    z = {"weight": float(((counts - n * gm.weights) / (n * gm.weights * (1 - gm.weights)).sqrt()).abs().max()),
         "mean": 0.0, "variance": 0.0, "covariance": 0.0, "variance_rel_error": 0.0}
    for k in range(len(gm.weights)):
        pts, s2 = x[comp == k], float(var[k])
        m = len(pts)
        cov = torch.cov(pts.T)
        v = float(cov.diagonal().mean())
        off = cov - torch.diag(cov.diagonal())
        z["mean"] = max(z["mean"], float((pts.mean(0) - gm.means[k]).abs().max()) * math.sqrt(m / s2))
        z["variance"] = max(z["variance"], abs(v - s2) / (s2 * math.sqrt(2 / (d * (m - 1)))))
        z["covariance"] = max(z["covariance"], float(off.abs().max()) / (s2 / math.sqrt(m)))
        z["variance_rel_error"] = max(z["variance_rel_error"], abs(v / s2 - 1))
    return z


@pytest.mark.parametrize("method, opts", [
    ("sde_euler", {}),
    ("sde_pc", {"snr": 0.05}),
    ("sde_pc", {"snr": 0.16}),
    ("sde_pc", {"snr": 0.3}),
    ("sde_pc", {"snr": 0.16, "predictor": "euler_maruyama"}),
    ("sde_pc", {"snr": 0.16, "corrector_steps": 2}),
])
def test_sde_draws_match_the_mixture_within_sampling_error(method, opts):
    gm = two_d_mixture()
    z = mixture_z_scores(gm, draw(gm, method, 2000, 600, **opts))
    for key in ("weight", "mean", "variance", "covariance"):
        assert z[key] < 4.5, (key, z)


@pytest.mark.parametrize("schedule", ["ve", "vp", "edm", "flow"])
def test_any_schedule_samples_through_the_sigma_space_denoiser(schedule):
    """VP, EDM and rectified flow are the VE SDE in the denoiser's scaled coordinates: each
    schedule's own grid over its own sigma range (uniform in its time; EDM's rho = 7 grid, since
    uniform steps in EDM's time, sigma itself, are far too coarse near 0) draws the same mixture."""
    from multidiff.core import EDM, VE, RectifiedFlow, VPContinuous

    sched = {"ve": VE(), "vp": VPContinuous(), "edm": EDM(), "flow": RectifiedFlow()}[schedule]
    grid = sigma_grid(600, sched.sigma_min, sched.sigma_max, "karras" if schedule == "edm" else "linear_t",
                      schedule=sched)
    gm = two_d_mixture()
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * float(grid[0])
    z = mixture_z_scores(gm, SAMPLERS["sde_pc"](gm, x, grid, generator=torch.Generator().manual_seed(1)))
    for key in ("weight", "mean", "variance", "covariance"):
        assert z[key] < 4.5, (schedule, key, z)


def test_sde_draws_match_a_64_dimensional_mixture():
    gm = mixture_64d()
    z = mixture_z_scores(gm, draw(gm, "sde_pc", 1000, 400))
    for key in ("weight", "mean", "variance", "covariance"):
        assert z[key] < 5.0, (key, z)


@pytest.mark.parametrize("method", ["sde_euler", "sde_pc"])
def test_distribution_error_falls_as_the_grid_gets_finer(method):
    gm = mixture_64d()
    errors = [mixture_z_scores(gm, draw(gm, method, 1000, n))["variance_rel_error"] for n in (20, 60, 200)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] > 0.2 and errors[2] < 0.1, errors  # coarse grids are visibly off: a real test


def test_measured_norms_inflate_the_spread_where_expected_norms_do_not():
    """The per-sample snr rule takes larger steps near a mode (small score): in 64-D it leaves a
    variance error several times that of the state-independent step at the same grid and snr."""
    gm = mixture_64d()
    measured = mixture_z_scores(gm, draw(gm, "sde_pc", 1000, 300, norms="sample"))["variance_rel_error"]
    expected = mixture_z_scores(gm, draw(gm, "sde_pc", 1000, 300))["variance_rel_error"]
    assert measured > 0.06 and measured > 2.5 * expected, (measured, expected)


@pytest.mark.parametrize("corrector_steps", [0, 1, 3])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_sde_pc_counts_its_corrector_calls(corrector_steps, n, counter):
    gm = two_d_mixture()
    d = counter(gm)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=F64) * 80.0
    SAMPLERS["sde_pc"](d, x, sigma_grid(n, 0.002, 80.0, "karras"), generator=torch.Generator().manual_seed(0),
                       corrector_steps=corrector_steps)
    assert len(d.calls) == evaluations("sde_pc", n, corrector_steps=corrector_steps) == n + (n - 1) * corrector_steps
    assert steps_for_evaluations("sde_pc", 19, corrector_steps=2) == 7  # 7 + 6 * 2 = 19


def test_sde_pc_without_corrector_is_the_reverse_diffusion_chain():
    """0 corrector steps leaves the predictor alone: for VE it is DDPM's ancestral chain, whose
    step lerp(D, x, r^2) + sigma sqrt(1 - r^2) z is ancestral Euler's with eta = 1 (sigma_down =
    sigma_next^2 / sigma, sigma_up = sigma_next sqrt(1 - r^2)) only in its mean; check the update."""
    gm = two_d_mixture()
    grid = sigma_grid(6, 0.002, 80.0, "karras")
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=F64) * 80.0
    out = SAMPLERS["sde_pc"](gm, x, grid, generator=torch.Generator().manual_seed(3), corrector_steps=0)
    g, ref, s = torch.Generator().manual_seed(3), x.clone(), grid.tolist()
    for i in range(len(s) - 2):
        d = gm(ref, torch.full((5,), s[i], dtype=F64))
        r2 = (s[i + 1] / s[i]) ** 2
        ref = r2 * ref + (1 - r2) * d + s[i] * math.sqrt(1 - r2) * torch.randn(ref.shape, generator=g, dtype=F64)
    ref = gm(ref, torch.full((5,), s[-2], dtype=F64))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_bad_options_are_named():
    gm = two_d_mixture()
    x = torch.zeros(2, 2, dtype=F64)
    grid = sigma_grid(3, 0.002, 80.0, "karras")
    for opts, word in [({"predictor": "heun"}, "predictor"), ({"norms": "batch"}, "norms"),
                       ({"snr": 0.0}, "snr"), ({"corrector_steps": 1.5}, "corrector_steps")]:
        with pytest.raises(ValueError, match=word):
            SAMPLERS["sde_pc"](gm, x, grid, **opts)


# ------------------------------------------------------------------- diffusers conformance
def _diffusers_scheduler(n_steps, snr):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import ScoreSdeVeScheduler
    sched = ScoreSdeVeScheduler(num_train_timesteps=n_steps, snr=snr, sigma_min=0.01, sigma_max=50.0)
    sched.set_timesteps(n_steps)
    sched.set_sigmas(n_steps)
    return sched


def test_predictor_and_corrector_steps_match_diffusers():
    """float32 throughout: diffusers draws the corrector's noise in float32 whatever the sample's dtype."""
    gm = mixture_64d()
    sched = _diffusers_scheduler(10, snr=0.16)
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(5)) * 3.0
    t = sched.timesteps[4]
    k = int(t * (len(sched.timesteps) - 1))
    sigma, sigma_next = float(sched.discrete_sigmas[k]), float(sched.discrete_sigmas[k - 1])
    denoised = gm(x, torch.full((1,), sigma))
    score = (denoised - x) / sigma**2

    def noise():
        return torch.randn(x.shape, generator=torch.Generator().manual_seed(9))

    ours = reverse_diffusion_step(x, denoised, sigma, sigma_next, noise())
    theirs = sched.step_pred(score, t, x, generator=torch.Generator().manual_seed(9)).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours = langevin_step(x, denoised, sigma, 0.16, noise(), norms="sample")
    theirs = sched.step_correct(score, x, generator=torch.Generator().manual_seed(9)).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert float((langevin_step(x, denoised, sigma, 0.3, noise(), norms="sample") - theirs).abs().max()) > 1e-2


def test_whole_chain_matches_the_diffusers_loop():
    """diffusers' pipeline corrects before each predictor step, we after it (Alg. 4): with its
    first correction skipped, the two loops are the same chain of draws on the same grid."""
    n_steps, snr = 12, 0.16
    gm = mixture_64d()
    sched = _diffusers_scheduler(n_steps, snr)
    sigmas = [float(sched.discrete_sigmas[int(t * (n_steps - 1))]) for t in sched.timesteps]
    x0 = torch.randn(1, 64, generator=torch.Generator().manual_seed(6)) * sigmas[0]
    g = torch.Generator().manual_seed(11)
    x = x0.clone()
    for i, t in enumerate(sched.timesteps):
        sigma = torch.full((1,), sigmas[i])
        if i > 0:
            x = sched.step_correct((gm(x, sigma) - x) / sigmas[i] ** 2, x, generator=g).prev_sample
        out = sched.step_pred((gm(x, sigma) - x) / sigmas[i] ** 2, t, x, generator=g)
        x = out.prev_sample
    theirs = out.prev_sample_mean
    ours = SAMPLERS["sde_pc"](gm, x0, [*sigmas, 0.0], generator=torch.Generator().manual_seed(11),
                              snr=snr, norms="sample")
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    other = SAMPLERS["sde_pc"](gm, x0, [*sigmas, 0.0], generator=torch.Generator().manual_seed(11), snr=snr)
    assert float((other - theirs).abs().max()) > 1e-2


def test_per_sample_generators_make_sde_draws_independent_of_the_batch():
    gm = mixture_64d()
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0), dtype=F64) * 80.0
    grid = sigma_grid(8, 0.002, 80.0, "karras")
    batch = SAMPLERS["sde_pc"](gm, x, grid, generator=make_generators(3, 4), norms="sample")
    alone = SAMPLERS["sde_pc"](gm, x[2:3], grid, generator=make_generators(3, 1, start=2), norms="sample")
    torch.testing.assert_close(alone, batch[2:3], rtol=1e-12, atol=1e-12)
