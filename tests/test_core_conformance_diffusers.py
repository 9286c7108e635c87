"""Our samplers and schedules against diffusers' schedulers on identical inputs.

The same fake eps model (a nonlinear function of x_t and the timestep) drives both:
diffusers' own loop feeds it the scheduler's x_t and timestep; our samplers see it through
``Denoiser(model, schedule, "eps")`` in sigma space, on the scheduler's own noise levels
(plus the final 0). Starting points agree: x_sigma = x_diffusers / alpha (VP schedulers) or
x_sigma = x_diffusers (Euler-type schedulers, which already step in sigma space).
Agreement is limited by diffusers' float32 sigmas (~1e-7); the tolerance is 1e-5 and each
case also checks that a different solver on the same inputs is far outside it.
"""
from __future__ import annotations

import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EDMDPMSolverMultistepScheduler,
        EDMEulerScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        HeunDiscreteScheduler,
        UniPCMultistepScheduler,
    )

from multidiff.core import (
    EDM,
    SAMPLERS,
    Denoiser,
    RectifiedFlow,
    VPDiscrete,
    sample,
    sample_with_diffusers_scheduler,
    schedule_from_diffusers,
    sigma_grid,
)
from multidiff.toy.gmm import two_d_mixture

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5
BETAS = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}

# name: (scheduler class, scheduler kwargs, our sampler, sampler opts, samples in sigma space?)
CASES = {
    "ddim": (DDIMScheduler, dict(set_alpha_to_one=True, clip_sample=False), "ddim", {}, False),
    "euler": (EulerDiscreteScheduler, dict(timestep_spacing="leading"), "euler", {}, True),
    "euler_karras": (EulerDiscreteScheduler, dict(use_karras_sigmas=True), "euler", {}, True),
    "heun": (HeunDiscreteScheduler, dict(timestep_spacing="trailing"), "heun", {}, True),
    "heun_karras": (HeunDiscreteScheduler, dict(use_karras_sigmas=True), "heun", {}, True),
    "dpmpp_2m": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2,
                                                   final_sigmas_type="zero", lower_order_final=True), "dpmpp_2m", {}, False),
    "unipc2": (UniPCMultistepScheduler, dict(solver_type="bh2", solver_order=2), "unipc", {"order": 2}, False),
    "unipc3": (UniPCMultistepScheduler, dict(solver_type="bh2", solver_order=3), "unipc", {"order": 3}, False),
}
# a different solver on the same inputs: must land far outside the tolerance
OTHER = {"ddim": "dpmpp_2m", "euler": "heun", "euler_karras": "heun", "heun": "euler", "heun_karras": "euler",
         "dpmpp_2m": "ddim", "unipc2": "dpmpp_2m", "unipc3": "unipc"}


def diffusers_loop(scheduler, n_steps, x, model, step_kwargs=None, record=None):
    """diffusers' own sampling loop with the raw model."""
    scheduler.set_timesteps(n_steps)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(model(model_in, t), t, x, **(step_kwargs or {})).prev_sample
        if record is not None:
            record.append(x)
    return x


def sigma_space_grid(scheduler, schedule, kind):
    """The scheduler's noise levels as a sigma-space grid ending in 0 (float64)."""
    if kind == "ddim":  # DDIM keeps no sigmas: its timesteps are integers of our schedule
        sig = schedule.sigma_of_t(scheduler.timesteps.to(torch.float64))
    else:
        sig = torch.as_tensor(scheduler.sigmas, dtype=torch.float64)
        if kind.startswith("heun"):  # [s0, s1, s1, s2, s2, ..., 0] -> [s0, s1, s2, ..., 0]
            sig = torch.cat([sig[:1], sig[1::2]])
        sig = sig[sig > 0]
    return torch.cat([sig, sig.new_zeros(1)])


@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("n_steps", [8, 20])
def test_samplers_match_diffusers_schedulers(kind, betas, n_steps, fake_eps, rel_err):
    cls, kwargs, method, opts, sigma_space = CASES[kind]
    scheduler = cls(**BETAS[betas], **kwargs)
    schedule = VPDiscrete(1000, **BETAS[betas])
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    record = []
    ref = diffusers_loop(scheduler, n_steps, x, fake_eps, {"eta": 0.0} if kind == "ddim" else None, record)
    sigmas = sigma_space_grid(scheduler, schedule, kind)
    assert len(sigmas) == n_steps + 1
    alpha = (1 + sigmas**2).rsqrt()
    x_start = x * scheduler.init_noise_sigma if sigma_space else x / alpha[0]

    seen = []
    denoiser = Denoiser(fake_eps, schedule, "eps")
    out = SAMPLERS[method](denoiser, x_start, sigmas, callback=lambda info: seen.append(info["x"]), **opts)
    assert rel_err(out, ref) < TOL

    # intermediates: our x entering step i equals diffusers' sample after step i - 1 (Heun's
    # scheduler interleaves half steps, so only its final output is compared)
    if not kind.startswith("heun"):
        for i in range(1, n_steps):
            theirs = record[i - 1] if sigma_space else record[i - 1] / alpha[i]
            assert rel_err(seen[i], theirs) < TOL, f"step {i}"

    other = SAMPLERS[OTHER[kind]](denoiser, x_start, sigmas)
    assert rel_err(other, ref) > 10 * TOL  # the comparison can tell solvers apart


def test_dpmpp_3m_matches_diffusers_third_order(fake_eps, rel_err):
    """With >= 15 steps diffusers' order-3 DPMSolverMultistep only lowers the order at the final
    denoise, which is exactly our dpmpp_3m (eta = 0)."""
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=3, solver_type="heun",
                                            final_sigmas_type="zero")
    schedule = VPDiscrete()
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = diffusers_loop(scheduler, 16, x, fake_eps)
    sigmas = sigma_space_grid(scheduler, schedule, "dpmpp_3m")
    out = SAMPLERS["dpmpp_3m"](Denoiser(fake_eps, schedule, "eps"), x * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    assert rel_err(out, ref) < TOL
    assert rel_err(SAMPLERS["dpmpp_2m"](Denoiser(fake_eps, schedule, "eps"), x * (1 + sigmas[0] ** 2).sqrt(), sigmas),
                   ref) > 10 * TOL


# ------------------------------------------------------------------------ the adapter
PRED = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
ADAPTER_CASES = [
    (DDIMScheduler, dict(clip_sample=False), "epsilon"),
    (DDIMScheduler, dict(clip_sample=False), "v_prediction"),
    (DDIMScheduler, dict(clip_sample=False), "sample"),
    (EulerDiscreteScheduler, {}, "epsilon"),
    (EulerDiscreteScheduler, dict(use_karras_sigmas=True), "v_prediction"),
    (HeunDiscreteScheduler, {}, "epsilon"),
    (DPMSolverMultistepScheduler, {}, "epsilon"),
    (DPMSolverMultistepScheduler, dict(use_karras_sigmas=True), "v_prediction"),
    (DPMSolverMultistepScheduler, dict(solver_order=3), "epsilon"),
    (UniPCMultistepScheduler, {}, "epsilon"),
    (UniPCMultistepScheduler, dict(solver_order=3, use_karras_sigmas=True), "sample"),
    # zero terminal SNR: the first step has abar = 0 (sigma = inf in sigma space)
    (DDIMScheduler, dict(clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing"), "v_prediction"),
]


@pytest.mark.parametrize("cls,kwargs,prediction", ADAPTER_CASES,
                         ids=[f"{c.__name__}-{p}-{i}" for i, (c, _, p) in enumerate(ADAPTER_CASES)])
def test_adapter_equals_diffusers_loop(cls, kwargs, prediction, fake_eps, rel_err):
    """Driving a diffusers scheduler with our denoiser == the diffusers loop with the raw model."""
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = diffusers_loop(cls(prediction_type=prediction, **kwargs), 12, noise, fake_eps)
    scheduler = cls(prediction_type=prediction, **kwargs)
    denoiser = Denoiser(fake_eps, schedule_from_diffusers(scheduler.config), PRED[prediction])
    out = sample_with_diffusers_scheduler(denoiser, noise, scheduler, 12)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_adapter_flow_matching(shift, fake_eps, rel_err):
    """FlowMatchEulerDiscreteScheduler (starts at t = 1, sigma = inf) with a flow-velocity model."""
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = diffusers_loop(FlowMatchEulerDiscreteScheduler(shift=shift), 10, noise, fake_eps)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    schedule = schedule_from_diffusers(scheduler.config)
    out = sample_with_diffusers_scheduler(Denoiser(fake_eps, schedule, "flow"), noise, scheduler, 10)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL


@pytest.mark.parametrize("cls", [DDPMScheduler, EulerAncestralDiscreteScheduler])
def test_adapter_stochastic_schedulers_use_the_generator(cls, fake_eps, rel_err):
    noise = torch.randn(2, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = diffusers_loop(cls(), 10, noise, fake_eps, {"generator": torch.Generator().manual_seed(9)})
    scheduler = cls()
    denoiser = Denoiser(fake_eps, schedule_from_diffusers(scheduler.config), "eps")
    out = sample_with_diffusers_scheduler(denoiser, noise, scheduler, 10, generator=torch.Generator().manual_seed(9))
    assert rel_err(out, ref) < TOL
    other = sample_with_diffusers_scheduler(denoiser, noise, cls(), 10, generator=torch.Generator().manual_seed(10))
    assert rel_err(other, ref) > 1e-2


def test_adapter_with_our_sampler_grid_equals_our_sampler(fake_eps, rel_err):
    """Adapter on DDIM == our ddim on the same timesteps (both routes, one model)."""
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    schedule = schedule_from_diffusers(scheduler.config)
    denoiser = Denoiser(fake_eps, schedule, "eps")
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = sample_with_diffusers_scheduler(denoiser, noise, scheduler, 15)
    sigmas = sigma_space_grid(scheduler, schedule, "ddim")
    ours = SAMPLERS["ddim"](denoiser, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    assert rel_err(ours, out) < TOL


# ------------------------------------------------------- EDM-preconditioned schedulers
EDM_CASES = [
    (EDMEulerScheduler, {}),
    (EDMEulerScheduler, dict(prediction_type="v_prediction")),
    (EDMEulerScheduler, dict(sigma_schedule="exponential", sigma_data=1.0)),
    (EDMDPMSolverMultistepScheduler, {}),
    (EDMDPMSolverMultistepScheduler, dict(solver_order=3, prediction_type="v_prediction")),
    (EDMDPMSolverMultistepScheduler, dict(sigma_schedule="exponential", solver_type="heun")),
]
EDM_IDS = [f"{c.__name__}-{i}" for i, (c, _) in enumerate(EDM_CASES)]


def raw_edm_model(denoiser, scheduler, sigma_of_timestep=lambda t: torch.exp(4 * t)):
    """The network F an EDM scheduler expects, built from a sigma-space denoiser: it sees
    c_in x and its timestep (EDM's c_noise = log(sigma) / 4 by default), and
    D = c_skip x + c_out F with the scheduler's sigma_data and sign of c_out (negative for
    v_prediction)."""
    sigma_data = scheduler.config.sigma_data
    sign = -1.0 if scheduler.config.prediction_type == "v_prediction" else 1.0

    def model(model_in, t):
        sigma = sigma_of_timestep(torch.as_tensor(t, dtype=torch.float64)).reshape(-1)
        x = model_in * (sigma**2 + sigma_data**2).sqrt()
        x0 = denoiser(x, sigma.expand(x.shape[0]))
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sign * sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
        return (x0 - c_skip * x) / c_out

    return model


@pytest.mark.parametrize("cls,kwargs", EDM_CASES, ids=EDM_IDS)
def test_adapter_edm_schedulers_equal_their_loop_with_the_preconditioned_model(cls, kwargs, rel_err):
    """EDM schedulers precondition: the adapter hands step() F = (x0 - c_skip x) / c_out, and
    with the exact mixture denoiser this is the scheduler's own loop with the network F."""
    gm = two_d_mixture()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    scheduler = cls(**kwargs)
    ref = diffusers_loop(scheduler, 10, noise, raw_edm_model(gm, scheduler))
    out = sample_with_diffusers_scheduler(gm, noise, cls(**kwargs), 10)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde on diffusers' float32 sigma ends
def test_adapter_cosine_dpmsolver(rel_err):
    """CosineDPMSolverMultistep (Stable Audio's): EDM-preconditioned too, with c_noise =
    atan(sigma) * 2 / pi, v_prediction and Brownian-tree noise seeded from the generator."""
    pytest.importorskip("torchsde")
    from diffusers import CosineDPMSolverMultistepScheduler

    gm = two_d_mixture()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    scheduler = CosineDPMSolverMultistepScheduler()
    model = raw_edm_model(gm, scheduler, lambda t: torch.tan(t * (torch.pi / 2)))
    ref = diffusers_loop(scheduler, 10, noise, model, {"generator": torch.Generator().manual_seed(5)})
    out = sample_with_diffusers_scheduler(gm, noise, CosineDPMSolverMultistepScheduler(), 10,
                                          generator=torch.Generator().manual_seed(5))
    assert rel_err(out, ref) < TOL
    with pytest.raises(ValueError, match="atan"):
        schedule_from_diffusers(scheduler.config)


@pytest.mark.parametrize("cls", [EDMEulerScheduler, EDMDPMSolverMultistepScheduler])
def test_adapter_edm_schedulers_with_a_network_through_our_edm_wrapper(cls, fake_eps, rel_err):
    """A raw EDM network wrapped in Denoiser(..., "edm") == the scheduler's loop with that network."""
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    ref = diffusers_loop(cls(), 12, noise, fake_eps)
    scheduler = cls()
    schedule = schedule_from_diffusers(scheduler.config)
    denoiser = Denoiser(fake_eps, schedule, "edm", sigma_data=scheduler.config.sigma_data)
    out = sample_with_diffusers_scheduler(denoiser, noise, scheduler, 12)
    assert rel_err(out, ref) < TOL


def test_adapter_edm_schedulers_land_on_the_data():
    """At 10 steps the EDM schedulers driven by the exact denoiser reach the log-likelihood of
    our samplers running the same algorithm on the same (Karras) grid."""
    gm = two_d_mixture()
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    true_ll = float(gm.log_prob(gm.sample(20000, torch.Generator().manual_seed(0))).mean())
    grid = sigma_grid(10, 0.002, 80.0, "karras")
    for cls, method in ((EDMEulerScheduler, "euler"), (EDMDPMSolverMultistepScheduler, "dpmpp_2m")):
        ll = float(gm.log_prob(sample_with_diffusers_scheduler(gm, noise, cls(), 10)).mean())
        ours = float(gm.log_prob(sample(gm, noise * 80.0, grid, method)).mean())
        assert abs(ll - ours) < 0.05, (cls.__name__, ll, ours)
        assert ll > true_ll - 3.0, (cls.__name__, ll, true_ll)  # a wrong output type gives ~ -1000


def test_schedule_from_diffusers_edm():
    for cls in (EDMEulerScheduler, EDMDPMSolverMultistepScheduler):
        schedule = schedule_from_diffusers(cls(sigma_min=0.01, sigma_max=50.0, sigma_data=0.7).config)
        assert isinstance(schedule, EDM)
        assert (schedule.sigma_min, schedule.sigma_max, schedule.sigma_data) == (0.01, 50.0, 0.7)


# ------------------------------------------------------------ schedule_from_diffusers
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("kwargs", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
    dict(beta_schedule="linear", num_train_timesteps=500),
], ids=["linear", "scaled_linear", "cosine", "zero_snr", "n500"])
def test_schedule_from_diffusers_vp(cls, kwargs):
    scheduler = cls(**kwargs)
    schedule = schedule_from_diffusers(scheduler.config)
    assert isinstance(schedule, VPDiscrete)
    assert schedule.num_train_timesteps == scheduler.config.num_train_timesteps
    theirs = scheduler.alphas_cumprod.to(torch.float64)
    torch.testing.assert_close(schedule.alphas_cumprod, theirs, rtol=2e-5, atol=1e-7)
    if kwargs.get("rescale_betas_zero_snr"):
        assert float(schedule.alphas_cumprod[-1]) == 0.0
        assert schedule.sigma_max == pytest.approx(((1 - 2.0**-24) / 2.0**-24) ** 0.5)


def test_schedule_from_diffusers_flow():
    for shift in (1.0, 3.0):
        schedule = schedule_from_diffusers(FlowMatchEulerDiscreteScheduler(shift=shift).config)
        assert isinstance(schedule, RectifiedFlow)
        assert schedule.shift == shift
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=2.5, prediction_type="flow_prediction")
    schedule = schedule_from_diffusers(dpm.config)
    assert isinstance(schedule, RectifiedFlow) and schedule.shift == 2.5


def test_schedule_from_diffusers_rejects_trained_betas():
    config = dict(DDPMScheduler().config)
    config["trained_betas"] = [0.1] * 1000
    with pytest.raises(ValueError, match="trained_betas"):
        schedule_from_diffusers(config)
